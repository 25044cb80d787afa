/**
 * lessons/fanout.ts: lesson 2, fan-out: ten slow calls awaited at once, awaited
 * one after another, or made with the thread blocked.
 *
 * It ports the post "Django 3.1 Async" (seed 004). /api/ is a slow endpoint: it
 * waits, then answers. The aggregated view calls it ten times on this same
 * server and answers with all ten answers. Awaiting the ten calls together
 * takes about one wait; awaiting them one after another takes ten; and neither
 * stops a countdown, because awaiting is not blocking. /api/blocking/ is the
 * mistake, on purpose: the same wait as a synchronous sleep, which stops
 * everything this process serves until it ends.
 *
 * Run it:    npx -y tsx server.ts       (lessons/ beside it installs this lesson)
 * Then try:
 *   - curl http://localhost:8000/api/aggregated/ calls /api/ ten times at once and
 *     answers in about one second: ten waits of one second, awaited together;
 *   - curl http://localhost:8000/api/aggregated/sequential/ makes the same calls one
 *     after another: about ten seconds, and every countdown tab keeps counting;
 *   - curl "http://localhost:8000/api/blocking/?delay=3000" while a tab counts: it stops
 *     for three seconds, then catches up and says the loop waited about 3,000 ms;
 *   - curl "http://localhost:8000/api/blocking/?in=thread&delay=3000": the very same sleep
 *     on a thread of a pool (--threads, default 4): the tab keeps counting;
 *   - curl "http://localhost:8000/api/aggregated/?via=thread": ten calls of 1 s, 3 rounds on
 *     4 threads (about 3 s), 1 s on --threads 10; ?via=blocking&n=4 on the loop: 4 s frozen.
 *     The sync sleeps freeze this process 10 s in a row at most (then 503), for this
 *     site's pages and curl only (403 for another site's <img>).
 *
 * The second half is this lesson on blocking-server.ts, lesson 1's twin, where an
 * arbiter hands each connection to a sync worker process that cannot await, as
 * gunicorn's: its aggregated view calls its own server one call after another,
 * and a lone worker deadlocks, as the post's server did.
 * Run it:    npx -y tsx blocking-server.ts
 *   - curl http://localhost:8001/api/ answers after a one-second sleep, as server.ts's does;
 *   - curl -i http://localhost:8001/api/aggregated/ hangs, then answers 504 after five
 *     seconds: the only worker waits for an answer that only it could give;
 *   - started with --workers 2, the same curl answers 200 after about ten seconds: the
 *     second worker serves the ten calls one by one.
 */

import type { IncomingMessage, ServerResponse } from "node:http";
import type net from "node:net";
// A sleep as a promise. server.ts writes its own, because a countdown's sleep must end
// early when its client leaves; /api/'s always runs to its end.
import { setTimeout as wait } from "node:timers/promises";
import { execFileSync } from "node:child_process";
// Called Thread here: in this lesson a "worker" is one of blocking-server.ts's processes.
import { Worker as Thread } from "node:worker_threads";
import { bracketed, flagNumber, RequestError, wholeNumber } from "../server.ts";
import type { App, Handler, Lesson } from "../server.ts";
import { sendJson } from "./http.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

/** How long /api/ waits, unless ?delay= says otherwise. */
const API_DELAY_MS = 1000;
const DELAY_RANGE = { min: 0, max: 10_000 };
/** How many calls the aggregated view makes, unless ?n= says otherwise. */
const FAN_OUT = 10;
const FAN_OUT_RANGE = { min: 1, max: 50 };
/**
 * A call to this server unanswered after this long fails, and its view answers 504: the
 * post's httpx gives up after this long of silence (its read timeout), which ended its deadlock.
 */
export const SELF_CALL_TIMEOUT_MS = 5000;
const TASK_ID = /^[A-Za-z0-9_-]{1,20}$/;
/** Which endpoint the aggregated view calls, by ?via=. */
const VIA: Record<string, string> =
  { api: "/api/", blocking: "/api/blocking/", thread: "/api/blocking/?in=thread" };
/** Loop sleeps may owe this much: each ms asleep adds one, each ms running free takes one off. */
export const FREEZE_LIMIT_MS = 10_000;
/** --threads: the pool's size. libuv's own pool, which runs Node's file and DNS work, has 4. */
export const THREADS = 4;
const THREADS_RANGE = { min: 1, max: 64 };
/** Calls waiting for a busy pool's next free thread, at most: past it, 503. */
export const THREAD_QUEUE_LIMIT = 100;

// ─── Asking and answering ────────────────────────────────────────────────────
//
// Both servers read the same parameters and give the same answers, so one curl
// against each shows the difference in the numbers alone.

/** What /api/ is asked for: ?delay= and, when given, ?task_id=, which the answer repeats. */
function readApiOptions(url: URL): { delay: number; taskId: string | null } {
  const delayParam = url.searchParams.get("delay");
  const taskId = url.searchParams.get("task_id");
  if (taskId !== null && !TASK_ID.test(taskId)) {
    throw new RequestError(400, "task_id must be 1 to 20 characters of A-Z, a-z, 0-9, _ and -.");
  }
  const delay = delayParam === null ? API_DELAY_MS : wholeNumber("delay", delayParam, DELAY_RANGE);
  return { delay, taskId };
}

/** What the aggregated view is asked for: ?n= calls, each with ?delay=. */
function readFanOutOptions(url: URL): { n: number; delay: number } {
  const nParam = url.searchParams.get("n");
  const n = nParam === null ? FAN_OUT : wholeNumber("n", nParam, FAN_OUT_RANGE);
  return { n, delay: readApiOptions(url).delay };
}

/**
 * /api/, given how to wait: the post's answer once `waitFor(delay)` is over: all that
 * differs between the /api/ views. `await` hands the thread back only when `waitFor`
 * returns a promise; a sync sleep returns nothing, having held the thread all along.
 * `log`, on the blocking server, says when each sleep starts and when it answered.
 */
function apiView(waitFor: (ms: number) => unknown, log?: (line: string) => void): Handler {
  return async (_req, res, url) => {
    const { delay, taskId } = readApiOptions(url);
    const call = url.pathname + url.search;
    log?.(`${call}: sleeping ${delay} ms, this worker blocked`);
    await waitFor(delay);
    const message = "Hello Async World!";
    sendJson(res, 200, taskId === null ? { message } : { message, task_id: taskId });
    log?.(`${call}: answered`);
  };
}

/** The n calls of one aggregated view: task_id 0 to n - 1, each passing the delay on. */
function taskUrls(origin: string, path: string, { n, delay }: { n: number; delay: number }) {
  const query = (id: number) => `${path.includes("?") ? "&" : "?"}task_id=${id}&delay=${delay}`;
  return Array.from({ length: n }, (_, id) => `${origin}${path}${query(id)}`);
}

/**
 * The aggregated view's answer: the n answers in task order, and how long the
 * calls took, in the post's words on both servers (its own blocking view also
 * says "fetch executed": the calls were fetched, whichever client made them).
 */
function aggregatedAnswer(responses: unknown[], startedAt: number) {
  const seconds = ((performance.now() - startedAt) / 1000).toFixed(2);
  const debug_message = `fetch executed in ${seconds} seconds.`;
  return { message: "Hello Async World!", responses, debug_message };
}

/** How one call to this server ended, whichever client made it: its status and body, or why not. */
type CallResult = { outcome: "answered" | "timed out" | "failed"; status: number; text: string };
const TIMED_OUT: CallResult = { outcome: "timed out", status: 0, text: "" };

/** What a view makes of a call: its JSON, or a sentence for a 504 (`why` says why), 503, 502. */
function answerOf(url: string, { outcome, status, text }: CallResult, why = ""): unknown {
  const { pathname, search } = new URL(url);
  const call = `The call to ${pathname}${search}`;
  const late = `got no answer within ${SELF_CALL_TIMEOUT_MS / 1000} s (its read timeout)`;
  if (outcome === "timed out") throw new RequestError(504, `${call} ${late}${why}.`);
  if (outcome === "failed") throw new RequestError(502, `${call} failed: ${text}.`);
  if (status === 503) throw new RequestError(503, `${call} answered 503: ${text.trim()}`);
  if (status !== 200) throw new RequestError(502, `${call} failed: it answered ${status}.`);
  return JSON.parse(text);
}

/** Where a server calls itself: where it listens (--port 0 too), loopback for every address. */
export function selfOrigin(server: net.Server): string {
  const { address, port } = server.address() as net.AddressInfo;
  const host = address === "0.0.0.0" ? "127.0.0.1" : address === "::" ? "::1" : address;
  return `http://${bracketed(host)}:${port}`;
}

// ─── Each app's share: its pool, its freeze ──────────────────────────────────

interface FanOut {
  threads: number; // --threads
  pool: PoolThread[]; // the threads made so far, at most --threads
  stopped: boolean;
  frozenMs: number; // how much freeze the sync sleeps still owe, since frozenAt (their end)
  frozenAt: number;
  logged: Set<string>; // the bounds reached, each logged once
}
const states = new WeakMap<App, FanOut>();
const stateOf = (app: App) => states.get(app)!;

/** A bound reached is news once, not at every request it refuses. */
function logOnce(app: App, line: string) {
  if (!stateOf(app).logged.has(line)) app.log(line);
  stateOf(app).logged.add(line);
}

// ─── The async views ─────────────────────────────────────────────────────────

/** The slow endpoint, done right: `await` hands the thread back while it waits. */
const serveApi = apiView(wait);

/**
 * One call to this server with fetch, given up after SELF_CALL_TIMEOUT_MS. In flight, it holds
 * two file descriptors: n is at most FAN_OUT_RANGE.max, and server.ts caps open connections.
 */
async function callSelf(url: string): Promise<unknown> {
  return answerOf(url, await fetchResult(url));
}

async function fetchResult(url: string): Promise<CallResult> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(SELF_CALL_TIMEOUT_MS) });
    return { outcome: "answered", status: response.status, text: await response.text() };
  } catch (error) {
    if ((error as Error).name === "TimeoutError") return TIMED_OUT;
    // Node's fetch throws a bare "fetch failed"; what went wrong is in its `cause`.
    const { cause } = error as { cause?: { code?: string; message?: string } };
    const text = cause?.code ?? cause?.message ?? (error as Error).message;
    return { outcome: "failed", status: 0, text };
  }
}

/** Reads ?n=, ?delay= and ?via=, and lists the calls to make to this server, if it may. */
function plannedCalls(req: IncomingMessage, url: URL, app: App) {
  const via = url.searchParams.get("via") ?? "api";
  const path = Object.hasOwn(VIA, via) ? VIA[via] : undefined;
  if (path === undefined) throw new RequestError(400, "via must be api, blocking or thread.");
  const options = readFanOutOptions(url);
  if (via !== "api") checkSameSite(req);
  if (via === "blocking" && options.n * options.delay > FREEZE_LIMIT_MS) {
    const sleeps = "via=blocking makes n sync sleeps of delay ms, one after another";
    throw new RequestError(400, `${sleeps}: n × delay must be at most ${FREEZE_LIMIT_MS} ms.`);
  }
  return taskUrls(selfOrigin(app.server), path, options);
}

/** The post's async view: every call starts at once, and Promise.all waits for the last. */
const serveAggregated: Handler = async (req, res, url, app) => {
  const calls = plannedCalls(req, url, app);
  const startedAt = performance.now();
  // Promise.all rejects at the first failed call, and the view answers its 504 or 502. The calls
  // already sent are not cancelled; with ?via=blocking each still sleeps in this one thread.
  const responses = await Promise.all(calls.map((call) => callSelf(call)));
  sendJson(res, 200, aggregatedAnswer(responses, startedAt));
};

/** The same calls awaited one after another: n waits long, yet the thread is free meanwhile. */
const serveAggregatedSequential: Handler = async (req, res, url, app) => {
  const calls = plannedCalls(req, url, app);
  const startedAt = performance.now();
  const responses: unknown[] = [];
  for (const call of calls) responses.push(await callSelf(call));
  sendJson(res, 200, aggregatedAnswer(responses, startedAt));
};

// ─── The mistake: a synchronous sleep ────────────────────────────────────────
//
// JavaScript has no sleep that holds the thread, so this one is made of
// Atomics.wait, which is meant for threads that share memory: it stops this
// thread until another thread changes an integer in a SharedArrayBuffer, or
// until `ms` pass. Nobody else can even reach this integer, so it is a pure
// sleep, like Python's time.sleep(): no timer, no request, no tick of this
// process runs meanwhile.

/** Blocks the thread that calls it for `ms`: the loop here, or one of the pool's below. */
export function sleepSync(ms: number): void {
  if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * The blocking views answer this site's pages and curl only: browsers send Sec-Fetch-Site,
 * "same-origin" for this page's fetch, "none" for an address typed in (curl sends none).
 * Any other page, same-site ones too (localhost:3000), must not freeze it with an <img>.
 */
function checkSameSite(req: IncomingMessage) {
  const site = req.headers["sec-fetch-site"];
  if (site === undefined || site === "none" || site === "same-origin") return;
  const asked = `this request came from a ${site} page`;
  throw new RequestError(403, `The blocking views answer this site's own pages only; ${asked}.`);
}

/** The sync sleep, if what the last ones froze, less the time run free since, leaves room. */
function freeze(app: App, res: ServerResponse, ms: number) {
  const state = stateOf(app);
  const owed = Math.max(0, state.frozenMs - (performance.now() - state.frozenAt));
  if (owed + ms > FREEZE_LIMIT_MS) {
    const seconds = Math.ceil((owed + ms - FREEZE_LIMIT_MS) / 1000);
    res.setHeader("Retry-After", seconds);
    const frozen = `The sync sleeps froze this process for ${Math.round(owed)} ms in a row`;
    logOnce(app, `fan-out: the sync sleeps reached ${FREEZE_LIMIT_MS} ms; 503 for the next`);
    const limit = `${ms} more would pass the limit of ${FREEZE_LIMIT_MS} ms`;
    throw new RequestError(503, `${frozen}; ${limit}: try again in ${seconds} s.`, true);
  }
  sleepSync(ms);
  state.frozenMs = owed + ms;
  state.frozenAt = performance.now();
}

/** /api/blocking/: a sync sleep stops every countdown here; ?in=thread: on a thread instead. */
const serveBlockingApi: Handler = (req, res, url, app) => {
  checkSameSite(req);
  const where = url.searchParams.get("in") ?? "loop";
  if (where === "thread") return apiView((ms) => onThread(app, url, ms))(req, res, url, app);
  if (where !== "loop") throw new RequestError(400, "in must be loop or thread.");
  return apiView((ms) => freeze(app, res, ms))(req, res, url, app);
};

// ─── The way out: the same sleep on a thread ─────────────────────────────────
//
// Seed 004's way out for sync code in an async server: a thread, as Django's
// sync_to_async. A worker_threads thread has a loop and a heap of its own, so while
// it sleeps, this thread serves every tab. Threads cost memory (docs/fanout.md), so
// there are --threads of them, made at first use and kept, and a bounded queue.

/** A pool thread's script: `${sleepSync}` pastes the function's source text in (eval: true). */
const POOL_THREAD = `const sleepSync = ${sleepSync};
  const { parentPort } = require("node:worker_threads");
  parentPort.on("message", (ms) => parentPort.postMessage(sleepSync(ms)));`;

/** One thread of the pool, and the calls sent to it, oldest first: one sleeps, the rest wait. */
type PoolThread = { thread: Thread; calls: ((failure?: RequestError) => void)[] };

/**
 * Runs sleepSync(ms) on the pool's least busy thread, or on a new one while there are fewer
 * than --threads and all are busy; if every thread is, it waits its turn (THREAD_QUEUE_LIMIT).
 */
async function onThread(app: App, { pathname, search }: URL, ms: number): Promise<void> {
  const { threads, pool, stopped } = stateOf(app);
  if (stopped) throw new RequestError(503, "The server is stopping.");
  let chosen = pool.reduce((a, b) => (b.calls.length < a.calls.length ? b : a), pool[0]!);
  if (!chosen || (chosen.calls.length > 0 && pool.length < threads)) chosen = startThread(pool);
  const busy = () => pool.filter((each) => each.calls.length > 0).length;
  const waiting = () => pool.reduce((sum, each) => sum + Math.max(0, each.calls.length - 1), 0);
  if (chosen.calls.length > 0 && waiting() >= THREAD_QUEUE_LIMIT) {
    const full = `All ${threads} threads are busy and ${THREAD_QUEUE_LIMIT} calls wait for one`;
    logOnce(app, `fan-out: ${full}; 503 for the next`);
    throw new RequestError(503, `${full}: try again in a moment.`, true);
  }
  const failure = new Promise<RequestError | undefined>((resolve) => chosen.calls.push(resolve));
  chosen.thread.postMessage(ms);
  const figures = () => `${busy()} of ${threads} threads busy, ${waiting()} waiting`;
  if (!app.quiet) app.log(`${pathname}${search}: ${ms} ms for a thread (${figures()})`);
  const failed = await failure;
  if (failed) throw failed;
  if (!app.quiet) app.log(`${pathname}${search}: answered (${figures()})`);
}

/** A new thread: each sleep it ends answers its oldest call; if it throws or ends, all fail. */
function startThread(pool: PoolThread[]): PoolThread {
  const thread = new Thread(POOL_THREAD, { eval: true, execArgv: [] });
  thread.unref(); // an idle thread keeps no process alive; on stop, every one is ended
  const each: PoolThread = { thread, calls: [] };
  const fail = (why: string) => {
    if (pool.includes(each)) pool.splice(pool.indexOf(each), 1);
    const failure = new RequestError(502, `The thread for this call ${why}.`);
    for (const call of each.calls.splice(0)) call(failure);
  };
  thread.on("message", () => each.calls.shift()?.());
  thread.on("error", (error) => fail(`failed: ${error.message}`));
  thread.on("exit", (code) => fail(`ended (exit code ${code}) before its sleep did`));
  pool.push(each);
  return each;
}

// ─── The blocking twin: lesson 2 on a sync worker ────────────────────────────
//
// blocking-server.ts serves these at /api/ and /api/aggregated/. A sync worker
// cannot await, so its aggregated view calls its own /api/ one call after
// another with a blocking HTTP client (below), like the post's `httpx.get(url)`
// in a loop. With one worker that is the post's deadlock: the first call waits
// at the arbiter for a free worker, the only one, which waits for the call,
// until the call's timeout. The other views have no twin: there every call is
// one after another, and every sleep blocks.

/** The slow endpoint on a sync worker: the sleep holds it; `log` says when it starts and ends. */
export const syncApi = (log: (line: string) => void): Handler => apiView(sleepSync, log);

/**
 * The post's view on a sync worker: n calls to the server at `origin`, each
 * waited for in turn. When this worker is its server's only one (`onlyWorker`),
 * a call that times out is the deadlock, and the 504's sentence says so.
 */
export function syncAggregated(origin: string, onlyWorker: boolean): Handler {
  const deadlock = !onlyWorker ? ""
    : ", because this server's only worker is the one waiting for it: the call queues behind" +
      " the very request that made it (try --workers 2)";
  const callSelfSync = (url: string) => answerOf(url, getSync(url, SELF_CALL_TIMEOUT_MS), deadlock);
  return (_req, res, url) => {
    const startedAt = performance.now();
    const responses = taskUrls(origin, "/api/", readFanOutOptions(url)).map(callSelfSync);
    sendJson(res, 200, aggregatedAnswer(responses, startedAt));
  };
}

// ─── A blocking HTTP client ──────────────────────────────────────────────────
//
// Every HTTP client in Node is asynchronous, so the blocking call is made by a
// child process, and execFileSync waits for it: it blocks this thread until the
// child exits, as Python's subprocess.run(["curl", url]) would, and runs nothing
// else meanwhile. The child uses node:http with no connection pool (agent:
// false), so each call is a connection of its own that the arbiter queues, as
// gunicorn's would be; its `timeout` fires once the socket has been silent that
// long: a read timeout, as httpx's.

/** Room for an answer: /api/'s is a few dozen bytes; a longer one counts as a failed call. */
const ANSWER_LIMIT_BYTES = 64 * 1024;
/** The child's own timeout ends every call; this much later, the worker kills it. */
const CHILD_GRACE_MS = 1000;

/** The child, as plain JavaScript: it prints how its one call ended, as JSON. */
const CALL_CHILD = `const [url, timeoutMs] = process.argv.slice(1);
  const end = (outcome, status, text) => console.log(JSON.stringify({ outcome, status, text }));
  const options = { agent: false, timeout: Number(timeoutMs) };
  const request = require("node:http").get(url, options, (response) => {
    let text = "";
    response.setEncoding("utf8").on("data", (chunk) => (text += chunk));
    response.on("end", () => end("answered", response.statusCode, text));
  });
  request.on("timeout", () => (end("timed out", 0, ""), request.destroy()));
  request.on("error", (error) => end("failed", 0, error.code ?? error.message));
`;

/** GETs `url` and blocks this thread until the answer, a failure, or `timeoutMs`. */
function getSync(url: string, timeoutMs: number): CallResult {
  const options = { timeout: timeoutMs + CHILD_GRACE_MS, maxBuffer: ANSWER_LIMIT_BYTES };
  try {
    const printed = execFileSync(process.execPath, ["-e", CALL_CHILD, url, String(timeoutMs)],
      { ...options, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    return JSON.parse(printed.split("\n")[0]!) as CallResult;
  } catch (error) {
    const { code } = error as NodeJS.ErrnoException;
    if (code === "ETIMEDOUT") return TIMED_OUT;
    const text = code === "ENOBUFS" ? "its answer is too long" : "its child process failed";
    return { outcome: "failed", status: 0, text };
  }
}

// ─── The routes ──────────────────────────────────────────────────────────────
//
// blocking-server.ts mounts syncApi and syncAggregated itself; here are server.ts's four.

export const fanOut: Lesson = {
  flags: { threads: { type: "string" } },
  help: `  --threads N      Runs /api/blocking/?in=thread on a pool of N threads, made at first
                   use (default ${THREADS}, as libuv's own pool).`,
  banner: (url) => [
    `  Lesson 2, fan-out: curl ${url}api/aggregated/ ` +
      `(${FAN_OUT} calls at once, about ${API_DELAY_MS / 1000} s)`,
  ],

  install(app) {
    const threads = flagNumber("threads", app.flags.threads, "", THREADS, THREADS_RANGE);
    const logged = new Set<string>();
    const state: FanOut = { threads, pool: [], stopped: false, frozenMs: 0, frozenAt: 0, logged };
    states.set(app, state);
    app.onStop(() => {
      state.stopped = true;
      const ended = state.pool.length; // each one's calls answer 502 as it ends
      for (const { thread } of state.pool) void thread.terminate();
      if (ended > 0) return `${ended} thread${ended === 1 ? "" : "s"}`;
    });
    Object.assign(app.routes, {
      "/api/": { GET: serveApi },
      "/api/aggregated/": { GET: serveAggregated },
      "/api/aggregated/sequential/": { GET: serveAggregatedSequential },
      "/api/blocking/": { GET: serveBlockingApi },
    });
  },
};
