/**
 * lessons/fanout.ts: lesson 2, fan-out: ten slow calls awaited at once, awaited
 * one after another, or made with the thread blocked.
 *
 * The story of the post "Django 3.1 Async" (seed 004, ../shared/seeds/004_*.txt).
 * /api/ is a slow endpoint: it waits, then answers. The aggregated view calls
 * it ten times on this same server and answers with all ten answers. Awaiting
 * the ten calls together takes about one wait; awaiting them one after another
 * takes ten; and neither stops a countdown, because awaiting is not blocking.
 * /api/blocking/ is the mistake, on purpose: the same wait as a synchronous
 * sleep, which stops everything this process serves until it ends. The second
 * half of the file is the blocking twin that blocking-server.ts serves: a sync
 * worker calls itself one call at a time, and a lone worker deadlocks.
 *
 * Run it:    npx -y tsx server.ts       (lessons/ beside it installs this lesson)
 * Then try:
 *   - curl http://localhost:8000/api/aggregated/ calls /api/ ten times at once and
 *     answers in about one second: ten waits of one second, awaited together;
 *   - curl http://localhost:8000/api/aggregated/sequential/ makes the same calls one
 *     after another: about ten seconds, and every countdown tab keeps counting;
 *   - curl "http://localhost:8000/api/blocking/?delay=3000" while a tab counts: the
 *     tab stops for three seconds, then catches up: a sync sleep blocks everything;
 *   - curl "http://localhost:8000/api/aggregated/?via=blocking&n=4" makes four such
 *     calls, four seconds frozen; with ten, the last ones miss their read timeout: 504.
 * Then the blocking twin:   npx -y tsx blocking-server.ts
 *   - curl http://localhost:8001/api/ answers after a one-second sleep, as server.ts's does;
 *   - curl http://localhost:8001/api/aggregated/ hangs, then answers 504 after five
 *     seconds: the only worker waits for an answer that only it could give;
 *   - --workers 2: the same curl answers after about ten seconds, the second worker
 *     serving the ten calls one by one.
 */

import type net from "node:net";
import { setTimeout as wait } from "node:timers/promises";
import { Worker as Thread } from "node:worker_threads";
import { bracketed, RequestError, wholeNumber, type Handler, type Lesson } from "../server.ts";
import { sendJson } from "./http.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

/** How long /api/ waits, unless ?delay= says otherwise. */
const API_DELAY_MS = 1000;
const DELAY_RANGE = { min: 0, max: 10_000 };
/** How many calls the aggregated view makes, unless ?n= says otherwise. */
const FAN_OUT = 10;
const FAN_OUT_RANGE = { min: 1, max: 50 };
/**
 * A call to this server that has no answer after this long fails: httpx's
 * default read timeout, the one the post ran into.
 */
export const SELF_CALL_TIMEOUT_MS = 5000;
const TASK_ID = /^[A-Za-z0-9_-]{1,20}$/;
/** Which endpoint the aggregated view calls, by ?via=. */
const VIA: Record<string, string> = { api: "/api/", blocking: "/api/blocking/" };

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

/** The post's answer, the task id included when the caller gave one. */
function apiAnswer(taskId: string | null): { message: string; task_id?: string } {
  const message = "Hello Async World!";
  return taskId === null ? { message } : { message, task_id: taskId };
}

/** The n calls of one aggregated view: task_id 0 to n - 1, each passing the delay on. */
function taskUrls(origin: string, path: string, { n, delay }: { n: number; delay: number }) {
  const query = (taskId: number) => `?task_id=${taskId}&delay=${delay}`;
  return Array.from({ length: n }, (_, taskId) => `${origin}${path}${query(taskId)}`);
}

/** The aggregated view's answer: the n answers in task order, and how long the calls took. */
function aggregatedAnswer(responses: unknown[], startedAt: number) {
  const seconds = ((performance.now() - startedAt) / 1000).toFixed(2);
  const debug_message = `fetch executed in ${seconds} seconds.`;
  return { message: "Hello Async World!", responses, debug_message };
}

/** The one sentence for a call that timed out (504); `why` may say why it did. */
function callTimedOut(url: string, why = ""): RequestError {
  const within = `within ${SELF_CALL_TIMEOUT_MS / 1000} s (its read timeout)`;
  return new RequestError(504, `The call to ${pathOf(url)} got no answer ${within}${why}.`);
}

/** The one sentence for a call that failed otherwise (502). */
function callFailed(url: string, what: string): RequestError {
  return new RequestError(502, `The call to ${pathOf(url)} failed: ${what}.`);
}

function pathOf(url: string): string {
  const { pathname, search } = new URL(url);
  return pathname + search;
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

// ─── The async views ─────────────────────────────────────────────────────────

/** The slow endpoint, done right: `await` hands the thread back while it waits. */
const serveApi: Handler = async (_req, res, url) => {
  const { delay, taskId } = readApiOptions(url);
  await wait(delay);
  sendJson(res, 200, apiAnswer(taskId));
};

const sleeper = new Int32Array(new SharedArrayBuffer(4));

/**
 * Blocks the whole thread for `ms`, like Python's time.sleep(): nothing else
 * in this process runs meanwhile, not a timer, not a request, not a tick.
 */
export function sleepSync(ms: number): void {
  if (ms > 0) Atomics.wait(sleeper, 0, 0, ms);
}

/** The same endpoint with the mistake: a sync sleep stops every countdown of this process. */
const serveBlockingApi: Handler = (_req, res, url) => {
  const { delay, taskId } = readApiOptions(url);
  sleepSync(delay);
  sendJson(res, 200, apiAnswer(taskId));
};

/** One call to this server, its answer as JSON; a timeout or a failure becomes one sentence. */
async function callSelf(url: string): Promise<unknown> {
  let answer: Response;
  try {
    answer = await fetch(url, { signal: AbortSignal.timeout(SELF_CALL_TIMEOUT_MS) });
    if (answer.status !== 200) throw callFailed(url, `it answered ${answer.status}`);
    return await answer.json();
  } catch (error) {
    if (error instanceof RequestError) throw error;
    if ((error as Error).name === "TimeoutError") throw callTimedOut(url);
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    throw callFailed(url, cause?.code ?? cause?.message ?? (error as Error).message);
  }
}

/** Reads ?n=, ?delay= and ?via=, and lists the calls to make to this server. */
function plannedCalls(url: URL, server: net.Server): string[] {
  const path = VIA[url.searchParams.get("via") ?? "api"];
  const endpoints = Object.keys(VIA).join(" or ");
  if (path === undefined) throw new RequestError(400, `via must be ${endpoints}.`);
  return taskUrls(selfOrigin(server), path, readFanOutOptions(url));
}

/** The post's async view: every call starts at once, and Promise.all waits for the last. */
const serveAggregated: Handler = async (_req, res, url, { server }) => {
  const calls = plannedCalls(url, server);
  const startedAt = performance.now();
  const responses = await Promise.all(calls.map(callSelf));
  sendJson(res, 200, aggregatedAnswer(responses, startedAt));
};

/** The same calls awaited one after another: n waits long, yet the thread is free meanwhile. */
const serveAggregatedSequential: Handler = async (_req, res, url, { server }) => {
  const calls = plannedCalls(url, server);
  const startedAt = performance.now();
  const responses: unknown[] = [];
  for (const call of calls) responses.push(await callSelf(call));
  sendJson(res, 200, aggregatedAnswer(responses, startedAt));
};

// ─── The blocking twin: lesson 2 on a sync worker ────────────────────────────
//
// blocking-server.ts serves these. A sync worker cannot await. Its aggregated
// view calls /api/ on its own server one call after another, with a blocking
// HTTP client, like `httpx.get(url)` in a loop: the worker's thread waits for
// each answer. With one worker that is the post's deadlock: the first call
// waits at the arbiter for a free worker, and the only worker is the one
// waiting for the call. The read timeout ends it. The async server's
// /api/aggregated/sequential/ and /api/blocking/ have no twin there: every
// call is one after another, and every sleep blocks.

/** The slow endpoint on a sync worker: the sleep holds it; `log` says when it starts and ends. */
export function syncApi(log: (line: string) => void): Handler {
  return (_req, res, url) => {
    const { delay, taskId } = readApiOptions(url);
    const call = url.pathname + url.search;
    log(`${call}: sleeping ${delay} ms, this worker blocked`);
    sleepSync(delay);
    sendJson(res, 200, apiAnswer(taskId));
    log(`${call}: answered`);
  };
}

/**
 * The post's view on a sync worker: n calls to the server at `origin`, each
 * waited for in turn. `onlyWorker` decides what a timed-out call means.
 */
export function syncAggregated(origin: string, onlyWorker: boolean): Handler {
  const deadlock =
    ", because this server's only worker is the one waiting for it: the call queues behind" +
    " the very request that made it (try --workers 2)";
  const callSelfSync = (url: string): unknown => {
    const answer = getSync(url, SELF_CALL_TIMEOUT_MS);
    if (answer.outcome === "timed out") throw callTimedOut(url, onlyWorker ? deadlock : "");
    if (answer.outcome === "failed") throw callFailed(url, answer.text);
    if (answer.status !== 200) throw callFailed(url, `it answered ${answer.status}`);
    return JSON.parse(answer.text);
  };
  return (_req, res, url) => {
    const startedAt = performance.now();
    const responses = taskUrls(origin, "/api/", readFanOutOptions(url)).map(callSelfSync);
    sendJson(res, 200, aggregatedAnswer(responses, startedAt));
  };
}

// ─── A blocking HTTP client ──────────────────────────────────────────────────
//
// Node's own HTTP clients are all asynchronous. So one helper thread per
// worker process makes the call, writes the answer into memory both threads
// share, and wakes the worker's thread, which waits with Atomics.wait
// meanwhile: as blocked as in sleepSync.

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

interface SyncAnswer {
  outcome: Outcome;
  status: number;
  text: string;
}

/** GETs `url` and blocks this thread until the answer, a failure, or `timeoutMs`. */
export function getSync(url: string, timeoutMs: number): SyncAnswer {
  // Started at the first call, without tsx or type stripping (execArgv: []): its code is plain JS.
  helper ??= new Thread(HELPER_THREAD, { eval: true, workerData: shared, execArgv: [] });
  Atomics.store(header, 0, code("waiting"));
  helper.postMessage({ url, timeoutMs });
  Atomics.wait(header, 0, code("waiting"), timeoutMs + HELPER_GRACE_MS);
  const outcome = OUTCOMES[Atomics.load(header, 0)]!;
  if (outcome === "waiting") {
    // The helper hangs: it is stopped, and a fresh one takes the next call.
    void helper.terminate();
    helper = undefined;
    return { outcome: "timed out", status: 0, text: "" };
  }
  const text = new TextDecoder().decode(new Uint8Array(shared, HEADER_BYTES, header[2]!));
  return { outcome, status: header[1]!, text };
}

// ─── The routes ──────────────────────────────────────────────────────────────
//
// blocking-server.ts mounts syncApi and syncAggregated at /api/ and
// /api/aggregated/ itself; here are server.ts's four.

export const fanOut: Lesson = {
  install(app) {
    Object.assign(app.routes, {
      "/api/": { GET: serveApi },
      "/api/aggregated/": { GET: serveAggregated },
      "/api/aggregated/sequential/": { GET: serveAggregatedSequential },
      "/api/blocking/": { GET: serveBlockingApi },
    });
  },
};
