/**
 * blocking-server.ts: the same countdown, served the way gunicorn's sync workers serve it.
 *
 * An arbiter process owns the port and hands each connection, one at a time, to
 * a worker process. A worker serves one request from its first byte to its last,
 * and the countdown's sleep blocks its whole thread, like Python's time.sleep(1):
 * while one tab counts, that worker does nothing else, not even tell the arbiter
 * it is alive. After --timeout seconds of silence the arbiter kills it, the
 * stream is cut, and a fresh worker serves whoever was waiting. Compare
 * server.ts, where one process serves every tab.
 *
 * Run it:    npx -y tsx blocking-server.ts   (or: node blocking-server.ts on Node 22.18+ / 24)
 * Then try:
 *   - open http://localhost:8001/ in a tab: it counts down, like server.ts does;
 *   - open a second tab: it stays blank, because the only worker is busy with the first;
 *   - wait: the log says WORKER TIMEOUT, the first tab stops at 70 and says
 *     "reconnecting", and the second tab loads at last: a new worker served it.
 *     Every 31 seconds or so the next kill comes, as the tabs take turns;
 *   - curl -N http://localhost:8001/sse/ shows the cut: the events stop at 70, curl exits 18;
 *   - --workers 2 lets two tabs count at once; a third tab waits;
 *   - --timeout 0 lets one tab count down to "Blastoff!" while every other tab waits.
 *
 * Lesson 2's blocking twin is served here too (lessons/fanout.ts says what to try):
 * curl http://localhost:8001/api/aggregated/ deadlocks the only worker until a 504.
 *
 * Lesson 3's room has no blocking twin: a worker blocked in one stream hears
 * nothing of a message posted to another worker, so /room/ answers 404 here
 * (the README's lesson 3 says why). Nor do the toasts: its pages are served
 * without them. Lesson 4's WebSockets have none either: each socket would
 * hold a whole worker for as long as it stays open.
 */

import type { ServerResponse } from "node:http";
import net from "node:net";
import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
// Lesson 1's pieces, and lesson 2's blocking half: nothing of the later lessons.
import {
  allowEveryOrigin, clientName, countdownEvent, createApp, DEFAULT_HOST, exitWith, flagNumber,
  HEARTBEAT, HEARTBEAT_MS, listen, readCountdownOptions, readFlags, RequestError, serverEvent,
  SSE_HEADERS, urlsFor, type Handler, type Routes,
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

/** How long the arbiter's loop sleeps between looks at its workers, as gunicorn's does. */
const ARBITER_SLEEP_MS = 1000;
/**
 * Until its first message a worker gets at least this long: starting Node and
 * loading TypeScript can outlast a short timeout.
 */
const BOOT_ALLOWANCE_MS = 10_000;

/** The argument that makes this file run as a worker; `ps` shows the workers with it. */
const WORKER_FLAG = "--worker";
const THIS_FILE = fileURLToPath(import.meta.url);

// ─── The stream ──────────────────────────────────────────────────────────────
//
// The sync twin of server.ts's `countdown`: the same schedule and the same
// events, but a plain generator whose sleep holds the thread. While it sleeps,
// this process runs nothing else: no other request, no timer, no heartbeat.
// (`sleepSync` lives in lessons/fanout.ts, whose lesson 2 makes the same mistake on purpose.)

/**
 * Yields the SSE messages of one countdown: `from`, `from - 1`, ... 0.
 * Tick k is due at start + k × interval, as in server.ts. It cannot notice a
 * client that hangs up: only a failed write tells (see serveCountdown).
 */
function* countdown(from: number, interval: number, heartbeat = HEARTBEAT_MS) {
  const start = performance.now();
  for (let i = from; i >= 0; i--) {
    yield countdownEvent(i);
    if (i === 0) return;
    const due = start + (from - i + 1) * interval;
    while (due - performance.now() > heartbeat) {
      sleepSync(heartbeat);
      yield HEARTBEAT;
    }
    sleepSync(due - performance.now());
  }
}

/**
 * Writes one message while the thread is blocked, and pushes it to the kernel
 * now. Returns false when the client has gone: the kernel refused the bytes
 * and the socket is errored.
 */
function sendNow(res: ServerResponse, message: string): boolean {
  res.write(message);
  const socket = res.socket;
  if (!socket) return false;
  // node:http corks the socket on write and uncorks it on process.nextTick, which never comes
  // while this thread sleeps. The socket's uncork, not res.uncork(): on Node 22+ that one
  // would hold back every later chunk.
  socket.uncork();
  return !socket.destroyed && socket.errored === null;
}

// ─── Handlers and routes ─────────────────────────────────────────────────────

/** Streams one countdown to one client, holding this worker, thread and all, until the end. */
const serveCountdown: Handler = (req, res, url, { heartbeat }) => {
  allowEveryOrigin(res);
  const { from, interval } = readCountdownOptions(req, url);
  if (from < 0) {
    // The browser saw event 0 already; 204 is how SSE says "do not reconnect".
    res.writeHead(204).end();
    return;
  }
  res.writeHead(200, SSE_HEADERS);
  // The page shows which process serves it. A sync worker never holds more than this one stream.
  let status = serverEvent(process.pid, 1, process.memoryUsage.rss());
  let eventsSent = 0;
  for (const message of countdown(from, interval, heartbeat)) {
    if (!sendNow(res, status + message)) {
      const why = "the client left, so a write failed; this worker is free";
      log("INFO", `Stream stopped after ${eventsSent} events: ${why}`);
      return;
    }
    status = "";
    if (message !== HEARTBEAT) eventsSent++;
  }
  res.end();
};

/** A later lesson's path with no blocking twin: 404, and the sentence that says why. */
const noTwin = (sentence: string): Handler => () => {
  throw new RequestError(404, sentence);
};
const noRoom = noTwin("The room is served by server.ts only: a blocking worker cannot push" +
  " (see lesson 3 in the README).");
const noWebSocket = noTwin("WebSockets are served by server.ts only: each one would hold a" +
  " blocking worker for as long as it stays open (see lesson 4 in the README).");

/**
 * What a worker adds to lesson 1's routes (its page stays as it is). The wall
 * (/wall) has no twin: server.ts serves it, and its right column streams from here.
 */
function workerRoutes(origin: string, onlyWorker: boolean): Routes {
  return {
    "/sse/": { GET: serveCountdown },
    "/api/": { GET: syncApi((line) => log("INFO", line)) },
    "/api/aggregated/": { GET: syncAggregated(origin, onlyWorker) },
    // Lessons 3 and 4 have no blocking twin.
    "/room/": { GET: noRoom, HEAD: noRoom },
    "/room/messages": { GET: noRoom, POST: noRoom },
    "/room/stream": { GET: noRoom },
    "/room/messages/:id": { GET: noRoom, PUT: noRoom, DELETE: noRoom },
    "/ws/notifications": { GET: noWebSocket },
  };
}

// ─── The log, in gunicorn's format ───────────────────────────────────────────

type Level = "INFO" | "ERROR" | "CRITICAL";

/** One line as gunicorn writes it: `[2026-11-21 23:40:01 +0000] [pid] [LEVEL] message`. */
function log(level: Level, message: string, pid = process.pid): void {
  console.log(`[${gunicornTime(new Date())}] [${pid}] [${level}] ${message}`);
}

/** Local time with its offset from UTC, the way Python's `%Y-%m-%d %H:%M:%S %z` prints it. */
function gunicornTime(date: Date): string {
  const two = (n: number) => String(n).padStart(2, "0");
  const offset = -date.getTimezoneOffset();
  const hours = two(Math.floor(Math.abs(offset) / 60));
  const zone = `${offset < 0 ? "-" : "+"}${hours}${two(Math.abs(offset) % 60)}`;
  const day = `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())}`;
  const time = `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
  return `${day} ${time} ${zone}`;
}

// ─── The worker ──────────────────────────────────────────────────────────────
//
// A worker talks to the arbiter over the IPC channel `fork` opened: "ready"
// when it can take a connection, and "alive" from a timer, as gunicorn's workers
// notify() theirs. Both come from its event loop, so a worker blocked in a
// stream falls silent by itself.

type WorkerMessage = "ready" | "alive";

/** Serves what the arbiter hands over; says it is alive every `notifyEveryMs`. */
function runWorker(notifyEveryMs: number, origin: string, workers: number): void {
  const usage = `${WORKER_FLAG} is how the arbiter starts its workers; run the file without it.`;
  if (!process.send) exitWith(2, usage);
  const tell = (message: WorkerMessage) => process.send?.(message);

  // Lesson 1's app, no later lesson installed: its router logs only what went wrong.
  const app = createApp({ log: (line) => log("ERROR", line), lessonsHere: true });
  Object.assign(app.routes, workerRoutes(origin, workers === 1));
  // gunicorn's sync worker serves one request per connection, so the next request queues at
  // the arbiter again. Every answer says so, a 404 too, before the router writes it.
  app.server.prependListener("request", (_req, res) => res.setHeader("Connection", "close"));

  process.on("message", (message, socket) => {
    if (message !== "connection" || !(socket instanceof net.Socket)) return;
    tell("alive");
    socket.once("close", () => tell("ready"));
    app.server.emit("connection", socket);
  });
  setInterval(() => tell("alive"), notifyEveryMs);
  // The arbiter has gone: nobody will hand this worker connections or reap it.
  process.once("disconnect", () => process.exit(0));
  tell("ready");
}

// ─── The arbiter ─────────────────────────────────────────────────────────────
//
// The main process: it accepts connections but reads none of their bytes,
// queues them in order, and gives each to an idle worker. It keeps the right
// number of workers alive and kills the ones that fall silent.

interface Worker {
  process: ChildProcess;
  pid: number;
  /** When it last said anything (performance.now()): a blocked worker says nothing. */
  lastHeard: number;
  booted: boolean;
  busy: boolean;
  /** Set when the arbiter killed it, so its exit is expected. */
  killed: boolean;
  exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
}

interface WaitingConnection {
  socket: net.Socket;
  client: string;
  since: number;
  /** Logged as waiting, so its hand-out is logged too. */
  queued: boolean;
}

class Arbiter {
  workers = new Set<Worker>();
  waiting: WaitingConnection[] = [];
  listeners: net.Server[] = [];
  stopping = false;
  exitCode = 0;
  /** Where the workers call this server (lesson 2), known once it listens. */
  origin = "";
  private numWorkers: number;
  private timeoutMs: number;
  /**
   * gunicorn's loop sleeps a second; a short timeout needs closer looks, and
   * idle workers notify as often.
   */
  private checkEveryMs: number;
  private wake = () => {};

  constructor(numWorkers: number, timeoutSeconds: number) {
    this.numWorkers = numWorkers;
    this.timeoutMs = timeoutSeconds * 1000;
    this.checkEveryMs =
      this.timeoutMs > 0 ? Math.min(ARBITER_SLEEP_MS, this.timeoutMs / 4) : ARBITER_SLEEP_MS;
  }

  /** Until a signal: sleep, reap the dead, murder the silent, replace them. */
  async run(): Promise<void> {
    this.manageWorkers();
    while (!this.stopping) {
      await this.sleep();
      this.reapWorkers();
      this.murderWorkers();
      this.manageWorkers();
    }
    await this.stop();
    this.halt();
  }

  /** Waits a moment, or less when a worker exits or a signal comes (gunicorn sleeps on a pipe). */
  private sleep(): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, this.checkEveryMs);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** Forks one worker: this same file with --worker, under the same loader as the arbiter's. */
  spawnWorker(): void {
    const settings = [String(this.checkEveryMs), this.origin, String(this.numWorkers)];
    const child = fork(THIS_FILE, [WORKER_FLAG, ...settings]);
    const worker: Worker = {
      process: child, pid: child.pid ?? 0, lastHeard: performance.now(),
      booted: false, busy: false, killed: false, exited: undefined,
    };
    this.workers.add(worker);
    // gunicorn's worker writes this line itself, right after the fork and before it loads the
    // app. A Node child takes a moment to start, so the arbiter writes it for the worker as
    // soon as the pid exists.
    log("INFO", `Booting worker with pid: ${worker.pid}`, worker.pid);
    child.on("message", (message) => this.heard(worker, message as WorkerMessage));
    child.on("exit", (code, signal) => {
      worker.exited = { code, signal };
      this.wake();
    });
    // A send to a worker that just died fails here; its exit is handled by reapWorkers.
    child.on("error", () => {});
  }

  /** Kills every worker silent for longer than the timeout: it is stuck inside a request. */
  murderWorkers(): void {
    if (this.timeoutMs === 0) return;
    const now = performance.now();
    for (const worker of this.workers) {
      const limit = worker.booted ? this.timeoutMs : Math.max(this.timeoutMs, BOOT_ALLOWANCE_MS);
      if (worker.killed || worker.exited || now - worker.lastHeard <= limit) continue;
      log("CRITICAL", `WORKER TIMEOUT (pid:${worker.pid})`);
      this.kill(worker);
    }
  }

  /**
   * SIGKILL, because a worker blocked in sleepSync runs no JavaScript: a handler
   * for a gentler signal would only run after its stream. For the same reason it
   * cannot log its own "Worker exiting": reapWorkers writes that line for it.
   */
  private kill(worker: Worker): void {
    worker.killed = true;
    worker.process.kill("SIGKILL");
  }

  /** Forgets the workers that have exited, logging each exit under the worker's pid. */
  reapWorkers(): void {
    for (const worker of this.workers) {
      if (!worker.exited) continue;
      this.workers.delete(worker);
      // A Ctrl-C in a terminal reaches every process of the group, workers included: expected too.
      if (worker.killed || this.stopping) {
        log("INFO", `Worker exiting (pid: ${worker.pid})`, worker.pid);
      } else {
        const { code, signal } = worker.exited;
        log("ERROR", `Worker (pid:${worker.pid}) exited with ${signal ?? `code ${code}`}`);
        if (!worker.booted) this.fail("Worker failed to boot.");
      }
    }
  }

  /** Starts workers until there are as many as asked for. */
  manageWorkers(): void {
    while (!this.stopping && this.workers.size < this.numWorkers) this.spawnWorker();
  }

  /** A new connection joins the queue, unread: whichever worker takes it reads the request. */
  accept(socket: net.Socket): void {
    const client = clientName(socket);
    const queued = ![...this.workers].some((worker) => this.isIdle(worker));
    this.waiting.push({ socket, client, since: performance.now(), queued });
    const waits = `the connection from ${client} waits (${this.waiting.length} waiting)`;
    if (queued) log("INFO", `No idle worker: ${waits}`);
    this.handOutConnections();
  }

  /** Gives the longest-waiting connections to idle workers, one connection per worker. */
  private handOutConnections(): void {
    for (const worker of this.workers) {
      if (this.waiting.length === 0) return;
      if (!this.isIdle(worker)) continue;
      const { socket, client, since, queued } = this.waiting.shift()!;
      worker.busy = true;
      // The socket's file descriptor travels over the IPC channel; this process closes its copy.
      worker.process.send("connection", socket);
      if (!queued) continue;
      const waited = ((performance.now() - since) / 1000).toFixed(1);
      const takes = `Worker ${worker.pid} takes the connection from ${client} after ${waited} s`;
      log("INFO", `${takes} (${this.waiting.length} waiting)`);
    }
  }

  private isIdle(worker: Worker): boolean {
    const alive = !worker.killed && !worker.exited && worker.process.connected;
    return worker.booted && !worker.busy && alive;
  }

  /** Every message is a heartbeat; "ready" also means the worker can take a connection. */
  private heard(worker: Worker, message: WorkerMessage): void {
    worker.lastHeard = performance.now();
    if (message !== "ready") return;
    worker.booted = true;
    worker.busy = false;
    this.handOutConnections();
  }

  /** gunicorn's signal handling: log it, then leave the main loop. */
  handleSignal(name: string): void {
    if (this.stopping) return;
    log("INFO", `Handling signal: ${name}`);
    this.stopping = true;
    this.wake();
  }

  private fail(reason: string): void {
    log("ERROR", reason);
    this.exitCode = 3;
    this.stopping = true;
  }

  /** Stops taking connections, drops the waiting ones, kills the workers, waits for their exits. */
  async stop(): Promise<void> {
    for (const listener of this.listeners) listener.close();
    for (const { socket } of this.waiting.splice(0)) socket.destroy();
    for (const worker of this.workers) if (!worker.exited) this.kill(worker);
    while (this.workers.size > 0) {
      await this.sleep();
      this.reapWorkers();
    }
  }

  /** The arbiter's last line. */
  halt(): never {
    log("INFO", "Shutting down: Master");
    process.exit(this.exitCode);
  }
}

// ─── Start-up: flags, listening, stopping ────────────────────────────────────

/** --timeout in seconds: 0 for never, or a number such as 30 or 0.5; a bad one exits with 2. */
function timeoutSeconds(text: string | undefined): number {
  if (text === undefined || text === "") return DEFAULT_TIMEOUT_S;
  const seconds = /^\d{1,6}(\.\d{1,3})?$/.test(text) ? Number(text) : NaN;
  const { min, max } = TIMEOUT_RANGE_S;
  if (seconds === 0 || (seconds >= min && seconds <= max)) return seconds;
  const range = `a number of seconds from ${min} to ${max}, such as 30 or 0.5`;
  exitWith(2, `--timeout must be 0 (never) or ${range}.`);
}

const FLAGS = {
  port: { type: "string" },
  host: { type: "string" },
  workers: { type: "string" },
  timeout: { type: "string" },
  help: { type: "boolean", default: false },
} as const;

const HELP = `Usage: npx tsx blocking-server.ts [--port N] [--host H] [--workers N] [--timeout S]

Serves the countdown of server.ts the way gunicorn's sync workers do: an arbiter
process hands each connection to a worker process, busy until its response ends.

  --port N      Listens on this TCP port (env PORT; default ${DEFAULT_PORT}).
  --host H      Listens on this address (env HOST; default ${DEFAULT_HOST}, meaning
                127.0.0.1 and ::1). Use 0.0.0.0 to share it on your LAN at a workshop.
  --workers N   Starts this many worker processes, each serving one request at a time
                (env WEB_CONCURRENCY; default ${DEFAULT_WORKERS}).
  --timeout S   Workers silent for more than this many seconds are killed and restarted.
                0 disables. Fractions such as 0.5 are allowed (default ${DEFAULT_TIMEOUT_S}).
  --help        Shows this help.`;

async function main() {
  const flags = readFlags(FLAGS, HELP);
  const port = flagNumber("port", flags.port, "PORT", DEFAULT_PORT, { min: 0, max: 65535 });
  const host = flags.host || process.env.HOST || DEFAULT_HOST;
  const workers = flagNumber(
    "workers", flags.workers, "WEB_CONCURRENCY", DEFAULT_WORKERS, WORKERS_RANGE);
  const timeout = timeoutSeconds(flags.timeout);

  const arbiter = new Arbiter(workers, timeout);
  // pauseOnConnect: the arbiter never reads a byte, so a connection reaches its worker untouched.
  const server = net.createServer({ pauseOnConnect: true }, (socket) => arbiter.accept(socket));
  arbiter.listeners = await listen(server, host, port, true);
  arbiter.origin = selfOrigin(server);
  const actualPort = (server.address() as net.AddressInfo).port;
  const urls = urlsFor(host, actualPort).map((url) => url.replace(/\/$/, ""));
  log("INFO", "Starting blocking-server.ts (the sync twin of server.ts)");
  log("INFO", `Listening at: ${urls.join(" and ")} (${process.pid})`);
  log("INFO", "Using worker: sync");

  process.on("SIGINT", () => arbiter.handleSignal("int"));
  process.on("SIGTERM", () => arbiter.handleSignal("term"));
  // However the arbiter ends, even by an error, it takes its workers with it.
  process.on("exit", () => {
    for (const worker of arbiter.workers) worker.process.kill("SIGKILL");
  });
  await arbiter.run();
}

// The arbiter forks this same file with --worker and its settings; run plainly, it is the arbiter.
const [, , flag, notifyEveryMs, origin = "", workers] = process.argv;
if (flag === WORKER_FLAG) runWorker(Number(notifyEveryMs), origin, Number(workers));
else await main();
