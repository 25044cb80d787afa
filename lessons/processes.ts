/**
 * lessons/processes.ts: lesson 3, several processes on one port (--workers).
 *
 * One Node process uses one core. `--workers N` runs N copies of server.ts on
 * one port, as uvicorn's and gunicorn's --workers do: the primary accepts each
 * connection and hands it to the next worker in turn. Countdowns
 * need nothing more: each worker serves many tabs. The room and the toasts do:
 * each process has its own in-memory hub (lessons/hub.ts), so a message posted
 * to one worker reaches only that worker's tabs, until --database
 * (lessons/postgres.ts) puts every process on one PostgreSQL. This is the
 * --workers flag of the posts' servers, taken apart: massover's "Why I am excited
 * about ASGI & Django" (seed 001) runs gunicorn and uvicorn with --workers 1, and
 * "Django 3.1 Async" (seed 004) raises uvicorn's to 10 to get out of a deadlock.
 *
 * How: cluster.fork() starts a new process that runs server.ts again from the
 * top, with the same arguments, and node:cluster marks it as a worker. That is
 * why start() and install() below, and the toasts' terminal reader, ask
 * `cluster.isWorker`: the same code runs once as the primary, which forks and
 * serves nothing, and once in each worker, which serves.
 *
 * Run it:    npx -y tsx server.ts --workers 2
 * Then try:
 *   - open http://localhost:8000/ in several tabs: each says "served by pid" with
 *     one of the two workers' pids, never the primary's;
 *   - http://localhost:8000/room/ in two tabs served by different pids: a message
 *     posted in one never shows in the other, until you add --database URL;
 *   - kill one worker (kill <pid>): it stops gently, as on Ctrl-C, so the primary
 *     says "exited (code 0)", and starts another (kill -9 says "exited (SIGKILL)");
 *   - Ctrl-C: every worker ends its streams, and no process stays behind.
 * You should see one line per worker as it starts serving, then the banner once:
 *   [20:09:54] [5841] primary: worker 5865 is serving
 *   [20:09:54] [5841] primary: worker 5866 is serving
 *   Countdown server (async, 2 worker processes, primary pid 5841) listening at ...
 */

import cluster, { type Worker } from "node:cluster";
import net from "node:net";
import {
  flagNumber,
  listen,
  logLine,
  refuse,
  SHUTDOWN_GRACE_MS,
  type FlagValues,
  type Lesson,
  type Startup,
} from "../server.ts";
import { readPresenterLines, toastsOf } from "./toasts.ts";
// The next lesson's, for --database only: the primary installs no lesson, so it tries the
// database itself, once, rather than let every worker fail with the same sentence.
import { databaseUrl, probeDatabase } from "./postgres.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

const DEFAULT_WORKERS = 1;
const WORKERS_RANGE = { min: 1, max: 64 };

/** How long the primary gives its workers to stop (each has its own grace) before it kills them. */
const WORKERS_STOP_MS = SHUTDOWN_GRACE_MS * 1.5;
/** How long a client the primary answered 503 may take to read it and hang up before it is cut. */
const REFUSED_LINGER_MS = 2000;

/** --workers, else WEB_CONCURRENCY, else the default; a bad value exits with one sentence. */
function workersOf({ workers }: FlagValues): number {
  return flagNumber("workers", workers, "WEB_CONCURRENCY", DEFAULT_WORKERS, WORKERS_RANGE);
}

// ─── The primary ─────────────────────────────────────────────────────────────
//
// The primary accepts every connection and hands it to the next serving worker in turn
// (round-robin), so every worker gets its share: the lesson's split depends on it. In turn
// per TCP connection, not per tab: a tab's page, its stream and its POST may reach two
// workers. The page's "served by pid" names the worker of its stream.
//
// node:cluster can do this by itself: workers call listen() and the primary hands them
// sockets (its SCHED_RR). It too waits for each worker's reply, but a worker killed (kill -9)
// before replying leaves that client unanswered and the socket open in the primary, one per
// kill. So here the primary does the handing itself, with worker.send(message, socket):
// sending a socket gives the worker its own handle on the same connection, which stays open
// while either process holds one. The primary keeps its copy until the worker says "took",
// and answers a 503 itself when the worker died first.

/**
 * The primary of `--workers N` serves nothing itself. It listens, forks N
 * workers, prints the banner once every one serves, hands each connection to
 * the next, replaces any worker that dies, and on Ctrl-C asks each to stop and
 * waits for them, never longer than WORKERS_STOP_MS.
 */
async function superviseWorkers(count: number, { flags, host, port, printBanner }: Startup) {
  // A database that is down is one sentence here, not one per worker.
  const database = databaseUrl(flags);
  if (database) await probeDatabase(database);

  let stopping = false;
  const serving: Worker[] = []; // in the order they said so; handed connections in turn
  const everServed = new Set<number>();
  let next = 0;
  // cluster.workers keeps a worker until its process has exited and its channel closed.
  const alive = () => Object.values(cluster.workers ?? {})
    .filter((worker): worker is Worker => worker !== undefined && !worker.isDead());
  const signalWorkers = (signal: NodeJS.Signals) => {
    for (const worker of alive()) worker.process.kill(signal);
  };
  const stopHanding = (worker: Worker) => {
    const at = serving.indexOf(worker);
    if (at >= 0) serving.splice(at, 1);
  };

  // pauseOnConnect: the primary reads no byte. A byte read here would be gone from the socket,
  // and the worker must read the whole request itself.
  // Each socket stays here, by number, until its worker says it took it.
  const handing = new Map<number, { socket: net.Socket; worker: Worker }>();
  let handed = 0;
  // A 503 from the primary itself. The socket was never read (pauseOnConnect), and a socket
  // that is not read never sees its client hang up: it would stay open here for good. So its
  // bytes are read and dropped, and one whose client never hangs up is cut.
  const turnAway = (socket: net.Socket, sentence: string) => {
    socket.on("error", () => {}); // a client that has gone already: nothing to tell it
    socket.resume();
    socket.setTimeout(REFUSED_LINGER_MS, () => socket.destroy());
    refuse(socket, 503, sentence);
  };
  const hand = (socket: net.Socket, tries = serving.length) => {
    const worker = serving[next++ % Math.max(1, serving.length)];
    if (!worker || tries === 0) {
      return turnAway(socket, "No worker is serving just now; try again in a moment.");
    }
    const connection = ++handed;
    handing.set(connection, { socket, worker });
    // worker.send() writes to the channel (IPC) node:cluster opened to each worker; the
    // socket's file descriptor travels with the message. keepOpen: Node does not close this
    // process's copy once sent; took() below does, when the worker says it has its own.
    worker.send({ connection } satisfies Connection, socket, { keepOpen: true }, (error) => {
      // Called once written to the channel (not once taken), with an error only when the
      // channel is closed: that worker has just gone, so the next one. delete() is false
      // when lostWith() has answered this connection already: it is not handed twice.
      if (!error || !handing.delete(connection)) return;
      hand(socket, tries - 1);
    });
  };
  const took = (connection: number) => {
    // destroy() closes this process's handle alone: the worker's keeps the connection open.
    // (end() would send the client a FIN, the end of the connection, for both.)
    handing.get(connection)?.socket.destroy();
    handing.delete(connection);
  };
  const lostWith = (worker: Worker) => {
    let lost = 0;
    for (const [connection, on] of handing) {
      if (on.worker !== worker) continue;
      handing.delete(connection);
      turnAway(on.socket, "The worker this connection went to has stopped; try again.");
      lost++;
    }
    if (lost > 0) logLine(`primary: ${lost} connection${lost === 1 ? "" : "s"} on the way to ` +
      `worker ${worker.process.pid} got a 503 instead`);
  };
  const front = net.createServer({ pauseOnConnect: true }, (socket) => hand(socket));
  const listeners = await listen(front, host, port, true); // paused: its ::1 twin too

  // In the primary, cluster's "message" names the worker it came from.
  cluster.on("message", (worker, message: Partial<WorkerNews> | null) => {
    if (typeof message?.took === "number") return took(message.took);
    if (message?.news === "stopping") return stopHanding(worker);
    if (message?.news !== "serving" || stopping) return;
    serving.push(worker);
    everServed.add(worker.id);
    logLine(`primary: worker ${worker.process.pid} is serving`);
    // The banner once every worker serves: tabs opened after it are shared among them all.
    if (everServed.size === count) {
      printBanner((front.address() as net.AddressInfo).port,
        `async, ${count} worker processes, primary pid ${process.pid}`);
      // Only now: a line typed before a worker serves waits in standard input until then.
      forwardPresenterLines(serving);
    }
  });

  cluster.on("exit", (worker, code, signal) => {
    stopHanding(worker);
    lostWith(worker);
    if (stopping) {
      if (alive().length === 0) process.exit(0);
      return;
    }
    if (!everServed.has(worker.id) && signal === null && code !== 0) {
      // It failed before it could serve: it said why on stderr. Forking it again would fail
      // the same way. (One killed before it served, by kill <pid>, is replaced below.)
      stopping = true;
      signalWorkers("SIGKILL");
      process.exit(code ?? 1);
    }
    // `kill <pid>` sends SIGTERM, which a worker handles by stopping gently: "code 0".
    logLine(`primary: worker ${worker.process.pid} exited (${signal ?? `code ${code}`}); ` +
      "starting another");
    cluster.fork();
  });

  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    for (const listener of listeners) listener.close();
    const running = alive().length;
    logLine(`primary: ${signal}: stopping ${running} worker${running === 1 ? "" : "s"}`);
    // Ctrl-C in a terminal signals the primary and its workers together (they are one
    // process group); `kill <primary pid>` reaches only the primary, hence this SIGTERM.
    signalWorkers("SIGTERM");
    setTimeout(() => {
      signalWorkers("SIGKILL");
      process.exit(0);
    }, WORKERS_STOP_MS).unref(); // unref(): this timer alone keeps the primary running no longer
    // A second Ctrl-C means "now".
    process.once("SIGINT", () => {
      signalWorkers("SIGKILL");
      process.exit(130);
    });
  };
  process.once("SIGINT", () => stop("SIGINT"));
  process.once("SIGTERM", () => stop("SIGTERM"));

  for (let i = 0; i < count; i++) cluster.fork();
}

/** From the primary to a worker, with a socket: a connection to serve, by its number. */
interface Connection {
  connection: number;
}

/** From a worker to the primary: it took connection N; it serves now, or no more (stopping). */
interface WorkerNews {
  took?: number;
  news?: "serving" | "stopping";
}

/** A message from the primary to a worker: one line typed at the terminal. */
interface PresenterLine {
  presenterLine: string;
}

/**
 * Only the primary reads the terminal: each line goes to the next serving
 * worker in turn, whose hub publishes it as a toast (to every process with
 * --database, else to that worker's tabs). A worker that just died is skipped.
 * worker.send() writes to the channel (IPC) node:cluster opened to that worker.
 */
function forwardPresenterLines(serving: Worker[]): void {
  let next = 0;
  readPresenterLines((line) => {
    const connected = serving.filter((worker) => worker.isConnected());
    const worker = connected[next++ % Math.max(1, connected.length)];
    // `satisfies`: TypeScript checks the message has PresenterLine's shape; nothing at run time.
    if (worker) worker.send({ presenterLine: line } satisfies PresenterLine);
    else logLine("primary: no worker is serving, so that line made no toast");
  });
}

// ─── A worker ────────────────────────────────────────────────────────────────

/**
 * A worker whose primary is gone would serve a port nobody hands connections
 * to. Left alone, node:cluster exits it at once, cutting its streams; marked as
 * a disconnect it expected, the worker stops as on SIGTERM instead: its
 * streams end cleanly, and their browsers reconnect once a server listens again.
 * exitedAfterDisconnect is that mark ("I will exit myself"): node:cluster reads it right
 * after this listener runs, and exits the worker itself only when it is still false. The
 * SIGTERM to itself runs server.ts's own stop, which ends the streams and then exits.
 */
function stopWithPrimary(worker: Worker): void {
  worker.once("disconnect", () => {
    worker.exitedAfterDisconnect = true;
    process.kill(process.pid, "SIGTERM");
  });
}

// ─── The lesson ──────────────────────────────────────────────────────────────

export const processes: Lesson = {
  flags: { workers: { type: "string" } },
  help: `  --workers N      Runs this many processes on the one port, each serving many tabs
                   (env WEB_CONCURRENCY; default ${DEFAULT_WORKERS}).`,

  banner(_url, flags) {
    const workers = workersOf(flags);
    if (workers === 1) return [];
    const lines = [`  Here ${workers} worker processes share the port, each serving many tabs.`];
    if (databaseUrl(flags)) return lines;
    return [
      ...lines,
      "  The room and the toasts stay within each process: " +
        "a message reaches only the tabs of the worker",
      "  it was posted to. Add --database URL to share them through PostgreSQL.",
    ];
  },

  // Runs in the primary and again in every worker (see the header): each asks which it is.
  async start(startup) {
    if (cluster.isWorker) {
      stopWithPrimary(cluster.worker!); // in a worker, cluster.worker is this process's Worker
      return "serve handed"; // the port, the banner and the terminal are the primary's
    }
    const workers = workersOf(startup.flags);
    if (workers === 1) return undefined; // no primary at all: one process serves, as in lesson 1
    await superviseWorkers(workers, startup);
    return "taken over";
  },

  install(app) {
    if (!cluster.isWorker) return;
    // Stopping: the primary hands this worker no more connections while its streams end.
    // process.send exists only in a process with a channel to its parent, as a worker has.
    app.onStop(() => void process.send?.({ news: "stopping" } satisfies WorkerNews));
  },

  // In a worker, once every lesson is installed: what the primary sends arrives as a
  // "message" on `process` (a socket sent with it comes as the second argument): a connection
  // or a line typed at the terminal. Emitting "connection" makes the app's http server read
  // the socket as if it had accepted it; "took" means this process holds it now (the request
  // is not answered yet), so the primary may close its copy.
  listening(app) {
    if (!cluster.isWorker) return;
    process.on("message", (message: Partial<Connection & PresenterLine> | null, socket) => {
      const connection = message?.connection;
      if (typeof connection === "number" && socket instanceof net.Socket) {
        app.server.emit("connection", socket);
        process.send?.({ took: connection } satisfies WorkerNews);
      }
      const line = message?.presenterLine;
      if (typeof line === "string") toastsOf(app).fromPresenter(line);
    });
    process.send?.({ news: "serving" } satisfies WorkerNews);
  },
};
