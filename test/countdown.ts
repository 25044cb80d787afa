/**
 * test/countdown.ts: lesson 1, the countdown, with no later lesson installed.
 * One async process serves every tab (server.ts), even copied alone into an
 * empty folder; the blocking twin holds a whole worker per stream until the
 * arbiter's timeout kills it (blocking-server.ts); and both, in a real browser.
 */

import http from "node:http";
import net from "node:net";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { copyFile, mkdtemp, rm } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import * as assert from "uvu/assert";
import { COUNTDOWN_FROM, countdownEvent, drainOrClose, formatEvent, PAGE, PIPELINED_MAX, serverEvent, type App } from "../server.ts";
import {
  activeResources,
  BOOT_DEADLINE_MS,
  browserLesson,
  Child,
  CONNECTIONS_PER_HOST,
  DEADLINE_MS,
  isAlive,
  lesson,
  Profile,
  RawRequest,
  RECONNECT_DELAY_MS,
  refusesBadFlags,
  refusesBusyPort,
  request,
  restartLoopbackServer,
  runner,
  SseClient,
  startBlocking,
  startLoopbackServer,
  startServer,
  STILL_WAITING_MS,
  stopBlocking,
  stopLoopbackServer,
  stopServer,
  SYNC_TICK_MS,
  SYNC_TIMEOUT_S,
  Tab,
  until,
  within,
  workerPids,
  type BadFlags,
  type LoopbackServer,
} from "./helpers.ts";

/** Lesson 1 alone: no later lesson is installed, as in a copy of server.ts on its own. */
const LESSON_ONE = { lessons: [] };

// ─── The async stream, byte for byte ─────────────────────────────────────────

lesson("stream: the wire format", (test) => {
  let app: App | undefined;
  let url = "";
  test.before(async () => {
    ({ app, url } = await startServer(LESSON_ONE));
  });
  test.after(() => stopServer(app));

  test("a countdown is a server event, then one event per number, each with its id, then the end", async () => {
    const res = await request(`${url}/sse/?from=2&interval=10`);
    assert.is(res.status, 200);
    assert.is(res.headers["content-type"], "text/event-stream; charset=utf-8");
    assert.is(res.headers["cache-control"], "no-cache, no-transform");
    assert.is(res.headers["x-accel-buffering"], "no");
    // The memory is this process's own (the server runs in it): a whole number of bytes, at most what it holds now.
    const rss = Number(/"rss": (\d+),/.exec(res.body)?.[1]);
    assert.ok(rss > 0 && rss <= process.memoryUsage.rss() * 2, `the server's resident memory in bytes: ${rss}`);
    const delay = Number(/"delay": (\d+)\}/.exec(res.body)?.[1]);
    assert.ok(delay >= 0, `the loop's worst delay of the last second, in ms: ${delay}`);
    assert.is(
      res.body,
      `event: server\ndata: {"pid": ${process.pid}, "streams": 1, "rss": ${rss}, "delay": ${delay}}\n\n` +
        `event: i\nid: 2\ndata: {"i": 2}\n\n` +
        `event: i\nid: 1\ndata: {"i": 1}\n\n` +
        `event: i\nid: 0\ndata: {"i": 0}\n\n`,
    );
  });

  test("the formatters write exactly what the stream sends", () => {
    assert.is(countdownEvent(7), 'event: i\nid: 7\ndata: {"i": 7}\n\n');
    assert.is(formatEvent("x", "y"), "event: x\ndata: y\n\n");
    assert.is(serverEvent(12, 3, 45_000_000), 'event: server\ndata: {"pid": 12, "streams": 3, "rss": 45000000}\n\n');
    assert.is(
      serverEvent(12, 3, 45_000_000, 7),
      'event: server\ndata: {"pid": 12, "streams": 3, "rss": 45000000, "delay": 7}\n\n',
    );
  });

  test("without options the countdown starts at 100", async () => {
    const stream = new SseClient(`${url}/sse/`);
    try {
      const first = await stream.next();
      assert.is(first.id, String(COUNTDOWN_FROM));
      assert.equal(JSON.parse(first.data), { i: COUNTDOWN_FROM });
    } finally {
      stream.close();
    }
  });

  test("headers go out before the first tick", async () => {
    // interval 60 s: had the server waited for a tick, no headers would come for a minute.
    const stream = new SseClient(`${url}/sse/?from=5&interval=60000`, { "Last-Event-ID": "5" });
    try {
      await stream.opened();
      assert.is(stream.status, 200);
    } finally {
      stream.close();
    }
  });

  test("a stream silent for longer than the heartbeat gets comment lines in between", async () => {
    const quick = await startServer({ ...LESSON_ONE, heartbeat: 30 });
    try {
      const res = await request(`${quick.url}/sse/?from=1&interval=200`);
      const between = res.body.slice(res.body.indexOf("id: 1"), res.body.indexOf("id: 0"));
      assert.match(between, /\n\n: still counting\n\n/);
      assert.equal([...res.body.matchAll(/^id: (\d+)$/gm)].map((m) => m[1]), ["1", "0"]);
    } finally {
      await stopServer(quick.app);
    }
  });

  test("a reconnecting browser's Last-Event-ID resumes at the next number", async () => {
    const res = await request(`${url}/sse/?from=100&interval=10`, { headers: { "Last-Event-ID": "3" } });
    const ids = [...res.body.matchAll(/^id: (\d+)$/gm)].map((m) => m[1]);
    assert.equal(ids, ["2", "1", "0"]);
  });

  test("after event 0, a reconnect gets 204 No Content, which stops EventSource", async () => {
    const res = await request(`${url}/sse/`, { headers: { "Last-Event-ID": "0" } });
    assert.is(res.status, 204);
    assert.is(res.body, "");
  });

  test("the page is served with its script, and HEAD gets the headers alone", async () => {
    const page = await request(`${url}/?from=10&interval=200`);
    assert.is(page.status, 200);
    assert.is(page.headers["content-type"], "text/html; charset=utf-8");
    // No later lesson wraps it (the toasts would): the page is lesson 1's, byte for byte.
    assert.is(page.body, PAGE);
    assert.ok(page.body.includes('new EventSource("/sse/?" + query)'));
    const head = await request(`${url}/`, { method: "HEAD" });
    assert.is(head.status, 200);
    assert.is(head.headers["content-length"], String(Buffer.byteLength(PAGE)));
    assert.is(head.body, "");
  });

  test("unknown paths get 404, wrong methods 405 with Allow", async () => {
    const missing = await request(`${url}/nope`);
    assert.is(missing.status, 404);
    assert.is(missing.body, "Nothing here at /nope; the countdown is at /.\n");
    const post = await request(`${url}/sse/`, { method: "POST" });
    assert.is(post.status, 405);
    assert.is(post.headers.allow, "GET");
    const postPage = await request(`${url}/`, { method: "DELETE" });
    assert.is(postPage.status, 405);
    assert.is(postPage.headers.allow, "GET, HEAD");
  });

  test("a request target that is not a path gets 400, not a server error", async () => {
    const socket = net.connect(Number(new URL(url).port), "127.0.0.1");
    try {
      socket.end("GET * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
      let reply = "";
      socket.setEncoding("utf8").on("data", (chunk: string) => (reply += chunk));
      await within("the reply to a bad request target", once(socket, "end"));
      assert.match(reply, /^HTTP\/1\.1 400 Bad Request\r\n/);
      assert.ok(reply.includes("\r\nThe request target is not a path this server can read.\n\r\n"));
    } finally {
      socket.destroy();
    }
  });

  const badRequests: [string, string, Record<string, string>?][] = [
    ["/sse/?from=abc", "from must be a whole number from 0 to 100000."],
    ["/sse/?from=-1", "from must be a whole number from 0 to 100000."],
    ["/sse/?from=1.5", "from must be a whole number from 0 to 100000."],
    ["/sse/?from=100001", "from must be a whole number from 0 to 100000."],
    ["/sse/?from=", "from must be a whole number from 0 to 100000."],
    ["/sse/?interval=9", "interval must be a whole number from 10 to 60000."],
    ["/sse/?interval=60001", "interval must be a whole number from 10 to 60000."],
    ["/sse/?interval=1e3", "interval must be a whole number from 10 to 60000."],
    ["/sse/", "Last-Event-ID must be a whole number from 0 to 100000.", { "Last-Event-ID": "seven" }],
    ["/sse/", "Last-Event-ID must be a whole number from 0 to 100000.", { "Last-Event-ID": "100001" }],
    ["/?from=<script>", "from must be a whole number from 0 to 100000."],
  ];
  for (const [path, sentence, headers] of badRequests) {
    test(`400 for ${path}${headers ? ` with Last-Event-ID: ${headers["Last-Event-ID"]}` : ""}`, async () => {
      const res = await request(`${url}${path}`, { headers });
      assert.is(res.status, 400);
      assert.is(res.headers["content-type"], "text/plain; charset=utf-8");
      assert.is(res.body, `${sentence}\n`);
    });
  }
});

// ─── One process, many streams ───────────────────────────────────────────────

lesson("the one thread: pages are told how long the event loop kept them waiting", (test) => {
  let app: App | undefined;
  let url = "";
  const BLOCKED_MS = 800;
  test.before(async () => {
    ({ app, url } = await startServer(LESSON_ONE));
  });
  test.after(() => stopServer(app));

  test("a stall of the loop shows in the next server event, and a quiet loop's figure is smaller", async () => {
    const stream = new SseClient(`${url}/sse/?from=100&interval=50`);
    try {
      const delays = () => stream.messages.filter((m) => m.event === "server").map((m) => JSON.parse(m.data).delay as number);
      // A few ticks first: the loop's monitor compares each of its samples with the one before.
      for (let tick = 0; tick < 5; tick++) await stream.next("i");
      const before = delays()[0]!;
      // This test runs the server in its own process: blocking this thread blocks the server's.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, BLOCKED_MS);
      await until("a server event that tells of the stall", () => delays().some((d) => d >= BLOCKED_MS - 100), 3 * DEADLINE_MS);
      const stalled = Math.max(...delays());
      assert.ok(before < stalled, `before the stall ${before} ms, after it ${stalled} ms`);
      assert.ok(stalled >= BLOCKED_MS - 100, `the loop was blocked ${BLOCKED_MS} ms; the page was told ${stalled} ms`);
    } finally {
      stream.close();
    }
  });
});

lesson("guards: one client must not hurt the others", (test) => {
  let app: App | undefined;
  let lines: string[] = [];
  let url = "";
  const sockets: net.Socket[] = [];
  test.before(async () => {
    ({ app, lines, url } = await startServer({ ...LESSON_ONE, allowedHosts: ["countdown.test"], connectionsMax: 3 }));
  });
  test.after.each(() => {
    for (const socket of sockets.splice(0)) socket.destroy();
  });
  test.after(() => stopServer(app));

  /** A raw connection that writes `text` and keeps everything it gets back. */
  async function raw(text: string) {
    const { hostname, port } = new URL(url);
    const socket = net.connect(Number(port), hostname);
    sockets.push(socket);
    let received = "";
    socket.setEncoding("utf8").on("data", (chunk: string) => (received += chunk));
    socket.on("error", () => {});
    const closed = new Promise<void>((resolve) => socket.on("close", () => resolve()));
    await within("the connection", once(socket, "connect"));
    socket.write(text);
    return { socket, closed, received: () => received };
  }

  test("a Host that does not name this machine gets 400 and a sentence naming --allowed-host", async () => {
    const evil = await request(`${url}/`, { headers: { Host: "evil.example" } });
    assert.is(evil.status, 400);
    assert.is(evil.body, "This server does not answer for the host evil.example: add --allowed-host evil.example.\n");
    const stream = await request(`${url}/sse/?from=1&interval=10`, { headers: { Host: "rebound.example:8000" } });
    assert.is(stream.status, 400, "the stream is refused too");
    for (const host of ["localhost", "tab7.localhost:8000", "127.0.0.9", "[::1]:8000", "countdown.test"]) {
      assert.is((await request(`${url}/`, { headers: { Host: host } })).status, 200, host);
    }
  });

  test("an upgrade for another Host is refused with the same sentence", async () => {
    const { closed, received } = await raw(
      "GET /ws HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    await within("the refusal", closed);
    assert.match(received(), /^HTTP\/1\.1 400 Bad Request\r\n[^]*add --allowed-host evil\.example\.\n$/);
  });

  test("a client that sends more requests ahead of its answers than PIPELINED_MAX is cut, said once", async () => {
    const host = `Host: ${new URL(url).host}\r\n\r\n`;
    // The first answer is a stream that never ends, so every answer after it has to wait.
    const ahead = `GET /sse/?interval=60000 HTTP/1.1\r\n${host}` + `GET /nope HTTP/1.1\r\n${host}`.repeat(PIPELINED_MAX + 4);
    const { closed } = await raw(ahead);
    await within("the server to cut the connection", closed);
    assert.ok(lines.some((line) => line === `a client sent over ${PIPELINED_MAX} requests ahead: cut (said once)`), lines.join("\n"));
    const fewer = await raw(`GET /sse/?from=2&interval=10 HTTP/1.1\r\n${host}` + `GET /nope HTTP/1.1\r\n${host}`.repeat(PIPELINED_MAX - 1));
    await until("every answer, the stream's and each 404", () => (fewer.received().match(/HTTP\/1\.1 404/g) ?? []).length === PIPELINED_MAX - 1);
  });

  test("past the most connections at once, a new one gets 503 and a sentence, logged once", async () => {
    const held = [];
    for (let k = 0; k < 3; k++) held.push(await raw(""));
    const extra = await raw("");
    await within("the refusal", extra.closed);
    assert.match(extra.received(), /^HTTP\/1\.1 503 Service Unavailable\r\n[^]*holds 3 connections already; try again later\.\n$/);
    for (const { socket } of held) socket.destroy();
    await Promise.all(held.map(({ closed }) => within("a held connection to close", closed)));
    assert.is(lines.filter((line) => line.includes("connections open: refusing more")).length, 1);
    assert.is((await request(`${url}/`)).status, 200, "once some closed, a new one is served");
  });
});

lesson("streams: one process serves every tab", (test) => {
  let app: App | undefined;
  let lines: string[] = [];
  let url = "";
  const clients: SseClient[] = [];
  test.before(async () => {
    ({ app, lines, url } = await startServer(LESSON_ONE));
  });
  test.after.each(() => {
    for (const client of clients.splice(0)) client.close();
  });
  test.after(() => stopServer(app));

  test("a second client gets its page and its first event while the first stream is still open", async () => {
    const first = new SseClient(`${url}/sse/?interval=60000`);
    clients.push(first);
    await first.next();
    const page = await request(`${url}/`);
    assert.is(page.status, 200);
    const second = new SseClient(`${url}/sse/?interval=60000`);
    clients.push(second);
    const status = await second.next("server");
    const { rss, delay, ...rest } = JSON.parse(status.data);
    assert.equal(rest, { pid: process.pid, streams: 2 });
    assert.ok(delay >= 0, `the loop's worst delay of the last second, in ms: ${delay}`);
    assert.ok(rss > 0 && rss <= process.memoryUsage.rss() * 2, `the server's memory in bytes: ${rss}`);
    assert.is((await second.next()).id, "100");
    assert.is(first.numbers.length, 1, "the first stream is still waiting for its second tick");
  });

  test("a client that leaves stops its countdown: the count drops, its timer goes, one line is logged", async () => {
    await until("the streams of the last test to close", () => app!.streams.size === 0);
    const before = activeResources();
    const stream = new SseClient(`${url}/sse/?interval=60000`);
    await stream.next();
    assert.is(app!.streams.size, 1);
    stream.close();
    await until("the server to notice the client left", () => app!.streams.size === 0);
    await until("the stream's closing log line", () => lines.some((line) => line.includes("the client left (0 open)")));
    await until("the timers to return to what they were", () => (activeResources().Timeout ?? 0) === (before.Timeout ?? 0));
  });

  test("300 open-then-abort cycles leave the same timers and sockets behind", async () => {
    await until("earlier streams to close", () => app!.streams.size === 0);
    const before = activeResources();
    for (let round = 0; round < 30; round++) {
      const batch = Array.from({ length: 10 }, () => new SseClient(`${url}/sse/?interval=1000`));
      await Promise.all(batch.map((stream) => stream.next()));
      for (const stream of batch) stream.close();
    }
    await until("every aborted stream to close on the server", () => app!.streams.size === 0);
    await until("timers and sockets to return to what they were", () => {
      const now = activeResources();
      return (now.Timeout ?? 0) === (before.Timeout ?? 0) && (now.TCPSocketWrap ?? 0) === (before.TCPSocketWrap ?? 0);
    });
    assert.is(lines.filter((line) => line.includes("the client left")).length >= 300, true);
  });

  test("stopping the server ends every stream cleanly, so browsers reconnect and resume", async () => {
    const streams = [new SseClient(`${url}/sse/?interval=60000`), new SseClient(`${url}/sse/?interval=60000`)];
    clients.push(...streams);
    await Promise.all(streams.map((stream) => stream.next()));
    app!.endStreams();
    const endings = await within("both streams to end", Promise.all(streams.map((stream) => stream.ended)));
    assert.equal(endings, [true, true], "each response ended with the chunked terminator");
    await until("both streams to be closed on the server", () => app!.streams.size === 0);
    assert.ok(lines.some((line) => line.includes("the server is stopping")));
  });
});

// ─── A slow reader cannot make the server buffer without bound ───────────────

/** Loopback sockets buffer a few megabytes in the kernel; this is well past that. */
const SLOW_READER_BYTES = 32 * 1024 * 1024;

lesson("backpressure: waiting for a slow reader", (test) => {
  let server: http.Server | undefined;
  let socket: net.Socket | undefined;
  test.after(async () => {
    socket?.destroy();
    server?.closeAllConnections();
    if (server?.listening) await within("the test server to close", new Promise((resolve) => server!.close(resolve)));
  });

  test("a full socket makes the writer wait, and the wait ends when the reader goes away", async () => {
    let waited: Promise<void> | undefined;
    let accepted = true;
    server = http.createServer((req, res) => {
      res.writeHead(200, { "Content-Type": "text/event-stream" });
      // More than the kernel's socket buffers hold, so most of it stays queued in the process.
      accepted = res.write(": ".padEnd(SLOW_READER_BYTES, "x") + "\n\n");
      waited = drainOrClose(res);
    });
    server.listen(0, "127.0.0.1");
    await within("the test server to listen", once(server, "listening"));
    const { port } = server.address() as net.AddressInfo;
    // A reader that sends its request and then never reads a byte.
    socket = net.connect(port, "127.0.0.1");
    socket.pause();
    socket.write("GET /sse/ HTTP/1.1\r\nHost: localhost\r\n\r\n");
    await until("the server to fill the socket", () => waited !== undefined);
    let settled = false;
    waited!.then(() => (settled = true));
    await delay(50);
    assert.is(settled, false, "the writer is still waiting while the reader neither reads nor leaves");
    socket.destroy();
    await within("the wait to end once the reader left", waited!);
    assert.is(accepted, false, "write() said the socket was full");
  });

  test("a reader that takes nothing for the stall bound is cut, and the wait ends", async () => {
    const STALL_MS = 300;
    let waited: Promise<void> | undefined;
    let response: http.ServerResponse | undefined;
    server!.removeAllListeners("request");
    server!.on("request", (req, res) => {
      response = res;
      res.writeHead(200, { "Content-Type": "text/event-stream" });
      res.write(": ".padEnd(SLOW_READER_BYTES, "x") + "\n\n");
      waited = drainOrClose(res, STALL_MS);
    });
    const { port } = server!.address() as net.AddressInfo;
    socket = net.connect(port, "127.0.0.1");
    socket.pause(); // and never reads, never leaves
    socket.write("GET /sse/ HTTP/1.1\r\nHost: localhost\r\n\r\n");
    await until("the server to fill the socket", () => waited !== undefined);
    await within("the stalled reader to be cut", waited!);
    assert.ok(response!.destroyed, "the response was destroyed, not left to wait");
  });
});

// ─── Running it ──────────────────────────────────────────────────────────────

lesson("command line: server.ts", (test) => {
  const children: Child[] = [];
  const clients: SseClient[] = [];
  test.after(() => {
    for (const client of clients) client.close();
    for (const child of children) child.kill();
  });
  const run = runner("server.ts", children);

  test("it prints the URL to open, serves it, and Ctrl-C ends open streams and exits", async () => {
    const child = run(["--port", "0", "--host", "127.0.0.1"]);
    const [, url] = await child.waitFor(/listening at (http:\/\/127\.0\.0\.1:\d+\/)/);
    const stream = new SseClient(`${url}sse/?interval=60000`);
    clients.push(stream);
    await stream.next();
    await child.waitFor(/stream opened for 127\.0\.0\.1:\d+, counting from 100 \(1 open\)/);
    assert.is(await child.stop("SIGINT"), 0);
    assert.is(await within("the stream to end", stream.ended), true, "the stream ended cleanly, not cut");
    assert.match(child.output, /\] SIGINT: ending 1 open stream \(their browsers will reconnect and resume\)\n/);
  });

  test("by default it listens on both loopback addresses", async () => {
    const child = run(["--port", "0"]);
    const [, port] = await child.waitFor(/listening at http:\/\/localhost:(\d+)\//);
    for (const host of ["127.0.0.1", "[::1]"]) {
      const page = await request(`http://${host}:${port}/`);
      assert.is(page.status, 200, `the page answers on ${host}`);
    }
    assert.is(await child.stop("SIGTERM"), 0);
  });

  test("--host 0.0.0.0 shares it on the LAN and still answers on ::1, where browsers try localhost", async () => {
    const child = run(["--port", "0", "--host", "0.0.0.0"]);
    const [, port] = await child.waitFor(/listening at http:\/\/localhost:(\d+)\//);
    for (const host of ["127.0.0.1", "[::1]"]) {
      const page = await request(`http://${host}:${port}/`);
      assert.is(page.status, 200, `the page answers on ${host}`);
    }
    const rebound = await request(`http://127.0.0.1:${port}/`, { headers: { Host: "evil.example" } });
    assert.is(rebound.status, 400, "a name that is not this machine's is still refused");
    assert.is(await child.stop("SIGTERM"), 0);
  });

  refusesBusyPort(test, run);

  const badFlags: BadFlags = [
    [["--port", "http"], {}, "--port must be a whole number from 0 to 65535."],
    [["--prot", "8000"], {}, "Unknown option '--prot'. Try --help."],
    [[], { PORT: "99999" }, "PORT must be a whole number from 0 to 65535."],
    [["8000"], {}, "Unexpected argument '8000'. Try --help."],
  ];
  refusesBadFlags(test, run, badFlags);

  test("--help says what each flag does and exits 0", async () => {
    const child = run(["--help"]);
    assert.is(await within("help to print", child.exited), 0);
    assert.match(child.output, /--port N\s+Listens on this TCP port \(env PORT; default 8000\)/);
    assert.match(child.output, /0\.0\.0\.0 to share it on your LAN/);
  });
});

// ─── server.ts copied alone ──────────────────────────────────────────────────

/** The project's own server.ts, which a reader may copy anywhere on its own. */
const SERVER_FILE = fileURLToPath(new URL("../server.ts", import.meta.url));

lesson("copied alone: server.ts serves lesson 1 with nothing beside it", (test) => {
  let folder = "";
  let child: ChildProcess | undefined;
  let output = "";
  let url = "";
  test.before(async () => {
    folder = await mkdtemp(path.join(os.tmpdir(), "countdown-alone-"));
    await copyFile(SERVER_FILE, path.join(folder, "server.ts"));
    // Run from that folder with this run's loader (tsx, or Node's own type stripping), as Child does.
    // "--import tsx" names the package from the project's folder: from the copy's, by its path.
    const loader = process.execArgv.map((arg) => (arg === "tsx" ? import.meta.resolve("tsx") : arg));
    child = spawn(process.execPath, [...loader, "server.ts", "--port", "0", "--host", "127.0.0.1"], {
      cwd: folder,
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout!.setEncoding("utf8").on("data", (text: string) => (output += text));
    child.stderr!.setEncoding("utf8").on("data", (text: string) => (output += text));
    const listening = /listening at (http:\/\/127\.0\.0\.1:\d+)\//;
    const started = () => listening.test(output) || child!.exitCode !== null;
    await until("the copy to say where it listens", started).catch((error) => {
      throw new Error(`${error.message}; output so far:\n${output}`);
    });
    url = listening.exec(output)?.[1] ?? "";
    assert.ok(url, `the copy exited before it listened:\n${output}`);
  });
  test.after(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await within("the copy to exit", once(child, "exit"));
    }
    if (folder) await rm(folder, { recursive: true, force: true });
  });

  test("it serves the page and the countdown", async () => {
    const page = await request(`${url}/`);
    assert.is(page.status, 200);
    assert.is(page.body, PAGE);
    const stream = await request(`${url}/sse/?from=2&interval=50`);
    assert.is(stream.status, 200);
    assert.equal([...stream.body.matchAll(/^event: i\nid: (\d+)$/gm)].map((m) => m[1]), ["2", "1", "0"]);
  });

  test("/room/ is a 404 that says where the later lessons live", async () => {
    const room = await request(`${url}/room/`);
    assert.is(room.status, 404);
    assert.is(room.body, "Nothing here at /room/; the countdown is at /, and the later lessons live in lessons/, not beside this copy.\n");
  });
});

// ─── The blocking twin, where a stream holds a whole worker ──────────────────

lesson("blocking: a stream holds the only worker until the timeout kills it", (test) => {
  const children: Child[] = [];
  const clients: { close(): void }[] = [];
  let child: Child;
  let url = "";
  let stream: SseClient;
  let streamCutAt = 0;
  let servingPid = 0;
  let waiting: RawRequest;
  test.before(async () => {
    ({ child, url } = await startBlocking(children, ["--timeout", SYNC_TIMEOUT_S]));
  });
  test.after(async () => {
    for (const client of clients) client.close();
    await stopBlocking(children);
  });

  test("the stream's events arrive one by one, each as soon as it is written", async () => {
    stream = new SseClient(`${url}/sse/?interval=${SYNC_TICK_MS}`);
    clients.push(stream);
    stream.ended.then(() => (streamCutAt = performance.now()));
    servingPid = JSON.parse((await stream.next("server")).data).pid;
    assert.ok(workerPids(child).includes(servingPid), "a worker serves the stream, not the arbiter");
    assert.is((await stream.next()).id, "100");
    assert.equal(stream.numbers, [100], "event 99 is not written yet, and 100 did not wait for it");
    assert.is((await stream.next()).id, "99");
    assert.is(stream.headers.connection, "close", "one connection, one request, as gunicorn's sync worker does");
  });

  test("a second request is accepted, then gets no byte while the stream runs", async () => {
    waiting = new RawRequest(url, "/");
    clients.push(waiting);
    await waiting.connected;
    await child.waitFor(new RegExp(`No idle worker: the connection from 127\\.0\\.0\\.1:${waiting.localPort} waits \\(1 waiting\\)`));
    await stream.next(); // the stream still runs...
    assert.is(waiting.text, "", "...and no worker has read the waiting request, not even to answer its status line");
  });

  test("the arbiter kills the silent worker: the stream is cut short of 0, without the chunked terminator", async () => {
    assert.is(await within("the stream to be cut", stream.ended), false, "cut, not ended");
    const numbers = stream.numbers;
    assert.equal(numbers, numbers.map((_, k) => 100 - k), "every event up to the cut, in order");
    assert.ok(numbers.at(-1)! > 0, `the countdown stopped at ${numbers.at(-1)}, before 0`);
  });

  test("the log says WORKER TIMEOUT for that worker, that it exited, and that a new one booted", async () => {
    const arbiter = child.process.pid!;
    const timeout = await child.waitFor(
      new RegExp(`^\\[\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d [+-]\\d{4}\\] \\[${arbiter}\\] \\[CRITICAL\\] WORKER TIMEOUT \\(pid:${servingPid}\\)$`, "m"),
    );
    const exiting = await child.waitFor(new RegExp(`\\[${servingPid}\\] \\[INFO\\] Worker exiting \\(pid: ${servingPid}\\)\n`));
    await until("a new worker to boot", () => workerPids(child).length >= 2, BOOT_DEADLINE_MS);
    const replacement = workerPids(child).at(-1)!;
    assert.is.not(replacement, servingPid);
    const booting = child.output.indexOf(`Booting worker with pid: ${replacement}\n`);
    assert.ok(timeout.index! < exiting.index! && exiting.index! < booting, "timeout, exit, boot: in that order");
    await until(`worker ${servingPid} to be gone`, () => !isAlive(servingPid));
  });

  test("the waiting request outlives the killed worker: the new worker answers it", async () => {
    await within("the waiting request's response", waiting.ended);
    assert.match(waiting.text, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(waiting.text, /\r\nConnection: close\r\n/);
    assert.ok(waiting.text.endsWith(PAGE), "the whole page");
    assert.ok(waiting.firstByteAt > streamCutAt, "its first byte came after the stream was cut");
    const replacement = workerPids(child).at(-1);
    assert.match(child.output, new RegExp(`Worker ${replacement} takes the connection from 127\\.0\\.0\\.1:${waiting.localPort} after [\\d.]+ s \\(0 waiting\\)`));
  });
});

// ─── More workers, no timeout, a client that leaves ──────────────────────────

lesson("blocking workers: two workers stream at once, a third request waits", (test) => {
  const children: Child[] = [];
  const clients: { close(): void }[] = [];
  test.after(async () => {
    for (const client of clients) client.close();
    await stopBlocking(children);
  });

  test("two streams progress together while a third request gets nothing", async () => {
    const { child, url } = await startBlocking(children, ["--timeout", "0"], 2);
    const streams = [new SseClient(`${url}/sse/?interval=50`), new SseClient(`${url}/sse/?interval=50`)];
    clients.push(...streams);
    const pids = await Promise.all(streams.map(async (stream) => JSON.parse((await stream.next("server")).data).pid));
    assert.is.not(pids[0], pids[1], "each stream has a worker of its own");
    const third = new RawRequest(url, "/");
    clients.push(third);
    await third.connected;
    await child.waitFor(new RegExp(`the connection from 127\\.0\\.0\\.1:${third.localPort} waits \\(1 waiting\\)`));
    const counts = streams.map((stream) => stream.numbers.length);
    await until("both streams to move on by three events", () => streams.every((stream, k) => stream.numbers.length >= counts[k]! + 3));
    assert.is(third.text, "", "both workers are busy, so nobody reads the third request");
  });
});

lesson("blocking routes: the same page, stream and answers as server.ts", (test) => {
  const children: Child[] = [];
  let url = "";
  test.before(async () => {
    ({ url } = await startBlocking(children, ["--timeout", "0"]));
  });
  test.after(() => stopBlocking(children));

  test("the same page, and the same events with the worker's pid", async () => {
    const page = await request(`${url}/?from=10&interval=200`);
    assert.is(page.body, PAGE);
    const res = await request(`${url}/sse/?from=1&interval=10`);
    assert.is(res.headers["content-type"], "text/event-stream; charset=utf-8");
    assert.match(res.body, /^event: server\ndata: \{"pid": \d+, "streams": 1, "rss": \d+\}\n\n/);
    assert.ok(res.body.endsWith(countdownEvent(1) + countdownEvent(0)));
  });

  test("a reconnecting browser resumes at the next number, and gets 204 after the end", async () => {
    const resumed = await request(`${url}/sse/?interval=10`, { headers: { "Last-Event-ID": "3" } });
    assert.equal([...resumed.body.matchAll(/^id: (\d+)$/gm)].map((m) => m[1]), ["2", "1", "0"]);
    const finished = await request(`${url}/sse/`, { headers: { "Last-Event-ID": "0" } });
    assert.is(finished.status, 204);
  });

  test("the same 400, 404 and 405 sentences", async () => {
    const bad = await request(`${url}/sse/?interval=5`);
    assert.is(bad.status, 400);
    assert.is(bad.body, "interval must be a whole number from 10 to 60000.\n");
    assert.is((await request(`${url}/nope`)).status, 404);
    const post = await request(`${url}/sse/`, { method: "POST" });
    assert.is(post.status, 405);
    assert.is(post.headers.allow, "GET");
  });
});

lesson("blocking leave: a client that leaves frees its worker at a failed write, not before", (test) => {
  const children: Child[] = [];
  const clients: { close(): void }[] = [];
  test.after(async () => {
    for (const client of clients) client.close();
    await stopBlocking(children);
  });

  test("the worker sleeps on after its client left; the next write fails, and the next request is served", async () => {
    const { child, url } = await startBlocking(children, ["--timeout", "0"]);
    const stream = new SseClient(`${url}/sse/?interval=500`);
    clients.push(stream);
    await stream.next();
    stream.close();
    const next = new RawRequest(url, "/");
    clients.push(next);
    await next.connected;
    // The worker cannot know yet: it is asleep inside the stream.
    await child.waitFor(new RegExp(`the connection from 127\\.0\\.0\\.1:${next.localPort} waits \\(1 waiting\\)`));
    await within("the next request's response", next.ended);
    assert.match(next.text, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(child.output, /Stream stopped after \d+ events?: the client left, so a write failed; this worker is free/);
  });

  test("with --timeout 0 nobody is killed: a countdown runs to 0 and ends cleanly", async () => {
    const { child, url } = await startBlocking(children, ["--timeout", "0"]);
    const stream = new SseClient(`${url}/sse/?from=20&interval=50`);
    clients.push(stream);
    assert.is(await within("the countdown to finish", stream.ended), true, "ended with the chunked terminator");
    assert.equal(stream.numbers, Array.from({ length: 21 }, (_, k) => 20 - k));
    assert.not.match(child.output, /WORKER TIMEOUT/);
  });
});

// ─── Running blocking-server.ts ──────────────────────────────────────────────

lesson("blocking command line: blocking-server.ts", (test) => {
  const children: Child[] = [];
  const clients: SseClient[] = [];
  test.after(async () => {
    for (const client of clients) client.close();
    await stopBlocking(children);
  });
  const run = runner("blocking-server.ts", children);

  test("Ctrl-C stops the arbiter and every worker, even one blocked in a stream", async () => {
    const { child, url } = await startBlocking(children, ["--timeout", "0"], 2);
    const stream = new SseClient(`${url}/sse/?interval=60000`);
    clients.push(stream);
    await stream.next();
    const pids = workerPids(child);
    assert.is(await child.stop("SIGINT"), 0);
    assert.match(child.output, /\[INFO\] Handling signal: int\n/);
    for (const pid of pids) assert.match(child.output, new RegExp(`\\[${pid}\\] \\[INFO\\] Worker exiting \\(pid: ${pid}\\)\n`));
    assert.match(child.output, /\[INFO\] Shutting down: Master\n$/);
    for (const pid of pids) await until(`worker ${pid} to be gone`, () => !isAlive(pid));
    assert.is(await within("the stream to be cut", stream.ended), false);
  });

  test("SIGTERM does the same", async () => {
    const { child } = await startBlocking(children, []);
    const [pid] = workerPids(child);
    assert.is(await child.stop("SIGTERM"), 0);
    assert.match(child.output, /\[INFO\] Handling signal: term\n/);
    await until(`worker ${pid} to be gone`, () => !isAlive(pid!));
  });

  test("by default it listens on both loopback addresses", async () => {
    const child = run(["--port", "0"]);
    const [, port] = await child.waitFor(/Listening at: http:\/\/localhost:(\d+) \(\d+\)\n/);
    for (const host of ["127.0.0.1", "[::1]"]) {
      const page = await request(`http://${host}:${port}/`);
      assert.is(page.status, 200, `the page answers on ${host}`);
    }
  });

  refusesBusyPort(test, run);

  const timeoutSentence = "--timeout must be 0 (never) or a number of seconds from 0.1 to 86400, such as 30 or 0.5.";
  const badFlags: BadFlags = [
    [["--workers", "0"], {}, "--workers must be a whole number from 1 to 64."],
    [["--workers", "two"], {}, "--workers must be a whole number from 1 to 64."],
    [[], { WEB_CONCURRENCY: "many" }, "WEB_CONCURRENCY must be a whole number from 1 to 64."],
    [["--timeout", "soon"], {}, timeoutSentence],
    [["--timeout=-1"], {}, timeoutSentence],
    [["--timeout", "0.01"], {}, timeoutSentence],
    [["--wrokers", "2"], {}, "Unknown option '--wrokers'. Try --help."],
    [["--worker"], {}, "--worker is how the arbiter starts its workers; run the file without it."],
  ];
  refusesBadFlags(test, run, badFlags);

  test("--help says what each flag does, gunicorn's way, and exits 0", async () => {
    const child = run(["--help"]);
    assert.is(await within("help to print", child.exited), 0);
    assert.match(child.output, /--port N\s+Listens on this TCP port \(env PORT; default 8001\)/);
    assert.match(child.output, /--workers N\s+Starts this many worker processes/);
    assert.match(child.output, /--timeout S\s+Workers silent for more than this many seconds are killed and restarted\.\s+0 disables\./);
  });
});


// ─── Tabs in a real browser ──────────────────────────────────────────────────

browserLesson("browser: every tab streams from the async server", (test, browser) => {
  let running: LoopbackServer | undefined;
  let profile: Profile | undefined;
  const streams = () => running!.app.streams.size;
  const url = (host: string, query: string) => `http://${host}:${running!.port}/${query}`;

  test.before(async () => {
    running = await startLoopbackServer(0, LESSON_ONE);
  });
  test.before.each(async () => {
    await until("the last test's streams to close", () => streams() === 0);
    profile = await Profile.open(browser());
  });
  test.after.each(async () => {
    await profile?.close();
  });
  test.after(() => stopLoopbackServer(running));

  test("the countdown advances in the page and ends at Blastoff, without starting over", async () => {
    const tab = await profile!.open(url("localhost", "?from=5&interval=100"));
    await until("the page to say finished", () => tab.state === "finished").catch((error) => {
      throw new Error(`${error.message}; it showed ${tab.shown.join(", ")}`);
    });
    assert.equal(tab.shown, ["5", "4", "3", "2", "1", "Blastoff!"]);
    assert.equal(tab.texts("state"), ["connecting", "streaming", "finished"]);
    assert.is(await tab.page.getAttribute("#state", "data-state"), "finished");
    assert.is(await tab.openEventSources(), 0, "no EventSource is left that could reconnect and start over");
    await until("the stream to close on the server", () => streams() === 0);
    assert.is(running!.lines.filter((line) => line.startsWith("stream opened")).length, 1);
  });

  // Every countdown tab holds one of the host name's connections. (With the toasts installed, their one
  // shared stream holds one more, and one countdown fewer fits: the limit is the browser's.)
  const countdownsPerHost = CONNECTIONS_PER_HOST;
  test(`on one host name, tab ${countdownsPerHost + 1} does not even load: the browser's limit, not the server's`, async () => {
    const tabs: Tab[] = [];
    for (let k = 0; k < countdownsPerHost; k++) tabs.push(await profile!.open(url("localhost", "?interval=200")));
    await until(`${countdownsPerHost} streams`, () => streams() === countdownsPerHost);
    const waiting = await profile!.context.newPage();
    let loaded = false;
    const loading = waiting.goto(url("localhost", "?interval=200")).then(() => (loaded = true));
    loading.catch(() => {}); // awaited below; this keeps an early failure from going unhandled
    await delay(STILL_WAITING_MS);
    assert.is(loaded, false, `the page is still waiting for one of the ${CONNECTIONS_PER_HOST} connections`);
    assert.is(streams(), countdownsPerHost);
    await tabs[0]!.page.close();
    await within("the waiting page to load once a tab closed", loading);
    await until(`${countdownsPerHost} streams again`, () => streams() === countdownsPerHost && profile!.tab(waiting).numbers.length > 0);
  });

  test("10 tabs on tab1.localhost ... tab10.localhost all stream at once, and each page says so", async () => {
    const hosts = Array.from({ length: 10 }, (_, k) => `tab${k + 1}.localhost`);
    const tabs = await Promise.all(hosts.map((host) => profile!.open(url(host, "?interval=200"))));
    await until("10 streams on the server", () => streams() === 10);
    await until("every page to show its number going down", () => tabs.every((tab) => tab.numbers.length >= 2));
    for (const tab of tabs) {
      const [first, second] = tab.numbers;
      assert.is(second, first! - 1, `${tab.host} counts down`);
      assert.is(tab.state, "streaming", `${tab.host} says streaming`);
    }
    await until("every page to say the server holds 10 streams", () =>
      tabs.every((tab) => new RegExp(`^served by pid ${process.pid}, which holds 10 streams in \\d+ MB$`).test(tab.texts("server").at(-1) ?? "")),
    );
  });

  test('"Open another tab" opens a fresh tabN.localhost name every time, and 8 tabs opened that way all stream', async () => {
    const first = await profile!.open(url("localhost", "?interval=200"));
    const streaming = (tab: Tab) => until(`${tab.host} to stream`, () => tab.state === "streaming" && tab.numbers.length > 0);
    await streaming(first);
    // Twice from the same tab, at once: the link moves on as soon as it is clicked.
    const tabs = [first, await profile!.follow(first), await profile!.follow(first)];
    while (tabs.length < 8) {
      const last = tabs.at(-1)!;
      await streaming(last);
      tabs.push(await profile!.follow(last));
    }
    assert.equal(
      tabs.map((tab) => tab.host),
      ["localhost", "tab2.localhost", "tab3.localhost", "tab4.localhost", "tab5.localhost", "tab6.localhost", "tab7.localhost", "tab8.localhost"],
    );
    await until("8 streams on the server", () => streams() === 8);
    await until("every page to count", () => tabs.every((tab) => tab.numbers.length >= 2 && tab.state === "streaming"));
    // The first tab learns of the 8 streams on its next tick, and its link moves past every name taken.
    await until("the first page to say 8 streams", () => first.texts("server").at(-1)?.includes("which holds 8 streams in ") ?? false);
    const link = new URL((await first.page.getAttribute("#another", "href"))!);
    assert.is(link.host, `tab9.localhost:${running!.port}`);
    assert.is(link.search, "?interval=200", "the link keeps the page's settings");
  });

  test("closing a tab closes its stream on the server, and the other pages count one stream fewer", async () => {
    const tabs = await Promise.all(["tab1", "tab2", "tab3"].map((name) => profile!.open(url(`${name}.localhost`, "?interval=200"))));
    await until("3 streams on the server", () => streams() === 3);
    await tabs[2]!.page.close();
    await until("the server to close the tab's stream", () => streams() === 2);
    assert.ok(running!.lines.some((line) => line.includes("the client left (2 open)")));
    await until("the open pages to say 2 streams", () =>
      tabs.slice(0, 2).every((tab) => tab.texts("server").at(-1)?.includes("which holds 2 streams in ")),
    );
  });

  test("after a server restart mid-countdown the tab reconnects and carries on at the next number", async () => {
    const tab = await profile!.open(url("localhost", "?from=100&interval=200"));
    await until("a few numbers", () => tab.numbers.length >= 3);
    running = await restartLoopbackServer(running!);
    await until("the page to say reconnecting", () => tab.state === "reconnecting");
    await until(
      "the page to reconnect and show 3 more numbers",
      () => tab.numbersAround("reconnecting")[1].length >= 3,
      RECONNECT_DELAY_MS + DEADLINE_MS,
    );
    const [before, after] = tab.numbersAround("reconnecting");
    assert.is(after[0], before.at(-1)! - 1, `resumed at the number after ${before.at(-1)}: ${before} | ${after}`);
    const numbers = tab.numbers;
    assert.ok(numbers.every((n, k) => k === 0 || n === numbers[k - 1]! - 1), `one number at a time, never back up: ${numbers}`);
    assert.equal(tab.texts("state"), ["connecting", "streaming", "reconnecting", "streaming"]);
    assert.ok(running.lines.some((line) => line.includes(`counting from ${after[0]} (1 open)`)), "the new server was sent Last-Event-ID");
  });
});

/**
 * The blocking server's --timeout in this lesson: long enough to watch a second
 * tab not load, short enough that the test can wait for the kill.
 */
const BLOCKING_TIMEOUT_S = 3;

browserLesson("browser: on the blocking server a second tab waits for the worker", (test, browser) => {
  let child: Child | undefined;
  let profile: Profile | undefined;
  let port = "";

  test.before(async () => {
    child = new Child("blocking-server.ts", ["--port", "0", "--workers", "1", "--timeout", String(BLOCKING_TIMEOUT_S)]);
    [, port = ""] = await child.waitFor(/Listening at: http:\/\/localhost:(\d+) /);
    await child.waitFor(/Booting worker with pid: \d+/);
  });
  test.before.each(async () => {
    profile = await Profile.open(browser());
  });
  test.after.each(async () => {
    await profile?.close();
  });
  test.after(async () => {
    // Ctrl-C, so the arbiter takes its workers with it; SIGKILL if that does not do.
    await child?.stop("SIGINT").catch(() => child?.kill());
  });

  test("a second tab does not load while the first streams, and loads once the worker is killed", async () => {
    const url = `http://localhost:${port}/?interval=200`;
    const first = await profile!.open(url);
    await until("the first tab to count", () => first.numbers.length > 0);
    const second = await profile!.context.newPage();
    let loaded = false;
    const loading = second.goto(url, { timeout: BLOCKING_TIMEOUT_S * 1000 + DEADLINE_MS }).then(() => (loaded = true));
    loading.catch(() => {}); // awaited below; this keeps an early failure from going unhandled
    await delay(STILL_WAITING_MS);
    assert.not.match(child!.output, /WORKER TIMEOUT/, "the worker was not killed yet, so the wait shows the worker busy");
    assert.is(loaded, false, "the second tab's page is still waiting");
    assert.match(child!.output, /No idle worker: the connection from \S+ waits/, "it waits at the server, not in the browser");
    await child!.waitFor(/WORKER TIMEOUT \(pid:\d+\)/, BLOCKING_TIMEOUT_S * 1000 + DEADLINE_MS);
    await within("the second tab to load from the new worker", loading);
    assert.is(await second.textContent("h1"), "Countdown");
    await until("the first tab, its stream cut, to say reconnecting", () => first.texts("state").includes("reconnecting"));
  });

  test("one tab asks for no /favicon.ico, so nothing waits behind its own stream: the log never says \"(1 waiting)\"", async () => {
    // A server of its own, with no --timeout: the tab's stream holds the only worker all along.
    const children: Child[] = [];
    const behind: RawRequest[] = [];
    try {
      const { child, url } = await startBlocking(children, ["--timeout", "0"]);
      // Served once first: startBlocking returns when the worker is started, and a request that
      // comes while it still boots waits for it, and says so.
      assert.is((await request(`${url}/`, {}, undefined, BOOT_DEADLINE_MS)).status, 200);
      const from = child.output.length;
      const tab = await profile!.open(`${url}/?interval=200`);
      await until("the tab to count", () => tab.numbers.length > 0);
      // Chromium asks for a page's icon once the page has loaded, unless the page names one.
      await delay(STILL_WAITING_MS);
      await until("the tab to count on", () => tab.numbers.length >= 5);
      const logged = child.output.slice(from);
      assert.not.match(logged, /waiting\)/, `no connection waited for the worker; the log says:\n${logged}`);
      // What the log says of a request that does wait behind the stream, such as the icon's was:
      behind.push(new RawRequest(url, "/favicon.ico"));
      await child.waitFor(/No idle worker: the connection from 127\.0\.0\.1:\d+ waits \(1 waiting\)\n/);
    } finally {
      for (const request of behind) request.close();
      await stopBlocking(children);
    }
  });
});
