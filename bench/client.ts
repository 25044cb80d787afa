/**
 * bench/client.ts: opens many countdown streams at once and checks every event.
 *
 * Each stream asks for a countdown that lasts --seconds (from = seconds × 1000
 * / interval, so it has from + 1 events, the last one 0). The client reads
 * them as EventSource would, but strictly: anything our servers would never
 * send counts as malformed. It stops by itself when every stream has ended, or
 * --grace after the last stream should have ended, and closes every socket.
 *
 * Run:  npx tsx bench/client.ts --url http://127.0.0.1:8000/sse/ --streams 10000 --seconds 20
 *       (add --json for one line of JSON, which is what bench/run.ts reads)
 * bench/crowd.ts runs it in its own process with startClient(), which also
 * gives the counts while the run goes on, and stops it on Ctrl-C.
 *
 * What it measures, per run:
 *   - streams connected (status 200, text/event-stream), failed, cut short;
 *   - events received against events expected, ids lost or seen twice;
 *   - the time until every stream had its first event, from the first request;
 *   - tick lateness: the arrival of tick k against the stream's schedule,
 *     start + k × interval. The client cannot see the server's clock, so
 *     "start" is the earliest start that agrees with every arrival of that
 *     stream (the minimum of arrival − k × interval): lateness is never
 *     negative, and a client that was busy when one event came cannot make the
 *     later ones look early. Reported for all ticks, and for the ticks due
 *     once every stream was open (steady state, without the ramp's rush);
 *   - how many streams were live at once, and how many were starved (their
 *     first event came more than one interval after their request, or never).
 */

import http, { type ClientRequest, type IncomingMessage } from "node:http";
import { parseArgs } from "node:util";
import { isMain } from "../server.ts";
import {
  percentiles,
  sourceAddress,
  SseReader,
  sum,
  toTenths,
  type Percentiles,
  type SseMessage,
} from "./common.ts";

// ─── Flags ───────────────────────────────────────────────────────────────────

const HELP = `Usage: npx tsx bench/client.ts [flags]

  --url U          The stream to open (default http://127.0.0.1:8000/sse/).
  --streams N      Opens this many streams (default 10000).
  --seconds S      Asks each countdown to last this long (default 20).
  --interval MS    Asks for one tick every MS milliseconds (default 1000).
  --concurrency C  Keeps at most this many requests waiting for their headers (default 256).
  --grace S        Waits this long past the last stream's due end before giving up (default 10).
  --json           Prints the report as one line of JSON.`;

export interface ClientOptions {
  url: string;
  streams: number;
  seconds: number;
  interval: number;
  concurrency: number;
  grace: number;
}

/** What one run of the client found; times are milliseconds. */
export interface ClientReport {
  options: ClientOptions;
  from: number;
  connected: number;
  failed: number;
  failures: Record<string, number>;
  cutShort: number;
  unfinished: number;
  eventsExpected: number;
  eventsReceived: number;
  lost: number;
  duplicated: number;
  outOfOrder: number;
  malformed: number;
  serverEvents: number;
  heartbeats: number;
  withFirstEvent: number;
  /** From the first request until every stream had its first event; null if some never did. */
  allFirstEventsMs: number | null;
  firstEventWait: Percentiles;
  /** Tick k's arrival against start + k × interval (see below for "start"), every tick. */
  lateness: Percentiles & { ticks: number };
  /** The same, for ticks due once every stream was open: steady state, without the ramp. */
  latenessAfterRamp: Percentiles & { ticks: number };
  servedAtOnce: number;
  starved: number;
  /** Wall-clock times (ms since the epoch): while `servedAtOnce` streams were live together. */
  plateau: { from: number; to: number } | null;
  startedAt: number;
  durationMs: number;
  /** Sockets still open once the client had closed them all: 0, or something leaks. */
  socketsLeftOpen: number;
  stoppedBy: "every stream ended" | "deadline" | "stopped";
}

// ─── One stream ──────────────────────────────────────────────────────────────

const SERVER_DATA = /^\{"pid": \d+, "streams": \d+, "rss": \d+(, "delay": \d+)?\}$/;

class Stream {
  req?: ClientRequest;
  requestedAt = 0;
  headersAt = 0;
  firstEventAt = 0;
  endedAt = 0;
  lastId = -1;
  /**
   * When each tick first arrived (performance.now()), by tick (tick k is id
   * from − k); a hole until it does. It grows with the ticks received, not with
   * the countdown's length, so a crowd can ask for a countdown of a day.
   */
  arrivals: number[] = [];
  reader = new SseReader();
}

/** What a run has seen so far, for a caller that reports while it runs (bench/crowd.ts). */
export interface RunningCounts {
  /** Streams that had their first event and have not ended. */
  open: number;
  eventsReceived: number;
  /** Ids a stream skipped: events lost on the way. */
  skipped: number;
  cutShort: number;
  failed: number;
}

/** A run in progress: its counts at any moment, and its report once it stops. */
export interface RunningClient {
  counts(): RunningCounts;
  report: Promise<ClientReport>;
}

// ─── The run ─────────────────────────────────────────────────────────────────

export function runClient(options: ClientOptions): Promise<ClientReport> {
  return startClient(options).report;
}

/** Starts a run; `signal` stops it early, closing every stream (the crowd's Ctrl-C). */
export function startClient(options: ClientOptions, signal?: AbortSignal): RunningClient {
  let counts = (): RunningCounts => ({
    open: 0,
    eventsReceived: 0,
    skipped: 0,
    cutShort: 0,
    failed: 0,
  });
  const report = run(options, signal, (read) => (counts = read));
  return { counts: () => counts(), report };
}

async function run(
  options: ClientOptions,
  signal: AbortSignal | undefined,
  share: (read: () => RunningCounts) => void,
): Promise<ClientReport> {
  const { streams: count, interval, concurrency } = options;
  const from = Math.max(0, Math.round((options.seconds * 1000) / interval));
  const target = new URL(options.url);
  target.searchParams.set("from", String(from));
  target.searchParams.set("interval", String(interval));
  // URL keeps an IPv6 address in brackets; a socket wants it bare.
  const hostname =
    target.hostname === "localhost" ? "127.0.0.1" : target.hostname.replace(/^\[(.*)\]$/, "$1");
  // Many source addresses on 127.0.0.0/8, so repeated runs never run out of
  // ephemeral ports (and never wait for TIME_WAIT to clear).
  const spreadSources = /^127\.\d+\.\d+\.\d+$/.test(hostname);

  const streams = Array.from({ length: count }, () => new Stream());
  const failures: Record<string, number> = {};
  let malformed = 0;
  let serverEvents = 0;
  let duplicated = 0;
  let eventsReceived = 0;
  let outOfOrder = 0;
  let skipped = 0;
  let cutShort = 0;
  let connected = 0;
  let live = 0;
  let servedAtOnce = 0;
  /** While the most streams were live together: from reaching that count to its first drop. */
  const plateau = { from: 0, to: 0 };
  let launched = 0;
  let waitingForHeaders = 0;
  let settled = 0;
  let stopped = false;

  const startedAt = performance.now();
  const epoch = (time: number) => performance.timeOrigin + time;

  let finish!: (by: ClientReport["stoppedBy"]) => void;
  const finished = new Promise<ClientReport["stoppedBy"]>((resolve) => (finish = resolve));
  let stopTimer: NodeJS.Timeout | undefined;
  // The hard bound: however slowly the streams open, the run ends.
  const hardStopMs = (options.seconds + options.grace) * 1000 + 60_000 + count * 5;
  const hardStop = setTimeout(() => finish("deadline"), hardStopMs);
  const stop = () => finish("stopped");
  if (signal?.aborted) stop();
  signal?.addEventListener("abort", stop);
  share(() => ({
    open: live,
    eventsReceived,
    skipped,
    cutShort,
    failed: sum(Object.values(failures)),
  }));

  function fail(stream: Stream, why: string) {
    if (stream.endedAt || stopped) return;
    stream.endedAt = performance.now();
    failures[why] = (failures[why] ?? 0) + 1;
    if (!stream.headersAt) waitingForHeaders--;
    settle(stream);
  }

  function settle(stream: Stream) {
    if (stream.firstEventAt && stream.endedAt) {
      if (live === servedAtOnce && plateau.to === 0) plateau.to = epoch(stream.endedAt);
      live--;
    }
    stream.req?.destroy();
    stream.req = undefined;
    settled++;
    if (settled === count) finish("every stream ended");
    launchMore();
  }

  function onMessage(stream: Stream, message: SseMessage, now: number) {
    const { event, id: idText = "", data = "", broken } = message;
    if (broken) return void malformed++;
    if (event === "server" && message.id === undefined && SERVER_DATA.test(data)) {
      return void serverEvents++;
    }
    const isTick = event === "i" && /^\d{1,9}$/.test(idText) && data === `{"i": ${idText}}`;
    if (!isTick) return void malformed++;
    const id = Number(idText);
    if (id > from) return void malformed++;
    if (stream.arrivals[from - id] === undefined) stream.arrivals[from - id] = now;
    else duplicated++;
    eventsReceived++;
    if (stream.lastId !== -1 && id !== stream.lastId - 1) outOfOrder++;
    if (stream.lastId !== -1 && id < stream.lastId - 1) skipped += stream.lastId - 1 - id;
    stream.lastId = id;
    if (!stream.firstEventAt) {
      stream.firstEventAt = now;
      live++;
      if (live > servedAtOnce) {
        servedAtOnce = live;
        plateau.from = epoch(now);
        plateau.to = 0;
      }
    }
  }

  /** Every message this chunk completed; a broken one (a field we never send) is malformed. */
  function onText(stream: Stream, text: string) {
    const now = performance.now();
    for (const message of stream.reader.read(text)) onMessage(stream, message, now);
  }

  function onResponse(stream: Stream, res: IncomingMessage) {
    stream.headersAt = performance.now();
    waitingForHeaders--;
    launchMore();
    const isStream = String(res.headers["content-type"]).startsWith("text/event-stream");
    if (res.statusCode !== 200 || !isStream) {
      res.resume();
      return fail(stream, `status ${res.statusCode}`);
    }
    connected++;
    res.setEncoding("utf8");
    res.on("data", (text: string) => onText(stream, text));
    res.on("end", () => {
      if (stream.endedAt) return;
      stream.endedAt = performance.now();
      if (stream.reader.unfinished) malformed++;
      if (stream.lastId !== 0) cutShort++;
      settle(stream);
    });
    res.on("error", () => {}); // a cut shows up as 'close' without 'end', below
    res.on("close", () => {
      // After the run stopped, the client closed the stream itself: not the server's doing.
      if (!stream.endedAt && !stopped) {
        cutShort++;
        fail(stream, "connection closed mid-stream");
      }
    });
  }

  function launch(index: number) {
    const stream = streams[index]!;
    stream.requestedAt = performance.now();
    waitingForHeaders++;
    const req = http.request({
      host: hostname,
      port: target.port || 80,
      path: target.pathname + target.search,
      headers: { Accept: "text/event-stream" },
      agent: false,
      localAddress: spreadSources ? sourceAddress(index) : undefined,
    });
    stream.req = req;
    req.on("response", (res) => onResponse(stream, res));
    req.on("error", (error: NodeJS.ErrnoException) => fail(stream, error.code ?? error.message));
    req.end();
  }

  function launchMore() {
    if (stopped) return;
    while (launched < count && waitingForHeaders < concurrency) launch(launched++);
    if (launched === count && stopTimer === undefined) {
      // Every request is out: the last stream is due to end one countdown from now.
      stopTimer = setTimeout(() => finish("deadline"), from * interval + options.grace * 1000);
    }
  }

  launchMore();
  const stoppedBy = await finished;
  const stoppedAt = performance.now();
  stopped = true;
  clearTimeout(stopTimer);
  clearTimeout(hardStop);
  signal?.removeEventListener("abort", stop);
  for (const stream of streams) stream.req?.destroy();
  // Destroyed sockets close on a later turn of the event loop: wait (briefly), count what is left.
  let socketsLeftOpen = openSockets();
  for (let wait = 0; socketsLeftOpen > 0 && wait < 100; wait++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    socketsLeftOpen = openSockets();
  }
  if (plateau.to === 0) plateau.to = epoch(stoppedAt);

  // ─── The report ──────────────────────────────────────────────────────────
  let unique = 0;
  const lateness: number[] = [];
  const latenessAfterRamp: number[] = [];
  const rampEnd = plateau.from - performance.timeOrigin;
  let withFirstEvent = 0;
  let lastFirstEvent = 0;
  let starved = 0;
  const waits: number[] = [];
  for (const stream of streams) {
    // The stream's start, as the client sees it: the earliest that agrees with
    // every arrival. A client busy at one event cannot make later ones look early.
    let start = Infinity;
    // forEach skips the holes: ticks that never arrived.
    stream.arrivals.forEach((at, tick) => {
      start = Math.min(start, at - tick * interval);
    });
    stream.arrivals.forEach((at, tick) => {
      unique++;
      if (tick === 0) return;
      const due = start + tick * interval;
      lateness.push(at - due);
      if (due >= rampEnd) latenessAfterRamp.push(at - due);
    });
    if (stream.firstEventAt) {
      withFirstEvent++;
      lastFirstEvent = Math.max(lastFirstEvent, stream.firstEventAt);
      waits.push(stream.firstEventAt - stream.requestedAt);
    }
    if (!stream.firstEventAt || stream.firstEventAt - stream.requestedAt > interval) starved++;
  }
  const failed = sum(Object.values(failures));
  const unfinished = streams.filter((stream) => !stream.endedAt).length;
  return {
    options,
    from,
    connected,
    failed,
    failures,
    cutShort,
    unfinished,
    eventsExpected: count * (from + 1),
    eventsReceived,
    lost: count * (from + 1) - unique,
    duplicated,
    outOfOrder,
    malformed,
    serverEvents,
    heartbeats: sum(streams.map((stream) => stream.reader.comments)),
    withFirstEvent,
    allFirstEventsMs: withFirstEvent === count ? toTenths(lastFirstEvent - startedAt) : null,
    firstEventWait: percentiles(waits),
    lateness: { ...percentiles(lateness), ticks: lateness.length },
    latenessAfterRamp: { ...percentiles(latenessAfterRamp), ticks: latenessAfterRamp.length },
    servedAtOnce,
    starved,
    plateau: servedAtOnce ? plateau : null,
    startedAt: epoch(startedAt),
    durationMs: toTenths(stoppedAt - startedAt),
    socketsLeftOpen,
    stoppedBy,
  };
}

function openSockets(): number {
  return process.getActiveResourcesInfo().filter((kind) => kind === "TCPSocketWrap").length;
}

// ─── Command line ────────────────────────────────────────────────────────────

function readOptions(): ClientOptions & { json: boolean } {
  const { values } = parseArgs({
    options: {
      url: { type: "string", default: "http://127.0.0.1:8000/sse/" },
      streams: { type: "string", default: "10000" },
      seconds: { type: "string", default: "20" },
      interval: { type: "string", default: "1000" },
      concurrency: { type: "string", default: "256" },
      grace: { type: "string", default: "10" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    process.exit(0);
  }
  const number = (flag: string, text: string, min: number) => {
    const value = Number(text);
    if (!Number.isFinite(value) || value < min) {
      console.error(`--${flag} must be a number of at least ${min}.`);
      process.exit(2);
    }
    return value;
  };
  return {
    url: values.url,
    streams: Math.floor(number("streams", values.streams, 1)),
    seconds: number("seconds", values.seconds, 0),
    interval: number("interval", values.interval, 10),
    concurrency: Math.floor(number("concurrency", values.concurrency, 1)),
    grace: number("grace", values.grace, 0),
    json: values.json,
  };
}

function describe(report: ClientReport): string {
  const ms = (value: number | null) =>
    value === null || Number.isNaN(value) ? "n/a" : `${value} ms`;
  const spread = ({ p50, p99, max }: Percentiles) =>
    `p50 ${ms(p50)}, p99 ${ms(p99)}, max ${ms(max)}`;
  const { lateness, latenessAfterRamp } = report;
  const seconds = (report.durationMs / 1000).toFixed(1);
  const failures = report.failed ? ` ${JSON.stringify(report.failures)}` : "";
  return [
    `streams connected:       ${report.connected} of ${report.options.streams} ` +
      `(failed ${report.failed}${failures}, cut short ${report.cutShort}, ` +
      `unfinished ${report.unfinished})`,
    `events received:         ${report.eventsReceived} of ${report.eventsExpected} expected ` +
      `(lost ${report.lost}, duplicated ${report.duplicated}, ` +
      `out of order ${report.outOfOrder}, malformed ${report.malformed})`,
    `other messages:          ${report.serverEvents} server events, ` +
      `${report.heartbeats} heartbeats`,
    `every first event by:    ${ms(report.allFirstEventsMs)} ` +
      `(${report.withFirstEvent} streams had one; wait ${spread(report.firstEventWait)})`,
    `tick lateness:           ${spread(lateness)} over ${lateness.ticks} ticks`,
    `  once all were open:    ${spread(latenessAfterRamp)} over ${latenessAfterRamp.ticks} ticks`,
    `served at once:          ${report.servedAtOnce} (starved ${report.starved})`,
    `stopped:                 ${report.stoppedBy}, after ${seconds} s; ` +
      `sockets left open: ${report.socketsLeftOpen}`,
  ].join("\n");
}

if (isMain(import.meta.url)) {
  const { json, ...options } = readOptions();
  const report = await runClient(options);
  console.log(json ? JSON.stringify(report) : describe(report));
}
