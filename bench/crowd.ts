/**
 * bench/crowd.ts: thousands of countdown tabs at once, against a server on this machine.
 *
 * Opens --streams countdown streams (with the benchmark's load client,
 * bench/client.ts, from source addresses spread over 127.0.0.0/8), prints one
 * line a second while they run, and closes every one of them on Ctrl-C or
 * after --seconds. Made for the wall (/wall on server.ts): start a crowd while
 * the wall is on the projector, and its left column keeps counting while the
 * server line says how many streams the one process holds, and in how much memory.
 *
 * Run:  npm run crowd -- --streams 5000                 (until Ctrl-C)
 *       npm run crowd -- --streams 200 --seconds 10     (stops by itself)
 *
 * Each line says how many streams are open, how many events came in the last
 * second, and how many were lost so far: ids a stream skipped.
 */

import { isIP } from "node:net";
import { exitWith, FROM_RANGE, INTERVAL_RANGE, isMain, readFlags, TICK_INTERVAL_MS, wholeNumber } from "../server.ts";
import { startClient, type ClientReport, type RunningCounts } from "./client.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

const DEFAULT_HOST = "127.0.0.1";
const DEFAULT_PORT = 8000;
const DEFAULT_STREAMS = 1000;
/**
 * A crowd is bounded: every stream is a socket, so a file descriptor here and
 * one in the server (20,000 each under a common `ulimit -n`), and with --host
 * ::1, one source address, an ephemeral port each (28,232 on Linux by default).
 */
export const STREAMS_RANGE = { min: 1, max: 19_000 };
const SECONDS_RANGE = { min: 1, max: 86_400 };
const PORT_RANGE = { min: 1, max: 65_535 };
/** How long each stream's countdown is asked to last: longer than any crowd runs, so no countdown ends on its own. */
const COUNTDOWN_MS = 86_400_000;
/** Requests waiting for their headers at once, as the benchmark's client does by default. */
const CONCURRENCY = 256;
const REPORT_EVERY_MS = 1000;

const HELP = `Usage: npm run crowd -- [flags]

Opens many countdown streams against a server on this machine, prints one line
a second, and closes them all on Ctrl-C or after --seconds.

  --streams N    Opens this many streams, from ${STREAMS_RANGE.min} to ${STREAMS_RANGE.max.toLocaleString("en-US")} (default ${DEFAULT_STREAMS}).
  --host H       Connects to this address: 127.0.0.1, another 127.x.x.x, ::1 or localhost (default ${DEFAULT_HOST}).
  --port N       Connects to this port (default ${DEFAULT_PORT}, server.ts's).
  --seconds S    Closes every stream after this many seconds (default: until Ctrl-C).
  --interval MS  Asks for one tick every MS milliseconds (default ${TICK_INTERVAL_MS}).
  --help         Shows this help.`;

// ─── Flags ───────────────────────────────────────────────────────────────────

/** True for this machine's own addresses: the only ones a crowd may load. */
export function isLoopback(host: string): boolean {
  if (host === "localhost" || host === "::1") return true;
  return isIP(host) === 4 && host.startsWith("127.");
}

function number(flag: string, text: string | undefined, fallback: number | undefined, range: { min: number; max: number }) {
  if (text === undefined) return fallback;
  try {
    return wholeNumber(`--${flag}`, text, range);
  } catch (error) {
    exitWith(2, (error as Error).message);
  }
}

function readOptions() {
  const flags = readFlags(
    {
      streams: { type: "string" },
      host: { type: "string", default: DEFAULT_HOST },
      port: { type: "string" },
      seconds: { type: "string" },
      interval: { type: "string" },
      help: { type: "boolean", default: false },
    },
    HELP,
  );
  if (!isLoopback(flags.host)) {
    exitWith(2, `--host must be this machine (127.0.0.1, another 127.x.x.x, ::1 or localhost): a crowd only loads a server of your own.`);
  }
  const interval = number("interval", flags.interval, TICK_INTERVAL_MS, INTERVAL_RANGE)!;
  return {
    host: flags.host,
    port: number("port", flags.port, DEFAULT_PORT, PORT_RANGE)!,
    streams: number("streams", flags.streams, DEFAULT_STREAMS, STREAMS_RANGE)!,
    seconds: number("seconds", flags.seconds, undefined, SECONDS_RANGE),
    interval,
    // As long as a countdown may be: a day, or fewer ticks than the servers' largest ?from=.
    countdownSeconds: Math.min(COUNTDOWN_MS, FROM_RANGE.max * interval) / 1000,
  };
}

// ─── The crowd ───────────────────────────────────────────────────────────────

const count = (n: number) => n.toLocaleString("en-US");
const clock = () => new Date().toTimeString().slice(0, 8);

/** One line a second: "[12:00:01] 5,000 streams open · 5,000 events in the last second · 0 lost so far". */
function progressLine(now: RunningCounts, eventsBefore: number): string {
  const parts = [
    `${count(now.open)} ${now.open === 1 ? "stream" : "streams"} open`,
    `${count(now.eventsReceived - eventsBefore)} events in the last second`,
    `${count(now.skipped)} lost so far`,
  ];
  if (now.failed) parts.push(`${count(now.failed)} failed to open`);
  if (now.cutShort) parts.push(`${count(now.cutShort)} cut by the server`);
  return `[${clock()}] ${parts.join(" · ")}`;
}

function summary(report: ClientReport): string {
  const seconds = (report.durationMs / 1000).toFixed(1);
  const reasons = Object.entries(report.failures)
    .map(([why, n]) => `${count(n)} ${why}`)
    .join(", ");
  const failed = report.failed ? `; ${count(report.failed)} streams failed (${reasons})` : "";
  return (
    `Closed all ${count(report.options.streams)} streams after ${seconds} s: ${count(report.servedAtOnce)} were open at once, ` +
    `${count(report.eventsReceived)} events received${failed}; sockets left open: ${report.socketsLeftOpen}.`
  );
}

async function main() {
  const options = readOptions();
  const host = options.host.includes(":") ? `[${options.host}]` : options.host;
  const url = `http://${host}:${options.port}/sse/`;
  const stop = new AbortController();
  const until = options.seconds === undefined ? "Ctrl-C closes them all" : `they close after ${options.seconds} s, or on Ctrl-C`;
  console.log(`Crowd (pid ${process.pid}): opening ${count(options.streams)} countdown streams against ${url}; ${until}.`);

  process.once("SIGINT", () => {
    console.log(`SIGINT: closing every stream`);
    // A second Ctrl-C means "now".
    process.once("SIGINT", () => process.exit(130));
    stop.abort();
  });
  process.once("SIGTERM", () => stop.abort());
  const deadline = options.seconds === undefined ? undefined : setTimeout(() => stop.abort(), options.seconds * 1000);

  const crowd = startClient(
    { url, streams: options.streams, seconds: options.countdownSeconds, interval: options.interval, concurrency: CONCURRENCY, grace: 0 },
    stop.signal,
  );
  let eventsBefore = 0;
  const reporter = setInterval(() => {
    const now = crowd.counts();
    console.log(progressLine(now, eventsBefore));
    eventsBefore = now.eventsReceived;
  }, REPORT_EVERY_MS);
  // Once stopping, the counts say nothing new until the summary.
  stop.signal.addEventListener("abort", () => clearInterval(reporter));

  const report = await crowd.report;
  clearInterval(reporter);
  clearTimeout(deadline);
  if (report.stoppedBy !== "stopped" && report.connected === 0) {
    const failures = Object.keys(report.failures).join(", ");
    const start = `npx -y tsx server.ts --port ${new URL(url).port || DEFAULT_PORT}`;
    exitWith(1, `No stream opened at ${url} (${failures}); is the server running? Start it with: ${start}`);
  }
  if (report.stoppedBy === "every stream ended") console.log("Every stream ended: the server closed them.");
  console.log(summary(report));
  process.exitCode = report.socketsLeftOpen === 0 ? 0 : 1;
}

if (isMain(import.meta.url)) await main();
