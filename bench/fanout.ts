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
 *     client (bench/client.ts), while nothing else runs, while /api/aggregated/
 *     runs again and again, and while /api/aggregated/?via=blocking does (the
 *     views start once the countdowns have ticked twice, so every stream is open).
 *
 * Run:  npx tsx bench/fanout.ts [--n 10] [--delay 1000] [--runs 3] [--streams 200]
 *                               [--seconds 20] [--interval 1000] [--json]
 *       (npm run bench runs it after the soak; npm run bench -- --fanout runs only this)
 *
 * It asserts nothing about speed; it exits 1 when a server does not start.
 */

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
  /** How many views answered while the countdowns ran. */
  views: number;
  lateness: ClientReport["lateness"];
  eventsReceived: number;
  eventsExpected: number;
}

export interface FanOutReport {
  options: FanOutOptions;
  latency: LatencyRow[];
  lateness: LatenessRow[];
}

// ─── The servers, each its own process (bench/common.ts) ─────────────────────

async function startAsync(): Promise<Server> {
  const server = await startServer("server.ts", ["--quiet"]);
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
    // After its 504 the worker still serves the call that timed out: wait for that,
    // so each run starts idle.
    const answered = /: answered$/;
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

/** Runs the load client against `origin` while `view` (if any) is requested again and again. */
async function latenessBeside(
  label: string,
  origin: string,
  view: string | undefined,
  options: FanOutOptions,
): Promise<LatenessRow> {
  const client = startFile("bench/client.ts", [
    "--json",
    ...["--url", `${origin}/sse/`],
    ...["--streams", String(options.streams)],
    ...["--seconds", String(options.seconds)],
    ...["--interval", String(options.interval)],
    ...["--grace", "5"],
  ]);
  let running = true;
  client.exited.then(() => (running = false));
  // The views start once the countdowns run, so they measure ticks on schedule, not
  // connections waiting to be accepted.
  await Promise.race([delay(RAMP_INTERVALS * options.interval), client.exited]);
  let views = 0;
  while (running && view) {
    await timeView(`${origin}${view}`);
    views++;
  }
  await client.closed;
  const report = jsonLine<ClientReport>(client, "the load client");
  const { lateness, eventsReceived, eventsExpected } = report;
  console.error(
    `fan-out: countdowns ${label}: lateness p99 ${lateness.p99} ms, max ${lateness.max} ms, ` +
      `${views} views`,
  );
  return { label, views, lateness, eventsReceived, eventsExpected };
}

async function lateness(options: FanOutOptions): Promise<LatenessRow[]> {
  const query = `n=${options.n}&delay=${options.delay}`;
  const rows: LatenessRow[] = [];
  for (const [label, view] of [
    ["alone", undefined],
    ["while /api/aggregated/ runs", `/api/aggregated/?${query}`],
    ["while /api/aggregated/?via=blocking runs", `/api/aggregated/?${query}&via=blocking`],
  ] as const) {
    // A fresh server each time, so one measurement's leftovers cannot slow the next.
    const server = await startAsync();
    try {
      rows.push(await latenessBeside(label, server.url, view, options));
    } finally {
      await stop(server);
    }
  }
  return rows;
}

// ─── The report ──────────────────────────────────────────────────────────────

export async function runFanOut(options: FanOutOptions): Promise<FanOutReport> {
  return { options, latency: await latency(options), lateness: await lateness(options) };
}

/** The report as Markdown, the way bench/run.ts writes its own sections. */
export function fanOutSection({ options, latency, lateness }: FanOutReport): string {
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
      `beside the view requested again and again:`,
    "",
    ...tableHead(
      "countdowns",
      "views answered meanwhile",
      "events received / expected",
      "tick lateness p50 · p99 · max",
    ),
  );
  for (const row of lateness) {
    const { p50, p99, max } = row.lateness;
    const events = `${row.eventsReceived} / ${row.eventsExpected}`;
    lines.push(tableRow(row.label, row.views, events, `${p50} ms · **${p99} ms** · ${max} ms`));
  }
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
