/**
 * test.ts: the lessons, as tests. One uvu suite per lesson, real clients only:
 * HTTP requests over loopback, child processes, and (when Chromium is present)
 * a real browser.
 *
 * Run:  npm test                     (every suite)
 *       SUITES=stream npm test       (only the suites whose name starts with "stream")
 *
 * Every wait has a deadline and says what it waited for, and every server,
 * child process and connection a test opens is closed in `after`, even when an
 * assertion fails: an open SSE request would otherwise keep the run alive.
 */

import http from "node:http";
import net from "node:net";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { setTimeout as delay } from "node:timers/promises";
import { suite, type Test } from "uvu";
import * as assert from "uvu/assert";
import {
  COUNTDOWN_FROM,
  countdownEvent,
  createCountdownServer,
  drainOrClose,
  formatEvent,
  PAGE,
  serverEvent,
  type CountdownServer,
} from "./server.ts";

// ─── Helpers ─────────────────────────────────────────────────────────────────

/** How long any single wait may take before the test fails with a message. */
const DEADLINE_MS = 5000;

/** Resolves like `promise`, or rejects after `ms` with a message naming what we waited for. */
async function within<T>(what: string, promise: Promise<T>, ms = DEADLINE_MS): Promise<T> {
  const timeout = new AbortController();
  const expired = delay(ms, undefined, { signal: timeout.signal }).then(() => {
    throw new Error(`gave up after ${ms} ms waiting for ${what}`);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    timeout.abort();
    expired.catch(() => {}); // the aborted timer rejects; that is expected
  }
}

/** Polls `condition` until it holds, or fails after the deadline. */
async function until(what: string, condition: () => boolean, ms = DEADLINE_MS): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`gave up after ${ms} ms waiting for ${what}`);
    await delay(10);
  }
}

/** A plain HTTP request, its whole body read; agent: false so no socket outlives it. */
async function request(url: string, options: http.RequestOptions = {}) {
  const req = http.request(url, { agent: false, ...options });
  req.end();
  const [res] = (await within(`a response from ${url}`, once(req, "response"))) as [http.IncomingMessage];
  let body = "";
  res.setEncoding("utf8");
  for await (const chunk of res) body += chunk;
  return { status: res.statusCode, headers: res.headers, body };
}

/** One SSE message as the browser's EventSource would see it. */
interface SseMessage {
  event: string;
  id?: string;
  data: string;
}

/**
 * An open SSE stream: `next()` gives the next message, `raw` holds every byte
 * as it came, `ended` settles when the server ends or cuts the response.
 */
class SseClient {
  raw = "";
  messages: SseMessage[] = [];
  status = 0;
  headers: http.IncomingHttpHeaders = {};
  /** True when the response ended cleanly (chunked terminator seen), false when cut. */
  ended: Promise<boolean>;
  private req: http.ClientRequest;
  private read = 0;
  private cursor = 0;
  private finished = false;
  private wake = () => {};

  constructor(url: string, headers: http.OutgoingHttpHeaders = {}) {
    this.req = http.get(url, { agent: false, headers: { Accept: "text/event-stream", ...headers } });
    this.ended = new Promise((resolve) => {
      this.req.on("error", () => resolve(false));
      this.req.on("response", (res) => {
        this.status = res.statusCode ?? 0;
        this.headers = res.headers;
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          this.raw += chunk;
          this.parse();
          this.wake();
        });
        res.on("end", () => resolve(true));
        res.on("aborted", () => resolve(false));
        res.on("error", () => resolve(false));
      });
    });
    this.ended.then(() => {
      this.finished = true;
      this.wake();
    });
  }

  async opened(): Promise<void> {
    await within("the stream's response headers", once(this.req, "response"));
  }

  private parse() {
    let end: number;
    while ((end = this.raw.indexOf("\n\n", this.read)) !== -1) {
      const block = this.raw.slice(this.read, end);
      this.read = end + 2;
      const message: SseMessage = { event: "message", data: "" };
      let isComment = true;
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        isComment = false;
        const [field, ...rest] = line.split(": ");
        const value = rest.join(": ");
        if (field === "event") message.event = value;
        else if (field === "id") message.id = value;
        else if (field === "data") message.data = value;
      }
      if (!isComment) this.messages.push(message);
    }
  }

  /** The next message of the given event type (skipping others), within the deadline. */
  async next(event = "i", ms = DEADLINE_MS): Promise<SseMessage> {
    const deadline = Date.now() + ms;
    for (;;) {
      const index = this.messages.findIndex((message, at) => at >= this.cursor && message.event === event);
      if (index !== -1) {
        this.cursor = index + 1;
        return this.messages[index]!;
      }
      if (this.finished) throw new Error(`the stream ended before another "${event}" event`);
      const arrived = new Promise<void>((resolve) => (this.wake = resolve));
      await within(`a "${event}" event`, arrived, Math.max(0, deadline - Date.now()));
    }
  }

  /** The countdown numbers received so far. */
  get numbers(): number[] {
    return this.messages.filter((m) => m.event === "i").map((m) => JSON.parse(m.data).i as number);
  }

  close() {
    this.req.destroy();
  }
}

/** A countdown server in this process, on an ephemeral loopback port, its log kept in `lines`. */
async function startServer() {
  const lines: string[] = [];
  const server: CountdownServer = createCountdownServer({ log: (line) => lines.push(line) });
  server.listen(0, "127.0.0.1");
  await within("the server to listen", once(server, "listening"));
  const { port } = server.address() as net.AddressInfo;
  return { server, lines, url: `http://127.0.0.1:${port}` };
}

/** Stops a server started by startServer, cutting whatever is still open. */
async function stopServer(server: http.Server | undefined) {
  if (!server?.listening) return;
  server.closeAllConnections();
  await within("the server to close", new Promise((resolve) => server.close(resolve)));
}

/** How many timers and sockets this process holds: the leak detector of the cleanup tests. */
function activeResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) counts[kind] = (counts[kind] ?? 0) + 1;
  return counts;
}

/**
 * A child process running one of the servers (with the same loader as this
 * run, so tsx or Node's own type stripping), its output kept line by line.
 */
class Child {
  process: ChildProcess;
  output = "";
  exited: Promise<number | null>;

  constructor(file: string, args: string[], env: NodeJS.ProcessEnv = {}) {
    this.process = spawn(process.execPath, [...process.execArgv, file, ...args], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.process.stdout!.setEncoding("utf8").on("data", (text: string) => (this.output += text));
    this.process.stderr!.setEncoding("utf8").on("data", (text: string) => (this.output += text));
    this.exited = new Promise((resolve) => this.process.on("exit", (code) => resolve(code)));
  }

  /** Waits for a line of output matching `pattern` and returns its match. */
  async waitFor(pattern: RegExp, ms = DEADLINE_MS): Promise<RegExpMatchArray> {
    let match: RegExpMatchArray | null = null;
    await until(`output matching ${pattern}`, () => (match = this.output.match(pattern)) !== null || this.process.exitCode !== null, ms).catch((error) => {
      throw new Error(`${error.message}; output so far:\n${this.output}`);
    });
    if (!match) throw new Error(`the process exited (code ${this.process.exitCode}) before printing ${pattern}:\n${this.output}`);
    return match;
  }

  /** Sends a signal and waits for the exit code. */
  async stop(signal: NodeJS.Signals = "SIGINT"): Promise<number | null> {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill(signal);
    return within(`${this.process.pid} to exit after ${signal}`, this.exited);
  }

  /** For `after`: whatever happened, leave no process behind. */
  kill() {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill("SIGKILL");
  }
}

/** True while a process with this pid exists. */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Registers a suite to run, unless SUITES names other ones. */
function lesson<T>(name: string, build: (test: Test<T>) => void) {
  const only = process.env.SUITES?.split(",").filter(Boolean);
  if (only?.length && !only.some((prefix) => name.startsWith(prefix))) return;
  const test = suite<T>(name);
  build(test);
  test.run();
}

// ─── Lesson 1: the async stream, byte for byte ───────────────────────────────

lesson("stream: the wire format", (test) => {
  let server: CountdownServer | undefined;
  let url = "";
  test.before(async () => {
    ({ server, url } = await startServer());
  });
  test.after(() => stopServer(server));

  test("a countdown is a server event, then one event per number, each with its id, then the end", async () => {
    const res = await request(`${url}/sse/?from=2&interval=10`);
    assert.is(res.status, 200);
    assert.is(res.headers["content-type"], "text/event-stream; charset=utf-8");
    assert.is(res.headers["cache-control"], "no-cache, no-transform");
    assert.is(res.headers["x-accel-buffering"], "no");
    assert.is(
      res.body,
      `event: server\ndata: {"pid": ${process.pid}, "streams": 1}\n\n` +
        `event: i\nid: 2\ndata: {"i": 2}\n\n` +
        `event: i\nid: 1\ndata: {"i": 1}\n\n` +
        `event: i\nid: 0\ndata: {"i": 0}\n\n`,
    );
  });

  test("the formatters write exactly what the stream sends", () => {
    assert.is(countdownEvent(7), 'event: i\nid: 7\ndata: {"i": 7}\n\n');
    assert.is(formatEvent("x", "y"), "event: x\ndata: y\n\n");
    assert.is(serverEvent(12, 3), 'event: server\ndata: {"pid": 12, "streams": 3}\n\n');
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
    const quick = createCountdownServer({ log: () => {}, heartbeat: 30 });
    quick.listen(0, "127.0.0.1");
    try {
      await within("the heartbeat server to listen", once(quick, "listening"));
      const { port } = quick.address() as net.AddressInfo;
      const res = await request(`http://127.0.0.1:${port}/sse/?from=1&interval=200`);
      const between = res.body.slice(res.body.indexOf("id: 1"), res.body.indexOf("id: 0"));
      assert.match(between, /\n\n: still counting\n\n/);
      assert.equal([...res.body.matchAll(/^id: (\d+)$/gm)].map((m) => m[1]), ["1", "0"]);
    } finally {
      await stopServer(quick);
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
    assert.is(page.body, PAGE);
    assert.ok(page.body.includes('new EventSource("/sse/" + location.search)'));
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

// ─── Lesson 2: one process, many streams ─────────────────────────────────────

lesson("streams: one process serves every tab", (test) => {
  let server: CountdownServer | undefined;
  let lines: string[] = [];
  let url = "";
  const clients: SseClient[] = [];
  test.before(async () => {
    ({ server, lines, url } = await startServer());
  });
  test.after.each(() => {
    for (const client of clients.splice(0)) client.close();
  });
  test.after(() => stopServer(server));

  test("a second client gets its page and its first event while the first stream is still open", async () => {
    const first = new SseClient(`${url}/sse/?interval=60000`);
    clients.push(first);
    await first.next();
    const page = await request(`${url}/`);
    assert.is(page.status, 200);
    const second = new SseClient(`${url}/sse/?interval=60000`);
    clients.push(second);
    const status = await second.next("server");
    assert.equal(JSON.parse(status.data), { pid: process.pid, streams: 2 });
    assert.is((await second.next()).id, "100");
    assert.is(first.numbers.length, 1, "the first stream is still waiting for its second tick");
  });

  test("a client that leaves stops its countdown: the count drops, its timer goes, one line is logged", async () => {
    await until("the streams of the last test to close", () => server!.streams.size === 0);
    const before = activeResources();
    const stream = new SseClient(`${url}/sse/?interval=60000`);
    await stream.next();
    assert.is(server!.streams.size, 1);
    stream.close();
    await until("the server to notice the client left", () => server!.streams.size === 0);
    await until("the stream's closing log line", () => lines.some((line) => line.includes("the client left (0 open)")));
    await until("the timers to return to what they were", () => (activeResources().Timeout ?? 0) === (before.Timeout ?? 0));
  });

  test("300 open-then-abort cycles leave the same timers and sockets behind", async () => {
    await until("earlier streams to close", () => server!.streams.size === 0);
    const before = activeResources();
    for (let round = 0; round < 30; round++) {
      const batch = Array.from({ length: 10 }, () => new SseClient(`${url}/sse/?interval=1000`));
      await Promise.all(batch.map((stream) => stream.next()));
      for (const stream of batch) stream.close();
    }
    await until("every aborted stream to close on the server", () => server!.streams.size === 0);
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
    server!.endStreams();
    const endings = await within("both streams to end", Promise.all(streams.map((stream) => stream.ended)));
    assert.equal(endings, [true, true], "each response ended with the chunked terminator");
    await until("both streams to be closed on the server", () => server!.streams.size === 0);
    assert.ok(lines.some((line) => line.includes("the server is stopping")));
  });
});

// ─── Lesson 3: a slow reader cannot make the server buffer without bound ─────

/** Loopback sockets buffer a few megabytes in the kernel; this is well past that. */
const SLOW_READER_BYTES = 32 * 1024 * 1024;

lesson("backpressure: waiting for a slow reader", (test) => {
  let server: http.Server | undefined;
  let socket: net.Socket | undefined;
  test.after(async () => {
    socket?.destroy();
    await stopServer(server);
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
});

// ─── Lesson 4: running it ────────────────────────────────────────────────────

lesson("command line: server.ts", (test) => {
  const children: Child[] = [];
  const clients: SseClient[] = [];
  test.after(() => {
    for (const client of clients) client.close();
    for (const child of children) child.kill();
  });
  const run = (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const child = new Child("server.ts", args, env);
    children.push(child);
    return child;
  };

  test("it prints the URL to open, serves it, and Ctrl-C ends open streams and exits", async () => {
    const child = run(["--port", "0", "--host", "127.0.0.1"]);
    const [, url] = await child.waitFor(/listening at (http:\/\/127\.0\.0\.1:\d+\/)/);
    const stream = new SseClient(`${url}sse/?interval=60000`);
    clients.push(stream);
    await stream.next();
    await child.waitFor(/stream opened for 127\.0\.0\.1:\d+, counting from 100 \(1 open\)/);
    assert.is(await child.stop("SIGINT"), 0);
    assert.is(await within("the stream to end", stream.ended), true, "the stream ended cleanly, not cut");
    assert.match(child.output, /SIGINT: ending 1 open streams/);
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

  test("a busy port is one sentence and exit code 1", async () => {
    const blocker = net.createServer().listen(0, "127.0.0.1");
    await within("the blocker to listen", once(blocker, "listening"));
    try {
      const { port } = blocker.address() as net.AddressInfo;
      const child = run(["--port", String(port), "--host", "127.0.0.1"]);
      assert.is(await within("the server to give up", child.exited), 1);
      assert.is(child.output.trim(), `port ${port} is in use; try --port ${port + 2}`);
    } finally {
      blocker.close();
    }
  });

  const badFlags: [string[], NodeJS.ProcessEnv, string][] = [
    [["--port", "http"], {}, "--port must be a whole number from 0 to 65535."],
    [["--prot", "8000"], {}, "Unknown option '--prot'. Try --help."],
    [[], { PORT: "99999" }, "PORT must be a whole number from 0 to 65535."],
    [["8000"], {}, "Unexpected argument '8000'. Try --help."],
  ];
  for (const [args, env, sentence] of badFlags) {
    test(`"${[...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...args].join(" ")}" is one sentence and exit code 2`, async () => {
      const child = run(args, env);
      assert.is(await within("the server to refuse", child.exited), 2);
      assert.is(child.output.trim(), sentence);
    });
  }

  test("--help says what each flag does and exits 0", async () => {
    const child = run(["--help"]);
    assert.is(await within("help to print", child.exited), 0);
    assert.match(child.output, /--port N\s+Listens on this TCP port \(env PORT; default 8000\)/);
    assert.match(child.output, /0\.0\.0\.0 to share it on your LAN/);
  });
});
