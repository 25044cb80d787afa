/**
 * test/fanout.ts: lesson 2, fan-out. server.ts's aggregated view awaits its
 * calls to itself all at once, or one after another, and neither stops a
 * countdown; its /api/blocking/ does. blocking-server.ts makes the same calls
 * with a blocking client: one worker deadlocks until the read timeout, two
 * workers answer. And the routing fixes this lesson's paths brought, on both.
 */

import type { Test } from "uvu";
import * as assert from "uvu/assert";
import type { App } from "../server.ts";
import { readdirSync } from "node:fs";
import { fanOut, FREEZE_LIMIT_MS, SELF_CALL_TIMEOUT_MS, THREAD_QUEUE_LIMIT } from "../lessons/fanout.ts";
import {
  browserLesson,
  Child,
  DEADLINE_MS,
  lesson,
  Profile,
  runner,
  startLoopbackServer,
  stopLoopbackServer,
  RawRequest,
  request,
  SseClient,
  startBlocking,
  startServer,
  stopBlocking,
  stopServer,
  until,
  workerPids,
} from "./helpers.ts";

/** A view that waits for a read timeout needs longer than the usual deadline. */
const TIMEOUT_DEADLINE_MS = SELF_CALL_TIMEOUT_MS + DEADLINE_MS;
/** Short waits, so the suites stay quick; a countdown ticks several times during one. */
const DELAY_MS = 300;
/** Long enough that every call of a view has arrived before the first one answers, even on a busy machine. */
const OVERLAP_DELAY_MS = 1000;
const TICK_MS = 100;
/** A tick long enough that a request reaches the server well before the next one is due. */
const SLOW_TICK_MS = 300;

/** The answers /api/ gives for task ids 0 to n - 1, in order. */
function answersInOrder(n: number) {
  return Array.from({ length: n }, (_, taskId) => ({ message: "Hello Async World!", task_id: String(taskId) }));
}

/** Checks an aggregated view's answer: the n answers in task order, and how long the calls took. */
function assertAggregated(res: { status?: number; headers: Record<string, unknown>; body: string }, n: number) {
  assert.is(res.status, 200, res.body);
  assert.is(res.headers["content-type"], "application/json; charset=utf-8");
  const answer = JSON.parse(res.body);
  assert.is(answer.message, "Hello Async World!");
  assert.equal(answer.responses, answersInOrder(n));
  assert.match(answer.debug_message, /^fetch executed in \d+\.\d\d seconds\.$/);
}

// ─── What both servers share: /api/, the 400s, the routing ───────────────────

function answersLikeThePost(test: Test, base: () => string) {
  test("/api/ answers the post's JSON, with the task id only when one was given", async () => {
    const plain = await request(`${base()}/api/?delay=0`);
    assert.is(plain.status, 200);
    assert.is(plain.headers["content-type"], "application/json; charset=utf-8");
    assert.equal(JSON.parse(plain.body), { message: "Hello Async World!" });
    const tagged = await request(`${base()}/api/?delay=0&task_id=Task_7-b`);
    assert.equal(JSON.parse(tagged.body), { message: "Hello Async World!", task_id: "Task_7-b" });
  });

  const badRequests: [string, string][] = [
    ["/api/?delay=-1", "delay must be a whole number from 0 to 10000."],
    ["/api/?delay=10001", "delay must be a whole number from 0 to 10000."],
    ["/api/?delay=1.5", "delay must be a whole number from 0 to 10000."],
    ["/api/?task_id=", "task_id must be 1 to 20 characters of A-Z, a-z, 0-9, _ and -."],
    ["/api/?task_id=123456789012345678901", "task_id must be 1 to 20 characters of A-Z, a-z, 0-9, _ and -."],
    ["/api/?task_id=%3Cscript%3E", "task_id must be 1 to 20 characters of A-Z, a-z, 0-9, _ and -."],
    ["/api/aggregated/?n=0", "n must be a whole number from 1 to 50."],
    ["/api/aggregated/?n=51", "n must be a whole number from 1 to 50."],
    ["/api/aggregated/?n=ten", "n must be a whole number from 1 to 50."],
    ["/api/aggregated/?delay=10001", "delay must be a whole number from 0 to 10000."],
  ];
  for (const [path, sentence] of badRequests) {
    test(`400 for ${path}`, async () => {
      const res = await request(`${base()}${path}`);
      assert.is(res.status, 400);
      assert.is(res.headers["content-type"], "text/plain; charset=utf-8");
      assert.is(res.body, `${sentence}\n`);
    });
  }
}

function routesPathsAsPaths(test: Test, base: () => string) {
  test("//sse/ is a path nothing lives at (404), not a URL whose host is sse", async () => {
    const res = await request(`${base()}//sse/?from=1&interval=10`);
    assert.is(res.status, 404);
    assert.is(res.body, "Nothing here at //sse/; the countdown is at /.\n");
  });

  test("a known path without its slash redirects to the slash (308), query kept, for GET and HEAD", async () => {
    for (const [path, location] of [
      ["/sse?from=3&interval=10", "/sse/?from=3&interval=10"],
      ["/api?delay=0", "/api/?delay=0"],
      ["/api/aggregated?n=2", "/api/aggregated/?n=2"],
    ]) {
      const res = await request(`${base()}${path}`);
      assert.is(res.status, 308, path);
      assert.is(res.headers.location, location);
    }
    const head = await request(`${base()}/api`, { method: "HEAD" });
    assert.is(head.status, 308);
    assert.is(head.headers.location, "/api/");
    assert.is(head.body, "");
  });

  test("a full URL as the request target (absolute-form) is served by its path", async () => {
    const raw = new RawRequest(base(), "http://example.test/api/?delay=0&task_id=full");
    try {
      await until("the answer to an absolute-form request", () => raw.text.includes("}\n"));
      assert.match(raw.text, /^HTTP\/1\.1 200 OK\r\n/);
      assert.ok(raw.text.endsWith('{"message":"Hello Async World!","task_id":"full"}\n'), raw.text);
    } finally {
      raw.close();
    }
  });

  test("other methods, and paths nothing lives at, get no redirect", async () => {
    const post = await request(`${base()}/api`, { method: "POST" });
    assert.is(post.status, 404);
    assert.is((await request(`${base()}//api`)).status, 404);
    assert.is((await request(`${base()}/nope`)).status, 404);
  });
}

// ─── server.ts ───────────────────────────────────────────────────────────────

/** The calls a route is serving right now, and the most it served at once. */
interface CallsInFlight {
  now: number;
  most: number;
}

/**
 * Counts, from outside the lesson, the requests a route serves at once: its
 * handler is wrapped in one that counts while the handler runs.
 */
function countCalls(app: App, path: string): CallsInFlight {
  const calls = { now: 0, most: 0 };
  const serve = app.routes[path]!.GET!;
  app.routes[path] = {
    ...app.routes[path],
    GET: async (...args) => {
      calls.most = Math.max(calls.most, ++calls.now);
      try {
        await serve(...args);
      } finally {
        calls.now--;
      }
    },
  };
  return calls;
}

lesson("fan-out: server.ts awaits its calls", (test) => {
  let app: App | undefined;
  let url = "";
  let api: CallsInFlight;
  let blockingApi: CallsInFlight;
  const streams: SseClient[] = [];
  test.before(async () => {
    // Lesson 1 and lesson 2 alone: the later lessons have suites of their own.
    ({ app, url } = await startServer({ lessons: [fanOut] }));
    api = countCalls(app, "/api/");
    blockingApi = countCalls(app, "/api/blocking/");
  });
  test.before.each(() => {
    api.most = blockingApi.most = 0;
  });
  test.after.each(() => {
    for (const stream of streams.splice(0)) stream.close();
  });
  test.after(() => stopServer(app));

  answersLikeThePost(test, () => url);
  routesPathsAsPaths(test, () => url);

  test("400 for a ?via= that names no endpoint, names an object's own keys included", async () => {
    // "constructor", "__proto__" and "toString" are in every object: a plain lookup would find them.
    for (const via of ["elsewhere", "constructor", "__proto__", "toString"]) {
      const res = await request(`${url}/api/aggregated/?via=${via}`);
      assert.is(res.status, 400, via);
      assert.is(res.body, "via must be api, blocking or thread.\n");
    }
  });

  test("the aggregated view answers the n answers in task order, all n calls in flight at once", async () => {
    // The server listens on a port the system chose (port 0): the view found it by itself.
    assertAggregated(await request(`${url}/api/aggregated/?n=7&delay=${OVERLAP_DELAY_MS}`), 7);
    assert.is(api.most, 7);
    assert.is(api.now, 0);
  });

  test("without ?n= it makes ten calls", async () => {
    assertAggregated(await request(`${url}/api/aggregated/?delay=${OVERLAP_DELAY_MS}`), 10);
    assert.is(api.most, 10);
  });

  test("the sequential view gives the same answers, never more than one call in flight", async () => {
    assertAggregated(await request(`${url}/api/aggregated/sequential/?n=4&delay=${DELAY_MS}`), 4);
    assert.is(api.most, 1);
  });

  test("?via=blocking calls /api/blocking/: the same answers, and the sync sleeps take their turns", async () => {
    assertAggregated(await request(`${url}/api/aggregated/?n=3&delay=${DELAY_MS}&via=blocking`), 3);
    assert.is(blockingApi.most, 1);
    assert.is(api.most, 0, "no call went to /api/");
  });

  test("a countdown gets its next events while the aggregated views wait: awaiting is not blocking", async () => {
    const stream = new SseClient(`${url}/sse/?from=1000&interval=${TICK_MS}`);
    streams.push(stream);
    await stream.next();
    for (const view of ["/api/aggregated/", "/api/aggregated/sequential/"]) {
      const before = stream.numbers.length;
      assertAggregated(await request(`${url}${view}?n=3&delay=${DELAY_MS}`), 3);
      assert.ok(stream.numbers.length > before, `no event came while ${view} waited`);
    }
  });

  test("a countdown gets no event while /api/blocking/ sleeps, then catches up without a gap", async () => {
    const stream = new SseClient(`${url}/sse/?from=1000&interval=${SLOW_TICK_MS}`);
    streams.push(stream);
    await stream.next();
    // Asked right after a tick, so the sleep starts long before the next one is due.
    const before = stream.numbers.length;
    const answer = await request(`${url}/api/blocking/?delay=${3 * SLOW_TICK_MS}&task_id=b`);
    assert.equal(JSON.parse(answer.body), { message: "Hello Async World!", task_id: "b" });
    assert.is(stream.numbers.length, before, "an event came while the thread slept");
    // The ticks due during the sleep come after it, each number once, in order.
    for (let tick = 0; tick < 3; tick++) await stream.next();
    const numbers = stream.numbers;
    assert.equal(numbers, numbers.map((_, index) => numbers[0]! - index));
  });

  test("a call that gets no answer within the read timeout makes the view answer 504 with one sentence", async () => {
    const res = await request(`${url}/api/aggregated/?n=2&delay=${SELF_CALL_TIMEOUT_MS + 1000}`, {}, undefined, TIMEOUT_DEADLINE_MS);
    assert.is(res.status, 504);
    assert.is(res.body, `The call to /api/?task_id=0&delay=${SELF_CALL_TIMEOUT_MS + 1000} got no answer within 5 s (its read timeout).\n`);
  });

  test("a call that fails otherwise makes the view answer 502 with one sentence", async () => {
    // One connection at most: the view's own. Node closes the self-call's connection at once.
    await noConnectionsLeft(app!);
    app!.server.maxConnections = 1;
    try {
      const res = await request(`${url}/api/aggregated/sequential/?n=2&delay=0`);
      assert.is(res.status, 502);
      assert.match(res.body, /^The call to \/api\/\?task_id=0&delay=0 failed: [^\n]+\.\n$/);
    } finally {
      app!.server.maxConnections = Infinity;
    }
  });
});

// ─── The one thread's delay, and the way out: a thread pool ──────────────────

/** A sleep long enough that the loop's delay stands out from any busy machine's. */
const BLOCK_MS = 1500;
/**
 * What the server's figure for that sleep is at least: its monitor samples the loop every few
 * milliseconds, so it sees the stall from its last sample on, up to one sample less.
 */
const BLOCK_SEEN_MS = BLOCK_MS - 50;

/** The delays the stream's server events carried, in order. */
const delaysOf = (stream: SseClient) =>
  stream.messages.filter((m) => m.event === "server").map((m) => JSON.parse(m.data).delay as number);

/** The OS threads of this process (Linux): a worker_threads thread is one of them. */
const osThreads = () => readdirSync("/proc/self/task").length;

/** From the pool's log lines, the most threads busy and the most calls waiting at once. */
function poolFigures(lines: string[]) {
  const figures = lines.flatMap((line) => {
    const match = /\((\d+) of (\d+) threads busy, (\d+) waiting\)$/.exec(line);
    return match ? [{ busy: Number(match[1]), of: Number(match[2]), waiting: Number(match[3]) }] : [];
  });
  return {
    lines: figures.length,
    busy: Math.max(...figures.map((f) => f.busy)),
    waiting: Math.max(...figures.map((f) => f.waiting)),
  };
}

lesson("fan-out: the loop's delay, and the same sleep on a thread", (test) => {
  let app: App | undefined;
  let url = "";
  let lines: string[] = [];
  const streams: SseClient[] = [];
  test.before(async () => {
    ({ app, url, lines } = await startServer({ lessons: [fanOut], flags: { threads: "2" } }));
  });
  test.after.each(() => {
    for (const stream of streams.splice(0)) stream.close();
  });
  test.after(() => stopServer(app));

  test("the server event carries a delay of at least the blocked time after /api/blocking/, then a small one", async () => {
    const stream = new SseClient(`${url}/sse/?from=1000&interval=${TICK_MS}`);
    streams.push(stream);
    // A few ticks first: the loop's monitor starts with the first stream, and a stall before
    // its first sample has nothing to be measured against.
    for (let tick = 0; tick < 3; tick++) await stream.next();
    const answer = await request(`${url}/api/blocking/?delay=${BLOCK_MS}`, {}, undefined, BLOCK_MS + DEADLINE_MS);
    assert.is(answer.status, 200);
    await until("a server event with the block's delay", () => delaysOf(stream).some((d) => d >= BLOCK_SEEN_MS)).catch((error) => {
      throw new Error(`${error.message}; the delays: ${delaysOf(stream)}`);
    });
    await until("a small delay again", () => {
      const delays = delaysOf(stream);
      const at = delays.findIndex((d) => d >= BLOCK_SEEN_MS);
      return delays.slice(at + 1).some((d) => d < BLOCK_MS / 2);
    });
    const before = delaysOf(stream).slice(0, delaysOf(stream).findIndex((d) => d >= BLOCK_SEEN_MS));
    assert.ok(before.every((d) => d < BLOCK_MS / 2), `before the block: ${before}`);
  });

  test("a stream started before ?in=thread gets its next events while the thread sleeps", async () => {
    const stream = new SseClient(`${url}/sse/?from=1000&interval=${TICK_MS}`);
    streams.push(stream);
    await stream.next();
    const before = stream.numbers.length;
    const answer = await request(`${url}/api/blocking/?in=thread&delay=${BLOCK_MS}&task_id=t`, {}, undefined, BLOCK_MS + DEADLINE_MS);
    assert.equal(JSON.parse(answer.body), { message: "Hello Async World!", task_id: "t" });
    assert.ok(stream.numbers.length >= before + 2, `events while the thread slept: ${stream.numbers.length - before}`);
    const delays = delaysOf(stream);
    assert.ok(delays.every((d) => d < BLOCK_MS / 2), `the loop's delays: ${delays}`);
  });

  test("with --threads 2, four calls via=thread never run more than two at once, and the others wait", async () => {
    const from = lines.length;
    assertAggregated(await request(`${url}/api/aggregated/?via=thread&n=4&delay=${OVERLAP_DELAY_MS}`, {}, undefined, 3 * OVERLAP_DELAY_MS + DEADLINE_MS), 4);
    const figures = poolFigures(lines.slice(from));
    assert.is(figures.lines, 8, lines.slice(from).join("\n"));
    assert.is(figures.busy, 2);
    assert.ok(figures.waiting >= 1, "some call waited for a thread");
  });

  test("400 for an ?in= that is neither loop nor thread, and for via=blocking past the freeze limit", async () => {
    const bad = await request(`${url}/api/blocking/?in=elsewhere`);
    assert.is(bad.status, 400);
    assert.is(bad.body, "in must be loop or thread.\n");
    const n = 3;
    const delay = Math.floor(FREEZE_LIMIT_MS / n) + 1;
    const tooLong = await request(`${url}/api/aggregated/?via=blocking&n=${n}&delay=${delay}`);
    assert.is(tooLong.status, 400);
    const sentence = `via=blocking makes n sync sleeps of delay ms, one after another: n × delay must be at most ${FREEZE_LIMIT_MS} ms.\n`;
    assert.is(tooLong.body, sentence);
  });

  test("a cross-site request to a blocking view is 403 with a sentence, and sleeps nothing", async () => {
    for (const path of ["/api/blocking/?delay=5000", "/api/blocking/?in=thread&delay=5000", "/api/aggregated/?via=blocking&n=1"]) {
      const res = await request(`${url}${path}`, { headers: { "Sec-Fetch-Site": "cross-site" } });
      assert.is(res.status, 403, path);
      assert.is(res.body, "The blocking views answer this site's own pages only; this request came from a cross-site page.\n");
    }
    for (const site of ["same-origin", "none"]) {
      const res = await request(`${url}/api/blocking/?delay=0`, { headers: { "Sec-Fetch-Site": site } });
      assert.is(res.status, 200, site);
    }
  });

  test(`sync sleeps past ${FREEZE_LIMIT_MS} ms in a row answer 503 with Retry-After, logged once`, async () => {
    const first = FREEZE_LIMIT_MS * 0.6;
    const deadline = first + DEADLINE_MS;
    assert.is((await request(`${url}/api/blocking/?delay=${first}`, {}, undefined, deadline)).status, 200);
    for (let again = 0; again < 2; again++) {
      const res = await request(`${url}/api/blocking/?delay=${FREEZE_LIMIT_MS / 2}`);
      assert.is(res.status, 503);
      assert.match(res.headers["retry-after"] ?? "", /^\d+$/);
      const sentence = new RegExp(`^The sync sleeps froze this process for \\d+ ms in a row; ${FREEZE_LIMIT_MS / 2} more would pass the limit of ${FREEZE_LIMIT_MS} ms: try again in \\d+ s\\.\\n$`);
      assert.match(res.body, sentence);
    }
    assert.is(lines.filter((line) => line.includes("the sync sleeps reached")).length, 1);
    // Thread calls freeze nothing: they are not counted.
    assert.is((await request(`${url}/api/blocking/?in=thread&delay=${FREEZE_LIMIT_MS / 2}`, {}, undefined, deadline)).status, 200);
  });

  test(`past ${THREAD_QUEUE_LIMIT} calls waiting for a thread, the next is 503 with a sentence`, async () => {
    // Both threads sleep; then the queue fills with calls of no delay at all.
    const long = [0, 1].map(() => request(`${url}/api/blocking/?in=thread&delay=3000`, {}, undefined, 3000 + DEADLINE_MS));
    await until("both threads busy", () => lines.some((line) => line.includes("(2 of 2 threads busy")));
    const queued = Array.from({ length: THREAD_QUEUE_LIMIT }, () => request(`${url}/api/blocking/?in=thread&delay=0`, {}, undefined, 3000 + DEADLINE_MS));
    await until("the queue to fill", () => lines.some((line) => line.includes(`, ${THREAD_QUEUE_LIMIT} waiting)`)));
    const refused = await request(`${url}/api/blocking/?in=thread&delay=0`);
    assert.is(refused.status, 503);
    assert.is(refused.body, `All 2 threads are busy and ${THREAD_QUEUE_LIMIT} calls wait for one: try again in a moment.\n`);
    const answers = await Promise.all([...long, ...queued]);
    assert.ok(answers.every((answer) => answer.status === 200));
  });

  test("on stop, a call on a thread answers 502 with a sentence, and no thread remains", async () => {
    const before = osThreads();
    const call = request(`${url}/api/blocking/?in=thread&delay=3000`, {}, undefined, 3000 + DEADLINE_MS);
    await until("the call to reach its thread", () => lines.at(-1)?.includes("ms for a thread") === true);
    const ended = app!.endStreams();
    assert.ok(ended.includes("2 threads"), `the stop says so: ${ended}`);
    const answer = await call;
    assert.is(answer.status, 502);
    assert.is(answer.body, "The thread for this call ended (exit code 1) before its sleep did.\n");
    await until("the pool's threads to end", () => osThreads() <= before - 2);
    const after = await request(`${url}/api/blocking/?in=thread&delay=0`);
    assert.is(after.status, 503);
    assert.is(after.body, "The server is stopping.\n");
  });
});

lesson("fan-out: Ctrl-C ends the pool's threads", (test) => {
  const children: Child[] = [];
  test.after(() => children.forEach((child) => child.kill()));
  const run = runner("server.ts", children);

  test("server.ts --threads 3: after three thread calls, SIGINT names the threads it ended and exits 0", async () => {
    const child = run(["--port", "0", "--threads", "3"]);
    const [, port] = await child.waitFor(/listening at http:\/\/localhost:(\d+)\//);
    const base = `http://127.0.0.1:${port}`;
    assertAggregated(await request(`${base}/api/aggregated/?via=thread&n=3&delay=${DELAY_MS}`), 3);
    assert.is(await child.stop("SIGINT"), 0);
    assert.match(child.output, /SIGINT: ending 0 open streams and 3 threads/);
  });

  test("a bad --threads is one sentence and exit code 2", async () => {
    const child = run(["--threads", "0"]);
    assert.is(await child.exited, 2);
    assert.match(child.output, /^--threads must be a whole number from 1 to 64\.\n$/m);
  });
});

browserLesson("browser: a cross-site <img> cannot freeze the server", (test, browser) => {
  let running: Awaited<ReturnType<typeof startLoopbackServer>> | undefined;
  let profile: Profile | undefined;
  test.before(async () => {
    running = await startLoopbackServer(0, { lessons: [fanOut] });
    profile = await Profile.open(browser());
  });
  test.after(async () => {
    await profile?.close();
    await stopLoopbackServer(running);
  });

  test("an <img> on a page of localhost asking 127.0.0.1's /api/blocking/ gets 403", async () => {
    const tab = await profile!.open(`http://localhost:${running!.port}/`);
    const target = `http://127.0.0.1:${running!.port}/api/blocking/?delay=3000`;
    const [response] = await Promise.all([
      tab.page.waitForResponse(target),
      tab.page.evaluate((src) => document.body.append(Object.assign(new Image(), { src })), target),
    ]);
    assert.is(response.status(), 403);
    assert.is((await response.request().headerValue("sec-fetch-site")) ?? "", "cross-site");
    const same = await tab.page.evaluate(async () => (await fetch("/api/blocking/?delay=0")).status);
    assert.is(same, 200, "the page's own fetch is served");
  });
});

/** Closes the keep-alive connections earlier tests left idle, and waits until none is open. */
async function noConnectionsLeft({ server }: App) {
  server.closeIdleConnections();
  let open = -1;
  await until("the earlier connections to close", () => {
    server.getConnections((_error, count) => (open = count));
    return open === 0;
  });
}

// ─── blocking-server.ts ──────────────────────────────────────────────────────

/** Per /api/ call, the worker logs a line when it starts sleeping and one when it answered: the most calls open at once. */
function mostCallsAtOnce(output: string): number {
  let open = 0;
  let most = 0;
  for (const [, what] of output.matchAll(/\/api\/\?\S+: (sleeping|answered)/g)) {
    open += what === "sleeping" ? 1 : -1;
    most = Math.max(most, open);
  }
  return most;
}

lesson("fan-out: blocking-server.ts calls itself with a blocking client", (test) => {
  const children: Child[] = [];
  let url = "";
  test.before(async () => {
    ({ url } = await startBlocking(children, [], 2));
  });
  test.after(() => stopBlocking(children));

  answersLikeThePost(test, () => url);
  routesPathsAsPaths(test, () => url);

  test("two workers: 200 and the n answers, the other worker serving the calls one by one", async () => {
    const child = children[0]!;
    const from = child.output.length;
    assertAggregated(await request(`${url}/api/aggregated/?n=4&delay=${DELAY_MS}`, {}, undefined, TIMEOUT_DEADLINE_MS), 4);
    const log = child.output.slice(from);
    assert.is(mostCallsAtOnce(log), 1);
    const servedBy = new Set([...log.matchAll(/\[(\d+)\] \[INFO\] \/api\/\?task_id=\d+&delay=\d+: answered/g)].map((match) => match[1]));
    assert.is(servedBy.size, 1, log);
    assert.is([...log.matchAll(/: answered/g)].length, 4);
  });
});

lesson("fan-out: one blocking worker deadlocks on itself", (test) => {
  const children: Child[] = [];
  let url = "";
  test.before(async () => {
    ({ url } = await startBlocking(children, []));
  });
  test.after(() => stopBlocking(children));

  test("one worker: the first call waits behind its own caller, and the read timeout ends it with 504", async () => {
    const child = children[0]!;
    const res = await request(`${url}/api/aggregated/?n=3&delay=${DELAY_MS}`, {}, undefined, TIMEOUT_DEADLINE_MS);
    assert.is(res.status, 504);
    assert.is(
      res.body,
      `The call to /api/?task_id=0&delay=${DELAY_MS} got no answer within 5 s (its read timeout), because this server's only worker ` +
        "is the one waiting for it: the call queues behind the very request that made it (try --workers 2).\n",
    );
    // The arbiter saw the call queue, and the read timeout came before its own WORKER TIMEOUT.
    assert.match(child.output, /\[INFO\] No idle worker: the connection from 127\.0\.0\.1:\d+ waits \(1 waiting\)/);
    assert.not.match(child.output, /WORKER TIMEOUT/);
    assert.is(workerPids(child).length, 1);
  });
});
