/**
 * lessons/processes.ts: lesson 3, several processes on one port (--workers).
 *
 * One Node process uses one core. `--workers N` runs N copies of server.ts on
 * one port, as uvicorn's and gunicorn's --workers do: every worker accepts
 * connections on the one listening socket, whichever is free first. Countdowns
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
 * You should see the banner once, then one line per worker as it starts serving:
 *   Countdown server (async, 2 worker processes, primary pid 17876) listening at ...
 *   [05:21:56] [17876] primary: worker 17899 is serving
 */

import cluster, { type Worker } from "node:cluster";
import net from "node:net";
import {
  flagNumber,
  listen,
  logLine,
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

/** --workers, else WEB_CONCURRENCY, else the default; a bad value exits with one sentence. */
function workersOf({ workers }: FlagValues): number {
  return flagNumber("workers", workers, "WEB_CONCURRENCY", DEFAULT_WORKERS, WORKERS_RANGE);
}

// ─── The primary ─────────────────────────────────────────────────────────────
//
// node:cluster's default on Linux is round-robin: the primary accepts each connection
// and passes it to the next worker, so every worker gets its share (the lesson's split
// depends on it). Its cost: a worker killed (kill -9) while a connection is being passed
// to it never says it took it, and the primary keeps that connection, unanswered, one per
// such kill. SCHED_NONE (the kernel hands connections out) holds none, but measured here
// it gave all 4 of 4 connections to one worker in 2 of 6 rounds, which would hide the split.

/**
 * The primary of `--workers N` serves nothing itself. It forks N workers,
 * prints the banner once every one listens (on port 0 it learns the port
 * only then), replaces any worker that dies, and on Ctrl-C asks each to stop
 * and waits for them, never longer than WORKERS_STOP_MS.
 */
async function superviseWorkers(count: number, { flags, host, port, printBanner }: Startup) {
  // Try the address and the database once here: a busy port or a database that is down
  // is one sentence, not one per worker.
  for (const probe of await listen(net.createServer(), host, port)) {
    await new Promise((resolve) => probe.close(resolve));
  }
  const database = databaseUrl(flags);
  if (database) await probeDatabase(database);

  let stopping = false;
  const listened = new Set<number>();
  const alive = () => Object.values(cluster.workers ?? {}).filter((worker) => worker !== undefined);
  const signalWorkers = (signal: NodeJS.Signals) => {
    for (const worker of alive()) worker.process.kill(signal);
  };

  // A worker listens once per address (twice for localhost); the first time counts.
  cluster.on("listening", (worker, address) => {
    if (listened.has(worker.id)) return;
    listened.add(worker.id);
    // The banner once every worker serves: tabs opened after it are shared among them all.
    if (listened.size === count) {
      printBanner(address.port, `async, ${count} worker processes, primary pid ${process.pid}`);
      // Only now: a line typed before a worker serves waits in standard input until then.
      forwardPresenterLines(() => alive().filter((serving) => listened.has(serving.id)));
    }
    logLine(`primary: worker ${worker.process.pid} is serving`);
  });

  cluster.on("exit", (worker, code, signal) => {
    if (stopping) {
      if (alive().length === 0) process.exit(0);
      return;
    }
    if (!listened.has(worker.id)) {
      // It never got to serve: it said why on stderr. Forking it again would fail the same way.
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
    const running = alive().length;
    logLine(`primary: ${signal}: stopping ${running} worker${running === 1 ? "" : "s"}`);
    // A terminal's Ctrl-C reaches every process of the group already;
    // a signal sent to the primary alone does not.
    signalWorkers("SIGTERM");
    setTimeout(() => {
      signalWorkers("SIGKILL");
      process.exit(0);
    }, WORKERS_STOP_MS).unref();
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
function forwardPresenterLines(serving: () => Worker[]): void {
  let next = 0;
  readPresenterLines((line) => {
    const connected = serving().filter((worker) => worker.isConnected());
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
 * streams end cleanly, and their browsers reconnect and resume.
 * exitedAfterDisconnect is that mark: node:cluster reads it right after this
 * listener runs, and exits the worker itself only when it is still false.
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
      return "serve quietly"; // the banner and the terminal are the primary's
    }
    const workers = workersOf(startup.flags);
    if (workers === 1) return undefined;
    await superviseWorkers(workers, startup);
    return "taken over";
  },

  // In a worker, each line the primary forwards arrives as a "message" on `process`. In
  // install, not in listening(): the primary sends a worker its first line as soon as the
  // worker listens, before listening() would run.
  install(app) {
    if (!cluster.isWorker) return;
    process.on("message", (message: Partial<PresenterLine> | null) => {
      const line = message?.presenterLine;
      if (typeof line === "string") toastsOf(app).fromPresenter(line);
    });
  },
};
