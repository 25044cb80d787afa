/**
 * bench/room.ts: lesson 3 measured. Push against poll, on one server.ts.
 *
 * On loopback only, each part with a fresh server.ts (tsx, --quiet) as its own process:
 *   1. the reference: --subscribers countdown streams that sit between ticks;
 *      the server's RSS per stream;
 *   2. push: --subscribers room streams, then --posts POSTs a second apart,
 *      first on the floor (bench/room-floor.ts: one loop of writes, no hub),
 *      then on server.ts. For
 *      each POST, the time from its 201 until each subscriber has the message
 *      (p50, p99, max; a subscriber that had it before this process read the
 *      201 counts 0), and how many never got it or got it twice. RSS per
 *      subscriber, against the reference's. Server CPU while the room is quiet
 *      (every stream open, nothing posted), and over the posting window;
 *   3. poll: the same number of tabs asking /room/messages?after= every --poll
 *      seconds (spread evenly over the period, one kept-alive connection each,
 *      as a browser tab keeps one), for --poll-seconds, with one POST halfway:
 *      requests answered per second, server CPU, and the delay from the 201 to
 *      the answer that carried the message (mean, p99).
 * This process is the load client, so one clock times both the 201 and every
 * arrival. Its source addresses spread over 127.0.0.0/8, as bench/client.ts does.
 *
 * Run:  npx tsx bench/room.ts                                   (10,000 subscribers)
 *       npx tsx bench/room.ts --subscribers 200 --poll-seconds 10
 *       (npm run bench runs it after the countdown's configurations, with --streams)
 *
 * It prints a markdown section (or one line of JSON with --json) and exits 1
 * when a subscriber lost a message or got one twice. It asserts nothing about speed.
 */

import http from "node:http";
import { setTimeout as delay } from "node:timers/promises";
import { exitWith, isMain, readFlags, wholeNumber } from "../server.ts";
import {
  count,
  cpuSeconds,
  kb,
  mbFromKB,
  mean,
  ms,
  percentiles,
  rssKB,
  sourceAddress,
  SseReader,
  startServer,
  stop,
  sum,
  tableHead,
  tableRow,
  waitUntil,
  type Percentiles,
  type Server,
} from "./common.ts";

// ─── Flags ───────────────────────────────────────────────────────────────────

const HELP = `Usage: npx tsx bench/room.ts [flags]

  --subscribers N   Opens this many room streams, and as many countdown streams for
                    reference (default 10000).
  --posts P         POSTs this many messages to the room, a second apart (default 5).
  --poll S          Each polling tab asks every S seconds, as /room/?poll=S does (default 5).
  --poll-seconds T  Polls for this long (default 30).
  --json            Prints the report as one line of JSON.`;

export interface RoomBenchOptions {
  subscribers: number;
  posts: number;
  poll: number;
  pollSeconds: number;
}

/** Requests waiting for their headers at once while streams open, as bench/client.ts allows. */
export const OPENING_AT_ONCE = 256;
/** Time for start-up garbage, and then the opened streams, to settle before a memory reading. */
export const SETTLE_MS = 2000;
/** How long a POST's message may take to reach every subscriber before the rest count as lost. */
export const DELIVERY_DEADLINE_MS = 30_000;
export const BETWEEN_POSTS_MS = 1000;
/** How long the room sits quiet (all streams open, nothing posted) while its CPU is read. */
const QUIET_WINDOW_MS = 5000;

// ─── The server ──────────────────────────────────────────────────────────────

/** server.ts, or bench/room-floor.ts, as its own process on loopback. */
const startQuiet = (file: string) => startServer(file, ["--quiet"]);

/** At once: its streams' goodbyes are not what this bench measures. */
const stopNow = (server: Server) => stop(server, "SIGKILL");

// ─── Streams ─────────────────────────────────────────────────────────────────

/** What a presence event says: the head count, and the pid of the process serving it. */
interface Presence {
  tabs: number;
  pid: number;
}

/** One open SSE stream: when each message arrived, the last head count it was told, and by whom. */
export class Stream {
  req?: http.ClientRequest;
  arrivals = new Map<number, number>();
  duplicates = 0;
  /** Messages of any kind read so far. */
  events = 0;
  tabs = 0;
  /** The pid serving this stream, from its presence events (bench/processes.ts counts them). */
  pid = 0;
  failed = false;
  private reader = new SseReader();

  constructor(url: string, index: number, onHeaders: () => void) {
    this.req = http.get(url, { agent: false, localAddress: sourceAddress(index) });
    this.req.on("error", () => {
      this.failed = true;
      onHeaders();
    });
    this.req.on("response", (res) => {
      onHeaders();
      res.setEncoding("utf8");
      res.on("data", (text: string) => this.read(text));
    });
  }

  private read(text: string) {
    const now = performance.now();
    for (const { event, id, data = "" } of this.reader.read(text)) {
      this.events++;
      if (event === "message" && id !== undefined) {
        if (this.arrivals.has(Number(id))) this.duplicates++;
        else this.arrivals.set(Number(id), now);
      }
      if (event === "presence") ({ tabs: this.tabs, pid: this.pid } = JSON.parse(data) as Presence);
    }
  }

  close() {
    this.req?.destroy();
    this.req = undefined;
  }
}

/**
 * Opens `count` streams, at most OPENING_AT_ONCE waiting for headers at a time;
 * the first takes source address `firstIndex`.
 */
export async function openStreams(url: string, count: number, firstIndex = 0): Promise<Stream[]> {
  const streams: Stream[] = [];
  let waiting = 0;
  while (streams.length < count) {
    while (waiting >= OPENING_AT_ONCE) await delay(1);
    waiting++;
    streams.push(new Stream(url, firstIndex + streams.length, () => waiting--));
  }
  while (waiting > 0) await delay(10);
  return streams;
}

/** A POST to the room, resolved when its 201 has been read, with the message's id. */
export async function post(url: string, text: string): Promise<{ id: number; at: number }> {
  const answer = await fetch(`${url}/room/messages`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: "bench", text }),
  });
  const at = performance.now();
  if (answer.status !== 201) {
    throw new Error(`POST answered ${answer.status}: ${await answer.text()}`);
  }
  return { id: ((await answer.json()) as { id: number }).id, at };
}

// ─── 1. The reference: countdown streams ─────────────────────────────────────

/** RSS per stream of `count` streams opened against a fresh server, in KB. */
async function memoryPerStream(
  server: Server,
  path: string,
  count: number,
  ready: (streams: Stream[]) => boolean,
) {
  await delay(SETTLE_MS);
  const idleKB = rssKB(server.child.pid!);
  const streams = await openStreams(`${server.url}${path}`, count);
  await waitUntil("every stream to be ready", () => ready(streams), 60_000 + count * 5);
  await delay(SETTLE_MS);
  const loadedKB = rssKB(server.child.pid!);
  const failed = streams.filter((stream) => stream.failed).length;
  return { streams, idleKB, loadedKB, perStreamKB: (loadedKB - idleKB) / (count - failed), failed };
}

/** A countdown that sits between ticks, as a room stream sits between messages. */
const SLOW_COUNTDOWN = "/sse/?from=1000&interval=60000";

async function countdownReference(count: number) {
  const server = await startQuiet("server.ts");
  try {
    const ticked = (streams: Stream[]) => streams.every((s) => s.failed || s.events > 0);
    const { streams, ...measured } = await memoryPerStream(server, SLOW_COUNTDOWN, count, ticked);
    for (const stream of streams) stream.close();
    return measured;
  } finally {
    await stopNow(server);
  }
}

// ─── 2. Push: room streams and POSTs ─────────────────────────────────────────

export interface Delivery extends Percentiles {
  id: number;
  delivered: number;
  lost: number;
  /** Subscribers that had it before this process had read the 201. */
  beforeThe201: number;
  mean: number;
}

/** One POST's delivery, from each subscriber's delay after the 201 (below 0: before it). */
export function deliveryOf(id: number, delays: number[], subscribers: number): Delivery {
  const fromThe201 = delays.map((t) => Math.max(0, t));
  const beforeThe201 = delays.filter((t) => t < 0).length;
  const delivered = delays.length;
  const lost = subscribers - delivered;
  return { id, delivered, lost, beforeThe201, mean: mean(fromThe201), ...percentiles(fromThe201) };
}

async function push(options: RoomBenchOptions, file: string) {
  const server = await startQuiet(file);
  try {
    const count = options.subscribers;
    const everyoneIn = (streams: Stream[]) => streams.every((s) => s.failed || s.tabs === count);
    const opened = await memoryPerStream(server, "/room/stream", count, everyoneIn);
    const { streams, ...measured } = opened;
    const live = streams.filter((stream) => !stream.failed);
    const pid = server.child.pid!;
    const quietCpuBefore = cpuSeconds(pid);
    await delay(QUIET_WINDOW_MS);
    const quietCpuPercent = ((cpuSeconds(pid) - quietCpuBefore) / (QUIET_WINDOW_MS / 1000)) * 100;
    const cpuBefore = cpuSeconds(pid);
    const startedAt = performance.now();
    const deliveries: Delivery[] = [];
    for (let k = 0; k < options.posts; k++) {
      const { id, at } = await post(server.url, `message ${k + 1}`);
      const everyone = () => live.every((s) => s.arrivals.has(id));
      // Past the deadline, the subscribers still without it count as lost.
      const what = `message ${id} to reach every subscriber`;
      await waitUntil(what, everyone, DELIVERY_DEADLINE_MS).catch(() => {});
      const delays = live.filter((s) => s.arrivals.has(id)).map((s) => s.arrivals.get(id)! - at);
      deliveries.push(deliveryOf(id, delays, live.length));
      await delay(BETWEEN_POSTS_MS);
    }
    const windowSeconds = (performance.now() - startedAt) / 1000;
    const cpuPercent = ((cpuSeconds(pid) - cpuBefore) / windowSeconds) * 100;
    const duplicates = sum(live.map((stream) => stream.duplicates));
    for (const stream of streams) stream.close();
    return { ...measured, deliveries, duplicates, quietCpuPercent, cpuPercent, windowSeconds };
  } finally {
    await stopNow(server);
  }
}

// ─── 3. Poll: the same tabs, asking every few seconds ────────────────────────

/** One polling tab: one kept-alive connection, one request every period, the last id it has. */
class Poller {
  lastId = 0;
  answers = 0;
  errors = 0;
  /** When the answer carrying the watched message came (performance.now()). */
  gotWatchedAt = 0;
  private agent: http.Agent;
  private stopped = false;

  constructor(index: number) {
    const options = { keepAlive: true, maxSockets: 1, localAddress: sourceAddress(index) };
    this.agent = new http.Agent(options as http.AgentOptions);
  }

  async run(url: string, periodMs: number, offsetMs: number, watched: () => number) {
    await delay(offsetMs);
    while (!this.stopped) {
      const next = performance.now() + periodMs;
      await this.ask(url, watched);
      await delay(Math.max(0, next - performance.now()));
    }
  }

  private ask(url: string, watched: () => number): Promise<void> {
    return new Promise((resolve) => {
      const asking = `${url}/room/messages?after=${this.lastId}`;
      const req = http.get(asking, { agent: this.agent }, (res) => {
        let body = "";
        res.setEncoding("utf8").on("data", (text: string) => (body += text));
        res.on("end", () => {
          this.answers++;
          const list = JSON.parse(body) as { id: number }[];
          // Read the watched id now, not when asking: the POST may land while this
          // request is on its way.
          const watchedId = watched();
          const gotIt = watchedId && list.some((message) => message.id === watchedId);
          if (gotIt && !this.gotWatchedAt) this.gotWatchedAt = performance.now();
          this.lastId = list.at(-1)?.id ?? this.lastId;
          resolve();
        });
      });
      req.on("error", () => {
        if (!this.stopped) this.errors++; // a request cut by stop() is not the server's error
        resolve();
      });
    });
  }

  stop() {
    this.stopped = true;
    this.agent.destroy();
  }
}

async function poll(options: RoomBenchOptions) {
  const server = await startQuiet("server.ts");
  try {
    const periodMs = options.poll * 1000;
    const pollers = Array.from({ length: options.subscribers }, (_, k) => new Poller(k));
    let watchedId = 0;
    const cpuBefore = cpuSeconds(server.child.pid!);
    const startedAt = performance.now();
    const running = pollers.map((poller, k) =>
      poller.run(server.url, periodMs, (k / pollers.length) * periodMs, () => watchedId),
    );
    await delay((options.pollSeconds * 1000) / 2);
    const { id, at } = await post(server.url, "polled");
    watchedId = id;
    await delay((options.pollSeconds * 1000) / 2);
    const seconds = (performance.now() - startedAt) / 1000;
    const cpuPercent = ((cpuSeconds(server.child.pid!) - cpuBefore) / seconds) * 100;
    for (const poller of pollers) poller.stop();
    await Promise.all(running);
    const delays = pollers.filter((p) => p.gotWatchedAt).map((p) => p.gotWatchedAt - at);
    const answers = pollers.reduce((sum, p) => sum + p.answers, 0);
    return {
      pollers: pollers.length,
      seconds,
      requestsPerSecond: answers / seconds,
      cpuPercent,
      errors: pollers.reduce((sum, p) => sum + p.errors, 0),
      gotIt: delays.length,
      meanDelayMs: mean(delays),
      delay: percentiles(delays),
    };
  } finally {
    await stopNow(server);
  }
}

// ─── The report ──────────────────────────────────────────────────────────────

export type RoomReport = Awaited<ReturnType<typeof runRoomBench>>;

export async function runRoomBench(options: RoomBenchOptions) {
  const { subscribers, posts } = options;
  const p99s = (deliveries: Delivery[]) => deliveries.map((d) => ms(d.p99)).join(", ");
  console.error(`room: ${subscribers} countdown streams for reference`);
  const reference = await countdownReference(subscribers);
  console.error(`room: ${subscribers} streams on the floor (bench/room-floor.ts), ${posts} POSTs`);
  const floor = await push(options, "bench/room-floor.ts");
  console.error(`room: floor delivery p99 ${p99s(floor.deliveries)}`);
  console.error(`room: ${subscribers} room subscribers, ${posts} POSTs`);
  const pushed = await push(options, "server.ts");
  console.error(
    `room: delivery p99 ${p99s(pushed.deliveries)}; ${kb(pushed.perStreamKB)} per subscriber, ` +
      `${kb(reference.perStreamKB)} per countdown stream`,
  );
  const { poll: period, pollSeconds } = options;
  console.error(`room: ${subscribers} tabs polling every ${period} s for ${pollSeconds} s`);
  const polled = await poll(options);
  return { options, reference, floor, pushed, polled };
}

/** One POST's cells in a table: which message, how many had it, and when. */
export const deliveryCells = (d: Delivery) => [
  `message ${d.id}`,
  `${count(d.delivered)} of ${count(d.delivered + d.lost)}`,
  d.lost,
  count(d.beforeThe201),
  ms(d.p50),
  ms(d.p99),
  ms(d.max),
];

const deliveryRow = (server: string, d: Delivery) => tableRow(server, ...deliveryCells(d));

const P50_P99_MAX = ["p50", "p99", "max"];
const meetsIt = (ok: boolean) => (ok ? "meets it" : "misses it");

export function roomSection({ options, reference, floor, pushed, polled }: RoomReport): string {
  const ratio = pushed.perStreamKB / reference.perStreamKB;
  const worstP99 = Math.max(...pushed.deliveries.map((d) => d.p99));
  const floorP99 = Math.max(...floor.deliveries.map((d) => d.p99));
  const lost = sum(pushed.deliveries.map((d) => d.lost));
  const memory = (streams: string, of: typeof reference, times: string) =>
    tableRow(
      streams,
      of.failed,
      `${mbFromKB(of.idleKB)} → ${mbFromKB(of.loadedKB)}`,
      kb(of.perStreamKB),
      times,
    );
  const posting = `${options.posts} POSTs in ${pushed.windowSeconds.toFixed(0)} s`;
  return [
    `### Lesson 3: the room (bench/room.ts)`,
    ``,
    `Push: ${count(options.subscribers)} room streams on one process, ` +
      `then ${options.posts} POSTs ` +
      `a second apart, first on the floor (bench/room-floor.ts: one loop of writes, no hub, ` +
      `no generator), then on server.ts. Delivery is the time from the 201 (as this load client ` +
      `read it) until a subscriber had the message.`,
    ``,
    ...tableHead("server", "POST", "delivered", "lost", "had it before the 201", ...P50_P99_MAX),
    ...floor.deliveries.map((d) => deliveryRow("floor", d)),
    ...pushed.deliveries.map((d) => deliveryRow("**server.ts**", d)),
    ``,
    ...tableHead(
      "streams",
      "failed to open",
      "RSS idle → all open",
      "per stream",
      "× a countdown stream",
    ),
    memory("countdown (between ticks)", reference, "1×"),
    memory("room subscriber", pushed, `${ratio.toFixed(2)}×`),
    ``,
    `Against the target (p99 at most 100 ms after the 201, at most 1.5× a countdown stream's ` +
      `memory): worst p99 ${ms(worstP99)} ${meetsIt(worstP99 <= 100)} (the floor's worst, in the ` +
      `same run: ${ms(floorP99)}); memory ${ratio.toFixed(2)}× ${meetsIt(ratio <= 1.5)}; ` +
      `${lost} lost, ${pushed.duplicates} duplicated.`,
    ``,
    ...tableHead(
      `${count(options.subscribers)} tabs`,
      "requests answered per second",
      "server CPU (% of one core)",
      "delay from the 201 to the tab: mean · p99",
      "tabs that got it",
      "errors",
    ),
    tableRow(
      `push, a quiet room (one stream each, nothing posted for ${QUIET_WINDOW_MS / 1000} s)`,
      0,
      `${pushed.quietCpuPercent.toFixed(0)}%`,
      "(nothing to deliver)",
      "",
      pushed.failed,
    ),
    tableRow(
      `push, a busy room (one stream each, ${posting})`,
      `${(options.posts / pushed.windowSeconds).toFixed(1)} (the POSTs)`,
      `${pushed.cpuPercent.toFixed(0)}%`,
      `${ms(mean(pushed.deliveries.map((d) => d.mean)))} · ${ms(worstP99)} (worst POST)`,
      count(pushed.deliveries[0]?.delivered ?? 0),
      pushed.failed,
    ),
    tableRow(
      `poll every ${options.poll} s (${polled.seconds.toFixed(0)} s, one POST halfway)`,
      polled.requestsPerSecond.toFixed(0),
      `${polled.cpuPercent.toFixed(0)}%`,
      `${ms(polled.meanDelayMs)} · ${ms(polled.delay.p99)}`,
      count(polled.gotIt),
      polled.errors,
    ),
  ].join("\n");
}

/** A whole number of at least 1 from a flag, else one sentence and exit code 2 (as server.ts). */
function wholeFlag(name: string, text: string): number {
  try {
    return wholeNumber(`--${name}`, text, FLAG_RANGE);
  } catch (error) {
    exitWith(2, (error as Error).message);
  }
}
const FLAG_RANGE = { min: 1, max: 1_000_000 };

async function main() {
  const flags = readFlags(
    {
      subscribers: { type: "string", default: "10000" },
      posts: { type: "string", default: "5" },
      poll: { type: "string", default: "5" },
      "poll-seconds": { type: "string", default: "30" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    HELP,
  );
  const options: RoomBenchOptions = {
    subscribers: wholeFlag("subscribers", flags.subscribers),
    posts: wholeFlag("posts", flags.posts),
    poll: wholeFlag("poll", flags.poll),
    pollSeconds: wholeFlag("poll-seconds", flags["poll-seconds"]),
  };
  const report = await runRoomBench(options);
  console.log(flags.json ? JSON.stringify(report) : roomSection(report));
  const broken = report.pushed.deliveries.some((d) => d.lost) || report.pushed.duplicates > 0;
  process.exit(broken ? 1 : 0);
}

if (isMain(import.meta.url)) await main();
