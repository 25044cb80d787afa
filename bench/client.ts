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
  /** Tick k's arrival against start + k × interval (see below for "start"), every tick of every stream. */
  lateness: Percentiles & { ticks: number };
  /** The same, only for ticks due once every stream was open: steady state, without the ramp's rush. */
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

export interface Percentiles {
  p50: number;
  p99: number;
  max: number;
}

// ─── One stream ──────────────────────────────────────────────────────────────

/** The fields of the message being read, until the blank line that ends it. */
interface Message {
  event?: string;
  id?: string;
  data?: string;
  broken: boolean;
}

const SERVER_DATA = /^\{"pid": \d+, "streams": \d+, "rss": \d+\}$/;

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
  partialLine = "";
  message: Message = { broken: false };
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
  let counts = (): RunningCounts => ({ open: 0, eventsReceived: 0, skipped: 0, cutShort: 0, failed: 0 });
  const report = run(options, signal, (read) => (counts = read));
  return { counts: () => counts(), report };
}

async function run(options: ClientOptions, signal: AbortSignal | undefined, share: (read: () => RunningCounts) => void): Promise<ClientReport> {
  const { streams: count, interval, concurrency } = options;
  const from = Math.max(0, Math.round((options.seconds * 1000) / interval));
  const target = new URL(options.url);
  target.searchParams.set("from", String(from));
  target.searchParams.set("interval", String(interval));
  // URL keeps an IPv6 address in brackets; a socket wants it bare.
  const hostname = target.hostname === "localhost" ? "127.0.0.1" : target.hostname.replace(/^\[(.*)\]$/, "$1");
  // Many source addresses on 127.0.0.0/8, so repeated runs never run out of
  // ephemeral ports (and never wait for TIME_WAIT to clear).
  const spreadSources = /^127\.\d+\.\d+\.\d+$/.test(hostname);

  const streams = Array.from({ length: count }, () => new Stream());
  const failures: Record<string, number> = {};
  let malformed = 0;
  let serverEvents = 0;
  let heartbeats = 0;
  let duplicated = 0;
  let eventsReceived = 0;
  let outOfOrder = 0;
  let skipped = 0;
  let cutShort = 0;
  let connected = 0;
  let live = 0;
  let servedAtOnce = 0;
  /** While the most streams were live together: from when that count was reached to when it first dropped. */
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
  const hardStop = setTimeout(() => finish("deadline"), (options.seconds + options.grace) * 1000 + 60_000 + count * 5);
  const stop = () => finish("stopped");
  if (signal?.aborted) stop();
  signal?.addEventListener("abort", stop);
  share(() => ({ open: live, eventsReceived, skipped, cutShort, failed: Object.values(failures).reduce((sum, n) => sum + n, 0) }));

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

  function onMessage(stream: Stream, message: Message, now: number) {
    if (message.broken) return void malformed++;
    if (message.event === "server" && message.id === undefined && SERVER_DATA.test(message.data ?? "")) return void serverEvents++;
    if (message.event !== "i" || !/^\d{1,9}$/.test(message.id ?? "") || message.data !== `{"i": ${message.id}}`) return void malformed++;
    const id = Number(message.id);
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

  /** Reads whole lines; a blank line ends a message, as in the SSE spec. */
  function onText(stream: Stream, text: string) {
    const now = performance.now();
    const lines = (stream.partialLine + text).split("\n");
    stream.partialLine = lines.pop()!;
    for (let line of lines) {
      if (line.endsWith("\r")) line = line.slice(0, -1);
      const message = stream.message;
      if (line === "") {
        if (message.event !== undefined || message.id !== undefined || message.data !== undefined || message.broken) onMessage(stream, message, now);
        stream.message = { broken: false };
      } else if (line.startsWith(":")) {
        heartbeats++;
      } else {
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        const value = colon === -1 ? "" : line.slice(line[colon + 1] === " " ? colon + 2 : colon + 1);
        if ((field === "event" || field === "id" || field === "data") && message[field] === undefined) message[field] = value;
        else message.broken = true; // an unknown field, or one given twice: never sent by our servers
      }
    }
  }

  function onResponse(stream: Stream, res: IncomingMessage) {
    stream.headersAt = performance.now();
    waitingForHeaders--;
    launchMore();
    if (res.statusCode !== 200 || !String(res.headers["content-type"]).startsWith("text/event-stream")) {
      res.resume();
      return fail(stream, `status ${res.statusCode}`);
    }
    connected++;
    res.setEncoding("utf8");
    res.on("data", (text: string) => onText(stream, text));
    res.on("end", () => {
      if (stream.endedAt) return;
      stream.endedAt = performance.now();
      if (stream.partialLine !== "" || stream.message.event !== undefined || stream.message.data !== undefined) malformed++;
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
      localAddress: spreadSources ? `127.0.0.${2 + (index % 253)}` : undefined,
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
  // Destroyed sockets close on a later turn of the event loop: wait (briefly) and count what is left.
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
      lateness.push(at - (start + tick * interval));
      if (start + tick * interval >= rampEnd) latenessAfterRamp.push(at - (start + tick * interval));
    });
    if (stream.firstEventAt) {
      withFirstEvent++;
      lastFirstEvent = Math.max(lastFirstEvent, stream.firstEventAt);
      waits.push(stream.firstEventAt - stream.requestedAt);
    }
    if (!stream.firstEventAt || stream.firstEventAt - stream.requestedAt > interval) starved++;
  }
  const failed = Object.values(failures).reduce((sum, n) => sum + n, 0);
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
    heartbeats,
    withFirstEvent,
    allFirstEventsMs: withFirstEvent === count ? round(lastFirstEvent - startedAt) : null,
    firstEventWait: percentiles(waits),
    lateness: { ...percentiles(lateness), ticks: lateness.length },
    latenessAfterRamp: { ...percentiles(latenessAfterRamp), ticks: latenessAfterRamp.length },
    servedAtOnce,
    starved,
    plateau: servedAtOnce ? plateau : null,
    startedAt: epoch(startedAt),
    durationMs: round(stoppedAt - startedAt),
    socketsLeftOpen,
    stoppedBy,
  };
}

function openSockets(): number {
  return process.getActiveResourcesInfo().filter((kind) => kind === "TCPSocketWrap").length;
}

/** Nearest-rank percentiles, in milliseconds to 0.1 ms. */
export function percentiles(values: number[]): Percentiles {
  if (!values.length) return { p50: NaN, p99: NaN, max: NaN };
  const sorted = Float64Array.from(values).sort();
  const at = (p: number) => round(sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!);
  return { p50: at(50), p99: at(99), max: round(sorted[sorted.length - 1]!) };
}

function round(ms: number): number {
  return Math.round(ms * 10) / 10;
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
  const ms = (value: number | null) => (value === null || Number.isNaN(value) ? "n/a" : `${value} ms`);
  return [
    `streams connected:       ${report.connected} of ${report.options.streams} (failed ${report.failed}${report.failed ? ` ${JSON.stringify(report.failures)}` : ""}, cut short ${report.cutShort}, unfinished ${report.unfinished})`,
    `events received:         ${report.eventsReceived} of ${report.eventsExpected} expected (lost ${report.lost}, duplicated ${report.duplicated}, out of order ${report.outOfOrder}, malformed ${report.malformed})`,
    `other messages:          ${report.serverEvents} server events, ${report.heartbeats} heartbeats`,
    `every first event by:    ${ms(report.allFirstEventsMs)} (${report.withFirstEvent} streams had one; wait p50 ${ms(report.firstEventWait.p50)}, p99 ${ms(report.firstEventWait.p99)}, max ${ms(report.firstEventWait.max)})`,
    `tick lateness:           p50 ${ms(report.lateness.p50)}, p99 ${ms(report.lateness.p99)}, max ${ms(report.lateness.max)} over ${report.lateness.ticks} ticks`,
    `  once all were open:    p50 ${ms(report.latenessAfterRamp.p50)}, p99 ${ms(report.latenessAfterRamp.p99)}, max ${ms(report.latenessAfterRamp.max)} over ${report.latenessAfterRamp.ticks} ticks`,
    `served at once:          ${report.servedAtOnce} (starved ${report.starved})`,
    `stopped:                 ${report.stoppedBy}, after ${(report.durationMs / 1000).toFixed(1)} s; sockets left open: ${report.socketsLeftOpen}`,
  ].join("\n");
}

if (isMain(import.meta.url)) {
  const { json, ...options } = readOptions();
  const report = await runClient(options);
  console.log(json ? JSON.stringify(report) : describe(report));
}
