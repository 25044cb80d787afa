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
 * Run it:    npx tsx blocking-server.ts     (or: node blocking-server.ts on Node 22.18+ / 24)
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
 * Lesson 2, fan-out (the section "Lesson 2"). Then try:
 *   - curl http://localhost:8001/api/ answers after a one-second sleep, as server.ts's does;
 *   - curl http://localhost:8001/api/aggregated/ hangs, then answers 504 after five
 *     seconds: the only worker waits for an answer that only it could give;
 *   - --workers 2: the same curl answers after about ten seconds, the second worker
 *     serving the ten calls one by one.
 *
 * Lesson 3's room has no blocking twin: a worker blocked in one stream hears
 * nothing of a message posted to another worker, so /room/ answers 404 here
 * (the README's lesson 3 says why). Nor do the toasts: its pages are served
 * without them. Lesson 4's WebSockets have none either: each socket would
 * hold a whole worker for as long as it stays open.
 */

import http, { type IncomingMessage, type ServerResponse } from "node:http";
import net from "node:net";
import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Worker as Thread } from "node:worker_threads";
import {
  aggregatedAnswer,
  allowEveryOrigin,
  apiAnswer,
  callFailed,
  callTimedOut,
  clientName,
  countdownEvent,
  DEFAULT_HOST,
  DEFAULT_WORKERS,
  exitWith,
  flagNumber,
  HEARTBEAT,
  HEARTBEAT_MS,
  isMain,
  listen,
  MemoryHub,
  readApiOptions,
  readCountdownOptions,
  readFanOutOptions,
  readFlags,
  RequestError,
  RoomStreams,
  Toasts,
  router,
  selfOrigin,
  SELF_CALL_TIMEOUT_MS,
  sendJson,
  serverEvent,
  servePage,
  sleepSync,
  SSE_HEADERS,
  taskUrls,
  urlsFor,
  WORKERS_RANGE,
  type Handler,
  type Routes,
  type ServerState,
} from "./server.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

/** One more than server.ts's port, so both servers run side by side. */
export const DEFAULT_PORT = 8001;
/** gunicorn's default: a worker silent this many seconds is stuck, and gets killed. */
export const DEFAULT_TIMEOUT_S = 30;
export const TIMEOUT_RANGE_S = { min: 0.1, max: 86_400 };

/** How long the arbiter's loop sleeps between looks at its workers, as gunicorn's does. */
const ARBITER_SLEEP_MS = 1000;
/** Until its first message a worker gets at least this long: starting Node and loading TypeScript can outlast a short timeout. */
const BOOT_ALLOWANCE_MS = 10_000;

/** The argument that makes this file run as a worker; `ps` shows the workers with it. */
const WORKER_FLAG = "--worker";
const THIS_FILE = fileURLToPath(import.meta.url);

// ─── The stream ──────────────────────────────────────────────────────────────
//
// The sync twin of server.ts's `countdown`: the same schedule and the same
// events, but a plain generator whose sleep holds the thread. While it sleeps,
// this process runs nothing else: no other request, no timer, no heartbeat.
// (`sleepSync` lives in server.ts, whose lesson 2 makes the same mistake on purpose.)

/**
 * Yields the SSE messages of one countdown: `from`, `from - 1`, ... 0.
 * Tick k is due at start + k × interval, as in server.ts. It cannot notice a
 * client that hangs up: only a failed write tells (see serveCountdown).
 */
export function* countdown(from: number, interval: number, heartbeat = HEARTBEAT_MS) {
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

// ─── Writing while the thread is blocked ─────────────────────────────────────

/**
 * Writes one message and pushes it to the kernel now. Returns false when the
 * client has gone: the kernel refused the bytes and the socket is errored.
 */
function sendNow(res: ServerResponse, message: string): boolean {
  res.write(message);
  const socket = res.socket;
  if (!socket) return false;
  // node:http corks the socket on write and uncorks it on process.nextTick, which never comes while this thread sleeps.
  // The socket's uncork, not res.uncork(): on Node 22+ that one would hold back every later chunk.
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
      log("INFO", `Stream stopped after ${eventsSent} events: the client left, so a write failed; this worker is free`);
      return;
    }
    status = "";
    if (message !== HEARTBEAT) eventsSent++;
  }
  res.end();
};

/** Lesson 3's room is served by server.ts only. */
const noRoom: Handler = () => {
  throw new RequestError(404, "The room is served by server.ts only: a blocking worker cannot push (see lesson 3 in the README).");
};

/** Lesson 4's WebSocket endpoint is served by server.ts only. */
const noWebSocket: Handler = () => {
  throw new RequestError(404, "WebSockets are served by server.ts only: each one would hold a blocking worker for as long as it stays open (see lesson 4 in the README).");
};

/**
 * The same routes as server.ts; only the countdown's handler is the blocking
 * one. Lesson 2 adds its paths in its section. The room and the WebSocket
 * answer 404 here. The wall (/wall) has no twin here: server.ts serves it, and
 * its right column streams from this server.
 */
const ROUTES: Routes = {
  "/": { GET: servePage, HEAD: servePage },
  "/sse/": { GET: serveCountdown },
  // Lessons 3 and 4 have no blocking twin.
  "/room/": { GET: noRoom, HEAD: noRoom },
  "/room/messages": { GET: noRoom, POST: noRoom },
  "/room/stream": { GET: noRoom },
  "/room/messages/:id": { GET: noRoom, PUT: noRoom, DELETE: noRoom },
  "/ws/notifications": { GET: noWebSocket },
};

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
  const zone = `${offset < 0 ? "-" : "+"}${two(Math.floor(Math.abs(offset) / 60))}${two(Math.abs(offset) % 60)}`;
  const day = `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())}`;
  return `${day} ${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())} ${zone}`;
}

// ─── The worker ──────────────────────────────────────────────────────────────
//
// A worker talks to the arbiter over the IPC channel `fork` opened: "ready"
// when it can take a connection, and "alive" from a timer, as gunicorn's workers
// notify() theirs. Both come from its event loop, so a worker blocked in a
// stream falls silent by itself.

type WorkerMessage = "ready" | "alive";

/** What the arbiter tells each worker it forks: how often to say it is alive, where the server listens, how many workers there are. */
interface WorkerSettings {
  notifyEveryMs: number;
  origin: string;
  workers: number;
}

function runWorker({ notifyEveryMs, origin, workers }: WorkerSettings): void {
  if (!process.send) exitWith(2, `${WORKER_FLAG} is how the arbiter starts its workers; run the file without it.`);
  const tell = (message: WorkerMessage) => process.send?.(message);

  // The router logs only what went wrong; a worker holds one stream at most, so it keeps no set of
  // them, and it serves no room and no toasts, so its hub, room and toasts stay empty.
  const hub = new MemoryHub();
  const state: ServerState = {
    streams: new Set(),
    log: (line) => log("ERROR", line),
    quiet: false,
    heartbeat: HEARTBEAT_MS,
    hub,
    room: new RoomStreams(HEARTBEAT_MS),
    toasts: new Toasts(hub, () => {}, HEARTBEAT_MS),
    origin: () => origin,
    // One request at a time per worker: a count here would never pass 1. The log shows the /api/ calls instead.
    apiCalls: { inFlight: 0, peak: 0 },
  };
  onlyWorker = workers === 1;
  const answer = router(ROUTES, state);
  const server = http.createServer((req, res) => {
    // gunicorn's sync worker serves one request per connection, so the next request queues at the arbiter again.
    res.setHeader("Connection", "close");
    return answer(req, res);
  });

  process.on("message", (message, socket) => {
    if (message !== "connection" || !(socket instanceof net.Socket)) return;
    tell("alive");
    socket.once("close", () => tell("ready"));
    server.emit("connection", socket);
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

export class Arbiter {
  workers = new Set<Worker>();
  waiting: WaitingConnection[] = [];
  listeners: net.Server[] = [];
  stopping = false;
  exitCode = 0;
  /** Where the workers call this server (lesson 2), known once it listens. */
  origin = "";
  private numWorkers: number;
  private timeoutMs: number;
  /** gunicorn's loop sleeps a second; a short timeout needs closer looks, and idle workers notify as often. */
  private checkEveryMs: number;
  private wake = () => {};

  constructor(numWorkers: number, timeoutSeconds: number) {
    this.numWorkers = numWorkers;
    this.timeoutMs = timeoutSeconds * 1000;
    this.checkEveryMs = this.timeoutMs > 0 ? Math.min(ARBITER_SLEEP_MS, this.timeoutMs / 4) : ARBITER_SLEEP_MS;
  }

  /** Keeps the workers going until a signal: sleep, reap the dead, murder the silent, replace them. */
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

  /** Waits a moment, or less when a worker exits or a signal arrives (gunicorn's sleep() on its pipe). */
  private sleep(): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, this.checkEveryMs);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** Forks one worker: this same file with --worker, under the same loader (tsx or Node's type stripping). */
  spawnWorker(): void {
    const child = fork(THIS_FILE, [WORKER_FLAG, String(this.checkEveryMs), this.origin, String(this.numWorkers)]);
    const worker: Worker = {
      process: child,
      pid: child.pid ?? 0,
      lastHeard: performance.now(),
      booted: false,
      busy: false,
      killed: false,
      exited: undefined,
    };
    this.workers.add(worker);
    // gunicorn's worker writes this line itself, right after the fork and before it loads the app.
    // A Node child takes a moment to start, so the arbiter writes it for the worker as soon as the pid exists.
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
    if (queued) log("INFO", `No idle worker: the connection from ${client} waits (${this.waiting.length} waiting)`);
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
      if (queued) {
        const waited = ((performance.now() - since) / 1000).toFixed(1);
        log("INFO", `Worker ${worker.pid} takes the connection from ${client} after ${waited} s (${this.waiting.length} waiting)`);
      }
    }
  }

  private isIdle(worker: Worker): boolean {
    return worker.booted && !worker.busy && !worker.killed && !worker.exited && worker.process.connected;
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

  /** Stops taking connections, drops the waiting ones, kills every worker and waits until all have exited. */
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

// ─── Lesson 2: fan-out, the blocking way ─────────────────────────────────────
//
// A sync worker cannot await. Its aggregated view calls /api/ on this same
// server one call after another, with a blocking HTTP client, like
// `httpx.get(url)` in a loop: the worker's thread waits for each answer. With
// one worker that is the post's deadlock: the first call waits at the arbiter
// for a free worker, and the only worker is the one waiting for the call. The
// read timeout ends it. server.ts's /api/aggregated/sequential/ and
// /api/blocking/ have no twin here: every call here is one after another, and
// every sleep blocks.

/** Whether this worker is the server's only one (set by runWorker): it decides what a timed-out call means. */
let onlyWorker = false;

/** The slow endpoint on a sync worker: the sleep holds the worker, which logs the call's start and end. */
function serveApi(_req: IncomingMessage, res: ServerResponse, url: URL) {
  const { delay, taskId } = readApiOptions(url);
  const call = url.pathname + url.search;
  log("INFO", `${call}: sleeping ${delay} ms, this worker blocked`);
  sleepSync(delay);
  sendJson(res, 200, apiAnswer(taskId));
  log("INFO", `${call}: answered`);
}

/** The post's view on a sync worker: n calls to this server, each one waited for in turn. */
function serveAggregated(_req: IncomingMessage, res: ServerResponse, url: URL, state: ServerState) {
  const startedAt = performance.now();
  const responses = taskUrls(state.origin(), "/api/", readFanOutOptions(url)).map(callSelfSync);
  sendJson(res, 200, aggregatedAnswer(responses, startedAt));
}

/** One call to this server, its answer as JSON; the thread waits. A timeout or a failure becomes that call's one sentence. */
function callSelfSync(url: string): unknown {
  const answer = getSync(url, SELF_CALL_TIMEOUT_MS);
  if (answer.outcome === "timed out") {
    throw callTimedOut(url, onlyWorker ? ", because this server's only worker is the one waiting for it: the call queues behind the very request that made it (try --workers 2)" : "");
  }
  if (answer.outcome === "failed") throw callFailed(url, answer.text);
  if (answer.status !== 200) throw callFailed(url, `it answered ${answer.status}`);
  return JSON.parse(answer.text);
}

ROUTES["/api/"] = { GET: serveApi };
ROUTES["/api/aggregated/"] = { GET: serveAggregated };

// ─── A blocking HTTP client ──────────────────────────────────────────────────
//
// Node's own HTTP clients are all asynchronous. So one helper thread per
// worker process makes the call, writes the answer into memory both threads
// share, and wakes the worker's thread, which waits with Atomics.wait meanwhile:
// as blocked as in sleepSync.

/** Room for an answer: /api/'s is a few dozen bytes; a longer one counts as a failed call. */
const ANSWER_LIMIT_BYTES = 64 * 1024;
/** The helper's own timeout ends every call; this much longer, the worker stops waiting for a helper that hangs. */
const HELPER_GRACE_MS = 1000;
/** The shared memory: [outcome, status, length] as 32-bit integers, then the answer's bytes. */
const OUTCOMES = ["waiting", "answered", "timed out", "failed"] as const;
const HEADER_BYTES = 3 * Int32Array.BYTES_PER_ELEMENT;

/**
 * The helper thread, as plain JavaScript: it runs without the TypeScript loader.
 * It uses node:http with no connection pool (agent: false), so each call is a
 * connection of its own that the arbiter queues, as gunicorn's would be. Its
 * timeout is a read timeout, as httpx's is: how long the socket may stay silent.
 */
const HELPER_THREAD = `
  const http = require("node:http");
  const { parentPort, workerData: shared } = require("node:worker_threads");
  const header = new Int32Array(shared, 0, 3);
  const answer = new Uint8Array(shared, ${HEADER_BYTES});

  function finish(outcome, status, bytes) {
    answer.set(bytes.subarray(0, answer.length));
    header[1] = status;
    header[2] = Math.min(bytes.length, answer.length); // an error's text may be cut
    Atomics.store(header, 0, outcome);
    Atomics.notify(header, 0);
  }

  parentPort.on("message", ({ url, timeoutMs }) => {
    const timedOut = new Error("timed out");
    let done = false;
    const once = (outcome, status, bytes) => {
      if (!done) finish(outcome, status, bytes);
      done = true;
    };
    const request = http.get(url, { agent: false, timeout: timeoutMs }, (response) => {
      const chunks = [];
      response.on("data", (chunk) => chunks.push(chunk));
      response.on("end", () => {
        const body = Buffer.concat(chunks);
        if (body.length > answer.length) once(${OUTCOMES.indexOf("failed")}, 0, Buffer.from("its answer is too long"));
        else once(${OUTCOMES.indexOf("answered")}, response.statusCode, body);
      });
    });
    request.on("timeout", () => request.destroy(timedOut));
    request.on("error", (error) => {
      const outcome = error === timedOut ? ${OUTCOMES.indexOf("timed out")} : ${OUTCOMES.indexOf("failed")};
      once(outcome, 0, Buffer.from(error.code ?? error.message));
    });
  });
`;

const shared = new SharedArrayBuffer(HEADER_BYTES + ANSWER_LIMIT_BYTES);
const header = new Int32Array(shared, 0, 3);
let helper: Thread | undefined;

/** GETs `url` and blocks this thread until the answer, a failure, or `timeoutMs`. */
export function getSync(url: string, timeoutMs: number): { outcome: (typeof OUTCOMES)[number]; status: number; text: string } {
  // Started on the first call, without tsx or type stripping (execArgv: []), since its code is plain JavaScript.
  helper ??= new Thread(HELPER_THREAD, { eval: true, workerData: shared, execArgv: [] });
  Atomics.store(header, 0, OUTCOMES.indexOf("waiting"));
  helper.postMessage({ url, timeoutMs });
  Atomics.wait(header, 0, OUTCOMES.indexOf("waiting"), timeoutMs + HELPER_GRACE_MS);
  const outcome = OUTCOMES[Atomics.load(header, 0)]!;
  if (outcome === "waiting") {
    // The helper hangs: it is stopped, and a fresh one takes the next call.
    void helper.terminate();
    helper = undefined;
    return { outcome: "timed out", status: 0, text: "" };
  }
  return { outcome, status: header[1]!, text: new TextDecoder().decode(new Uint8Array(shared, HEADER_BYTES, header[2]!)) };
}

// ─── Start-up: flags, listening, stopping ────────────────────────────────────

/** --timeout in seconds: 0 for never, or a number such as 30 or 0.5; a bad one exits with code 2. */
function timeoutSeconds(text: string | undefined): number {
  if (text === undefined || text === "") return DEFAULT_TIMEOUT_S;
  const seconds = /^\d{1,6}(\.\d{1,3})?$/.test(text) ? Number(text) : NaN;
  if (seconds === 0 || (seconds >= TIMEOUT_RANGE_S.min && seconds <= TIMEOUT_RANGE_S.max)) return seconds;
  exitWith(2, `--timeout must be 0 (never) or a number of seconds from ${TIMEOUT_RANGE_S.min} to ${TIMEOUT_RANGE_S.max}, such as 30 or 0.5.`);
}

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
  const flags = readFlags(
    {
      port: { type: "string" },
      host: { type: "string" },
      workers: { type: "string" },
      timeout: { type: "string" },
      help: { type: "boolean", default: false },
    },
    HELP,
  );
  const port = flagNumber("port", flags.port, "PORT", DEFAULT_PORT, { min: 0, max: 65535 });
  const host = flags.host || process.env.HOST || DEFAULT_HOST;
  const workers = flagNumber("workers", flags.workers, "WEB_CONCURRENCY", DEFAULT_WORKERS, WORKERS_RANGE);
  const timeout = timeoutSeconds(flags.timeout);

  const arbiter = new Arbiter(workers, timeout);
  // pauseOnConnect: the arbiter never reads a byte, so a connection reaches its worker untouched.
  const server = net.createServer({ pauseOnConnect: true }, (socket) => arbiter.accept(socket));
  arbiter.listeners = await listen(server, host, port, { pauseOnConnect: true });
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

if (isMain(import.meta.url)) {
  const [, , flag, notifyEveryMs, origin = "", workers] = process.argv;
  if (flag === WORKER_FLAG) runWorker({ notifyEveryMs: Number(notifyEveryMs), origin, workers: Number(workers) });
  else await main();
}
