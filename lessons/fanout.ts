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
 *   - curl "http://localhost:8000/api/blocking/?delay=3000" while a tab counts: the
 *     tab stops for three seconds, then catches up, and says its one thread kept it
 *     waiting about 3,000 ms: a sync sleep blocks everything;
 *   - curl "http://localhost:8000/api/blocking/?in=thread&delay=3000": the very same
 *     sleep on a thread of a pool (--threads, default 4): the tab keeps counting;
 *   - curl "http://localhost:8000/api/aggregated/?via=thread" makes ten such calls:
 *     about three seconds on 4 threads, one on --threads 10; ?via=blocking&n=4 makes
 *     four sync sleeps instead: four seconds frozen. A blocking view freezes this
 *     process for at most 10 s in a row (503 past that) and answers this site's pages
 *     and curl only (403 for another site's <img>). The calls a view gave up on (504)
 *     still sleep, one after another: a request made right after waits for them too.
 *
 * The second half of the file is this lesson on blocking-server.ts, lesson 1's
 * twin: there an arbiter process hands each connection to a sync worker process,
 * which serves one request at a time and cannot await, as gunicorn's do. Its
 * aggregated view calls its own server one call after another, waiting for each
 * answer, and a lone worker deadlocks, as the post's server did.
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
 * A call to this server still unanswered after this long fails, and its view
 * answers 504. The post's Python HTTP client, httpx, gives up after this long
 * of silence by default (its read timeout): that is what ended its deadlock.
 */
export const SELF_CALL_TIMEOUT_MS = 5000;
const TASK_ID = /^[A-Za-z0-9_-]{1,20}$/;
/** Which endpoint the aggregated view calls, by ?via=. */
const VIA: Record<string, string> = {
  api: "/api/",
  blocking: "/api/blocking/",
  thread: "/api/blocking/?in=thread",
};
/**
 * The most the sync sleeps may freeze this process in a row: one GET of ten 2 s sleeps once
 * froze it for 20 s. Time it runs free pays a freeze back, one millisecond per millisecond.
 */
export const FREEZE_LIMIT_MS = 10_000;
/**
 * Calls to itself in flight at once, over every view: each holds two file descriptors (the
 * call's socket and the server's end of it), and a process may open only so many.
 */
const SELF_CALLS_LIMIT = 100;
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
 * /api/, given how to wait: the post's answer once `waitFor(delay)` is over.
 * The waiting is all that differs between the /api/ views of both servers.
 * `await` hands the thread back only when `waitFor` returns a promise; a sync
 * sleep returns nothing, having held the thread all along. `log`, on the
 * blocking server, says when each sleep starts and when its answer went out.
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
  const query = (taskId: number) => `${path.includes("?") ? "&" : "?"}task_id=${taskId}&delay=${delay}`;
  return Array.from({ length: n }, (_, taskId) => `${origin}${path}${query(taskId)}`);
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

/** How one call to this server ended, whichever client made it. */
interface CallResult {
  outcome: "answered" | "timed out" | "failed";
  status: number; // the HTTP status, once answered
  text: string; // the answer's body, or what went wrong ("ECONNRESET", ...)
}
const TIMED_OUT: CallResult = { outcome: "timed out", status: 0, text: "" };

/**
 * What a view makes of one call: the answer's JSON, or one sentence for a 504
 * (no answer in time; `why` may say why) or a 502 (any other failure).
 */
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

/**
 * Where a server calls itself: the address and the port it actually listens
 * on (so --port 0 works too), or loopback when it listens on every address.
 */
export function selfOrigin(server: net.Server): string {
  const { address, port } = server.address() as net.AddressInfo;
  const host = address === "0.0.0.0" ? "127.0.0.1" : address === "::" ? "::1" : address;
  return `http://${bracketed(host)}:${port}`;
}

// ─── Each app's share: its pool, its freeze, its calls in flight ─────────────

interface FanOut {
  threads: number; // --threads
  pool?: Pool; // made at the first call that needs a thread
  stopped: boolean;
  selfCalls: number; // calls to itself in flight, every view's
  frozenMs: number; // how much freeze the sync sleeps still owe
  frozenAt: number; // when the last one ended
  reached: Set<string>; // the bounds reached and logged, until they clear
}
const states = new WeakMap<App, FanOut>();
const stateOf = (app: App) => states.get(app)!;

/** Logs that a bound is reached, once until it clears (`stateOf(app).reached.delete`). */
function reached(app: App, bound: string, line: string) {
  if (!stateOf(app).reached.has(bound)) app.log(line);
  stateOf(app).reached.add(bound);
}

// ─── The async views ─────────────────────────────────────────────────────────

/** The slow endpoint, done right: `await` hands the thread back while it waits. */
const serveApi = apiView(wait);

/** One call to this server with fetch, given up after SELF_CALL_TIMEOUT_MS. */
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

/**
 * Reads ?n=, ?delay= and ?via=, lists the calls to make to this server, and
 * counts them in flight within SELF_CALLS_LIMIT until `done`.
 */
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
  const state = stateOf(app);
  if (state.selfCalls + options.n > SELF_CALLS_LIMIT) {
    const limit = `${state.selfCalls} calls to itself are in flight, and the limit is ${SELF_CALLS_LIMIT}`;
    reached(app, "self calls", `fan-out: ${limit} (two file descriptors each); 503 until fewer`);
    throw new RequestError(503, `${limit}: try again in a moment.`);
  }
  state.selfCalls += options.n;
  const done = () => {
    state.selfCalls -= options.n;
    if (state.selfCalls === 0) state.reached.delete("self calls");
  };
  return { calls: taskUrls(selfOrigin(app.server), path, options), done };
}

/** The post's async view: every call starts at once, and Promise.all waits for the last. */
const serveAggregated: Handler = async (req, res, url, app) => {
  const { calls, done } = plannedCalls(req, url, app);
  const startedAt = performance.now();
  // Promise.all rejects at the first failed call, and the view answers its 504 or 502. The calls
  // already sent are not cancelled; with ?via=blocking each still sleeps in this one thread.
  const responses = await Promise.all(calls.map(callSelf)).finally(done);
  sendJson(res, 200, aggregatedAnswer(responses, startedAt));
};

/** The same calls awaited one after another: n waits long, yet the thread is free meanwhile. */
const serveAggregatedSequential: Handler = async (req, res, url, app) => {
  const { calls, done } = plannedCalls(req, url, app);
  const startedAt = performance.now();
  const responses: unknown[] = [];
  try {
    for (const call of calls) responses.push(await callSelf(call));
  } finally {
    done();
  }
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
 * The blocking views answer only this site's own pages and curl. Browsers say
 * who asked in Sec-Fetch-Site: "same-origin" for this page's fetch, "none" for
 * an address typed in; curl sends nothing. An <img> on another site's page
 * says "cross-site", and must not freeze this server for its every visitor.
 */
function checkSameSite(req: IncomingMessage) {
  const site = req.headers["sec-fetch-site"];
  if (site === undefined || site === "none" || site === "same-origin") return;
  const asked = `this request came from a ${site} page`;
  throw new RequestError(403, `The blocking views answer this site's own pages only; ${asked}.`);
}

/**
 * The sync sleep, within FREEZE_LIMIT_MS: what the last sleeps froze, less the
 * time run free since, plus `ms`. Past the limit, 503 and when to come back.
 */
function freeze(app: App, res: ServerResponse, ms: number) {
  const state = stateOf(app);
  const owed = Math.max(0, state.frozenMs - (performance.now() - state.frozenAt));
  if (owed + ms > FREEZE_LIMIT_MS) {
    const seconds = Math.ceil((owed + ms - FREEZE_LIMIT_MS) / 1000);
    res.setHeader("Retry-After", seconds);
    const frozen = `The sync sleeps froze this process for ${Math.round(owed)} ms in a row`;
    const line = `${frozen}; ${ms} more would pass the limit of ${FREEZE_LIMIT_MS} ms`;
    reached(app, "freeze", `fan-out: ${line}; 503 until it has run free again`);
    throw new RequestError(503, `${line}: try again in ${seconds} s.`);
  }
  state.reached.delete("freeze");
  sleepSync(ms);
  state.frozenMs = owed + ms;
  state.frozenAt = performance.now();
}

/**
 * /api/blocking/: the same endpoint with the mistake, a sync sleep that stops every countdown
 * of this process; ?in=thread moves the very same sleep to a thread of the pool.
 */
const serveBlockingApi: Handler = (req, res, url, app) => {
  checkSameSite(req);
  const where = url.searchParams.get("in") ?? "loop";
  const call = url.pathname + url.search;
  if (where === "thread") return apiView((ms) => onThread(app, call, ms))(req, res, url, app);
  if (where !== "loop") throw new RequestError(400, "in must be loop or thread.");
  return apiView((ms) => freeze(app, res, ms))(req, res, url, app);
};

// ─── The way out: the same sleep on a thread ─────────────────────────────────
//
// The post's advice for sync code in an async server: run it on a thread, as
// Django's sync_to_async does. A worker_threads thread has a loop and a heap of
// its own, so while it sleeps, this thread serves every tab. Threads cost
// memory (docs/fanout.md measures it), so there are --threads of them, made at
// first use and kept; a call that finds all of them busy waits in a bounded queue.

/** A pool thread, as plain JavaScript (no TypeScript loader runs there): sleepSync's own text. */
const POOL_THREAD = `
  const { parentPort } = require("node:worker_threads");
  const sleepSync = ${sleepSync};
  parentPort.on("message", (ms) => {
    sleepSync(ms);
    parentPort.postMessage("slept");
  });
`;

/** The pool: up to `size` threads; a call that finds none idle waits in `queue` for one. */
interface Pool {
  size: number;
  all: Set<Thread>;
  idle: Thread[];
  queue: ((thread: Thread | undefined) => void)[]; // undefined: the server is stopping
}

/** Runs sleepSync(ms) on a thread of the pool, logging when it starts and ends. */
async function onThread(app: App, call: string, ms: number): Promise<void> {
  const state = stateOf(app);
  const pool = (state.pool ??= { size: state.threads, all: new Set(), idle: [], queue: [] });
  const thread = state.stopped ? undefined : await takeThread(app, pool);
  if (!thread) throw new RequestError(503, "The server is stopping.");
  const busy = `of ${pool.size} threads busy`;
  const figures = () => `${pool.all.size - pool.idle.length} ${busy}, ${pool.queue.length} waiting`;
  if (!app.quiet) app.log(`${call}: sleeping ${ms} ms on a thread (${figures()})`);
  const failure = await sleepOn(thread, ms);
  giveBack(app, pool, thread, failure !== undefined);
  if (failure) throw failure;
  if (!app.quiet) app.log(`${call}: answered (${figures()})`);
}

/** An idle thread, a new one while there are fewer than `size`, else a turn in the queue. */
function takeThread(app: App, pool: Pool): Thread | Promise<Thread | undefined> {
  const idle = pool.idle.pop();
  if (idle) return idle;
  if (pool.all.size < pool.size) return startThread(pool);
  if (pool.queue.length >= THREAD_QUEUE_LIMIT) {
    const full = `All ${pool.size} threads are busy and ${THREAD_QUEUE_LIMIT} calls wait for one`;
    reached(app, "thread queue", `fan-out: ${full}; 503 until the queue shortens`);
    throw new RequestError(503, `${full}: try again in a moment.`);
  }
  return new Promise((resolve) => pool.queue.push(resolve));
}

function startThread(pool: Pool): Thread {
  const thread = new Thread(POOL_THREAD, { eval: true, execArgv: [] });
  thread.unref(); // an idle thread keeps no process alive; on stop, closePool ends them all
  pool.all.add(thread);
  return thread;
}

/** Back from a call: to the first call waiting, else idle. A failed thread is ended and replaced. */
function giveBack(app: App, pool: Pool, thread: Thread, failed: boolean) {
  if (failed) pool.all.delete(thread);
  if (failed) void thread.terminate();
  const next = pool.queue.shift();
  if (pool.queue.length === 0) stateOf(app).reached.delete("thread queue");
  if (next) next(failed ? startThread(pool) : thread);
  else if (!failed) pool.idle.push(thread);
}

/** Sends the sleep and waits for its end: nothing, or the 502 of a thread that threw or ended. */
function sleepOn(thread: Thread, ms: number): Promise<RequestError | undefined> {
  return new Promise((resolve) => {
    const settle = (failure?: string) => {
      thread.off("message", slept).off("error", threw).off("exit", ended);
      resolve(failure && new RequestError(502, `The thread for this call ${failure}.`));
    };
    const slept = () => settle();
    const threw = (error: Error) => settle(`failed: ${error.message}`);
    const ended = (code: number) => settle(`ended (exit code ${code}) before its sleep did`);
    thread.on("message", slept).on("error", threw).on("exit", ended);
    thread.postMessage(ms);
  });
}

/** On stop: ends every thread, and answers the calls still queued; says how many threads ended. */
function closePool(pool: Pool): number {
  for (const thread of pool.all) void thread.terminate();
  for (const next of pool.queue.splice(0)) next(undefined);
  return pool.all.size;
}

// ─── The blocking twin: lesson 2 on a sync worker ────────────────────────────
//
// blocking-server.ts serves these at /api/ and /api/aggregated/. A sync worker
// cannot await, so its aggregated view calls /api/ on its own server one call
// after another with a blocking HTTP client (below), like the post's
// `httpx.get(url)` in a loop: the worker's thread waits for each answer. With
// one worker that is the post's deadlock: the first call waits at the arbiter
// for a free worker, and the only worker is the one waiting for the call. The
// call's timeout ends it. The async server's /api/aggregated/sequential/ and
// /api/blocking/ have no twin there: every call is one after another, and
// every sleep blocks.

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
// Every HTTP client in Node is asynchronous, so a helper thread (one per
// worker process) makes the call while the worker's thread blocks in
// Atomics.wait on memory the two share, a SharedArrayBuffer. The helper stores
// the answer there and calls Atomics.notify, which wakes the waiting thread;
// until then that thread runs nothing, as in sleepSync. Browsers forbid
// Atomics.wait on their main thread for exactly this reason: the page would freeze.

/** Room for an answer: /api/'s is a few dozen bytes; a longer one counts as a failed call. */
const ANSWER_LIMIT_BYTES = 64 * 1024;
/** The helper's own timeout ends every call; this much later, the worker stops waiting for it. */
const HELPER_GRACE_MS = 1000;
/** The shared memory: [outcome, status, length] as 32-bit integers, then the answer's bytes. */
const OUTCOMES = ["waiting", "answered", "timed out", "failed"] as const;
type Outcome = (typeof OUTCOMES)[number];
const HEADER_BYTES = 3 * Int32Array.BYTES_PER_ELEMENT;
/** An outcome as the shared memory holds it: its index. */
const code = (outcome: Outcome) => OUTCOMES.indexOf(outcome);

/**
 * The helper thread, as plain JavaScript: it runs without the TypeScript loader.
 * It uses node:http with no connection pool (agent: false), so each call is a
 * connection of its own that the arbiter queues, as gunicorn's would be. Its
 * `timeout` fires once the socket has been silent that long: a read timeout, as httpx's.
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
        const tooLong = Buffer.from("its answer is too long");
        if (body.length > answer.length) once(${code("failed")}, 0, tooLong);
        else once(${code("answered")}, response.statusCode, body);
      });
    });
    request.on("timeout", () => request.destroy(timedOut));
    request.on("error", (error) => {
      const outcome = error === timedOut ? ${code("timed out")} : ${code("failed")};
      once(outcome, 0, Buffer.from(error.code ?? error.message));
    });
  });
`;

const shared = new SharedArrayBuffer(HEADER_BYTES + ANSWER_LIMIT_BYTES);
const header = new Int32Array(shared, 0, 3);
let helper: Thread | undefined;

/** GETs `url` and blocks this thread until the answer, a failure, or `timeoutMs`. */
function getSync(url: string, timeoutMs: number): CallResult {
  // Started at the first call, without tsx or type stripping (execArgv: []): its code is plain JS.
  helper ??= new Thread(HELPER_THREAD, { eval: true, workerData: shared, execArgv: [] });
  Atomics.store(header, 0, code("waiting"));
  helper.postMessage({ url, timeoutMs });
  // Sleeps while the outcome still reads "waiting": until the helper's notify, or the grace ends.
  Atomics.wait(header, 0, code("waiting"), timeoutMs + HELPER_GRACE_MS);
  const outcome = OUTCOMES[Atomics.load(header, 0)]!;
  if (outcome === "waiting") {
    // The helper hangs: it is stopped, and a fresh one takes the next call.
    void helper.terminate();
    helper = undefined;
    return TIMED_OUT;
  }
  const text = new TextDecoder().decode(new Uint8Array(shared, HEADER_BYTES, header[2]!));
  return { outcome, status: header[1]!, text };
}

// ─── The routes ──────────────────────────────────────────────────────────────
//
// blocking-server.ts mounts syncApi and syncAggregated at /api/ and
// /api/aggregated/ itself; here are server.ts's four.

export const fanOut: Lesson = {
  flags: { threads: { type: "string" } },
  help: `  --threads N      Runs /api/blocking/?in=thread on a pool of N threads (default ${THREADS},
                   as libuv's own pool), made at first use.`,
  banner: (url) => [
    `  Lesson 2, fan-out: curl ${url}api/aggregated/ ` +
      `(${FAN_OUT} calls at once, about ${API_DELAY_MS / 1000} s)`,
  ],

  install(app) {
    const threads = flagNumber("threads", app.flags.threads, "", THREADS, THREADS_RANGE);
    const state: FanOut = { threads, stopped: false, selfCalls: 0, frozenMs: 0, frozenAt: 0,
      reached: new Set() };
    states.set(app, state);
    app.onStop(() => {
      state.stopped = true;
      const ended = state.pool ? closePool(state.pool) : 0;
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
