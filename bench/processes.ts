/**
 * bench/processes.ts: lesson 3's several processes measured. One room on
 * `server.ts --workers 2`, shared through PostgreSQL, and countdowns on two workers.
 *
 * On loopback only, each part with a fresh `server.ts --workers 2 --quiet`:
 *   1. the room across processes: a fresh database of its own on the PostgreSQL
 *      of --database (else TEST_DATABASE_URL), --subscribers room streams
 *      (half on each worker, as the primary hands connections out in turn;
 *      the pids in their presence events say which), then --posts POSTs a
 *      second apart. For each POST, the time from its 201 until each
 *      subscriber has the message (p50, p99, max), and how many never got it
 *      or got it twice; the workers' RSS per subscriber. Without a database
 *      URL this part is left out, with one line that says why;
 *   2. countdowns across processes: --subscribers countdown streams (no
 *      database), the workers' RSS per stream (the rise of both workers' RSS
 *      over their idle RSS, over the streams open at once) and events lost.
 * One process may hold at most 20,000 open files, so the load client runs as
 * two child processes (this file with --client), each opening half the
 * streams. They time arrivals on the clock this process times the 201 with:
 * performance.timeOrigin + performance.now(), milliseconds since the epoch.
 *
 * Run:  TEST_DATABASE_URL=postgres://... npx tsx bench/processes.ts   (20,000 subscribers)
 *       npx tsx bench/processes.ts --subscribers 400 --seconds 3 --database postgres://...
 *       (npm run bench runs it after lesson 3's room, with twice --streams)
 *
 * It prints a markdown section (or one line of JSON with --json) and exits 1
 * when a message or a countdown event was lost or duplicated. It asserts
 * nothing about speed. Every server and client process it starts, and the
 * database it creates, are gone when it ends, also when it fails.
 */

import { fork, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { setTimeout as delay } from "node:timers/promises";
import { exitWith, isMain, readFlags, wholeNumber } from "../server.ts";
import { runClient, type ClientOptions, type ClientReport } from "./client.ts";
import {
  count,
  kb,
  killEverything,
  mbFromKB,
  messageOf,
  ms,
  percentiles,
  ROOT,
  rssKB,
  startServer,
  stop,
  sum,
  tableHead,
  tableRow,
  track,
  TSX,
  waitForLines,
  waitUntil,
  type Percentiles,
  type Server,
} from "./common.ts";
// The room bench's streams, and its pace and patience, so that the one-process
// and the two-process figures compare.
import {
  BETWEEN_POSTS_MS,
  deliveryCells,
  deliveryOf,
  DELIVERY_DEADLINE_MS,
  OPENING_AT_ONCE,
  openStreams,
  post,
  SETTLE_MS,
  type Delivery,
  type Stream,
} from "./room.ts";

// ─── Flags ───────────────────────────────────────────────────────────────────

const HELP = `Usage: npx tsx bench/processes.ts [flags]

  --subscribers N  Opens this many room streams, and then as many countdown streams, over two
                   workers (default 20000).
  --posts P        POSTs this many messages to the room, a second apart (default 5).
  --seconds S      Makes each countdown last this long (default 20).
  --interval MS    One tick every MS milliseconds (default 1000).
  --database URL   A PostgreSQL where this user may create a database
                   (default: env TEST_DATABASE_URL).
  --json           Prints the report as one line of JSON.`;

export interface ProcessesOptions {
  subscribers: number;
  posts: number;
  seconds: number;
  interval: number;
}

const WORKERS = 2;
/** Both load clients: one process may open at most 20,000 files. */
const CLIENTS = 2;
/** How often the workers' RSS is read while the countdowns run. */
const SAMPLE_EVERY_MS = 200;
/** Seconds past the last countdown's due end before a load client gives up. */
const COUNTDOWN_GRACE_S = 10;

// ─── The load client: this file with --client, one of two ────────────────────
//
// It answers the parent's requests over the IPC channel, one at a time, and
// exits when the parent goes.

type ClientRequest =
  | { kind: "open room"; url: string; count: number; firstIndex: number }
  | { kind: "wait for"; id: number; postedAt: number }
  | { kind: "close room" }
  | { kind: "countdowns"; options: ClientOptions };

/** What a load client found about one POST: each subscriber's delay after the 201, by pid. */
interface Arrivals {
  delaysByPid: Record<number, number[]>;
  lost: number;
}

interface Opened {
  opened: number;
  failed: number;
  byPid: Record<number, number>;
}

function serveParent() {
  let streams: Stream[] = [];
  const live = () => streams.filter((stream) => !stream.failed);
  const answer = async (request: ClientRequest): Promise<unknown> => {
    switch (request.kind) {
      case "open room": {
        streams = await openStreams(request.url, request.count, request.firstIndex);
        // A presence event names the worker: the stream is in that worker's room.
        const told = () => streams.every((s) => s.failed || s.pid > 0);
        const patience = 60_000 + request.count * 5;
        await waitUntil("every room stream to be told its worker", told, patience);
        const byPid: Record<number, number> = {};
        for (const stream of live()) byPid[stream.pid] = (byPid[stream.pid] ?? 0) + 1;
        const opened = live().length;
        return { opened, failed: streams.length - opened, byPid } satisfies Opened;
      }
      case "wait for": {
        const { id, postedAt } = request;
        const everyone = () => live().every((s) => s.arrivals.has(id));
        // Past the deadline, the subscribers still without it count as lost.
        await waitUntil(`message ${id}`, everyone, DELIVERY_DEADLINE_MS).catch(() => {});
        const delaysByPid: Record<number, number[]> = {};
        for (const stream of live().filter((s) => s.arrivals.has(id))) {
          const arrivedAt = performance.timeOrigin + stream.arrivals.get(id)!;
          (delaysByPid[stream.pid] ??= []).push(arrivedAt - postedAt);
        }
        const lost = live().filter((s) => !s.arrivals.has(id)).length;
        return { delaysByPid, lost } satisfies Arrivals;
      }
      case "close room": {
        const duplicates = sum(streams.map((stream) => stream.duplicates));
        for (const stream of streams) stream.close();
        streams = [];
        return { duplicates };
      }
      case "countdowns":
        return runClient(request.options);
    }
  };
  process.on("message", (request: ClientRequest) => {
    answer(request).then(
      (reply) => process.send!({ reply }),
      (error: Error) => process.send!({ error: error.message }),
    );
  });
  process.once("disconnect", () => process.exit(0));
}

// ─── Processes this one starts ───────────────────────────────────────────────

// Every one of them is killed when this process exits (bench/common.ts). A
// primary killed this way leaves no worker behind: a worker whose primary is gone stops.

/** Drops the bench's database while it exists. */
let dropDatabase: (() => Promise<void>) | undefined;

/** Ctrl-C: every process goes at once, the database after them. */
async function interrupted(signal: string) {
  console.error(`\n${signal}: stopping every process the bench started`);
  killEverything();
  await dropDatabase?.();
  process.exit(130);
}

function startLoadClient(): ChildProcess {
  const stdio = ["ignore", "inherit", "inherit", "ipc"] as const;
  const options = { cwd: ROOT, execArgv: TSX, stdio: [...stdio] };
  const child = fork(fileURLToPath(import.meta.url), ["--client"], options);
  track(child);
  return child;
}

/** Sends a load client one request and waits for its answer. */
async function ask<Reply>(client: ChildProcess, request: ClientRequest): Promise<Reply> {
  const answered = once(client, "message") as Promise<[{ reply?: Reply; error?: string }]>;
  const exited = once(client, "exit").then(() => {
    throw new Error(`a load client (pid ${client.pid}) exited`);
  });
  client.send(request);
  const [message] = await Promise.race([answered, exited]);
  if (message.error !== undefined) throw new Error(`a load client: ${message.error}`);
  return message.reply!;
}

interface Workers extends Server {
  workers: number[];
}

const SERVING = /primary: worker (\d+) is serving/;

/** `server.ts --workers 2`; ready once every worker says it serves. */
async function startWorkers(databaseUrl?: string): Promise<Workers> {
  const database = databaseUrl ? ["--database", databaseUrl] : [];
  const args = ["--workers", String(WORKERS), "--quiet", ...database];
  const server = await startServer("server.ts", args);
  await waitForLines(server, SERVING, `server.ts --workers ${WORKERS}`, WORKERS);
  const lines = server.output().split("\n");
  const workers = lines.flatMap((line) => SERVING.exec(line)?.[1] ?? []).map(Number);
  return Object.assign(server, { workers });
}

/** SIGTERM to the primary, which stops its workers; SIGKILL to them all if that takes too long. */
async function stopWorkers(server: Workers) {
  await stop(server);
  for (const pid of server.workers) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone already, as it should be
    }
  }
}

const workersRssKB = (server: Workers) => sum(server.workers.map(rssKB));

// ─── A database of its own ───────────────────────────────────────────────────

/** Creates countdown_bench_<random> on the PostgreSQL of `adminUrl`; `drop` removes it again. */
async function freshDatabase(
  adminUrl: string,
): Promise<{ url: string; drop: () => Promise<void> }> {
  const { default: postgres } = await import("postgres");
  const name = `countdown_bench_${randomBytes(6).toString("hex")}`;
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database ${name}`);
  } catch (error) {
    await admin.end({ timeout: 1 });
    throw new Error(`cannot create a database for the bench: ${(error as Error).message}`);
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  const drop = async () => {
    await admin.unsafe(`drop database if exists ${name} with (force)`).catch(() => {});
    await admin.end({ timeout: 1 });
  };
  return { url: url.href, drop };
}

// ─── 1. The room across processes ────────────────────────────────────────────

/** Splits `total` into CLIENTS parts as even as can be. */
const halves = (total: number) =>
  Array.from(
    { length: CLIENTS },
    (_, k) => Math.floor(total / CLIENTS) + (k < total % CLIENTS ? 1 : 0),
  );

function sumByPid(parts: Record<number, number>[]): Record<number, number> {
  const total: Record<number, number> = {};
  for (const part of parts) {
    for (const [pid, n] of Object.entries(part)) total[Number(pid)] = (total[Number(pid)] ?? 0) + n;
  }
  return total;
}

/**
 * One POST's delivery, from the 201 (an arrival before the bench read the 201
 * counts 0) and, as an upper bound, from the moment the bench sent the POST:
 * the 201 comes late when the bench waits for a core.
 */
interface PostDelivery extends Delivery {
  p99ByPid: Record<number, number>;
  roundTrip: number;
  fromTheRequest: Percentiles;
}

async function roomAcross(options: ProcessesOptions, databaseUrl: string, clients: ChildProcess[]) {
  const server = await startWorkers(databaseUrl);
  try {
    // One message first, so that neither this process's fetch nor the workers' first
    // INSERT is timed cold.
    await post(server.url, "warming up");
    await delay(SETTLE_MS);
    const idleKB = workersRssKB(server);
    const sizes = halves(options.subscribers);
    const opened = await Promise.all(
      clients.map((client, k) =>
        ask<Opened>(client, {
          kind: "open room",
          url: `${server.url}/room/stream`,
          count: sizes[k]!,
          firstIndex: k * sizes[0]!,
        }),
      ),
    );
    await delay(SETTLE_MS);
    const loadedKB = workersRssKB(server);
    const live = sum(opened.map((part) => part.opened));
    const byPid = sumByPid(opened.map((part) => part.byPid));

    const deliveries: PostDelivery[] = [];
    for (let k = 0; k < options.posts; k++) {
      const sentAt = performance.now();
      const { id, at } = await post(server.url, `message ${k + 1}`);
      const postedAt = performance.timeOrigin + at;
      const arrivals = await Promise.all(
        clients.map((client) => ask<Arrivals>(client, { kind: "wait for", id, postedAt })),
      );
      const delaysByPid: Record<number, number[]> = {};
      for (const part of arrivals) {
        for (const [pid, delays] of Object.entries(part.delaysByPid)) {
          (delaysByPid[Number(pid)] ??= []).push(...delays);
        }
      }
      const delays = Object.values(delaysByPid).flat();
      const p99Of = (times: number[]) => percentiles(times.map((t) => Math.max(0, t))).p99;
      const p99ByPid = Object.fromEntries(
        Object.entries(delaysByPid).map(([pid, times]) => [pid, p99Of(times)]),
      );
      const fromTheRequest = percentiles(delays.map((t) => t + at - sentAt));
      const roundTrip = at - sentAt;
      deliveries.push({ ...deliveryOf(id, delays, live), p99ByPid, roundTrip, fromTheRequest });
      await delay(BETWEEN_POSTS_MS);
    }
    const closed = await Promise.all(
      clients.map((client) => ask<{ duplicates: number }>(client, { kind: "close room" })),
    );
    return {
      workers: server.workers,
      live,
      failed: sum(opened.map((part) => part.failed)),
      byPid,
      idleKB,
      loadedKB,
      perSubscriberKB: (loadedKB - idleKB) / Math.max(1, live),
      deliveries,
      duplicates: sum(closed.map((part) => part.duplicates)),
    };
  } finally {
    await stopWorkers(server);
  }
}

// ─── 2. Countdowns across processes ──────────────────────────────────────────

async function countdownsAcross(options: ProcessesOptions, clients: ChildProcess[]) {
  const server = await startWorkers();
  try {
    await delay(SETTLE_MS);
    const idleByWorker = server.workers.map(rssKB);
    const samples: { at: number; byWorker: number[] }[] = [];
    const read = () => samples.push({ at: Date.now(), byWorker: server.workers.map(rssKB) });
    const sampler = setInterval(read, SAMPLE_EVERY_MS);
    let reports: ClientReport[];
    try {
      const sizes = halves(options.subscribers);
      reports = await Promise.all(
        clients.map((client, k) =>
          ask<ClientReport>(client, {
            kind: "countdowns",
            options: {
              url: `${server.url}/sse/`,
              streams: sizes[k]!,
              seconds: options.seconds,
              interval: options.interval,
              concurrency: OPENING_AT_ONCE,
              grace: COUNTDOWN_GRACE_S,
            },
          }),
        ),
      );
    } finally {
      clearInterval(sampler);
    }
    // The peak while both load clients had their most streams live together; else the
    // peak of the run.
    const from = Math.max(...reports.map((r) => r.plateau?.from ?? 0));
    const to = Math.min(...reports.map((r) => r.plateau?.to ?? Infinity));
    const during = samples.filter((s) => s.at >= from && s.at <= to);
    const total = (s: { byWorker: number[] }) => sum(s.byWorker);
    const peak = (during.length ? during : samples).reduce(
      (highest, s) => (total(s) > total(highest) ? s : highest),
      { at: 0, byWorker: idleByWorker },
    );
    const live = sum(reports.map((r) => r.servedAtOnce));
    const add = (pick: (r: ClientReport) => number) => sum(reports.map(pick));
    return {
      workers: server.workers,
      streams: options.subscribers,
      live,
      failed: add((r) => r.failed),
      eventsExpected: add((r) => r.eventsExpected),
      eventsReceived: add((r) => r.eventsReceived),
      lost: add((r) => r.lost),
      duplicated: add((r) => r.duplicated),
      malformed: add((r) => r.malformed),
      latenessP99: Math.max(...reports.map((r) => r.lateness.p99)),
      idleByWorker,
      peakByWorker: peak.byWorker,
      perStreamKB: (total(peak) - sum(idleByWorker)) / Math.max(1, live),
    };
  } finally {
    await stopWorkers(server);
  }
}

// ─── Both parts ──────────────────────────────────────────────────────────────

export type ProcessesReport = Awaited<ReturnType<typeof runProcessesBench>>;

export async function runProcessesBench(options: ProcessesOptions, adminUrl: string | undefined) {
  const clients = Array.from({ length: CLIENTS }, startLoadClient);
  try {
    let room: Awaited<ReturnType<typeof roomAcross>> | undefined;
    let roomSkipped = "";
    if (adminUrl) {
      const database = await freshDatabase(adminUrl);
      dropDatabase = database.drop;
      try {
        const over = `over ${WORKERS} workers and PostgreSQL`;
        console.error(
          `processes: ${options.subscribers} room subscribers ${over}, ${options.posts} POSTs`,
        );
        room = await roomAcross(options, database.url, clients);
        const p99s = room.deliveries.map((d) => ms(d.p99)).join(", ");
        console.error(`processes: delivery p99 ${p99s}`);
      } finally {
        dropDatabase = undefined;
        await database.drop();
      }
    } else {
      roomSkipped =
        "no PostgreSQL to share the room: neither --database nor TEST_DATABASE_URL was given";
      console.error(`processes: the room across processes is left out: ${roomSkipped}`);
    }
    console.error(`processes: ${options.subscribers} countdown streams over ${WORKERS} workers`);
    const countdowns = await countdownsAcross(options, clients);
    const perStream = kb(countdowns.perStreamKB);
    console.error(`processes: ${perStream} per countdown stream, ${countdowns.lost} events lost`);
    return { options, room, roomSkipped, countdowns };
  } finally {
    for (const client of clients) client.disconnect();
  }
}

/** True when a message or a countdown event was lost, duplicated or garbled. */
export function processesBroken({ room, countdowns }: ProcessesReport): boolean {
  const roomBroken =
    room !== undefined && (room.duplicates > 0 || room.deliveries.some((d) => d.lost > 0));
  return roomBroken || countdowns.lost > 0 || countdowns.duplicated > 0 || countdowns.malformed > 0;
}

// ─── The report ──────────────────────────────────────────────────────────────

function roomLines(room: NonNullable<ProcessesReport["room"]>): string[] {
  const onPid = (pid: number) => `${count(room.byPid[pid] ?? 0)} on pid ${pid}`;
  const split = room.workers.map(onPid).join(", ");
  const worstP99 = Math.max(...room.deliveries.map((d) => d.p99));
  const lost = sum(room.deliveries.map((d) => d.lost));
  const perWorker = (d: PostDelivery) =>
    room.workers.map((pid) => ms(d.p99ByPid[pid] ?? NaN)).join(" · ");
  const posts = room.deliveries.length;
  const posted = posts === 1 ? "one POST" : `${posts} POSTs a second apart`;
  return [
    `Room: ${count(room.live)} subscribers (${split}, as their presence events said; ` +
      `${room.failed} failed to open), ${posted}. ` +
      `Delivery runs from the 201 the bench read to each subscriber's arrival, on one clock for ` +
      `all three processes (an arrival before the bench read the 201 counts 0); from sending ` +
      `the POST, it includes the POST's round trip, an upper bound.`,
    ``,
    ...tableHead(
      "POST",
      "delivered",
      "lost",
      "had it before the 201",
      "from the 201: p50",
      "p99",
      "max",
      "p99 per worker",
      "POST round trip",
      "from sending the POST: p99 · max",
    ),
    ...room.deliveries.map((d) =>
      tableRow(
        ...deliveryCells(d),
        perWorker(d),
        ms(d.roundTrip),
        `${ms(d.fromTheRequest.p99)} · ${ms(d.fromTheRequest.max)}`,
      ),
    ),
    ``,
    `Workers' RSS ${mbFromKB(room.idleKB)} → ${mbFromKB(room.loadedKB)} with every subscriber ` +
      `open: ${kb(room.perSubscriberKB)} per subscriber. ` +
      `Against the target (p99 at most 200 ms, nothing lost): worst p99 ${ms(worstP99)} ` +
      `${worstP99 <= 200 ? "meets it" : "misses it"}; ${lost} lost, ${room.duplicates} duplicated.`,
  ];
}

export function processesSection(report: ProcessesReport): string {
  const { countdowns: c, options } = report;
  const workerRss = c.workers
    .map((pid, k) => `pid ${pid} ${mbFromKB(c.idleByWorker[k]!)} → ${mbFromKB(c.peakByWorker[k]!)}`)
    .join(", ");
  const countdowns = `${options.seconds} s, one tick every ${options.interval} ms`;
  return [
    `### Lesson 3: several processes, one room (bench/processes.ts)`,
    ``,
    `\`server.ts --workers ${WORKERS}\`, driven by two load-client processes, ` +
      `each opening half the streams.`,
    ``,
    ...(report.room
      ? roomLines(report.room)
      : [`Room across processes: left out, ${report.roomSkipped}.`]),
    ``,
    ...tableHead(
      `${count(c.streams)} countdowns (${countdowns}), no database`,
      "live at once",
      "events received / expected",
      "lost · dup · malformed",
      "tick lateness p99 (worst client)",
      "workers' RSS idle → peak",
      "per stream",
    ),
    tableRow(
      `**--workers ${WORKERS}**`,
      `${count(c.live)} of ${count(c.streams)}`,
      `${count(c.eventsReceived)} / ${count(c.eventsExpected)}`,
      `${c.lost} · ${c.duplicated} · ${c.malformed}`,
      ms(c.latenessP99),
      workerRss,
      `**${kb(c.perStreamKB)}**`,
    ),
    ``,
    `Per stream = (both workers' RSS at their highest while every stream was live - ` +
      `their RSS idle) / streams live at once.`,
  ].join("\n");
}

// ─── Command line ────────────────────────────────────────────────────────────

/** A whole number from a flag, or one sentence and exit code 2, in server.ts's words. */
function wholeFlag(name: string, text: string, min: number): number {
  try {
    return wholeNumber(`--${name}`, text, { min, max: 1_000_000 });
  } catch (error) {
    exitWith(2, (error as Error).message);
  }
}

async function main() {
  const flags = readFlags(
    {
      subscribers: { type: "string", default: "20000" },
      posts: { type: "string", default: "5" },
      seconds: { type: "string", default: "20" },
      interval: { type: "string", default: "1000" },
      database: { type: "string" },
      json: { type: "boolean", default: false },
      client: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    HELP,
  );
  if (flags.client) return serveParent();
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const)
    process.once(signal, () => void interrupted(signal));
  const options: ProcessesOptions = {
    subscribers: wholeFlag("subscribers", flags.subscribers, CLIENTS),
    posts: wholeFlag("posts", flags.posts, 1),
    seconds: wholeFlag("seconds", flags.seconds, 1),
    interval: wholeFlag("interval", flags.interval, 10),
  };
  try {
    const report = await runProcessesBench(
      options,
      flags.database || process.env.TEST_DATABASE_URL || undefined,
    );
    console.log(flags.json ? JSON.stringify(report) : processesSection(report));
    process.exitCode = processesBroken(report) ? 1 : 0;
  } catch (error) {
    console.error(`bench/processes.ts: ${messageOf(error)}`);
    process.exitCode = 1;
  }
}

if (isMain(import.meta.url)) await main();
