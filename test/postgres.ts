/**
 * test/postgres.ts: lesson 3, one hub for every process (lessons/postgres.ts).
 * Against a real PostgreSQL at TEST_DATABASE_URL: `server.ts --database URL`,
 * with one process or with --workers 2, keeps the room in a table and tells
 * every process through LISTEN/NOTIFY, and loses nothing while the listening
 * connection, or the whole database, is away.
 */

import net from "node:net";
import { execFile } from "node:child_process";
import { once } from "node:events";
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import * as assert from "uvu/assert";
import postgres from "postgres";
import {
  BOOT_DEADLINE_MS,
  Child,
  DEADLINE_MS,
  databaseLesson,
  request,
  runner,
  SseClient,
  until,
  within,
} from "./helpers.ts";
import { NOTIFY_MAX_BYTES, PostgresHub } from "../lessons/postgres.ts";
import { RequestError } from "../server.ts";

/** Room streams, opened until each worker serves one; keyed by the pid their presence names. */
async function roomStreamsOnEveryWorker(url: string, workers: number, clients: SseClient[]) {
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

/** Posts a message to the room; its answer, as sent. */
function post(url: string, text: string, ms = DEADLINE_MS) {
  const headers = { "Content-Type": "application/json" };
  const body = JSON.stringify({ name: "ada", text });
  return request(`${url}room/messages`, { method: "POST", headers }, body, ms);
}

/**
 * Whether a server's output shows the URL's password, as a URL carries it: after the user
 * name and before the host, as typed or decoded. Not the bare word: the docs' password is
 * "countdown", which the banner says anyway, and the test databases are countdown_test_*.
 */
function showsPassword(output: string, databaseUrl: string): boolean {
  const { username, password } = new URL(databaseUrl);
  const forms = [password, decodeURIComponent(password)].map((form) => `${username}:${form}@`);
  return forms.some((form) => output.includes(form));
}

/** PostgreSQL's ErrorResponse message ("E", its length, then fields) when max_connections is hit. */
const TOO_MANY_CLIENTS = (() => {
  const fields = { S: "FATAL", V: "FATAL", C: "53300", M: "sorry, too many clients already" };
  const body = Buffer.concat([
    ...Object.entries(fields).map(([key, value]) => Buffer.from(`${key}${value}\0`)),
    Buffer.from([0]),
  ]);
  const length = Buffer.alloc(4);
  length.writeInt32BE(body.length + 4);
  return Buffer.concat([Buffer.from("E"), length, body]);
})();

/** How long the server gives one query (QUERY_DEADLINE_MS in lessons/postgres.ts). */
const QUERY_DEADLINE_MS = 5000;

/** The longest pause between the listener's tries (RECONNECT_MAX_MS in lessons/postgres.ts; docs/postgres.md says 8 s). */
const RECONNECT_MAX_MS = 8000;
/** What a busy machine may add to a pause, a timer or a connection attempt: the 8 s promise, checked with room to spare. */
const MARGIN_MS = 3000;

/** Posts a message to the room and returns it as stored. */
async function postMessage(url: string, text: string): Promise<{ id: number; text: string }> {
  const response = await post(url, text);
  assert.is(response.status, 201, response.body);
  return JSON.parse(response.body);
}

/** The texts of the messages a stream received, in order. */
function texts(stream: SseClient): string[] {
  const messages = stream.messages.filter((m) => m.event === "message");
  return messages.map((m) => JSON.parse(m.data).text as string);
}

/**
 * A TCP relay on loopback in front of PostgreSQL. `cut()` closes it and every
 * connection through it, so for a server that reaches the database through
 * the relay, the database is down (its connections refused); `open()` on the
 * same port brings it back. `freeze()` stands in for a PostgreSQL under SIGSTOP:
 * connections stay open, new ones are accepted, and not a byte passes either way
 * until `thaw()`. One difference: a connection the server closes meanwhile is
 * closed through to PostgreSQL at once, where a stopped server would read what was
 * queued for it first; either way nothing uncommitted commits.
 */
class DatabaseRelay {
  port = 0;
  private listener: net.Server | undefined;
  private sockets = new Set<net.Socket>();
  private target: URL;
  private frozen = false;
  /** New connections get what a full PostgreSQL sends them: FATAL 53300, and a hang-up. */
  full = false;
  /** When each connection through the relay was opened (performance.now()), in order. */
  opened: number[] = [];

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
      this.opened.push(performance.now());
      if (this.full) return void client.once("data", () => client.end(TOO_MANY_CLIENTS));
      const upstream = net.connect(Number(this.target.port || 5432), this.target.hostname);
      for (const [socket, peer] of [[client, upstream], [upstream, client]] as const) {
        this.sockets.add(socket);
        socket.on("error", () => {});
        socket.on("close", () => {
          this.sockets.delete(socket);
          peer.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
      if (this.frozen) for (const socket of [client, upstream]) socket.pause();
    });
    this.listener.listen(this.port, "127.0.0.1");
    await within("the relay to listen", once(this.listener, "listening"));
    this.port = (this.listener.address() as net.AddressInfo).port;
  }

  /** Not a byte passes, either way, until thaw(). */
  freeze(): void {
    this.frozen = true;
    for (const socket of this.sockets) socket.pause();
  }

  thaw(): void {
    this.frozen = false;
    for (const socket of this.sockets) socket.resume();
  }

  async cut(): Promise<void> {
    const closed = new Promise((resolve) => this.listener?.close(resolve));
    for (const socket of this.sockets) socket.destroy();
    await within("the relay to close", closed);
  }
}

/** A program run to its end, its output kept: for initdb, pg_ctl, id. */
const execute = promisify(execFile);

/** PostgreSQL's server programs (initdb, pg_ctl): Debian's newest, else where pg_config says. */
async function postgresPrograms(): Promise<string> {
  const debian = "/usr/lib/postgresql";
  const versions = existsSync(debian) ? readdirSync(debian).filter((v) => /^\d+$/.test(v)) : [];
  for (const version of versions.sort((a, b) => Number(b) - Number(a))) {
    const bin = path.join(debian, version, "bin");
    if (existsSync(path.join(bin, "initdb"))) return bin;
  }
  const bin = (await execute("pg_config", ["--bindir"]).catch(() => ({ stdout: "" }))).stdout.trim();
  if (bin && existsSync(path.join(bin, "initdb"))) return bin;
  throw new Error("this test freezes a PostgreSQL of its own: it needs initdb and pg_ctl (apt-get install postgresql)");
}

/** The pids whose parent is `pid`, from /proc: a PostgreSQL's backends and helpers are its postmaster's children. */
function childrenOf(pid: number): number[] {
  const children: number[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8"); // "pid (name) state ppid ..."
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) children.push(Number(entry));
    } catch {
      // Gone meanwhile.
    }
  }
  return children;
}

/**
 * A PostgreSQL of the test's own, in a temporary folder on a free loopback port, so that it
 * can be frozen with SIGSTOP: never the shared one at TEST_DATABASE_URL, which other suites
 * use. As .ci/run makes its own: initdb refuses root, so as root it runs as the postgres user.
 * `freeze()` stops processes, `thaw()` continues every one of them (call it in a finally),
 * `stop()` thaws, stops the server and removes the folder.
 */
class ThrowawayPostgres {
  readonly url: string;
  private bin: string;
  private dir: string;
  private stopped = new Set<number>();
  private constructor(bin: string, dir: string, url: string) {
    this.bin = bin;
    this.dir = dir;
    this.url = url;
  }

  static async start(): Promise<ThrowawayPostgres> {
    const bin = await postgresPrograms();
    const dir = mkdtempSync(path.join(os.tmpdir(), "countdown-pg-"));
    const probe = net.createServer().listen(0, "127.0.0.1");
    await within("a free port", once(probe, "listening"));
    const { port } = probe.address() as net.AddressInfo;
    await new Promise((resolve) => probe.close(resolve));
    const cluster = new ThrowawayPostgres(bin, dir, `postgres://postgres@127.0.0.1:${port}/postgres`);
    try {
      if (process.getuid?.() === 0) {
        const [uid, gid] = await Promise.all(["-u", "-g"].map(async (flag) => Number((await execute("id", [flag, "postgres"])).stdout)));
        chownSync(dir, uid!, gid!);
      }
      await cluster.as("initdb", ["-D", `${dir}/data`, "-U", "postgres", "-A", "trust"]);
      const settings = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`;
      await cluster.as("pg_ctl", ["-D", `${dir}/data`, "-l", `${dir}/log`, "-w", "-o", settings, "start"]);
      return cluster;
    } catch (error) {
      await cluster.stop();
      throw error;
    }
  }

  /** Runs one of PostgreSQL's programs, as the postgres user when this process is root. */
  private async as(program: string, args: string[]): Promise<void> {
    const file = path.join(this.bin, program);
    const [command, all] = process.getuid?.() === 0 ? ["runuser", ["-u", "postgres", "--", file, ...args]] : [file, args];
    await execute(command as string, all as string[], { timeout: BOOT_DEADLINE_MS });
  }

  /** The postmaster: the process that accepts connections and starts a backend for each. */
  get postmaster(): number {
    return Number(readFileSync(`${this.dir}/data/postmaster.pid`, "utf8").split("\n")[0]);
  }

  /** The postmaster and every process it started: the whole database, frozen. */
  get everyProcess(): number[] {
    return [this.postmaster, ...childrenOf(this.postmaster)];
  }

  /** SIGSTOP to each (the first first: a stopped postmaster starts no new backend meanwhile). */
  freeze(pids: number[]): void {
    for (const pid of pids) {
      process.kill(pid, "SIGSTOP");
      this.stopped.add(pid);
    }
  }

  thaw(): void {
    for (const pid of this.stopped) {
      try {
        process.kill(pid, "SIGCONT");
      } catch {
        // Gone: a backend whose client left while it was stopped may exit at once.
      }
    }
    this.stopped.clear();
  }

  async stop(): Promise<void> {
    this.thaw();
    if (existsSync(`${this.dir}/data/postmaster.pid`)) {
      await this.as("pg_ctl", ["-D", `${this.dir}/data`, "-m", "immediate", "-w", "stop"]).catch(() => {});
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

databaseLesson("database: one room across processes through PostgreSQL", (test, database) => {
  const children: Child[] = [];
  const clients: SseClient[] = [];
  test.after(() => {
    for (const client of clients) client.close();
    for (const child of children) child.kill();
  });
  const runServer = runner("server.ts", children);
  const run = (args: string[]) => runServer(["--port", "0", "--host", "127.0.0.1", ...args]);
  const listening = /listening at (http:\/\/127\.0\.0\.1:\d+\/)/;
  const started = async (child: Child) => (await child.waitFor(listening, BOOT_DEADLINE_MS))[1]!;

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
    await child.waitFor(/The room and the toasts live in PostgreSQL at postgres:\/\/postgres:\*\*\*@/);
    assert.not.match(child.output, /stay within each process/, "the split is not announced");
    assert.not.ok(showsPassword(child.output, databaseUrl), "no line shows the password");
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
    assert.is((await resumed.next("message")).id, "3", "a reconnect after 2 gets 3, with no gap");
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
    const relistened = () => child.output.match(/hub: listening again/g)?.length === 2;
    await until("both workers to listen again", relistened, BOOT_DEADLINE_MS);
    await postMessage(url, "after");

    for (const [pid, stream] of streams) {
      await until(`the tab on pid ${pid} to get all four`, () => texts(stream).length >= 4);
      const all = ["before", "while cut 1", "while cut 2", "after"];
      assert.equal(texts(stream), all, `pid ${pid}: each once, in order`);
      const ids = stream.messages.filter((m) => m.event === "message").map((m) => Number(m.id));
      assert.equal(ids, [1, 2, 3, 4]);
    }
    assert.match(child.output, /hub: lost the database connection/);
    assert.not.ok(showsPassword(child.output, databaseUrl), "no line shows the password");
  });

  test("while the database is down: countdowns go on, a POST gets 503, and afterwards every message arrives once, in order", async () => {
    const databaseUrl = await database();
    const relay = new DatabaseRelay(databaseUrl);
    await relay.open();
    try {
      const cutOff = run(["--database", relay.url]);
      const url = await started(cutOff);
      // Another process on the same database, reached directly: it posts while the first
      // one's database is down.
      const other = run(["--database", databaseUrl]);
      const otherUrl = await started(other);
      const stream = new SseClient(`${url}room/stream`);
      clients.push(stream);
      await stream.next("presence");
      await postMessage(url, "before");
      await stream.next("message");

      await relay.cut();
      await cutOff.waitFor(/hub: lost the database connection/);
      const refused = await post(url, "refused");
      assert.is(refused.status, 503);
      assert.is(refused.body, "The database is not answering right now; try again in a moment.\n");
      await cutOff.waitFor(/The database is not answering right now/);
      const countdown = new SseClient(`${url}sse/?from=2&interval=10`);
      clients.push(countdown);
      assert.is(await within("the countdown to end", countdown.ended), true, "a countdown needs no database");
      assert.equal(countdown.numbers, [2, 1, 0]);
      await postMessage(otherUrl, "while down");

      await relay.open();
      const caughtUp = /hub: listening again after [\d.]+ s; caught up from the table/;
      await cutOff.waitFor(caughtUp, BOOT_DEADLINE_MS);
      // Its NOTIFY went to nobody here: the message comes from the table, before anything else.
      await until("the message posted while the database was down", () => texts(stream).includes("while down"));
      await postMessage(url, "after");
      await until("the stream to get all three", () => texts(stream).length >= 3, BOOT_DEADLINE_MS);
      assert.equal(texts(stream), ["before", "while down", "after"]);
      const ids = stream.messages.filter((m) => m.event === "message").map((m) => m.id);
      assert.equal(ids, ["1", "2", "3"]);
    } finally {
      await relay.cut();
    }
  });

  test("while the database is frozen, a POST gets 503 at the deadline, not a hang, and is not stored when it wakes", async () => {
    const databaseUrl = await database();
    const relay = new DatabaseRelay(databaseUrl);
    await relay.open();
    try {
      const child = run(["--database", relay.url]);
      const url = await started(child);
      const stream = new SseClient(`${url}room/stream`);
      clients.push(stream);
      await stream.next("presence");
      await postMessage(url, "before");
      await stream.next("message");

      relay.freeze(); // as PostgreSQL under SIGSTOP: nothing refused, nothing answered
      const refused = await post(url, "while frozen", QUERY_DEADLINE_MS + DEADLINE_MS);
      assert.is(refused.status, 503);
      assert.is(refused.body, "The database did not answer within 5 seconds; try again in a moment.\n");
      await child.waitFor(/hub: a query got no answer within 5 s; closing the database connections, opening new ones\n/);
      const countdown = new SseClient(`${url}sse/?from=2&interval=10`);
      clients.push(countdown);
      assert.is(await within("the countdown to end", countdown.ended), true, "a countdown needs no database");

      relay.thaw();
      await postMessage(url, "after");
      await child.waitFor(/hub: the database answers again\n/);
      await until("the stream to get the message after", () => texts(stream).length >= 2);
      assert.equal(texts(stream), ["before", "after"]);
      // The refused POST took no id: its transaction never committed.
      assert.equal(stream.messages.filter((m) => m.event === "message").map((m) => m.id), ["1", "2"]);
      const admin = postgres(databaseUrl, { max: 1, onnotice: () => {} });
      try {
        const [row] = await admin`select count(*)::int as stored from hub_events
          where data->>'text' = 'while frozen'`;
        assert.is(row!.stored, 0, "the refused message is not in the table");
      } finally {
        await admin.end({ timeout: 1 });
      }
    } finally {
      relay.thaw();
      await relay.cut();
    }
  });

  test("PostgreSQL itself under SIGSTOP: a POST gets 503 at the query deadline; a listener whose tries each wait out the connect timeout tries at most 8 s apart, and listens again soon after", async () => {
    const cluster = await ThrowawayPostgres.start();
    // Between the server and its database only to count the server's connection attempts.
    const relay = new DatabaseRelay(cluster.url);
    await relay.open();
    const admin = postgres(cluster.url, { max: 1, onnotice: () => {} });
    try {
      const cutOff = run(["--database", relay.url]);
      const url = await started(cutOff);
      const [listening] = await admin`select pid from pg_stat_activity where query ilike 'listen %'`;
      assert.ok(listening, "the server's listening connection");
      // Another process on the same database, reached directly: it posts after the outage.
      const otherUrl = await started(run(["--database", cluster.url]));
      await admin.end({ timeout: 1 });
      const stream = new SseClient(`${url}room/stream`);
      clients.push(stream);
      await stream.next("presence");
      await postMessage(url, "before");
      await stream.next("message");

      // The whole database frozen: a POST is answered 503 at the deadline, not when it wakes.
      cluster.freeze(cluster.everyProcess);
      const refused = await post(url, "while frozen", QUERY_DEADLINE_MS + DEADLINE_MS);
      assert.equal([refused.status, refused.body], [503, "The database did not answer within 5 seconds; try again in a moment.\n"]);
      cluster.thaw();
      await postMessage(url, "after the freeze");
      await stream.next("message");

      // Now its listening connection is lost (its backend ends) while the database takes no new
      // connection (the postmaster stopped): each try to listen again waits out the connect
      // timeout. docs/postgres.md: the pauses grow to 8 s, counted from the start of the last
      // try, so a try that waited does not lengthen the next pause.
      const triesBefore = relay.opened.length;
      cluster.freeze([cluster.postmaster]);
      process.kill(Number(listening.pid), "SIGTERM");
      await cutOff.waitFor(/hub: lost the database connection/);
      const lostAt = performance.now();
      const tries = () => relay.opened.slice(triesBefore);
      // Enough tries to reach the longest pause: 0.25 s, then 0.5, 1, 2 and 4 s, each shorter than
      // a try's wait (so the next try follows it at once), then 8 s.
      const TRIES = 6;
      for (let k = 1; k <= TRIES; k++) {
        const from = tries()[k - 2] ?? lostAt;
        const limit = from + (k === 1 ? DEADLINE_MS : RECONNECT_MAX_MS + MARGIN_MS) - performance.now();
        await until(`try ${k} to listen again, at most ${RECONNECT_MAX_MS} ms (and ${MARGIN_MS} ms of margin) after the last`,
          () => tries().length >= k, Math.max(0, limit));
      }
      const gaps = tries().slice(1, TRIES).map((at, k) => Math.round(at - tries()[k]!));
      assert.ok(gaps.every((gap) => gap <= RECONNECT_MAX_MS + MARGIN_MS), `gaps between tries: ${gaps.join(", ")} ms`);
      assert.not.match(cutOff.output, /hub: listening again after/, "every try waited: the database took no connection");

      // Back: a message posted through the other process reaches this one's stream, within one
      // pause of the return (the try under way when it returns is answered, or the next one is).
      cluster.thaw();
      const returnedAt = performance.now();
      await postMessage(otherUrl, "after the outage");
      await until("the stream to get the message posted through the other process",
        () => texts(stream).includes("after the outage"), RECONNECT_MAX_MS + MARGIN_MS);
      const tookMs = performance.now() - returnedAt;
      await cutOff.waitFor(/hub: listening again after [\d.]+ s; caught up from the table\n/);
      assert.equal(texts(stream), ["before", "after the freeze", "after the outage"], `took ${Math.round(tookMs)} ms`);
    } finally {
      cluster.thaw();
      await admin.end({ timeout: 1 }).catch(() => {});
      await relay.cut();
      await cluster.stop();
    }
  });

  test("PostgreSQL's \"too many clients\" is a 503 with a sentence, not a 500", async () => {
    const databaseUrl = await database();
    // Through a relay that answers new connections as a full PostgreSQL does: a superuser, as
    // the tests' is, has slots of its own, so a real "too many clients" is hard to reach.
    const relay = new DatabaseRelay(databaseUrl);
    await relay.open();
    const admin = postgres(databaseUrl, { max: 1, onnotice: () => {} });
    try {
      const child = run(["--database", relay.url]);
      const url = await started(child);
      await postMessage(url, "before");
      // The server's pool loses its connections, so its next query needs a new one; the
      // listener keeps its own.
      relay.full = true;
      await admin`select pg_terminate_backend(pid) from pg_stat_activity
        where datname = current_database() and pid <> pg_backend_pid() and query not ilike 'listen %'`;
      // A POST may still meet a connection that is closing ("not answering"): the pool keeps
      // several, so try a few times until one needs a new connection.
      const TRIES = 6;
      let refused = await post(url, "one too many");
      for (let k = 1; k < TRIES && refused.body.startsWith("The database is not answering"); k++) {
        refused = await post(url, "one too many");
      }
      assert.is(refused.status, 503, refused.body);
      const sentence = "The database has no connection to spare right now (too many clients);" +
        " try again in a moment.\n";
      assert.is(refused.body, sentence);
    } finally {
      await admin.end({ timeout: 1 });
      await relay.cut();
    }
  });

  test("a hub that is closed (the shutdown grace) answers 503 with a sentence", async () => {
    const hub = await PostgresHub.open(await database(), () => {});
    await hub.close();
    const error = await hub.publish("room", "message", { text: "too late" }).catch((e) => e);
    assert.instance(error, RequestError);
    assert.is((error as RequestError).status, 503);
    assert.is((error as RequestError).message, "This server is stopping; try again in a moment.");
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

  test("an event announced by its id is read in order, even when newer ones are in the table already", async () => {
    const databaseUrl = await database();
    const listener = await PostgresHub.open(databaseUrl, () => {});
    const writer = postgres(databaseUrl, { max: 1, onnotice: () => {} });
    const left = new AbortController();
    try {
      const events = listener.subscribe("room:race", { signal: left.signal });
      const first = events.next();
      await until("the listener to subscribe", () => listener.subscribers("room:race") === 1);
      // As another process writes them: event 1, announced by its id alone (as a large one is),
      // and event 2, both in the table before the listener reads it; one transaction makes
      // that certain. The listener must read 1, then 2, not only the newest.
      await writer.begin(async (tx) => {
        await tx`insert into hub_topics (topic, last_id) values ('room:race', 2)`;
        for (const [id, text] of [[1, "announced by its id"], [2, "newer"]] as const) {
          await tx`insert into hub_events (topic, id, type, data)
            values ('room:race', ${id}, 'message', ${tx.json({ text })})`;
        }
        await tx`select pg_notify('hub_events', ${JSON.stringify({ topic: "room:race", id: 1 })})`;
      });
      const received = [await within("event 1", first), await within("event 2", events.next())];
      assert.equal(received.map(({ value }) => (value as { id: number }).id), [1, 2]);
    } finally {
      left.abort();
      await writer.end({ timeout: 1 });
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
      ["not a url", /^--database must be a URL such as postgres:\/\/postgres:countdown@localhost:5432\/postgres\.$/],
      [refused.href, /^Cannot reach PostgreSQL at 127\.0\.0\.1:1: the connection was refused\. Is the server running\?$/],
      [wrongPassword.href, /^PostgreSQL at 127\.0\.0\.1:\d+ refused the login of user "postgres": check the user and password in --database\.$/],
    ];
    for (const [value, sentence] of cases) {
      for (const args of [["--database", value], ["--workers", "2", "--database", value]]) {
        const child = run(args);
        assert.is(await within("the server to give up", child.exited), 1, args.join(" "));
        assert.match(child.output.trim(), sentence);
        assert.not.ok(child.output.includes("not-the-password"), "the password is not repeated");
      }
    }
  });

  test("DATABASE_URL stands for --database", async () => {
    const databaseUrl = await database();
    const child = runServer(["--port", "0", "--host", "127.0.0.1"], { DATABASE_URL: databaseUrl });
    await started(child);
    await child.waitFor(/The room and the toasts live in PostgreSQL at /);
  });
});
