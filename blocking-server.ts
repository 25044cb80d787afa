/**
 * blocking-server.ts: lesson 1's twin, the same countdown served the way gunicorn's sync workers
 * serve it, as in the WSGI half of the post "Why I am excited about ASGI & Django" (seed 001);
 * its log writes the lines of the post's gunicorn log.
 *
 * This file runs as two programs. Run plainly, it is the arbiter: the process that owns the
 * port. It runs this same file again with --worker for each worker process, and hands each
 * connection, one at a time, to an idle worker. A worker serves one request from its first byte
 * to its last, and the countdown's sleep blocks its whole thread, like Python's time.sleep(1):
 * while one tab counts, that worker does nothing else, not even tell the arbiter it is alive.
 * After --timeout seconds of silence the arbiter kills it, the stream is cut, and a fresh
 * worker serves whoever was waiting. Compare server.ts, where one process serves every tab.
 *
 * Run it:    npx -y tsx blocking-server.ts   (or: node blocking-server.ts on Node 22.18+ / 24)
 * Then try:
 *   - open http://localhost:8001/ in a tab: it counts down, like server.ts does (the page
 *     asks for no favicon, which would wait in the queue behind the tab's own stream);
 *   - refresh that tab: it freezes until WORKER TIMEOUT (about 30 s), as under gunicorn: the
 *     browser keeps the old page's stream open until the new page comes, holding the worker;
 *   - open a second tab: it stays blank, because the only worker is busy with the first;
 *   - wait: the log says WORKER TIMEOUT, the first tab stops at 70 and says "reconnecting", and
 *     the second tab loads at last, served by a new worker. Every 31 s or so the next kill comes,
 *     as the tabs take turns;
 *   - curl -N http://localhost:8001/sse/ shows the cut: the events stop at 70, curl exits 18;
 *   - --workers 2 lets two tabs count at once; a third tab waits;
 *   - --timeout 0 lets one tab count down to "Blastoff!" while every other tab waits;
 *   - nc localhost 8001, typing nothing: a connection that sends no request holds a worker
 *     like a stream does, until WORKER TIMEOUT, with a line saying the head never came;
 *   - past --backlog waiting connections, the next gets 503 and its sentence.
 *
 * The later lessons: lesson 2's blocking twin is served here too (lessons/fanout.ts says what
 * to try). Lessons 3 and 4 have none: a worker blocked in one stream hears nothing of a message
 * posted to another, and a WebSocket would hold a worker for as long as it stays open, so their
 * paths answer 404 (see docs/room.md and docs/ws.md). The pages come without the toasts.
 */

import type { RequestListener, ServerResponse } from "node:http";
import net from "node:net";
import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
// Lesson 1's pieces, and lesson 2's blocking half: nothing of the later lessons.
import {
  allowEveryOrigin, clientName, countdownEvent, createApp, DEFAULT_HOST, exitWith, flagNumber,
  HEARTBEAT, HEARTBEAT_MS, listen, readCountdownOptions, readFlags, refuse, RequestError,
  serverEvent, SSE_HEADERS, urlsFor, type Handler, type Routes,
} from "./server.ts";
import { selfOrigin, sleepSync, syncAggregated, syncApi } from "./lessons/fanout.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

/** One more than server.ts's port, so both servers run side by side. */
const DEFAULT_PORT = 8001;
/** gunicorn's default: one worker process, serving one request at a time. */
const DEFAULT_WORKERS = 1;
const WORKERS_RANGE = { min: 1, max: 64 };
/** gunicorn's default: a worker silent this many seconds is stuck, and gets killed. */
const DEFAULT_TIMEOUT_S = 30;
const TIMEOUT_RANGE_S = { min: 0.1, max: 86_400 };
/** gunicorn's --backlog is the kernel's queue (2048); in ours each waiting connection holds a
 * file of this process, whose limit is often 1024. Past it, a 503. */
const DEFAULT_BACKLOG = 100;
const BACKLOG_RANGE = { min: 1, max: 1000 };
/** How long a refused client may take to read its 503 and hang up before it is cut. */
const REFUSED_LINGER_MS = 2000;
/** How long the arbiter's loop sleeps between looks at its workers, as gunicorn's does, or a
 * quarter of --timeout when that is shorter. Idle workers say "alive" as often. */
const ARBITER_SLEEP_MS = 1000;
/** Until its first message a worker gets at least this long: starting Node and loading
 * TypeScript can outlast a short timeout. */
const BOOT_ALLOWANCE_MS = 10_000;
/** The argument with which the arbiter runs this file as a worker; `ps` shows it too. */
const WORKER_FLAG = "--worker";
const THIS_FILE = fileURLToPath(import.meta.url);

// ─── The stream ──────────────────────────────────────────────────────────────
// The sync twin of server.ts's `countdown`: the same schedule and the same events, but a plain
// generator whose sleep holds the thread. While it sleeps, this process runs nothing else: no
// other request, no timer, no heartbeat. `sleepSync(ms)` (lesson 2, lessons/fanout.ts) is
// Atomics.wait on an integer that nobody changes: the thread stops for `ms`.

/** Yields one countdown's messages, tick k due at start + k × interval as in server.ts. It
 * cannot notice a client that hangs up: only a failed write tells (see serveCountdown). */
function* countdown(from: number, interval: number, heartbeat = HEARTBEAT_MS) {
  const start = performance.now();
  for (let i = from; i >= 0; i--) {
    yield countdownEvent(i);
    if (i === 0) return;
    const due = start + (from - i + 1) * interval;
    while (due - performance.now() > heartbeat) { sleepSync(heartbeat); yield HEARTBEAT; }
    sleepSync(due - performance.now());
  }
}

/** Writes one message and pushes it to the kernel now, while the thread is blocked. False when
 * the client has gone: the kernel refused the bytes and the socket is errored. */
function sendNow(res: ServerResponse, message: string): boolean {
  res.write(message);
  // node:http corks the socket until the next tick, which never comes while this thread sleeps;
  // the socket's own uncork, since on Node 22+ res.uncork() would hold back every later chunk.
  res.socket?.uncork();
  return res.socket ? !res.socket.destroyed && res.socket.errored === null : false;
}

// ─── Handlers and routes ─────────────────────────────────────────────────────

/** Streams one countdown to one client, holding this worker, thread and all, until the end. */
const serveCountdown: Handler = (req, res, url, { heartbeat }) => {
  allowEveryOrigin(res);
  const { from, interval } = readCountdownOptions(req, url);
  if (from < 0) return void res.writeHead(204).end(); // over already, as in server.ts
  res.writeHead(200, SSE_HEADERS);
  // The `server` event, whose pid the page shows, goes with the first message: one stream,
  // since a sync worker never holds more.
  let serverNews = serverEvent(process.pid, 1, process.memoryUsage.rss());
  let eventsSent = 0;
  for (const message of countdown(from, interval, heartbeat)) {
    if (!sendNow(res, serverNews + message)) {
      const why = "the client left, so a write failed; this worker is free";
      const events = `${eventsSent} event${eventsSent === 1 ? "" : "s"}`;
      return log("INFO", `Stream stopped after ${events}: ${why}`);
    }
    serverNews = "";
    if (message !== HEARTBEAT) eventsSent++;
  }
  res.end();
};

/** A later lesson's path with no blocking twin: 404, and the sentence that says why. */
const noTwin = (sentence: string): Handler => () => { throw new RequestError(404, sentence); };
const noRoom = noTwin("The room is served by server.ts only: a blocking worker cannot push" +
  " (see docs/room.md).");
const noWebSocket = noTwin("WebSockets are served by server.ts only: each one would hold a" +
  " blocking worker for as long as it stays open (see docs/ws.md).");

/** What a worker adds to lesson 1's routes (its page stays as it is). `onlyWorker`: this worker
 * is the server's one, so a call to itself deadlocks (lesson 2 says so). The wall (/wall) has no
 * twin: server.ts serves it, and its right column streams from here. */
function workerRoutes(origin: string, onlyWorker: boolean): Routes {
  return {
    "/sse/": { GET: serveCountdown },
    "/api/": { GET: syncApi((line) => log("INFO", line)) },
    "/api/aggregated/": { GET: syncAggregated(origin, onlyWorker) },
    "/room/": { GET: noRoom, HEAD: noRoom },
    "/room/messages": { GET: noRoom, POST: noRoom },
    "/room/stream": { GET: noRoom },
    "/room/messages/:id": { GET: noRoom, PUT: noRoom, DELETE: noRoom },
    "/ws/notifications": { GET: noWebSocket },
  };
}

// ─── The log, in gunicorn's format ───────────────────────────────────────────
// `[2026-11-21 23:40:01 +0000] [pid] [LEVEL] message`, local time and its offset from UTC:
// readers (and the workshop, beside the wall) hold it against gunicorn's real log.

function log(level: "INFO" | "ERROR" | "CRITICAL", message: string, pid = process.pid): void {
  const east = -new Date().getTimezoneOffset(); // minutes ahead of UTC
  // toISOString prints UTC; shifted by `east` it prints the local time, and from `east`
  // alone the offset's hours and minutes ("05:30" for +0530).
  const iso = (ms: number) => new Date(ms).toISOString();
  const time = iso(Date.now() + east * 60_000).slice(0, 19).replace("T", " ");
  const zone = (east < 0 ? "-" : "+") + iso(Math.abs(east) * 60_000).slice(11, 16).replace(":", "");
  console.log(`[${time} ${zone}] [${pid}] [${level}] ${message}`);
}

// ─── The worker ──────────────────────────────────────────────────────────────
// A worker is this file, run by the arbiter with --worker. Over the IPC channel `fork` opened it
// says "ready" when it can take a connection, "head" when a request's head has come, and "alive"
// from a timer, as gunicorn's workers notify() theirs, but only between connections: from taking
// one until it closes, a worker is busy, reading the request's head or blocked in its answer, and
// says nothing. A client that connects and sends nothing is then a stuck request too, and
// --timeout ends it, as it ends a gunicorn sync worker stuck reading one.

type WorkerMessage = "ready" | "head" | "alive";

/** Runs `then` after the next round of I/O. A client that left while it waited in the queue left
 * its request and its goodbye (FIN, or RST) together in the kernel; Node reads the request first
 * and only sees the goodbye on its next read, one round of the event loop later. */
const afterNextRead = (then: () => void) => setImmediate(() => setImmediate(then));

/** Serves what the arbiter hands over; says it is alive every `notifyEveryMs`. */
function runWorker(notifyEveryMs: number, origin: string, workers: number): void {
  const usage = `${WORKER_FLAG} is how the arbiter starts its workers; run the file without it.`;
  if (!process.send) exitWith(2, usage);
  const tell = (message: WorkerMessage) => process.send?.(message);

  // Lesson 1's app, no later lesson installed: its router logs only what went wrong.
  const app = createApp({ log: (line) => log("ERROR", line), lessonsHere: true });
  Object.assign(app.routes, workerRoutes(origin, workers === 1));
  // The router createApp added, called by this worker's own listener instead.
  const [router] = app.server.listeners("request") as RequestListener[];
  app.server.removeAllListeners("request");
  app.server.on("request", (req, res) => {
    tell("head");
    const client = clientName(req.socket); // read now: a closed socket forgets its address
    // gunicorn's sync worker serves one request per connection, so the next request queues
    // at the arbiter again. Every answer says so, a 404 too.
    res.setHeader("Connection", "close");
    // A request whose client has left while it waited is not served: nobody would read it.
    afterNextRead(() => {
      if (!req.socket.destroyed) return router!(req, res);
      const why = "the client left while it waited; this worker is free";
      log("INFO", `Not serving ${req.method} ${req.url} from ${client}: ${why}`);
    });
  });

  // The arbiter sends each connection with its message: Node passes the socket's file
  // descriptor over the IPC channel, and the app serves it as if it had accepted it itself.
  let busy = false;
  process.on("message", (message, socket) => {
    if (message !== "connection" || !(socket instanceof net.Socket)) return;
    busy = true;
    socket.once("close", () => { busy = false; tell("ready"); });
    app.server.emit("connection", socket);
  });
  setInterval(() => busy || tell("alive"), notifyEveryMs);
  // The arbiter has gone: nobody will hand this worker connections or reap it.
  process.once("disconnect", () => process.exit(0));
  tell("ready");
}

// ─── The arbiter ─────────────────────────────────────────────────────────────
// The main process: it accepts connections but reads none of their bytes, queues them in
// order, and gives each to an idle worker. It keeps the right number of workers alive and
// kills the ones that fall silent.

type Connection = { client: string; since: number };

interface Worker {
  process: ChildProcess; pid: number;
  /** When it last said anything (performance.now()): a blocked worker says nothing. */
  lastHeard: number;
  /** "booting" until its first "ready"; "killed" by the arbiter, so that its exit is expected. */
  state: "booting" | "idle" | "busy" | "killed";
  /** The connection it was handed last, and whether that connection's request head came. */
  serving?: Connection & { head: boolean };
  /** Set once its process has ended; `state` keeps what it was then. */
  exited?: { code: number | null; signal: NodeJS.Signals | null };
}

/** `logged`: it found every worker busy and was logged as waiting, so its hand-out is too. */
type WaitingConnection = Connection & { socket: net.Socket; logged: boolean };

const connections = (n: number) => `${n} connection${n === 1 ? "" : "s"}`;

class Arbiter {
  workers = new Set<Worker>();
  waiting: WaitingConnection[] = [];
  listeners: net.Server[] = [];
  stopping = false;
  exitCode = 0;
  origin = ""; // where the workers call this server (lesson 2), known once it listens
  private numWorkers: number;
  private timeoutMs: number;
  private backlog: number;
  /** Connections refused since the queue filled; undefined while it has room. */
  private refused: number | undefined;
  /** ARBITER_SLEEP_MS, or a quarter of --timeout when that is shorter (0 is no timeout). */
  private checkEveryMs: number;
  private wake = () => {};

  constructor(numWorkers: number, timeoutSeconds: number, backlog: number) {
    this.numWorkers = numWorkers;
    this.backlog = backlog;
    this.timeoutMs = timeoutSeconds * 1000;
    this.checkEveryMs = Math.min(ARBITER_SLEEP_MS, this.timeoutMs / 4 || ARBITER_SLEEP_MS);
  }

  /** Until a signal: sleep, reap the dead, murder the silent, replace them. Then shut down. */
  async run(): Promise<void> {
    this.manageWorkers();
    while (!this.stopping) {
      await this.sleep();
      this.reapWorkers();
      this.murderWorkers();
      this.manageWorkers();
    }
    await this.stop();
    log("INFO", "Shutting down: Master");
    process.exit(this.exitCode);
  }

  /** Waits a moment, or less when a worker exits or a signal comes (gunicorn sleeps on a pipe). */
  private sleep(): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, this.checkEveryMs);
      this.wake = () => { clearTimeout(timer); resolve(); };
    });
  }

  /** Forks this file with --worker; fork() passes on the arbiter's Node options (tsx's loader). */
  spawnWorker(): void {
    const settings = [String(this.checkEveryMs), this.origin, String(this.numWorkers)];
    const child = fork(THIS_FILE, [WORKER_FLAG, ...settings]);
    const worker: Worker =
      { process: child, pid: child.pid ?? 0, lastHeard: performance.now(), state: "booting" };
    this.workers.add(worker);
    // gunicorn's worker logs this itself; a Node child is slow to start, so the arbiter does.
    log("INFO", `Booting worker with pid: ${worker.pid}`, worker.pid);
    child.on("message", (message) => this.heard(worker, message as WorkerMessage));
    child.on("exit", (code, signal) => { worker.exited = { code, signal }; this.wake(); });
    // An "error" event with no listener would end the arbiter. A send to a worker that just
    // died fails this way, and there is nothing to do: reapWorkers handles its exit.
    child.on("error", () => {});
  }

  /** Kills every worker silent for longer than the timeout: it is stuck inside a request. */
  murderWorkers(): void {
    if (this.timeoutMs === 0) return;
    const now = performance.now();
    for (const worker of this.workers) {
      const limit = Math.max(this.timeoutMs, worker.state === "booting" ? BOOT_ALLOWANCE_MS : 0);
      if (worker.state === "killed" || worker.exited || now - worker.lastHeard <= limit) continue;
      log("CRITICAL", `WORKER TIMEOUT (pid:${worker.pid})`);
      // gunicorn says no more; this line says why, when the client never sent its request.
      if (worker.state === "busy" && worker.serving && !worker.serving.head) {
        const waited = ((now - worker.serving.since) / 1000).toFixed(1);
        const why = `waited ${waited} s for the head of a request from ${worker.serving.client}`;
        log("INFO", `Worker ${worker.pid} ${why}, which never came`);
      }
      this.kill(worker);
    }
  }

  /** SIGKILL: a worker blocked in sleepSync runs no JavaScript, so a gentler signal's handler
   * would run only after its stream, and its "Worker exiting" line is reapWorkers' to write. */
  private kill(worker: Worker): void {
    worker.state = "killed";
    worker.process.kill("SIGKILL");
  }

  /** Forgets the workers that have exited, logging each exit under the worker's pid. */
  reapWorkers(): void {
    for (const worker of this.workers) {
      if (!worker.exited) continue;
      this.workers.delete(worker);
      // A Ctrl-C in a terminal reaches every process of the group, workers included: expected too.
      if (worker.state === "killed" || this.stopping) {
        log("INFO", `Worker exiting (pid: ${worker.pid})`, worker.pid);
        continue;
      }
      const { code, signal } = worker.exited;
      log("ERROR", `Worker (pid:${worker.pid}) exited with ${signal ?? `code ${code}`}`);
      if (worker.state === "booting") this.stopFor("Worker failed to boot.", 3);
    }
  }

  /** Starts workers until there are as many as asked for. */
  manageWorkers(): void {
    while (!this.stopping && this.workers.size < this.numWorkers) this.spawnWorker();
  }

  /** A new connection joins the queue, unread: whichever worker takes it reads the request. */
  accept(socket: net.Socket): void {
    if (this.waiting.length >= this.backlog) return this.refuse(socket);
    const client = clientName(socket);
    // Only a connection that finds every worker busy is news: it waits, and its hand-out is
    // logged too. One that finds an idle worker is handed out at once, without a line.
    const logged = ![...this.workers].some((worker) => this.isIdle(worker));
    this.waiting.push({ socket, client, since: performance.now(), logged });
    const waits = `the connection from ${client} waits (${this.waiting.length} waiting)`;
    if (logged) log("INFO", `No idle worker: ${waits}`);
    this.handOutConnections();
  }

  /** The queue is full: a 503 and its sentence, and one line when the queue fills. */
  private refuse(socket: net.Socket): void {
    const waiting = connections(this.waiting.length);
    const full = `Backlog full: ${waiting} waiting for a worker (--backlog)`;
    if (this.refused === undefined) log("ERROR", `${full}; new ones get 503 until one is taken`);
    this.refused = (this.refused ?? 0) + 1;
    // Ignore its errors (it is refused anyway); read and drop its request, so that the 503 is not
    // lost to a reset; then hang up.
    socket.on("error", () => {});
    socket.resume();
    socket.setTimeout(REFUSED_LINGER_MS, () => socket.destroy());
    refuse(socket, 503, `Every worker is busy, with ${waiting} waiting already;` +
      " try again in a moment.");
  }

  /** Gives the longest-waiting connections to idle workers, one connection per worker. */
  private handOutConnections(): void {
    for (const worker of this.workers) {
      if (this.waiting.length === 0) return;
      if (!this.isIdle(worker)) continue;
      const { socket, client, since, logged } = this.waiting.shift()!;
      worker.state = "busy";
      // Busy from now: its silence counts from the hand-out, whether the request came or not.
      worker.lastHeard = performance.now();
      worker.serving = { client, since: worker.lastHeard, head: false };
      // The socket's file descriptor travels over the IPC channel; this process closes its copy.
      worker.process.send("connection", socket);
      if (!logged) continue;
      const waited = ((performance.now() - since) / 1000).toFixed(1);
      const takes = `Worker ${worker.pid} takes the connection from ${client} after ${waited} s`;
      log("INFO", `${takes} (${this.waiting.length} waiting)`);
    }
    if (this.refused !== undefined && this.waiting.length < this.backlog) {
      log("INFO", `Backlog has room again; ${connections(this.refused)} got 503 meanwhile`);
      this.refused = undefined;
    }
  }

  private isIdle(worker: Worker): boolean {
    return worker.state === "idle" && !worker.exited && worker.process.connected;
  }

  /** Every message is a heartbeat; "ready" also means the worker can take a connection. */
  private heard(worker: Worker, message: WorkerMessage): void {
    worker.lastHeard = performance.now();
    if (message === "head" && worker.serving) worker.serving.head = true;
    if (message !== "ready" || worker.state === "killed") return;
    worker.state = "idle";
    this.handOutConnections();
  }

  /** Logs why and leaves the main loop: on a signal, as gunicorn does, or with an exit code and
   * an ERROR line when a worker fails to boot. */
  stopFor(reason: string, exitCode = 0): void {
    if (this.stopping) return;
    log(exitCode ? "ERROR" : "INFO", reason);
    this.exitCode = exitCode;
    this.stopping = true;
    this.wake();
  }

  /** Stops taking connections, drops the waiting ones, kills the workers, waits for their exits. */
  async stop(): Promise<void> {
    for (const listener of this.listeners) listener.close();
    for (const { socket } of this.waiting.splice(0)) socket.destroy();
    for (const worker of this.workers) if (!worker.exited) this.kill(worker);
    while (this.workers.size > 0) { await this.sleep(); this.reapWorkers(); }
  }
}

// ─── Start-up: flags, listening, stopping ────────────────────────────────────

/** --timeout: 0 (never) or seconds, fractions too, which flagNumber does not read; else exit 2. */
function timeoutSeconds(text: string | undefined): number {
  if (text === undefined || text === "") return DEFAULT_TIMEOUT_S;
  const seconds = /^\d{1,6}(\.\d{1,3})?$/.test(text) ? Number(text) : NaN;
  const { min, max } = TIMEOUT_RANGE_S;
  if (seconds === 0 || (seconds >= min && seconds <= max)) return seconds;
  const range = `a number of seconds from ${min} to ${max}, such as 30 or 0.5`;
  exitWith(2, `--timeout must be 0 (never) or ${range}.`);
}

const STRING = { type: "string" } as const;
const FLAGS = { port: STRING, host: STRING, workers: STRING, timeout: STRING, backlog: STRING,
  help: { type: "boolean", default: false } } as const;

const HELP = `Usage: npx tsx blocking-server.ts [--port N] [--host H] [--workers N] [--timeout S]
                                      [--backlog N]

Serves the countdown of server.ts the way gunicorn's sync workers do: an arbiter
process hands each connection to a worker process, busy until its response ends.

  --port N      Listens on this TCP port (env PORT; default ${DEFAULT_PORT}).
  --host H      Listens on this address (env HOST; default ${DEFAULT_HOST}, meaning
                127.0.0.1 and ::1). Use 0.0.0.0 to share it on your LAN at a workshop.
  --workers N   Starts this many worker processes, each serving one request at a time
                (env WEB_CONCURRENCY; default ${DEFAULT_WORKERS}).
  --timeout S   Workers silent for more than this many seconds are killed and restarted.
                0 disables. Fractions such as 0.5 are allowed (default ${DEFAULT_TIMEOUT_S}).
  --backlog N   The most connections that wait for a worker; past it a connection gets 503
                (default ${DEFAULT_BACKLOG}).
  --help        Shows this help.`;

async function main() {
  const flags = readFlags(FLAGS, HELP);
  const port = flagNumber("port", flags.port, "PORT", DEFAULT_PORT, { min: 0, max: 65535 });
  const host = flags.host || process.env.HOST || DEFAULT_HOST;
  const workers = flagNumber(
    "workers", flags.workers, "WEB_CONCURRENCY", DEFAULT_WORKERS, WORKERS_RANGE);
  const timeout = timeoutSeconds(flags.timeout);
  const backlog = flagNumber("backlog", flags.backlog, "", DEFAULT_BACKLOG, BACKLOG_RANGE);

  const arbiter = new Arbiter(workers, timeout, backlog);
  // pauseOnConnect: the arbiter never reads a byte, so a connection reaches its worker untouched.
  const server = net.createServer({ pauseOnConnect: true }, (socket) => arbiter.accept(socket));
  arbiter.listeners = await listen(server, host, port, true);
  arbiter.origin = selfOrigin(server);
  const { port: actualPort } = server.address() as net.AddressInfo;
  const urls = urlsFor(host, actualPort).map((url) => url.replace(/\/$/, ""));
  log("INFO", "Starting blocking-server.ts (the sync twin of server.ts)");
  log("INFO", `Listening at: ${urls.join(" and ")} (${process.pid})`);
  log("INFO", "Using worker: sync");

  process.on("SIGINT", () => arbiter.stopFor("Handling signal: int"));
  process.on("SIGTERM", () => arbiter.stopFor("Handling signal: term"));
  // However the arbiter ends, even by an error, it takes its workers with it.
  process.on("exit", () => arbiter.workers.forEach((worker) => worker.process.kill("SIGKILL")));
  await arbiter.run();
}

// Started by the arbiter with --worker and its settings, this file is a worker; else the arbiter.
const [, , flag, notifyEveryMs, origin = "", workers] = process.argv;
if (flag === WORKER_FLAG) runWorker(Number(notifyEveryMs), origin, Number(workers));
else await main();
