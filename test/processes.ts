/**
 * test/processes.ts: lesson 3, several processes. `server.ts --workers N` runs
 * N copies of the server on one port; each holds its own streams, and its own
 * room, until --database puts the room in PostgreSQL for all of them.
 */

import net from "node:net";
import { once } from "node:events";
import { setTimeout as delay } from "node:timers/promises";
import * as assert from "uvu/assert";
import postgres from "postgres";
import {
  BOOT_DEADLINE_MS,
  Child,
  databaseLesson,
  isAlive,
  lesson,
  refusesBadFlags,
  refusesBusyPort,
  request,
  SseClient,
  STILL_WAITING_MS,
  until,
  within,
  type BadFlags,
} from "./helpers.ts";
import { NOTIFY_MAX_BYTES, PostgresHub } from "../server.ts";

/** The pids of the workers that began serving so far, in order. */
function startedWorkers(child: Child): number[] {
  return [...child.output.matchAll(/primary: worker (\d+) is serving/g)].map((match) => Number(match[1]));
}

/** The pid that serves a new stream, from the stream's first `server` event. */
async function servingPid(url: string, clients: SseClient[]): Promise<number> {
  const stream = new SseClient(`${url}sse/?interval=60000`);
  clients.push(stream);
  const { pid } = JSON.parse((await stream.next("server")).data) as { pid: number };
  return pid;
}

lesson("workers: server.ts --workers 2 runs two processes on one port", (test) => {
  const children: Child[] = [];
  const clients: SseClient[] = [];
  test.after(() => {
    for (const client of clients) client.close();
    for (const child of children) {
      for (const pid of startedWorkers(child)) if (isAlive(pid)) process.kill(pid, "SIGKILL");
      child.kill();
    }
  });
  const run = (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const child = new Child("server.ts", args, env);
    children.push(child);
    return child;
  };

  /** Starts two workers on an ephemeral port and waits for both, and for the banner's URL. */
  async function startTwo(): Promise<{ child: Child; url: string }> {
    const child = run(["--workers", "2", "--port", "0", "--host", "127.0.0.1"]);
    const [, url = ""] = await child.waitFor(/listening at (http:\/\/127\.0\.0\.1:\d+\/)/, BOOT_DEADLINE_MS);
    await until("both workers to serve", () => startedWorkers(child).length === 2, BOOT_DEADLINE_MS);
    return { child, url };
  }

  test("streams opened one after another are served by both workers, in turn", async () => {
    const { child, url } = await startTwo();
    const workers = startedWorkers(child);
    const served = new Set<number>();
    // The primary hands connections round-robin, but a worker that is still starting can miss a turn.
    for (let attempt = 0; attempt < 10 && served.size < 2; attempt++) served.add(await servingPid(url, clients));
    assert.equal([...served].sort(), [...workers].sort(), "both worker pids served a stream");
    assert.not.ok(served.has(child.process.pid!), "the primary serves nothing itself");
    assert.match(child.output, /Countdown server \(async, 2 worker processes, primary pid \d+\) listening at/);
  });

  test("a worker that dies is replaced, with a log line", async () => {
    const { child, url } = await startTwo();
    const [victim, survivor] = startedWorkers(child) as [number, number];
    process.kill(victim, "SIGKILL");
    await child.waitFor(new RegExp(`primary: worker ${victim} exited \\(SIGKILL\\); starting another`));
    await until("a third worker to serve", () => startedWorkers(child).length === 3, BOOT_DEADLINE_MS);
    const replacement = startedWorkers(child)[2]!;
    const served = new Set<number>();
    for (let attempt = 0; attempt < 10 && served.size < 2; attempt++) served.add(await servingPid(url, clients));
    assert.equal([...served].sort(), [survivor, replacement].sort(), "the survivor and the replacement serve");
  });

  test("Ctrl-C ends every worker's streams and leaves no process behind", async () => {
    const { child, url } = await startTwo();
    const streams: SseClient[] = [];
    const served = new Set<number>();
    for (let attempt = 0; attempt < 10 && served.size < 2; attempt++) {
      served.add(await servingPid(url, clients));
      streams.push(clients.at(-1)!);
    }
    assert.is(served.size, 2, "both workers hold a stream");
    assert.is(await child.stop("SIGINT"), 0);
    for (const stream of streams) assert.is(await within("a stream to end", stream.ended), true, "every stream ended cleanly");
    for (const pid of startedWorkers(child)) assert.not.ok(isAlive(pid), `worker ${pid} is gone`);
    assert.match(child.output, /primary: SIGINT: stopping 2 workers/);
  });

  refusesBusyPort(test, (args) => run(["--workers", "2", ...args]));

  const badFlags: BadFlags = [
    [["--workers", "0"], {}, "--workers must be a whole number from 1 to 64."],
    [["--workers", "two"], {}, "--workers must be a whole number from 1 to 64."],
    [[], { WEB_CONCURRENCY: "65" }, "WEB_CONCURRENCY must be a whole number from 1 to 64."],
  ];
  refusesBadFlags(test, run, badFlags);
});

// ─── One room across processes ───────────────────────────────────────────────

/** Room streams, opened until each of the workers serves at least one; keyed by the pid their presence event names. */
async function roomStreamsOnEveryWorker(url: string, workers: number, clients: SseClient[]): Promise<Map<number, SseClient>> {
  const byPid = new Map<number, SseClient>();
  for (let attempt = 0; attempt < 10 * workers && byPid.size < workers; attempt++) {
    const stream = new SseClient(`${url}room/stream`);
    clients.push(stream);
    const { pid } = JSON.parse((await stream.next("presence")).data) as { pid: number };
    if (byPid.has(pid)) stream.close();
    else byPid.set(pid, stream);
  }
  assert.is(byPid.size, workers, `a room stream on each of the ${workers} workers`);
  return byPid;
}

/** Posts a message to the room and returns it as stored. */
async function postMessage(url: string, text: string): Promise<{ id: number; text: string }> {
  const response = await request(`${url}room/messages`, { method: "POST", headers: { "Content-Type": "application/json" } }, JSON.stringify({ name: "ada", text }));
  assert.is(response.status, 201, response.body);
  return JSON.parse(response.body);
}

/** The texts of the messages a stream received, in order. */
function texts(stream: SseClient): string[] {
  return stream.messages.filter((m) => m.event === "message").map((m) => JSON.parse(m.data).text as string);
}

lesson("workers without a database: each process has a room of its own", (test) => {
  const children: Child[] = [];
  const clients: SseClient[] = [];
  test.after(() => {
    for (const client of clients) client.close();
    for (const child of children) child.kill();
  });

  test("a message posted to one worker reaches that worker's tabs, never the other's", async () => {
    const child = new Child("server.ts", ["--workers", "2", "--port", "0", "--host", "127.0.0.1"]);
    children.push(child);
    const [, url = ""] = await child.waitFor(/listening at (http:\/\/127\.0\.0\.1:\d+\/)/, BOOT_DEADLINE_MS);
    // The banner's lines come over a pipe, not always in one piece: wait for this one.
    await child.waitFor(/The room and the toasts stay within each process/);
    const streams = await roomStreamsOnEveryWorker(url, 2, clients);
    await postMessage(url, "who hears this?");
    await until("one worker's tab to show the message", () => [...streams.values()].some((s) => texts(s).length > 0));
    await delay(STILL_WAITING_MS);
    const heard = [...streams.values()].map((s) => texts(s).length);
    assert.equal(heard.sort(), [0, 1], "exactly one of the two workers' tabs got it");
  });
});

/**
 * A TCP relay on loopback in front of PostgreSQL. `cut()` closes it and every
 * connection through it, so for a server that reaches the database through
 * the relay, the database is down (its connections refused); `open()` on the
 * same port brings it back.
 */
class DatabaseRelay {
  port = 0;
  private listener: net.Server | undefined;
  private sockets = new Set<net.Socket>();
  private target: URL;

  constructor(databaseUrl: string) {
    this.target = new URL(databaseUrl);
  }

  /** The database URL as seen through the relay. */
  get url(): string {
    const through = new URL(this.target);
    through.hostname = "127.0.0.1";
    through.port = String(this.port);
    return through.href;
  }

  async open(): Promise<void> {
    this.listener = net.createServer((client) => {
      const upstream = net.connect(Number(this.target.port || 5432), this.target.hostname);
      for (const socket of [client, upstream]) {
        this.sockets.add(socket);
        socket.on("error", () => {});
        socket.on("close", () => this.sockets.delete(socket));
      }
      client.pipe(upstream).pipe(client);
    });
    this.listener.listen(this.port, "127.0.0.1");
    await within("the relay to listen", once(this.listener, "listening"));
    this.port = (this.listener.address() as net.AddressInfo).port;
  }

  async cut(): Promise<void> {
    const closed = new Promise((resolve) => this.listener?.close(resolve));
    for (const socket of this.sockets) socket.destroy();
    await within("the relay to close", closed);
  }
}

databaseLesson("database: one room across processes through PostgreSQL", (test, database) => {
  const children: Child[] = [];
  const clients: SseClient[] = [];
  test.after(() => {
    for (const client of clients) client.close();
    for (const child of children) child.kill();
  });
  const run = (args: string[]) => {
    const child = new Child("server.ts", ["--port", "0", "--host", "127.0.0.1", ...args]);
    children.push(child);
    return child;
  };
  const started = async (child: Child) => (await child.waitFor(/listening at (http:\/\/127\.0\.0\.1:\d+\/)/, BOOT_DEADLINE_MS))[1]!;

  test("tabs served by both workers receive one POST", async () => {
    const databaseUrl = await database();
    const child = run(["--workers", "2", "--database", databaseUrl]);
    const url = await started(child);
    const streams = await roomStreamsOnEveryWorker(url, 2, clients);
    const posted = await postMessage(url, "one message, every tab");
    for (const [pid, stream] of streams) {
      const message = await stream.next("message");
      assert.is(message.id, String(posted.id), `the tab on pid ${pid} got it, with its id`);
      assert.is(JSON.parse(message.data).text, "one message, every tab");
    }
    assert.not.ok(child.output.includes(new URL(databaseUrl).password), "no line shows the password");
  });

  test("after a restart the history replays with the same ids, and the tables are not made again", async () => {
    const databaseUrl = await database();
    const first = run(["--database", databaseUrl]);
    const firstUrl = await started(first);
    for (const text of ["one", "two", "three"]) await postMessage(firstUrl, text);
    assert.is(await first.stop("SIGINT"), 0);

    const second = run(["--database", databaseUrl]);
    const secondUrl = await started(second);
    const replay = new SseClient(`${secondUrl}room/stream`);
    clients.push(replay);
    for (const [id, text] of [["1", "one"], ["2", "two"], ["3", "three"]]) {
      const message = await replay.next("message");
      assert.equal([message.id, JSON.parse(message.data).text], [id, text]);
    }
    const resumed = new SseClient(`${secondUrl}room/stream`, { "Last-Event-ID": "2" });
    clients.push(resumed);
    assert.is((await resumed.next("message")).id, "3", "a reconnect after 2 gets 3, with no gap before it");
    assert.not.ok(resumed.messages.some((m) => m.event === "gap"));
    await postMessage(secondUrl, "four");
    assert.is((await resumed.next("message")).id, "4", "new messages carry on from the stored ids");
  });

  test("when the listening connection is cut mid-run, every message still arrives once and in order", async () => {
    const databaseUrl = await database();
    const child = run(["--workers", "2", "--database", databaseUrl]);
    const url = await started(child);
    const streams = await roomStreamsOnEveryWorker(url, 2, clients);
    await postMessage(url, "before");
    for (const stream of streams.values()) await stream.next("message");

    // The listening connections are the ones whose last statement was LISTEN: one per worker.
    const admin = postgres(databaseUrl, { max: 1, onnotice: () => {} });
    try {
      const cut = await admin`
        select pg_terminate_backend(pid) as ended from pg_stat_activity
        where datname = current_database() and query ilike 'listen %'`;
      assert.is(cut.length, 2, "one listening connection per worker");
    } finally {
      await admin.end({ timeout: 1 });
    }
    // Posted while nobody listens: these NOTIFYs reach no one, and the table keeps them.
    await postMessage(url, "while cut 1");
    await postMessage(url, "while cut 2");
    await until("both workers to listen again", () => child.output.match(/hub: listening again/g)?.length === 2, BOOT_DEADLINE_MS);
    await postMessage(url, "after");

    for (const [pid, stream] of streams) {
      await until(`the tab on pid ${pid} to get all four`, () => texts(stream).length >= 4);
      assert.equal(texts(stream), ["before", "while cut 1", "while cut 2", "after"], `pid ${pid}: each once, in order`);
      const ids = stream.messages.filter((m) => m.event === "message").map((m) => Number(m.id));
      assert.equal(ids, [1, 2, 3, 4]);
    }
    assert.match(child.output, /hub: lost the database connection/);
    assert.not.ok(child.output.includes(new URL(databaseUrl).password), "no line shows the password");
  });

  test("while the database is down: countdowns go on, a POST gets 503, and afterwards every message arrives once, in order", async () => {
    const databaseUrl = await database();
    const relay = new DatabaseRelay(databaseUrl);
    await relay.open();
    try {
      const cutOff = run(["--database", relay.url]);
      const url = await started(cutOff);
      // Another process on the same database, reached directly: it keeps posting while the first one's database is down.
      const other = run(["--database", databaseUrl]);
      const otherUrl = await started(other);
      const stream = new SseClient(`${url}room/stream`);
      clients.push(stream);
      await stream.next("presence");
      await postMessage(url, "before");
      await stream.next("message");

      await relay.cut();
      await cutOff.waitFor(/hub: lost the database connection/);
      const refused = await request(`${url}room/messages`, { method: "POST", headers: { "Content-Type": "application/json" } }, JSON.stringify({ name: "ada", text: "refused" }));
      assert.is(refused.status, 503);
      assert.is(refused.body, "The database is not answering right now; try again in a moment.\n");
      const countdown = new SseClient(`${url}sse/?from=2&interval=10`);
      clients.push(countdown);
      assert.is(await within("the countdown to end", countdown.ended), true, "a countdown needs no database");
      assert.equal(countdown.numbers, [2, 1, 0]);
      await postMessage(otherUrl, "while down");

      await relay.open();
      await cutOff.waitFor(/hub: listening again after [\d.]+ s; caught up from the table/, BOOT_DEADLINE_MS);
      // Its NOTIFY went to nobody here: the message comes from the table, before anything else is posted.
      await until("the message posted while the database was down", () => texts(stream).includes("while down"));
      await postMessage(url, "after");
      await until("the stream to get all three", () => texts(stream).length >= 3, BOOT_DEADLINE_MS);
      assert.equal(texts(stream), ["before", "while down", "after"]);
      assert.equal(stream.messages.filter((m) => m.event === "message").map((m) => m.id), ["1", "2", "3"]);
    } finally {
      await relay.cut();
    }
  });

  test("an event too large for a NOTIFY is announced by its id, and every process reads it whole from the table", async () => {
    const databaseUrl = await database();
    // Two hubs on one database, as two processes have.
    const publisher = await PostgresHub.open(databaseUrl, () => {});
    const listener = await PostgresHub.open(databaseUrl, () => {});
    const left = new AbortController();
    try {
      const events = listener.subscribe("room:large", { signal: left.signal });
      const first = events.next();
      await until("the listener to subscribe", () => listener.subscribers("room:large") === 1);
      const text = "x".repeat(2 * NOTIFY_MAX_BYTES);
      const published = await publisher.publish("room:large", "message", { text });
      const { value } = await within("the large event", first);
      assert.equal(value, published, "the same event, data and all");
    } finally {
      left.abort();
      await publisher.close();
      await listener.close();
    }
  });

  test("a database that cannot be used is one sentence and exit code 1", async () => {
    const databaseUrl = new URL(await database());
    const wrongPassword = new URL(databaseUrl);
    wrongPassword.password = "not-the-password";
    const refused = new URL(databaseUrl);
    refused.port = "1";
    const cases: [string, RegExp][] = [
      ["not a url", /^--database must be a URL such as postgres:\/\/user:password@localhost:5432\/countdown\.$/],
      [refused.href, /^Cannot reach PostgreSQL at 127\.0\.0\.1:1: the connection was refused\. Is the server running\?$/],
      [wrongPassword.href, /^PostgreSQL at 127\.0\.0\.1:\d+ refused the login of user "postgres": check the user and password in --database\.$/],
    ];
    for (const [value, sentence] of cases) {
      const child = run(["--database", value]);
      assert.is(await within("the server to give up", child.exited), 1, value);
      assert.match(child.output.trim(), sentence);
      assert.not.ok(child.output.includes("not-the-password"), "the password is not repeated");
    }
  });
});
