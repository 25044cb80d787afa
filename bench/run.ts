/**
 * bench/run.ts: how much one open stream costs, async against blocking.
 *
 * In one go, on loopback only, it starts each server as its own process,
 * drives it with the load client (bench/client.ts, another process), reads the
 * server's memory and CPU time from /proc, and stops it again:
 *   - the floor (bench/floor.ts): bare node:http, one shared timer, no
 *     generator; what any node:http server pays per open stream;
 *   - server.ts under tsx, the way people run it;
 *   - blocking-server.ts with --workers W, and W + 6 clients: W are served,
 *     the others wait for a free worker;
 *   - when Node 24 is at hand, the three again under its own type stripping.
 * Each configuration runs --runs times, the order alternating; the table shows
 * the median of the runs, ratios to the floor of the same run, and events and
 * failures summed over all runs. Then the soak (bench/soak.ts) opens and
 * abandons --cycles streams against one in-process server.ts and checks that
 * nothing is left behind. Then lesson 2's fan-out (bench/fanout.ts): the
 * aggregated view's latency on both servers, and the lateness of 200
 * countdowns and the loop's worst delay beside it, awaited, ?via=blocking and
 * ?via=thread on 4 and 10 threads, and the memory a pool thread costs (ten
 * calls of 1000 ms in a full-size run, of 100 ms in a smaller one, so the tiny
 * run stays tiny). Then lesson 3's room
 * (bench/room.ts) with --streams subscribers: push against poll. Then
 * lesson 3's several processes (bench/processes.ts): twice --streams room
 * subscribers on server.ts --workers 2 sharing one PostgreSQL (--database,
 * else TEST_DATABASE_URL; left out with one line without either), and as many
 * countdown streams over two workers. Last,
 * bench/ws.ts puts --streams subscribers on the room, over WebSocket and then
 * over SSE, and times one POST's delivery (lesson 4).
 *
 * Run:   npm run bench                                        (10,000 streams for 20 s, 3 runs)
 *        npm run bench -- --streams 200 --seconds 3 --runs 1  (the tiny one, for CI)
 *        npm run bench -- --soak                              (only the soak)
 *        npm run bench -- --fanout                            (only the fan-out, full size)
 *
 * It asserts nothing about speed. It exits 1 when it cannot run (a server that
 * does not start) or when an async server loses, duplicates or garbles events.
 * The report goes to stdout and to bench/results/latest.md; a full-size run
 * (10,000 streams or more, 3 runs or more, no --only or --also) also writes
 * bench/results.md.
 */

import { execFileSync } from "node:child_process";
import { writeFileSync, mkdirSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { readFlags } from "../server.ts";
import type { ClientReport } from "./client.ts";
import type { SoakReport } from "./soak.ts";
import { fanOutSection, type FanOutOptions, type FanOutReport } from "./fanout.ts";
import { roomSection, type RoomReport } from "./room.ts";
import { processesBroken, processesSection, type ProcessesReport } from "./processes.ts";
import { runWsBench, wsBroken, wsSection, type WsBenchReport } from "./ws.ts";
import {
  BENCH,
  count,
  cpuSeconds,
  fixed,
  jsonLine,
  kb,
  killEverything,
  mbFromKB,
  median,
  messageOf,
  ms,
  plural,
  processTree,
  ROOT,
  rssKB,
  runJson,
  SCRATCH,
  start,
  stop,
  sum,
  tableHead,
  tableRow,
  TSX,
  type Percentiles,
  waitForLines,
  waitForUrl,
} from "./common.ts";

// ─── Flags ───────────────────────────────────────────────────────────────────

const HELP = `Usage: npm run bench -- [flags]

  --streams N     Opens this many streams against each async server (default 10000).
  --seconds S     Makes each countdown last this long (default 20).
  --interval MS   One tick every MS milliseconds (default 1000).
  --runs R        Runs every configuration R times and reports the median (default 3).
  --workers W     Starts the blocking server with W workers, and sends it W + 6 streams (default 4).
  --cycles C      Open-then-abort cycles of the soak (default: --streams).
  --node24 X      "auto" finds Node 24 with npx, "off" skips its rows, or a path to a node
                  binary (default auto).
  --also FILE     Measures another server file too (may be repeated): a .ts file under tsx
                  like server.ts, a .js or .mjs on plain Node.
  --only TEXT     Measures only the configurations whose label contains TEXT (may be
                  repeated); skips the soak.
  --soak          Runs only the soak.
  --fanout        Runs only lesson 2's fan-out measurements (bench/fanout.ts), full size.
  --database URL  A PostgreSQL for the room across processes (bench/processes.ts; default:
                  env TEST_DATABASE_URL).`;

const flags = readFlags(
  {
    streams: { type: "string", default: "10000" },
    seconds: { type: "string", default: "20" },
    interval: { type: "string", default: "1000" },
    runs: { type: "string", default: "3" },
    workers: { type: "string", default: "4" },
    cycles: { type: "string" },
    node24: { type: "string", default: "auto" },
    also: { type: "string", multiple: true, default: [] },
    only: { type: "string", multiple: true, default: [] },
    soak: { type: "boolean", default: false },
    fanout: { type: "boolean", default: false },
    database: { type: "string" },
    help: { type: "boolean", default: false },
  },
  HELP,
);

function wholeFlag(name: string, text: string, min: number): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < min) {
    console.error(`--${name} must be a whole number of at least ${min}.`);
    process.exit(2);
  }
  return value;
}
const STREAMS = wholeFlag("streams", flags.streams, 1);
const SECONDS = wholeFlag("seconds", flags.seconds, 1);
const INTERVAL = wholeFlag("interval", flags.interval, 10);
const RUNS = wholeFlag("runs", flags.runs, 1);
const WORKERS = wholeFlag("workers", flags.workers, 1);
const CYCLES = wholeFlag("cycles", flags.cycles ?? flags.streams, 1);
/** Streams beyond the workers, for the blocking server: they show the queue. */
const EXTRA_CLIENTS = 6;
/** A run that may stand as the project's numbers: full size, every configuration. */
const FULL_SIZE = STREAMS >= 10_000 && RUNS >= 3;
const OFFICIAL = FULL_SIZE && !flags.only.length && !flags.also.length;

// ─── Child processes ─────────────────────────────────────────────────────────
//
// Every server, and every bench script this one runs, gets a process group of
// its own (bench/common.ts), so stopping it stops its workers and servers too.
// Whatever happens to this process, the groups are killed on exit.

for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.once(signal, () => {
    console.error(`\n${signal}: stopping every server the benchmark started`);
    process.exit(130);
  });
}

/** How long a measured server gets to stop after SIGTERM. */
const SERVER_STOP_GRACE_MS = 3000;

/** A port free on 127.0.0.1 right now. */
async function freePort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address() as net.AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

// ─── /proc ───────────────────────────────────────────────────────────────────

interface Sample {
  at: number;
  /** RSS of the whole tree, and of the root's descendants only (the workers), KB. */
  rssKB: number;
  workersKB: number;
}

function sample(root: number): Sample {
  const sizes = processTree(root).map(rssKB);
  const workersKB = sum(sizes.slice(1));
  return { at: Date.now(), rssKB: sizes[0]! + workersKB, workersKB };
}

/** CPU seconds of a process and its descendants so far. */
const treeCpuSeconds = (root: number) => sum(processTree(root).map(cpuSeconds));

// ─── One measurement ─────────────────────────────────────────────────────────

interface Config {
  label: string;
  kind: "floor" | "async" | "blocking";
  /** The floor this row is compared with. */
  floor?: string;
  node: string;
  file: string;
  args: (port: number) => string[];
  streams: number;
  /** Seconds past the last stream's due end before the client gives up. */
  grace: number;
  /** The line it prints once it can serve, and how many (each blocking worker prints one). */
  ready: RegExp;
  readyLines: number;
}

interface Measurement {
  config: Config;
  client: ClientReport;
  idleKB: number;
  /** The highest reading while the most streams were live together, and the lowest. */
  loadKB: number;
  lowKB: number;
  workersLoadKB: number;
  perStreamKB: number;
  lowPerStreamKB: number;
  cpuSeconds: number;
}

async function measure(config: Config): Promise<Measurement> {
  const port = await freePort();
  const server = start(config.node, [...config.args(port)], { ownGroup: true });
  try {
    const what = `${config.label} (pid ${server.child.pid})`;
    await waitForUrl(server, what);
    await waitForLines(server, config.ready, what, config.readyLines);
    const root = server.child.pid!;
    await delay(FULL_SIZE ? 2000 : 500); // let start-up garbage settle before the idle reading
    const idleKB = sample(root).rssKB;

    const samples: Sample[] = [];
    const sampler = setInterval(() => samples.push(sample(root)), 200);
    const cpuBefore = treeCpuSeconds(root);
    let client: ClientReport;
    try {
      client = await runClientProcess(config, port);
    } finally {
      clearInterval(sampler);
    }
    const cpuSeconds = treeCpuSeconds(root) - cpuBefore;
    if (server.child.exitCode !== null || server.child.signalCode !== null) {
      throw new Error(`${config.label} exited during the run:\n${server.output()}`);
    }

    // Under load: the highest reading while the most streams were live together.
    const plateau = client.plateau ?? { from: 0, to: Infinity };
    let during = samples.filter((s) => s.at >= plateau.from && s.at <= plateau.to);
    if (!during.length) {
      const middle = (plateau.from + plateau.to) / 2;
      during = [...samples]
        .sort((a, b) => Math.abs(a.at - middle) - Math.abs(b.at - middle))
        .slice(0, 1);
    }
    const peak = during.reduce((highest, s) => (s.rssKB > highest.rssKB ? s : highest));
    const loadKB = peak.rssKB;
    const workersLoadKB = peak.workersKB;
    const lowKB = Math.min(...during.map((s) => s.rssKB));
    const live = Math.max(1, client.servedAtOnce);
    return {
      config,
      client,
      idleKB,
      loadKB,
      lowKB,
      workersLoadKB,
      perStreamKB: (loadKB - idleKB) / live,
      lowPerStreamKB: (lowKB - idleKB) / live,
      cpuSeconds,
    };
  } finally {
    await stop(server, "SIGTERM", SERVER_STOP_GRACE_MS);
  }
}

async function runClientProcess(config: Config, port: number): Promise<ClientReport> {
  const args = [
    ...TSX,
    path.join(BENCH, "client.ts"),
    "--json",
    ...["--url", `http://127.0.0.1:${port}/sse/`],
    ...["--streams", String(config.streams)],
    ...["--seconds", String(SECONDS)],
    ...["--interval", String(INTERVAL)],
    ...["--grace", String(config.grace)],
  ];
  const client = start(process.execPath, args, { ownGroup: true });
  await client.closed;
  return jsonLine<ClientReport>(client, "the load client");
}

// ─── The configurations ──────────────────────────────────────────────────────

function findNode24(): string | undefined {
  if (flags.node24 === "off") return undefined;
  if (flags.node24 !== "auto") return flags.node24;
  try {
    const found = execFileSync("npx", ["-y", "node@24", "-p", "process.execPath"], {
      cwd: ROOT,
      encoding: "utf8",
      timeout: 60_000,
      stdio: ["ignore", "pipe", "ignore"],
    }).trim();
    return found || undefined;
  } catch {
    return undefined;
  }
}

function nodeVersion(node: string): string {
  return execFileSync(node, ["--version"], { encoding: "utf8" }).trim();
}

/** Where every server of the table listens: a port of its own on loopback. */
const loopback = (port: number) => ["--port", String(port), "--host", "127.0.0.1"];

function configurations(node24: string | undefined): Config[] {
  const node20 = process.execPath;
  const tsxOn = `tsx, Node ${nodeVersion(node20)}`;
  const floorFile = path.join(BENCH, "floor.ts");
  const serverFile = path.join(ROOT, "server.ts");
  const blockingFile = path.join(ROOT, "blocking-server.ts");
  /** An async server, set beside `floor` (a floor itself when `floor` is ""). */
  const async = (
    label: string,
    file: string,
    node: string,
    loader: string[],
    floor: string,
  ): Config => ({
    label,
    kind: floor ? "async" : "floor",
    floor: floor || undefined,
    node,
    file,
    args: (port) => [...loader, file, ...loopback(port), "--quiet"],
    streams: STREAMS,
    grace: 10,
    ready: /listening at/i,
    readyLines: 1,
  });
  const list: Config[] = [
    async(`floor (${tsxOn})`, floorFile, node20, TSX, ""),
    async(`server.ts (${tsxOn})`, serverFile, node20, TSX, `floor (${tsxOn})`),
  ];
  if (node24) {
    const stripping = `type stripping, Node ${nodeVersion(node24)}`;
    list.push(
      async(`floor (${stripping})`, floorFile, node24, [], ""),
      async(`server.ts (${stripping})`, serverFile, node24, [], `floor (${stripping})`),
    );
  }
  for (const file of flags.also) {
    // A .ts file runs under tsx, like server.ts; a .js or .mjs file runs on plain Node.
    const plain = /\.m?js$/.test(file);
    const on = plain ? `plain Node ${nodeVersion(node20)}` : tsxOn;
    const label = `${path.relative(ROOT, path.resolve(file))} (${on})`;
    list.push(async(label, path.resolve(file), node20, plain ? [] : TSX, `floor (${tsxOn})`));
  }
  // --timeout 0: a worker busy with a stream is not killed, so the queue stays a queue.
  const blockingFlags = ["--workers", String(WORKERS), "--timeout", "0"];
  const blocking = (on: string, node: string, loader: string[]): Config => ({
    label: `blocking-server.ts --workers ${WORKERS} (${on})`,
    kind: "blocking",
    node,
    file: blockingFile,
    args: (port) => [...loader, blockingFile, ...loopback(port), ...blockingFlags],
    streams: WORKERS + EXTRA_CLIENTS,
    grace: 2,
    ready: /Booting worker with pid: \d+/,
    readyLines: WORKERS,
  });
  list.push(blocking(tsxOn, node20, TSX));
  if (node24) list.push(blocking(`type stripping, Node ${nodeVersion(node24)}`, node24, []));
  return list;
}

// ─── The later benchmarks, each its own process ──────────────────────────────

/** Lesson 3: as many room subscribers as countdown streams, then as many polling tabs. */
function runRoom(): Promise<RoomReport> {
  const pollSeconds = Math.max(SECONDS, ROOM_POLL_SECONDS_MIN);
  const args = ["--subscribers", String(STREAMS), "--poll-seconds", String(pollSeconds)];
  return runJson("the room bench", "bench/room.ts", args);
}
/** Two polling periods at least, so every tab asks more than once. */
const ROOM_POLL_SECONDS_MIN = 10;

/** Lesson 3 across processes: twice the subscribers, half on each of two workers. */
function runProcesses(): Promise<ProcessesReport> {
  const args = ["--subscribers", String(STREAMS * 2), "--seconds", String(SECONDS)];
  const database = flags.database ? ["--database", flags.database] : [];
  const all = [...args, "--interval", String(INTERVAL), ...database];
  return runJson("the processes bench", "bench/processes.ts", all);
}

function runSoak(): Promise<SoakReport> {
  return runJson("the soak", "bench/soak.ts", ["--cycles", String(CYCLES)], ["--expose-gc"]);
}

// ─── Lesson 2: fan-out ───────────────────────────────────────────────────────

/** Countdowns open beside the aggregated view: a classroom's worth, not a load test. */
const FAN_OUT_STREAMS = 200;

/** The fan-out (bench/fanout.ts), full size for an official run or with --fanout. */
async function runFanOutProcess(): Promise<FanOutReport> {
  const full = FULL_SIZE || flags.fanout;
  const options: FanOutOptions = {
    n: 10,
    delay: full ? 1000 : 100,
    runs: full ? Math.max(RUNS, 3) : RUNS,
    streams: Math.min(STREAMS, FAN_OUT_STREAMS),
    seconds: SECONDS,
    interval: INTERVAL,
  };
  const args = Object.entries(options).flatMap(([name, value]) => [`--${name}`, String(value)]);
  return runJson("the fan-out", "bench/fanout.ts", args);
}

// ─── The soak's section ──────────────────────────────────────────────────────

const mb = (bytes: number) => mbFromKB(bytes / 1024);
const signed = (value: number) => `${value >= 0 ? "+" : ""}${value.toFixed(1)}`;

function soakSection(soak: SoakReport): string {
  const handles = (counts: Record<string, number>) =>
    Object.entries(counts)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([kind, n]) => `${kind} ${n}`)
      .join(", ") || "none";
  const { before, after } = soak;
  const perCycle = signed((after.heapUsed - before.heapUsed) / soak.cycles);
  return [
    `**Soak:** ${count(soak.cycles)} open-then-abort cycles against one in-process server.ts ` +
      `(bench/soak.ts).`,
    "",
    ...tableHead("", "before", "after"),
    tableRow("active handles and requests", handles(before.resources), handles(after.resources)),
    tableRow("open streams", before.streams, after.streams),
    tableRow("open connections", before.connections, after.connections),
    tableRow(
      "heap used after GC",
      mb(before.heapUsed),
      `${mb(after.heapUsed)} (${perCycle} bytes per cycle)`,
    ),
    "",
    `${soak.matches ? "They match" : "**They do not match**"}: ${soak.verdict} ` +
      `(${count(soak.aborted)} streams aborted mid-countdown, ${count(soak.early)} before their ` +
      `first event; ${(soak.durationMs / 1000).toFixed(1)} s).`,
  ].join("\n");
}

// ─── The table ───────────────────────────────────────────────────────────────

/** Per-run ratio of a row's figure to its floor's figure in the same run, then the median. */
function ratioToFloor(
  results: Measurement[][],
  label: string,
  floor: string,
  figure: (m: Measurement) => number,
): number {
  return median(
    results.map((run) => {
      const row = run.find((m) => m.config.label === label);
      const base = run.find((m) => m.config.label === floor);
      return row && base ? figure(row) / figure(base) : NaN;
    }),
  );
}

/** When and where: the first line of every report. */
function machine(): string {
  const when = new Date().toISOString().slice(0, 16).replace("T", " ");
  const cpu = os.cpus()[0]?.model.trim() ?? "unknown CPU";
  const memory = `${(os.totalmem() / 1024 ** 3).toFixed(0)} GiB`;
  return (
    `**${when} UTC** · Node ${process.version} (runner) · ` +
    `${os.cpus().length} cores (${cpu}), ${memory} · ${os.type()} ${os.release()} · loopback only`
  );
}

/** "p50 · p99 · max" of a lateness. */
const spread = ({ p50, p99, max }: Percentiles) => `${ms(p50)} · ${ms(p99)} · ${ms(max)}`;
/** "lost · dup · malformed" of one run. */
const broken = ({ client }: Measurement) =>
  `${client.lost} · ${client.duplicated} · ${client.malformed}`;
const firstEvents = (m: Measurement) => m.client.allFirstEventsMs ?? NaN;

/** The async servers' table: the floors, server.ts, and any --also file. */
function asyncTable(configs: Config[], results: Measurement[][], of: Of): string[] {
  const lines = tableHead(
    "server",
    "streams live at once",
    "events received / expected",
    "lost · dup · malformed",
    "every first event by",
    "× floor",
    "tick lateness p50 · p99 · max",
    "p99 once all open",
    "RSS idle → peak under load",
    "per stream",
    "× floor",
    "lowest per stream",
    "server CPU",
    "× floor",
  );
  for (const config of configs.filter((c) => c.kind !== "blocking")) {
    const rows = of(config.label);
    if (!rows.length) continue;
    const c = (pick: (m: Measurement) => number) => median(rows.map(pick));
    const total = (pick: (m: Measurement) => number) => sum(rows.map(pick));
    const floorRatio = (figure: (m: Measurement) => number) =>
      config.floor
        ? `${fixed(ratioToFloor(results, config.label, config.floor, figure), 2)}×`
        : "1×";
    const received = total((m) => m.client.eventsReceived);
    const expected = total((m) => m.client.eventsExpected);
    const lost = total((m) => m.client.lost);
    const duplicated = total((m) => m.client.duplicated);
    const malformed = total((m) => m.client.malformed);
    const lateness = (p: keyof Percentiles) => c((m) => m.client.lateness[p]);
    lines.push(
      tableRow(
        `**${config.label}**`,
        `${count(c((m) => m.client.servedAtOnce))} of ${count(config.streams)}`,
        `${count(received)} / ${count(expected)}`,
        `${lost} · ${duplicated} · ${malformed}`,
        ms(c(firstEvents)),
        floorRatio(firstEvents),
        spread({ p50: lateness("p50"), p99: lateness("p99"), max: lateness("max") }),
        ms(c((m) => m.client.latenessAfterRamp.p99)),
        `${mbFromKB(c((m) => m.idleKB))} → ${mbFromKB(c((m) => m.loadKB))}`,
        `**${kb(c((m) => m.perStreamKB))}**`,
        floorRatio((m) => m.perStreamKB),
        kb(c((m) => m.lowPerStreamKB)),
        `${fixed(c((m) => m.cpuSeconds))} s`,
        floorRatio((m) => m.cpuSeconds),
      ),
    );
  }
  return lines;
}

/** The blocking server's table: streams served and starved, and a worker's memory. */
function blockingTable(configs: Config[], of: Of, serverLabel: string | undefined): string[] {
  const serverPerStream = median((serverLabel ? of(serverLabel) : []).map((m) => m.perStreamKB));
  const lines = [
    "",
    `The blocking server, with ${WORKERS} workers and ${WORKERS} + ${EXTRA_CLIENTS} = ` +
      `${WORKERS + EXTRA_CLIENTS} streams at once:`,
    "",
    ...tableHead(
      "server",
      "streams served at once",
      "streams starved",
      "RSS per worker = memory per concurrent stream",
      "arbiter RSS",
      "× server.ts per stream",
      "every first event by",
      "server CPU",
    ),
  ];
  for (const blocking of configs) {
    const c = (pick: (m: Measurement) => number) => median(of(blocking.label).map(pick));
    const perWorkerKB = c((m) => m.workersLoadKB / WORKERS);
    const first = c(firstEvents);
    lines.push(
      tableRow(
        `**${blocking.label}**`,
        `${c((m) => m.client.servedAtOnce)} of ${blocking.streams}`,
        c((m) => m.client.starved),
        `**${mbFromKB(perWorkerKB)}**`,
        mbFromKB(c((m) => m.loadKB - m.workersLoadKB)),
        `**${count(Math.round(perWorkerKB / serverPerStream))}×**`,
        Number.isFinite(first) ? ms(first) : "never, for the starved",
        `${fixed(c((m) => m.cpuSeconds))} s`,
      ),
    );
  }
  lines.push(
    "",
    `A starved stream got no event within one interval of its request: it waits in the ` +
      `arbiter's queue until a worker is free, that is until a whole countdown (${SECONDS} s) ` +
      `has ended. × server.ts compares with ${serverLabel ?? "server.ts"} per stream.`,
  );
  return lines;
}

/** The targets server.ts is held to, each met or missed. */
function targets(results: Measurement[][], serverLabel: string, floorLabel: string, of: Of) {
  const rows = of(serverLabel);
  const toFloor = (figure: (m: Measurement) => number) =>
    ratioToFloor(results, serverLabel, floorLabel, figure);
  const perStream = median(rows.map((m) => m.perStreamKB));
  const memoryRatio = toFloor((m) => m.perStreamKB);
  const lowest = median(rows.map((m) => m.lowPerStreamKB));
  const lowestRatio = toFloor((m) => m.lowPerStreamKB);
  const firstRatio = toFloor(firstEvents);
  const p99 = median(rows.map((m) => m.client.lateness.p99));
  const badEvents = sum(
    rows.map(({ client }) => client.lost + client.duplicated + client.malformed + client.failed),
  );
  const live = median(rows.map((m) => m.client.servedAtOnce));
  const mark = (ok: boolean) => (ok ? "met" : "**missed**");
  return [
    "",
    `Targets for ${serverLabel}, medians above:`,
    "",
    `- ${count(live)} streams at once with no event lost, duplicated or malformed: ` +
      `${mark(live >= STREAMS && badEvents === 0)} ` +
      `(${badEvents} bad over ${plural(rows.length, "run")})`,
    `- at most 15 KB per stream and at most 1.2× the floor: ` +
      `${mark(perStream <= 15 && memoryRatio <= 1.2)} (${fixed(perStream)} KB at the peak, ` +
      `${fixed(memoryRatio, 2)}×; ${fixed(lowest)} KB at the lowest, ${fixed(lowestRatio, 2)}×)`,
    `- p99 tick lateness at most 50 ms: ${mark(p99 <= 50)} (${ms(p99)})`,
    `- every first event within 1.3× the floor's time: ${mark(firstRatio <= 1.3)} ` +
      `(${fixed(firstRatio, 2)}×)`,
  ];
}

/** Every run of every configuration, folded away under the tables. */
function everyRun(results: Measurement[][]): string[] {
  const perStreamCell = (m: Measurement) =>
    m.config.kind === "blocking"
      ? `${mbFromKB(m.workersLoadKB / WORKERS)} per worker`
      : `${kb(m.perStreamKB)} (${kb(m.lowPerStreamKB)})`;
  const lines = [
    "",
    "<details><summary>Every run</summary>",
    "",
    ...tableHead(
      "run",
      "server",
      "live",
      "lost · dup · malformed",
      "first events by",
      "lateness p50 · p99 · max",
      "idle → peak",
      "per stream (lowest)",
      "CPU",
      "client sockets left open",
    ),
  ];
  results.forEach((run, index) => {
    for (const m of run) {
      lines.push(
        tableRow(
          index + 1,
          m.config.label,
          m.client.servedAtOnce,
          broken(m),
          ms(firstEvents(m)),
          spread(m.client.lateness),
          `${mbFromKB(m.idleKB)} → ${mbFromKB(m.loadKB)}`,
          perStreamCell(m),
          `${fixed(m.cpuSeconds)} s`,
          m.client.socketsLeftOpen,
        ),
      );
    }
  });
  lines.push("", "</details>");
  return lines;
}

/** Every run of one configuration. */
type Of = (label: string) => Measurement[];

/** The report: the countdown's tables, the soak, then each later lesson's section as it came. */
function table(
  configs: Config[],
  results: Measurement[][],
  soak: SoakReport | undefined,
  notes: string[],
  sections: string[],
): string {
  const of: Of = (label) => results.flatMap((run) => run.filter((m) => m.config.label === label));
  const lines = [
    machine(),
    "",
    `${count(STREAMS)} streams per async server, each a countdown of ${SECONDS} s with one tick ` +
      `every ${INTERVAL} ms; median of ${plural(RUNS, "run")}, ratios to the floor taken within ` +
      `each run; events summed over all runs. KB = 1024 bytes of resident memory (VmRSS); ` +
      `per stream = (highest RSS while every stream was open - RSS idle) / streams live at once; ` +
      `"lowest per stream" uses the lowest RSS of that window instead: the gap between the two ` +
      `is garbage waiting for the next full collection.`,
    "",
    ...asyncTable(configs, results, of),
  ];
  const serverLabel = configs.find((c) => c.kind === "async")?.label;
  const blockingConfigs = configs.filter((c) => c.kind === "blocking" && of(c.label).length);
  if (blockingConfigs.length) lines.push(...blockingTable(blockingConfigs, of, serverLabel));
  if (serverLabel && of(serverLabel).length) {
    const floorLabel = configs.find((c) => c.label === serverLabel)!.floor!;
    lines.push(...targets(results, serverLabel, floorLabel, of));
  }
  lines.push(...everyRun(results));
  for (const section of [...(soak ? [soakSection(soak)] : []), ...sections]) {
    lines.push("", section);
  }
  if (notes.length) lines.push("", ...notes.map((note) => `Note: ${note}`));
  const given = process.argv.slice(2);
  lines.push(
    "",
    `How: \`npm run bench${given.length ? ` -- ${given.join(" ")}` : ""}\`. ` +
      "Tick lateness is the arrival of tick k against start + k × interval, where start is the " +
      "earliest that agrees with every arrival of that stream (so the client's own delays " +
      'cannot make ticks look early); "once all open" counts only ticks due after the last ' +
      'stream opened. "Every first event by" runs from the client\'s first request. Server CPU ' +
      "is user + system time of the server's processes while the client ran; its × floor is " +
      "the ratio to the floor's CPU time in the same run.",
  );
  return lines.join("\n") + "\n";
}

// ─── Main ────────────────────────────────────────────────────────────────────

function write(report: string) {
  mkdirSync(SCRATCH, { recursive: true });
  const name = flags.soak ? "soak.md" : flags.fanout ? "fanout.md" : "latest.md";
  writeFileSync(path.join(SCRATCH, name), report);
  const official = OFFICIAL && !flags.soak && !flags.fanout;
  if (official) writeFileSync(path.join(BENCH, "results.md"), report);
}

async function main(): Promise<number> {
  if (flags.soak) {
    const soak = await runSoak();
    const report = soakSection(soak) + "\n";
    console.log(report);
    write(report);
    return soak.matches ? 0 : 1;
  }
  if (flags.fanout) {
    const report = `${machine()}\n\n${fanOutSection(await runFanOutProcess())}\n`;
    console.log(report);
    write(report);
    return 0;
  }

  const notes: string[] = [];
  const node24 = findNode24();
  if (!node24 && flags.node24 !== "off") {
    notes.push("Node 24 was not found (npx -y node@24), so its rows are missing.");
  }
  const chosen = (c: Config) =>
    !flags.only.length || flags.only.some((text) => c.label.includes(text));
  const configs = configurations(node24).filter(chosen);
  console.error(`bench: ${configs.map((c) => c.label).join("; ")}; ${plural(RUNS, "run")}`);

  const results: Measurement[][] = [];
  for (let run = 0; run < RUNS; run++) {
    const order = run % 2 === 0 ? configs : [...configs].reverse();
    const measured: Measurement[] = [];
    for (const config of order) {
      const m = await measure(config);
      measured.push(m);
      const { client } = m;
      console.error(
        `run ${run + 1}/${RUNS} ${config.label}: ${client.servedAtOnce} live, ` +
          `${client.lost} lost, ${client.duplicated} dup, ${client.malformed} malformed, ` +
          `first events by ${ms(firstEvents(m))}, lateness p99 ${ms(client.lateness.p99)}, ` +
          `${fixed(m.perStreamKB)} KB/stream (lowest ${fixed(m.lowPerStreamKB)}), ` +
          `RSS ${mbFromKB(m.idleKB)} → ${mbFromKB(m.loadKB)}, CPU ${fixed(m.cpuSeconds)} s`,
      );
    }
    results.push(configs.map((config) => measured.find((m) => m.config === config)!));
  }

  if (!flags.only.length) console.error(`soak: ${count(CYCLES)} open-then-abort cycles`);
  const soak = flags.only.length ? undefined : await runSoak();
  const sections: string[] = [];
  if (!flags.only.length) {
    console.error("fan-out: the aggregated view on both servers, and countdowns beside it");
    sections.push(fanOutSection(await runFanOutProcess()));
  }
  let room: RoomReport | undefined;
  if (!flags.only.length) {
    console.error(`room: ${count(STREAMS)} subscribers, then as many polling tabs`);
    room = await runRoom();
    sections.push(roomSection(room));
  }
  let processes: ProcessesReport | undefined;
  if (!flags.only.length) {
    const twice = count(STREAMS * 2);
    console.error(
      `processes: ${twice} room subscribers and ${twice} countdowns over server.ts --workers 2`,
    );
    processes = await runProcesses();
    sections.push(processesSection(processes));
  }
  // Lesson 4: the room over WebSocket and SSE, as many subscribers of each as there were streams.
  let sockets: WsBenchReport | undefined;
  if (!flags.only.length) {
    console.error(
      `room: ${count(STREAMS)} WebSocket and ${count(STREAMS)} SSE subscribers, one POST each`,
    );
    sockets = await runWsBench(STREAMS, RUNS);
    sections.push(wsSection(sockets));
  }
  const report = table(configs, results, soak, notes, sections);
  console.log(report);
  write(report);

  const isBroken = ({ config, client }: Measurement) =>
    config.kind !== "blocking" &&
    (client.lost || client.duplicated || client.malformed || client.failed);
  const asyncBroken = results.flat().filter(isBroken);
  for (const { config, client } of asyncBroken) {
    console.error(
      `${config.label}: ${client.lost} events lost, ${client.duplicated} duplicated, ` +
        `${client.malformed} malformed, ${client.failed} streams failed`,
    );
  }
  const soakBroken = soak !== undefined && !soak.matches;
  if (soakBroken) console.error(`soak: ${soak.verdict}`);
  const roomBroken =
    room !== undefined &&
    (room.pushed.duplicates > 0 || room.pushed.deliveries.some((delivery) => delivery.lost > 0));
  if (roomBroken) console.error("room: a subscriber lost a message or got one twice");
  const processesLost = processes !== undefined && processesBroken(processes);
  if (processesLost) {
    const lost = "a message or a countdown event was lost or duplicated";
    console.error(`several processes: ${lost} (see the table)`);
  }
  const socketsBroken = sockets !== undefined && wsBroken(sockets);
  if (socketsBroken) {
    console.error("room over WebSocket: a message was lost or duplicated (see the table)");
  }
  const anyBroken = asyncBroken.length > 0 || soakBroken || roomBroken || processesLost;
  return anyBroken || socketsBroken ? 1 : 0;
}

try {
  process.exitCode = await main();
} catch (error) {
  console.error(`bench: ${messageOf(error)}`);
  process.exitCode = 1;
} finally {
  killEverything();
}
