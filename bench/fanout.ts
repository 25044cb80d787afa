/**
 * bench/fanout.ts: lesson 2 in numbers. How long the aggregated view takes,
 * and what it does to the countdowns that run beside it.
 *
 * Each server runs as its own process on loopback, started by this one:
 *   - latency: /api/aggregated/?n=N&delay=D, timed from the client, --runs
 *     times, median: on server.ts awaited at once, awaited one after another
 *     (/api/aggregated/sequential/), and fanned out to /api/blocking/
 *     (?via=blocking); on blocking-server.ts with two workers, and with one
 *     (which answers 504 when the read timeout ends its deadlock);
 *   - lateness: --streams countdowns on one server.ts, measured by the load
 *     client (bench/client.ts), with the loop's worst delay as the server's own
 *     `server` events say it: while nothing else runs, and while one
 *     /api/aggregated/ runs, awaited, ?via=blocking (the sync sleeps on the loop),
 *     and ?via=thread on 4 threads and on 10 (the view starts once the countdowns
 *     have ticked twice, so every stream is open), with the view's own time;
 *   - memory per pool thread: server.ts --threads 10's RSS before and after its
 *     ten threads exist.
 *
 * Run:  npx tsx bench/fanout.ts [--n 10] [--delay 1000] [--runs 3] [--streams 200]
 *                               [--seconds 20] [--interval 1000] [--json]
 *       (npm run bench runs it after the soak; npm run bench -- --fanout runs only this)
 *
 * It asserts nothing about speed; it exits 1 when a server does not start.
 */

import http from "node:http";
import { setTimeout as delay } from "node:timers/promises";
import { exitWith, isMain, readFlags, wholeNumber } from "../server.ts";
import type { ClientReport } from "./client.ts";
import {
  jsonLine,
  killEverything,
  linesMatching,
  median,
  messageOf,
  plural,
  rssKB,
  SseReader,
  startFile,
  startServer,
  stop,
  tableHead,
  tableRow,
  waitForLines,
  type Server,
} from "./common.ts";

/** How long one view may take to answer before the run gives up. */
const VIEW_DEADLINE_MS = 120_000;
/** The countdowns open, and get their first ticks, before the views start. */
const RAMP_INTERVALS = 2;
/** Long enough that two warm-up calls overlap, so both of two workers take one. */
const WARM_UP_DELAY_MS = 200;

export interface FanOutOptions {
  n: number;
  delay: number;
  runs: number;
  streams: number;
  seconds: number;
  interval: number;
}

export interface LatencyRow {
  label: string;
  /** Each run's status and seconds, as the client saw them. */
  runs: { status: number; seconds: number }[];
}

export interface LatenessRow {
  label: string;
  /** The one view run while the countdowns ran: its status and seconds, if there was one. */
  view?: { status: number; seconds: number };
  lateness: ClientReport["lateness"];
  /** The worst event-loop delay the server reported in its `server` events, in ms. */
  worstDelay: number;
  eventsReceived: number;
  eventsExpected: number;
}

export interface FanOutReport {
  options: FanOutOptions;
  latency: LatencyRow[];
  lateness: LatenessRow[];
  /** RSS per thread of server.ts's pool, in KB. */
  threadKB: number;
}

// ─── The servers, each its own process (bench/common.ts) ─────────────────────

async function startAsync(threads = 4): Promise<Server> {
  const server = await startServer("server.ts", ["--quiet", "--threads", String(threads)]);
  await warmUp(server.url);
  return server;
}

async function startBlocking(workers: number): Promise<Server> {
  const server = await startServer("blocking-server.ts", ["--workers", String(workers)]);
  await waitForLines(server, /Booting worker with pid/, "blocking-server.ts", workers);
  await warmUp(server.url);
  return server;
}

// ─── Latency ─────────────────────────────────────────────────────────────────

/** One view, timed from the request to the last byte of its answer. */
async function timeView(url: string): Promise<{ status: number; seconds: number }> {
  const startedAt = performance.now();
  const answer = await fetch(url, { signal: AbortSignal.timeout(VIEW_DEADLINE_MS) });
  await answer.text();
  return { status: answer.status, seconds: (performance.now() - startedAt) / 1000 };
}

/**
 * Two calls at once before any timing: every worker has booted, and the first
 * call's one-off costs are paid.
 */
async function warmUp(origin: string) {
  const call = `${origin}/api/?delay=${WARM_UP_DELAY_MS}`;
  await Promise.all([timeView(call), timeView(call)]);
}

async function latency(options: FanOutOptions): Promise<LatencyRow[]> {
  const query = `n=${options.n}&delay=${options.delay}`;
  const rows: LatencyRow[] = [];
  const timeRuns = async (label: string, url: string, between = async () => {}) => {
    const row: LatencyRow = { label, runs: [] };
    for (let run = 0; run < options.runs; run++) {
      row.runs.push(await timeView(url));
      await between();
    }
    rows.push(row);
    const answers = row.runs.map((r) => `${r.status} in ${r.seconds.toFixed(2)} s`);
    console.error(`fan-out: ${label}: ${answers.join(", ")}`);
  };

  const server = await startAsync();
  const { url } = server;
  try {
    await timeRuns("server.ts, awaited at once", `${url}/api/aggregated/?${query}`);
    const sequential = `${url}/api/aggregated/sequential/?${query}`;
    await timeRuns("server.ts, awaited one after another", sequential);
    const viaBlocking = "server.ts, ?via=blocking (a sync sleep per call)";
    await timeRuns(viaBlocking, `${url}/api/aggregated/?${query}&via=blocking`);
  } finally {
    await stop(server);
  }

  const two = await startBlocking(2);
  try {
    await timeRuns("blocking-server.ts --workers 2", `${two.url}/api/aggregated/?${query}`);
  } finally {
    await stop(two);
  }

  const one = await startBlocking(1);
  try {
    // After its 504 the worker still takes the call that timed out (and serves it, or drops it
    // because its client left): wait for that, so each run starts idle.
    const answered = /: answered$|Not serving GET/;
    const orphanServed = () => {
      const times = linesMatching(one, answered) + 1;
      return waitForLines(one, answered, "the orphaned call", times, VIEW_DEADLINE_MS);
    };
    const aggregated = `${one.url}/api/aggregated/?${query}`;
    await timeRuns("blocking-server.ts --workers 1", aggregated, orphanServed);
  } finally {
    await stop(one);
  }
  return rows;
}

// ─── Lateness of the countdowns beside the views ─────────────────────────────

/**
 * The worst loop delay one extra stream hears from the server: each `server` event carries the
 * worst of the last second, whenever it moved. `from()` forgets what came before (the streams
 * opening); `stop()` ends the stream and says the worst since.
 */
function watchDelay(origin: string) {
  let worst = 0;
  const reader = new SseReader();
  const request = http.get(`${origin}/sse/?from=100000`, (answer) => {
    answer.setEncoding("utf8").on("data", (text: string) => {
      for (const message of reader.read(text)) {
        if (message.event !== "server") continue;
        const { delay } = JSON.parse(message.data ?? "{}") as { delay?: number };
        worst = Math.max(worst, delay ?? 0);
      }
    });
  });
  request.on("error", () => {}); // ended by stop(), or by the server's end
  return {
    from: () => void (worst = 0),
    stop: () => {
      request.destroy();
      return worst;
    },
  };
}

/** Runs the load client against `origin`, and `view` (if any) once the countdowns run. */
async function latenessBeside(
  label: string,
  origin: string,
  view: string | undefined,
  options: FanOutOptions,
): Promise<LatenessRow> {
  const watching = watchDelay(origin);
  const client = startFile("bench/client.ts", [
    "--json",
    ...["--url", `${origin}/sse/`],
    ...["--streams", String(options.streams)],
    ...["--seconds", String(options.seconds)],
    ...["--interval", String(options.interval)],
    ...["--grace", "5"],
  ]);
  // The view starts once the countdowns run, so it measures ticks on schedule, not
  // connections waiting to be accepted.
  await Promise.race([delay(RAMP_INTERVALS * options.interval), client.exited]);
  watching.from();
  const timed = view ? await timeView(`${origin}${view}`) : undefined;
  await client.closed;
  const worstDelay = watching.stop();
  const report = jsonLine<ClientReport>(client, "the load client");
  const { lateness, eventsReceived, eventsExpected } = report;
  const viewPart = timed ? `, the view ${timed.status} in ${timed.seconds.toFixed(2)} s` : "";
  console.error(
    `fan-out: countdowns ${label}: lateness p99 ${lateness.p99} ms, max ${lateness.max} ms, ` +
      `worst loop delay ${worstDelay} ms${viewPart}`,
  );
  return { label, view: timed, lateness, worstDelay, eventsReceived, eventsExpected };
}

async function lateness(options: FanOutOptions): Promise<LatenessRow[]> {
  const query = `n=${options.n}&delay=${options.delay}`;
  const rows: LatenessRow[] = [];
  for (const [label, view, threads] of [
    ["alone", undefined, 4],
    ["while /api/aggregated/ runs (awaited)", `/api/aggregated/?${query}`, 4],
    ["while ?via=blocking runs (sync sleeps on the loop)", `/api/aggregated/?${query}&via=blocking`, 4],
    ["while ?via=thread runs, --threads 4", `/api/aggregated/?${query}&via=thread`, 4],
    ["while ?via=thread runs, --threads 10", `/api/aggregated/?${query}&via=thread`, 10],
  ] as const) {
    // A fresh server each time, so one measurement's leftovers cannot slow the next.
    const server = await startAsync(threads);
    try {
      rows.push(await latenessBeside(label, server.url, view, options));
    } finally {
      await stop(server);
    }
  }
  return rows;
}

/** How much RSS a thread of the pool adds: server.ts --threads 10, before and after its ten. */
async function memoryPerThread(): Promise<number> {
  const threads = 10;
  const server = await startAsync(threads);
  try {
    const before = rssKB(server.child.pid!);
    // Ten calls at once make the ten threads; they stay, idle, for the next calls.
    await timeView(`${server.url}/api/aggregated/?via=thread&n=${threads}&delay=${WARM_UP_DELAY_MS}`);
    await delay(WARM_UP_DELAY_MS);
    const kbPerThread = (rssKB(server.child.pid!) - before) / threads;
    console.error(`fan-out: a pool thread adds ${(kbPerThread / 1024).toFixed(1)} MB of RSS`);
    return kbPerThread;
  } finally {
    await stop(server);
  }
}

// ─── The report ──────────────────────────────────────────────────────────────

export async function runFanOut(options: FanOutOptions): Promise<FanOutReport> {
  return {
    options,
    latency: await latency(options),
    lateness: await lateness(options),
    threadKB: await memoryPerThread(),
  };
}

/** The report as Markdown, the way bench/run.ts writes its own sections. */
export function fanOutSection({ options, latency, lateness, threadKB }: FanOutReport): string {
  const { n, delay: delayMs, runs, streams, seconds, interval } = options;
  const lines = [
    `**Fan-out** (lesson 2): \`/api/aggregated/?n=${n}&delay=${delayMs}\`, timed from the ` +
      `client, median of ${plural(runs, "run")} (bench/fanout.ts).`,
    "",
    ...tableHead("view", "answer", "median", "every run"),
  ];
  const toHundredths = (value: number) => `${value.toFixed(2)} s`;
  for (const row of latency) {
    const statuses = [...new Set(row.runs.map((run) => run.status))].join(", ");
    const times = row.runs.map((run) => run.seconds);
    const middle = `**${toHundredths(median(times))}**`;
    lines.push(tableRow(row.label, statuses, middle, times.map(toHundredths).join(" · ")));
  }
  lines.push(
    "",
    `${streams} countdowns on one server.ts (one tick every ${interval} ms for ${seconds} s), ` +
      `while one \`/api/aggregated/?n=${n}&delay=${delayMs}\` runs; the loop's worst delay is ` +
      "what the server's own `server` events said from the view's start (the streams open):",
    "",
    ...tableHead(
      "countdowns",
      "the view: answer in",
      "events received / expected",
      "tick lateness p50 · p99 · max",
      "loop's worst delay",
    ),
  );
  for (const row of lateness) {
    const { p50, p99, max } = row.lateness;
    const events = `${row.eventsReceived} / ${row.eventsExpected}`;
    const view = row.view ? `${row.view.status} in ${toHundredths(row.view.seconds)}` : "(none)";
    const late = `${p50} ms · **${p99} ms** · ${max} ms`;
    lines.push(tableRow(row.label, view, events, late, `**${row.worstDelay} ms**`));
  }
  lines.push(
    "",
    `A thread of the pool adds **${(threadKB / 1024).toFixed(1)} MB** of RSS ` +
      "(server.ts --threads 10, before and after its ten threads exist).",
  );
  return lines.join("\n");
}

// ─── Command line ────────────────────────────────────────────────────────────

const HELP = `Usage: npx tsx bench/fanout.ts [flags]

  --n N           Calls per aggregated view (default 10).
  --delay MS      Each call's wait (default 1000).
  --runs R        Times each view, R times, and reports the median (default 3).
  --streams S     Countdowns open beside the views (default 200).
  --seconds S     Makes each countdown last this long (default 20).
  --interval MS   One tick every MS milliseconds (default 1000).
  --json          Prints the report as one line of JSON (bench/run.ts reads it).`;

if (isMain(import.meta.url)) {
  const flags = readFlags(
    {
      n: { type: "string", default: "10" },
      delay: { type: "string", default: "1000" },
      runs: { type: "string", default: "3" },
      streams: { type: "string", default: "200" },
      seconds: { type: "string", default: "20" },
      interval: { type: "string", default: "1000" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    HELP,
  );
  const whole = (flag: string, text: string, min: number, max: number) => {
    try {
      return wholeNumber(`--${flag}`, text, { min, max });
    } catch (error) {
      exitWith(2, (error as Error).message);
    }
  };
  try {
    const report = await runFanOut({
      n: whole("n", flags.n, 1, 50),
      delay: whole("delay", flags.delay, 0, 10_000),
      runs: whole("runs", flags.runs, 1, 100),
      streams: whole("streams", flags.streams, 1, 100_000),
      seconds: whole("seconds", flags.seconds, 1, 3600),
      interval: whole("interval", flags.interval, 10, 60_000),
    });
    console.log(flags.json ? JSON.stringify(report) : fanOutSection(report));
  } catch (error) {
    console.error(`fan-out: ${messageOf(error)}`);
    process.exitCode = 1;
  } finally {
    killEverything();
  }
}
