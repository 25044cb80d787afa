/**
 * bench/attack.ts: the servers under attack (issue 18), and what each attack costs the others.
 *
 * For each attack below, on loopback only, it starts a fresh server as its own process
 * (server.ts with its lessons and --quiet, as `npx tsx server.ts` runs it, unless said),
 * opens one bystander countdown from another process (this file with --bystander: an
 * ordinary client that reads /sse/ and times every tick against its schedule), runs the
 * attack for at most `attackMs` and a bounded count, reads the server's resident memory
 * (VmRSS) from /proc every RSS_SAMPLE_MS, and stops everything again:
 *   baseline         no attack, the bystander alone (on both servers);
 *   pipeline-room    `pipelineConnections` connections pipelining GET /room/messages?after=0
 *                    (the room holds `roomPrefill` long messages) and never reading;
 *   pipeline-wall    the same with GET /wall/, the wall's page (/wall itself is a 308 to it);
 *   ws               one WebSocket (the ws package) sending `wsFrames` one-byte frames (not
 *                    JSON: each asks for an ERROR reply) and never reading;
 *   freeze           the issue's /api/aggregated/?via=blocking&n=10&delay=2000 once, then the
 *                    largest freeze the limit lets one request ask for, back to back;
 *   blocking         blocking-server.ts with `blockingWorkers` workers: `silentAtOnce`
 *                    connections that send nothing, opened again when cut; the bystander
 *                    there runs countdowns shorter than --timeout, one after another;
 *   cookies          `churnRequests` requests to /toasts/stream (which records a visitor) with
 *                    random 32-hex visitor cookies, while two bystander visitors keep an
 *                    unread toast (one with its toast stream open, one with no tab open);
 *   cookies-issued   the same with cookies the server issued: each from GET /, then used;
 *   posting          POSTs to the room from `posters` addresses as fast as answers come,
 *                    with `roomSubscribers` room streams open;
 *   connections      `floodConnections` idle connections against server.ts's app capped at
 *                    `connectionCap` (createApp's connectionsMax, the option the tests use:
 *                    the real CONNECTIONS_MAX is near this machine's 20,000 files a process);
 *   database         only with TEST_DATABASE_URL set (else skipped with one line): a
 *                    PostgreSQL cluster of its own (initdb in a temporary folder, a free port;
 *                    the shared one is never touched), server.ts --database on it, POSTs every
 *                    `dbPostEveryMs` while every process of that cluster is stopped (SIGSTOP)
 *                    for `dbFreezeMs`.
 *
 * Run:   npm run bench:attack                 (full size, about 5 minutes; also writes the
 *                                              "Under attack" section of bench/results.md)
 *        npm run bench:attack -- --tiny       (a few seconds an attack, under 2 minutes: CI)
 *        npm run bench:attack -- --only ws    (only the attacks named; may be repeated)
 *
 * It reports; it asserts nothing about speed. It exits 1 when a server died under an attack
 * or an attack could not run. The report goes to stdout and to bench/results/attack.md.
 */

import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync } from "node:fs";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import WebSocket from "ws";
import { createApp, install, listen, PIPELINED_MAX, readFlags } from "../server.ts";
import { FREEZE_LIMIT_MS } from "../lessons/fanout.ts";
import { POSTS_PER_SENDER, POSTS_PER_SERVER } from "../lessons/http.ts";
import { QUERY_DEADLINE_MS } from "../lessons/postgres-faults.ts";
import { VISITORS_MAX } from "../lessons/toast-marks.ts";
import { WS_FRAMES_PER_SECOND } from "../lessons/ws.ts";
import {
  BENCH,
  count,
  killEverything,
  mbFromKB,
  median,
  messageOf,
  ms,
  percentiles,
  plural,
  processTree,
  rssKB,
  SCRATCH,
  sourceAddress,
  SseReader,
  startFile,
  startServer,
  stop,
  sum,
  tableHead,
  tableRow,
  waitForLines,
  waitForUrl,
  type Percentiles,
  type Server,
  type SseMessage,
  type Started,
} from "./common.ts";

// ─── Sizes ───────────────────────────────────────────────────────────────────

/** Every count, duration and size of one run: the full one, or the tiny one for CI. */
interface Size {
  /** How long each attack runs at most, in ms. */
  attackMs: number;
  /** The bystander counts alone this long before the attack, and this long after it. */
  leadMs: number;
  tailMs: number;
  /** A fresh server's time to settle before its idle memory is read. */
  settleMs: number;
  /** Pipelining: connections at once, requests each at most, connections in all at most. */
  pipelineConnections: number;
  pipelineRequestsMax: number;
  pipelineConnectionsMax: number;
  /** Messages in the room before the pipelining, each TEXT_LENGTH long (one sender's burst). */
  roomPrefill: number;
  /** One-byte frames the WebSocket client sends in all, at most. */
  wsFrames: number;
  /** The repeated freeze request: n sync sleeps of delay ms (full size: FREEZE_LIMIT_MS). */
  freezeN: number;
  freezeDelayMs: number;
  /** blocking-server.ts's --workers and --timeout, and the silent connections held at once. */
  blockingWorkers: number;
  blockingTimeoutS: number;
  silentAtOnce: number;
  /** Each of the bystander's countdowns on the blocking server: shorter than --timeout. */
  blockingSegmentS: number;
  /** Cookie churn: requests (visitors) in all, and at once; it may run this long. */
  churnRequests: number;
  churnConcurrency: number;
  churnMs: number;
  /** Posting flood: room streams open, posting addresses, POSTs in all at most. */
  roomSubscribers: number;
  posters: number;
  postsMax: number;
  /** Connection flood: the app's cap, and the idle connections opened against it. */
  connectionCap: number;
  floodConnections: number;
  /** Database: the freeze starts this long into the attack and lasts this long. */
  dbFreezeAtMs: number;
  dbFreezeMs: number;
  /** A POST this often; each may wait this long for its answer. */
  dbPostEveryMs: number;
  dbAnswerWaitMs: number;
}

const FULL: Size = {
  attackMs: 15_000,
  leadMs: 1000,
  tailMs: 2000,
  settleMs: 1000,
  pipelineConnections: 100,
  pipelineRequestsMax: 100_000,
  pipelineConnectionsMax: 2000,
  roomPrefill: POSTS_PER_SENDER.burst,
  wsFrames: 1_000_000,
  freezeN: FREEZE_LIMIT_MS / 2000,
  freezeDelayMs: 2000,
  blockingWorkers: 4,
  blockingTimeoutS: 5,
  silentAtOnce: 3,
  blockingSegmentS: 3,
  churnRequests: VISITORS_MAX + 1,
  churnConcurrency: 50,
  churnMs: 30_000,
  roomSubscribers: 300,
  posters: 10,
  postsMax: 100_000,
  connectionCap: 2000,
  floodConnections: 2500,
  dbFreezeAtMs: 2000,
  dbFreezeMs: 5000,
  dbPostEveryMs: 500,
  dbAnswerWaitMs: 20_000,
};

const TINY: Size = {
  attackMs: 3000,
  leadMs: 500,
  tailMs: 500,
  settleMs: 500,
  pipelineConnections: 10,
  pipelineRequestsMax: 5000,
  pipelineConnectionsMax: 50,
  roomPrefill: 5,
  wsFrames: 20_000,
  freezeN: 5,
  freezeDelayMs: 200,
  blockingWorkers: 2,
  blockingTimeoutS: 2,
  silentAtOnce: 1,
  blockingSegmentS: 1,
  churnRequests: 200,
  churnConcurrency: 10,
  churnMs: 5000,
  roomSubscribers: 20,
  posters: 2,
  postsMax: 1000,
  connectionCap: 100,
  floodConnections: 150,
  dbFreezeAtMs: 500,
  dbFreezeMs: 1500,
  dbPostEveryMs: 250,
  dbAnswerWaitMs: 10_000,
};

// The same in both runs:
/** The bystander's tick, and the longest it counts (it is stopped long before). */
const BYSTANDER_INTERVAL_MS = 100;
const BYSTANDER_MAX_S = 600;
/** After a failed or cut countdown, the bystander tries again this much later. */
const BYSTANDER_RETRY_MS = 100;
/** How often the server's memory is read. */
const RSS_SAMPLE_MS = 100;
/** Idle memory is read once two readings this far apart differ by at most STABLE_SHARE (the
 * blocking server's workers boot in their own time), or after STABLE_MAX_MS. */
const STABLE_STEP_MS = 500;
const STABLE_SHARE = 0.01;
const STABLE_MAX_MS = 15_000;
/** Requests written to a pipelining connection at a time. */
const PIPELINE_BATCH = 100;
/** The length of each message in the room before the pipelining: the most a message takes. */
const TEXT_LENGTH = 280;
/** At the end, a connection still open is read for this long to see whether it was cut. */
const END_CHECK_MS = 1000;
/** Frames the WebSocket client hands ws at a time, and the most it lets ws hold unsent. */
const WS_BATCH = 1000;
const WS_BUFFERED_MAX = 1024 * 1024;
/** At the end, how long the WebSocket client reads to learn how the server closed it. */
const WS_CLOSE_WAIT_MS = 3000;
/** The issue's request: n × delay is twice FREEZE_LIMIT_MS. */
const ISSUE_FREEZE = "/api/aggregated/?via=blocking&n=10&delay=2000";
/** Between two freeze requests. */
const FREEZE_PAUSE_MS = 100;
/** How long a toast stream is read to list a visitor's unread toasts. */
const TOAST_CHECK_MS = 1000;
/** Idle connections opened at a time by the flood, and the pause between two batches. */
const FLOOD_BATCH = 200;
const FLOOD_PAUSE_MS = 20;
/** After the posting flood, how long the subscribers get to receive what was accepted. */
const DELIVERY_WAIT_MS = 2000;
/** Any other single request may take this long. */
const REQUEST_TIMEOUT_MS = 30_000;

// ─── Flags ───────────────────────────────────────────────────────────────────

const NAMES = [
  "baseline", "pipeline-room", "pipeline-wall", "ws", "freeze", "baseline-blocking", "blocking",
  "cookies", "cookies-issued", "posting", "connections", "database",
];

const HELP = `Usage: npm run bench:attack -- [flags]

  --tiny        A few seconds an attack and fewer connections (for CI).
  --only NAME   Runs only this attack (may be repeated): ${NAMES.join(", ")}.

Internal, how this file runs its helpers:
  --bystander URL [--segment S]   The bystander: countdowns of S seconds (default: one long one)
                                  from URL until SIGTERM; prints one line of JSON.
  --capped N                      server.ts's app with its lessons, at most N connections.`;

const flags = readFlags(
  {
    tiny: { type: "boolean", default: false },
    only: { type: "string", multiple: true, default: [] },
    bystander: { type: "string" },
    segment: { type: "string" },
    capped: { type: "string" },
    help: { type: "boolean", default: false },
  },
  HELP,
);
const SIZE = flags.tiny ? TINY : FULL;
for (const name of flags.only) {
  if (!NAMES.includes(name)) {
    console.error(`--only takes one of ${NAMES.join(", ")}; "${name}" is none of them.`);
    process.exit(2);
  }
}

// ─── What this process opens, closed whatever happens ────────────────────────

const opened = new Set<{ destroy(): unknown }>();

/** Remembers a socket, request or agent until it closes, or until closeEverything(). */
function keep<T extends { destroy(): unknown }>(thing: T): T {
  opened.add(thing);
  if (thing instanceof EventEmitter) thing.once("close", () => opened.delete(thing));
  return thing;
}

function closeEverything(): void {
  for (const thing of opened) thing.destroy();
  opened.clear();
}

/** Runs at exit, whatever ends this process: a PostgreSQL cluster of our own goes with it. */
const atExit: (() => void)[] = [];
process.on("exit", () => {
  closeEverything();
  for (const undo of atExit.splice(0).reverse()) {
    try {
      undo();
    } catch {
      // best effort: the next one still runs
    }
  }
});

// ─── Small clients ───────────────────────────────────────────────────────────

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  ms: number;
}

/** One request, its whole answer read (agent: false unless one is given). */
function request(url: string, options: http.RequestOptions = {}, body?: string,
  timeoutMs = REQUEST_TIMEOUT_MS): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const startedAt = performance.now();
    const req = keep(http.request(url, { agent: false, ...options }));
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer in ${timeoutMs} ms`)));
    req.on("error", reject);
    req.on("response", (res) => {
      let text = "";
      res.setEncoding("utf8").on("data", (chunk: string) => (text += chunk));
      res.on("error", reject);
      res.on("end", () => {
        const status = res.statusCode ?? 0;
        resolve({ status, headers: res.headers, text, ms: performance.now() - startedAt });
      });
    });
    req.end(body);
  });
}

/** A response's status and headers, the request cut as soon as they came (a stream's). */
function headersOf(url: string, options: http.RequestOptions = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const startedAt = performance.now();
    const req = keep(http.get(url, { agent: false, ...options }));
    req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error("no answer")));
    req.on("error", reject);
    req.on("response", (res) => {
      const status = res.statusCode ?? 0;
      resolve({ status, headers: res.headers, text: "", ms: performance.now() - startedAt });
      res.on("error", () => {});
      req.destroy();
    });
  });
}

const JSON_HEADERS = { "Content-Type": "application/json" };
const FORM_HEADERS = { "Content-Type": "application/x-www-form-urlencoded" };

/** "201 ×20, 429 ×3": how often each status came. */
function statusList(statuses: Map<string, number>): string {
  const sorted = [...statuses].sort(([a], [b]) => a.localeCompare(b));
  return sorted.map(([status, times]) => `${status} ×${count(times)}`).join(", ") || "none";
}

function tally(statuses: Map<string, number>, status: number | string): void {
  statuses.set(String(status), (statuses.get(String(status)) ?? 0) + 1);
}

/** Milliseconds as seconds, to 0.1 s. */
const seconds = (value: number) => `${(value / 1000).toFixed(1)} s`;

// ─── The bystander (its own process) ─────────────────────────────────────────
//
// One ordinary client: it opens /sse/?from=F&interval=BYSTANDER_INTERVAL_MS and records when
// each tick arrives. As bench/client.ts does, a countdown's start is the earliest that agrees
// with every arrival, so tick k is late by arrival - (start + k × interval), never below 0.
// A countdown cut short (or refused) is opened again; on the blocking server each is shorter
// than --timeout and the next follows, so it waits for a free worker like a new tab would.

interface BystanderReport {
  ticks: number;
  due: number;
  lateness: Percentiles;
  countdowns: number;
  cut: number;
  failures: Record<string, number>;
  /** The longest from a request to its first tick, over every countdown. */
  firstWaitMaxMs: number;
  /** The worst loop delay server.ts told the stream of (its `server` event), if it told any. */
  loopDelayMaxMs?: number;
}

interface Countdown {
  requestedAt: number;
  arrivals: number[];
  endedAt: number;
  finished: boolean;
  failure?: string;
}

async function runBystander(url: string, segmentS: number | undefined): Promise<void> {
  const from = Math.round(((segmentS ?? BYSTANDER_MAX_S) * 1000) / BYSTANDER_INTERVAL_MS);
  const target = `${url}/sse/?from=${from}&interval=${BYSTANDER_INTERVAL_MS}`;
  let stopping = false;
  let current: http.ClientRequest | undefined;
  let said = false;
  let loopDelayMaxMs: number | undefined;
  const stopNow = () => {
    stopping = true;
    current?.destroy();
  };
  process.once("SIGTERM", stopNow);
  // Orphaned (the bench was killed): stop too, rather than count for BYSTANDER_MAX_S.
  const parent = process.ppid;
  setInterval(() => process.ppid !== parent && stopNow(), 1000).unref();

  const one = () =>
    new Promise<Countdown>((resolve) => {
      const countdown: Countdown = {
        requestedAt: performance.now(), arrivals: [], endedAt: 0, finished: false,
      };
      const done = (failure?: string) => {
        if (countdown.endedAt) return;
        countdown.endedAt = performance.now();
        if (failure && !countdown.finished && !stopping) countdown.failure = failure;
        resolve(countdown);
      };
      const req = http.get(target, { agent: false });
      current = req;
      req.on("error", (error: NodeJS.ErrnoException) => done(error.code ?? error.message));
      req.on("close", () => done("cut"));
      req.on("response", (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          return done(`HTTP ${res.statusCode}`);
        }
        const reader = new SseReader();
        res.setEncoding("utf8").on("data", (text: string) => {
          const at = performance.now();
          for (const message of reader.read(text)) {
            if (message.event === "server" && message.data) {
              const { delay: late } = JSON.parse(message.data) as { delay?: number };
              if (late !== undefined) loopDelayMaxMs = Math.max(loopDelayMaxMs ?? 0, late);
            }
            if (message.event !== "i") continue;
            const tick = from - Number(message.id);
            countdown.arrivals[tick] ??= at;
            if (tick === from) countdown.finished = true;
            if (!said) console.log("bystander: streaming");
            said = true;
          }
        });
        res.on("error", () => {});
        res.on("end", () => done(countdown.finished ? undefined : "cut"));
      });
    });

  const countdowns: Countdown[] = [];
  const started = performance.now();
  while (!stopping && performance.now() - started < BYSTANDER_MAX_S * 1000) {
    const countdown = await one();
    countdowns.push(countdown);
    if (countdown.failure && !stopping) await delay(BYSTANDER_RETRY_MS);
  }

  const lateness: number[] = [];
  const failures: Record<string, number> = {};
  let ticks = 0;
  let due = 0;
  let firstWaitMaxMs = 0;
  for (const { arrivals, endedAt, finished, failure, requestedAt } of countdowns) {
    if (failure) failures[failure] = (failures[failure] ?? 0) + 1;
    let start = Infinity;
    arrivals.forEach((at, tick) => (start = Math.min(start, at - tick * BYSTANDER_INTERVAL_MS)));
    if (start === Infinity) continue;
    arrivals.forEach((at, tick) => {
      ticks++;
      if (tick > 0) lateness.push(at - (start + tick * BYSTANDER_INTERVAL_MS));
    });
    const dueBy = Math.floor((endedAt - start) / BYSTANDER_INTERVAL_MS) + 1;
    due += finished ? from + 1 : Math.min(from + 1, dueBy);
    const first = arrivals.find((at) => at !== undefined);
    if (first !== undefined) firstWaitMaxMs = Math.max(firstWaitMaxMs, first - requestedAt);
  }
  const report: BystanderReport = {
    ticks,
    due,
    lateness: percentiles(lateness),
    countdowns: countdowns.length,
    cut: countdowns.filter((countdown) => countdown.failure === "cut").length,
    failures,
    firstWaitMaxMs,
    loopDelayMaxMs,
  };
  console.log(JSON.stringify(report));
  process.exit(0);
}

// ─── server.ts's app with a smaller connection cap (its own process) ─────────

async function serveCapped(cap: number): Promise<void> {
  const { LESSONS } = await import("../lessons/index.ts");
  const app = await install(createApp({ quiet: true, connectionsMax: cap }), LESSONS);
  await listen(app.server, "127.0.0.1", 0);
  const { port } = app.server.address() as net.AddressInfo;
  console.log(`server.ts's app, its lessons, at most ${cap} connections: ` +
    `listening at http://127.0.0.1:${port}/`);
  process.once("SIGTERM", () => process.exit(0));
  const parent = process.ppid;
  setInterval(() => process.ppid !== parent && process.exit(0), 1000).unref();
}

// ─── A PostgreSQL cluster of our own ─────────────────────────────────────────

interface Cluster {
  url: string;
  postmaster: number;
  freeze(): void;
  thaw(): void;
  /** The texts of the room's messages stored in its table. */
  texts(): Promise<Set<string>>;
  remove(): void;
}

/** Where initdb is: the newest of /usr/lib/postgresql/N/bin, else PATH's; undefined if none. */
function postgresBin(): string | undefined {
  const root = "/usr/lib/postgresql";
  const versions = existsSync(root) ? readdirSync(root).sort((a, b) => Number(b) - Number(a)) : [];
  for (const version of versions) {
    const bin = path.join(root, version, "bin");
    if (existsSync(path.join(bin, "initdb"))) return bin;
  }
  try {
    const found = execFileSync("sh", ["-c", "command -v initdb"], { encoding: "utf8" }).trim();
    return found ? path.dirname(found) : undefined;
  } catch {
    return undefined;
  }
}

async function freePort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address() as net.AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

/**
 * initdb in a temporary folder, pg_ctl start on a free loopback port; as root, both as the
 * postgres user (initdb refuses root). Trust authentication: it listens on 127.0.0.1 only
 * and lives for one attack. Stopped and removed at the end, or at exit whatever happens.
 */
async function startCluster(bin: string): Promise<Cluster> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "attack-pg-"));
  const asRoot = process.getuid?.() === 0;
  const run = (tool: string, args: string[]) => {
    const [command, all] = asRoot
      ? ["runuser", ["-u", "postgres", "--", path.join(bin, tool), ...args]]
      : [path.join(bin, tool), args];
    execFileSync(command, all, { stdio: "pipe" });
  };
  let stopped: number[] = [];
  let postmaster = 0;
  const remove = () => {
    for (const pid of stopped) process.kill(pid, "SIGCONT");
    stopped = [];
    if (existsSync(path.join(dir, "data", "postmaster.pid"))) {
      run("pg_ctl", ["-D", path.join(dir, "data"), "-m", "immediate", "-w", "stop"]);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  atExit.push(remove);
  if (asRoot) {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }));
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }));
    chownSync(dir, uid, gid);
  }
  const port = await freePort();
  run("initdb", ["-D", path.join(dir, "data"), "-U", "postgres", "-A", "trust"]);
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1`;
  run("pg_ctl", ["-D", path.join(dir, "data"), "-l", path.join(dir, "log"), "-w", "-o", options,
    "start"]);
  const pidFile = readFileSync(path.join(dir, "data", "postmaster.pid"), "utf8");
  postmaster = Number(pidFile.split("\n")[0]);
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  return {
    url,
    postmaster,
    freeze() {
      // Every process of the cluster: the postmaster alone stopped would leave its backends
      // answering the connections they already serve.
      stopped = processTree(postmaster);
      for (const pid of stopped) process.kill(pid, "SIGSTOP");
    },
    thaw() {
      for (const pid of stopped) process.kill(pid, "SIGCONT");
      stopped = [];
    },
    async texts() {
      const { default: postgres } = await import("postgres");
      const sql = postgres(url, { max: 1, onnotice: () => {} });
      try {
        const rows = await sql<{ text: string }[]>`
          select data->>'text' as text from hub_events where topic = 'room:lobby'`;
        return new Set(rows.map((row) => row.text));
      } finally {
        await sql.end({ timeout: 1 });
      }
    },
    remove() {
      atExit.splice(atExit.indexOf(remove), 1);
      remove();
    },
  };
}

// ─── The attacks ─────────────────────────────────────────────────────────────

type ServerKind = "async" | "blocking" | "capped" | "database";

interface Target {
  server: Server;
  origin: string;
  port: number;
  cluster?: Cluster;
}

/** What the attacker did and saw, in a table cell each; notes go under the table. */
interface Outcome {
  did: string;
  saw: string;
  notes?: string[];
}

interface Attack {
  name: string;
  label: string;
  kind: ServerKind;
  /** Seconds of each of the bystander's countdowns (default: one for the whole run). */
  segmentS?: number;
  /** Before the bystander opens: a room to fill, visitors to make. */
  prepare?(target: Target): Promise<void>;
  /** Until `deadline` (performance.now()), and within its counts. */
  run(target: Target, deadline: number): Promise<Outcome>;
}

/** Posts `n` messages of TEXT_LENGTH characters from one address, as one sender may. */
async function fillRoom({ origin }: Target, n: number) {
  const body = JSON.stringify({ name: "prefill", text: "x".repeat(TEXT_LENGTH) });
  for (let k = 0; k < n; k++) {
    const answer = await request(`${origin}/room/messages`, { method: "POST",
      headers: JSON_HEADERS }, body);
    if (answer.status !== 201) throw new Error(`a prefill POST answered ${answer.status}`);
  }
}

/**
 * Connections that pipeline `path` and never read: each writes PIPELINE_BATCH requests at a
 * time, as fast as its socket takes them, up to pipelineRequestsMax; one cut is replaced
 * while there is time. A cut shows as a failed write (the attacker reads nothing); at the end
 * each connection still open is read for END_CHECK_MS to see whether it is closed.
 */
async function pipelining({ port }: Target, path: string, deadline: number): Promise<Outcome> {
  const batch = `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`.repeat(PIPELINE_BATCH);
  interface Connection { socket: net.Socket; written: number; since: number; cutAfterMs?: number }
  const connections: Connection[] = [];
  const open = () => {
    if (performance.now() >= deadline || connections.length >= SIZE.pipelineConnectionsMax) return;
    const socket = keep(net.connect({ port, host: "127.0.0.1",
      localAddress: sourceAddress(connections.length) }));
    const connection: Connection = { socket, written: 0, since: performance.now() };
    connections.push(connection);
    socket.pause(); // never reads
    const write = () => {
      while (connection.written < SIZE.pipelineRequestsMax && performance.now() < deadline) {
        if (socket.destroyed) return;
        connection.written += PIPELINE_BATCH;
        if (!socket.write(batch)) return void socket.once("drain", write);
      }
    };
    socket.once("connect", write);
    socket.on("error", () => {});
    socket.once("close", () => {
      if (performance.now() >= deadline) return;
      connection.cutAfterMs = performance.now() - connection.since;
      open();
    });
  };
  for (let k = 0; k < SIZE.pipelineConnections; k++) open();
  while (performance.now() < deadline) await delay(50);
  const left = connections.filter((c) => c.cutAfterMs === undefined && !c.socket.destroyed);
  const closedAtEnd = await Promise.all(left.map(({ socket }) => new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), END_CHECK_MS);
    socket.once("close", () => resolve(true));
    socket.once("end", () => resolve(true));
    socket.on("data", () => {});
    socket.resume();
    socket.once("close", () => clearTimeout(timer));
  })));
  const cut = connections.filter((c) => c.cutAfterMs !== undefined);
  const written = sum(connections.map((c) => c.written));
  const stillOpen = closedAtEnd.filter((closed) => !closed).length;
  const cutWritten = median(cut.map((c) => c.written));
  const cutMs = median(cut.map((c) => c.cutAfterMs!));
  const seen = cut.length
    ? `${count(cut.length)} cut while writing (median after ${count(cutWritten)} requests ` +
      `written, ${ms(cutMs)}), each replaced`
    : "no write failed";
  return {
    did: `${count(connections.length)} connections (${SIZE.pipelineConnections} at once) ` +
      `pipelined ${count(written)} × \`GET ${path}\`, reading nothing`,
    saw: `${seen}; at the end ${count(left.length - stillOpen)} of ${count(left.length)} ` +
      `left were closed, ${count(stillOpen)} open`,
  };
}

/**
 * One WebSocket sending one-byte frames ("x", no JSON: each asks for an ERROR reply) as fast
 * as ws takes them, never reading; when its writes fail it opens another, while there is time
 * and frames. At the end each socket still open reads what was sent to it: its close frame,
 * behind every reply the server queued before it closed.
 */
async function frames({ port }: Target, deadline: number): Promise<Outcome> {
  interface Socket {
    ws: WebSocket;
    sent: number;
    replies: number;
    openedAt: number;
    closed?: { code: number; reason: string; afterMs: number };
  }
  const sockets: Socket[] = [];
  let sent = 0;
  while (performance.now() < deadline && sent < SIZE.wsFrames) {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws/notifications`);
    keep({ destroy: () => ws.terminate() });
    const socket: Socket = { ws, sent: 0, replies: 0, openedAt: performance.now() };
    sockets.push(socket);
    ws.on("error", () => {});
    ws.on("message", () => socket.replies++);
    ws.once("close", (code, reason) => {
      const afterMs = performance.now() - socket.openedAt;
      socket.closed = { code, reason: reason.toString(), afterMs };
    });
    const isOpen = await new Promise<boolean>((resolve) => {
      ws.once("open", () => resolve(true));
      ws.once("close", () => resolve(false));
    });
    if (!isOpen) break;
    ws.pause(); // never reads
    await new Promise<void>((resolve) => {
      const pump = () => {
        if (ws.readyState !== WebSocket.OPEN) return resolve();
        if (performance.now() >= deadline || sent >= SIZE.wsFrames) return resolve();
        for (let k = 0; k < WS_BATCH && sent < SIZE.wsFrames; k++) {
          ws.send("x");
          sent++;
          socket.sent++;
        }
        if (ws.bufferedAmount > WS_BUFFERED_MAX) setTimeout(pump, 5);
        else setImmediate(pump);
      };
      pump();
    });
  }
  await Promise.all(sockets.map((socket) => new Promise<void>((resolve) => {
    if (socket.closed) return resolve();
    const timer = setTimeout(resolve, WS_CLOSE_WAIT_MS);
    socket.ws.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
    socket.ws.resume();
  })));
  const closes = new Map<string, number>();
  for (const { closed } of sockets) {
    tally(closes, closed ? `${closed.code}${closed.reason ? ` "${closed.reason}"` : ""}` : "open");
  }
  const replies = sum(sockets.map((socket) => socket.replies));
  return {
    did: `${count(sent)} one-byte frames on ${plural(sockets.length, "WebSocket")}, reading ` +
      "nothing",
    saw: `closed ${statusList(closes)}; read at the end: ${count(replies)} replies before the ` +
      "close",
  };
}

/** A status with how many times it came and the longest it took: "200 ×1 (10.0 s)". */
function timedStatuses(answers: { status: string; ms: number }[]): string {
  const by = new Map<string, number[]>();
  for (const { status, ms: took } of answers) by.set(status, [...(by.get(status) ?? []), took]);
  return [...by].map(([status, took]) =>
    `${status} ×${count(took.length)} (longest ${seconds(Math.max(...took))})`).join(", ");
}

/**
 * The issue's request once, then n sync sleeps of freezeDelayMs (full size: the largest freeze
 * FREEZE_LIMIT_MS lets one request ask for), one request after another until the deadline.
 */
async function freezes({ origin }: Target, deadline: number): Promise<Outcome> {
  const issue = await request(`${origin}${ISSUE_FREEZE}`);
  const asked = `/api/aggregated/?via=blocking&n=${SIZE.freezeN}&delay=${SIZE.freezeDelayMs}`;
  const answers: { status: string; ms: number }[] = [];
  while (performance.now() < deadline) {
    const startedAt = performance.now();
    try {
      const answer = await request(`${origin}${asked}`, {}, undefined,
        FREEZE_LIMIT_MS + REQUEST_TIMEOUT_MS);
      answers.push({ status: String(answer.status), ms: answer.ms });
    } catch (error) {
      answers.push({ status: messageOf(error), ms: performance.now() - startedAt });
    }
    await delay(FREEZE_PAUSE_MS);
  }
  return {
    did: `\`${ISSUE_FREEZE}\` once, then \`${asked}\` back to back`,
    saw: `${issue.status} (${issue.text.trim()}); then ${timedStatuses(answers)}`,
  };
}

/** `silentAtOnce` connections that send nothing, each opened again once the server ends it. */
async function silent({ port }: Target, deadline: number): Promise<Outcome> {
  const lifetimes: number[] = [];
  let stillOpen = 0;
  const holders = Array.from({ length: SIZE.silentAtOnce }, async () => {
    while (performance.now() < deadline) {
      const socket = keep(net.connect({ port, host: "127.0.0.1" }));
      socket.on("error", () => {});
      socket.resume();
      const since = performance.now();
      const closed = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), Math.max(0, deadline - since));
        socket.once("close", () => {
          clearTimeout(timer);
          resolve(true);
        });
      });
      if (!closed) {
        stillOpen++;
        socket.destroy();
        return;
      }
      lifetimes.push(performance.now() - since);
    }
  });
  await Promise.all(holders);
  const { p50, max } = percentiles(lifetimes);
  const ended = lifetimes.length
    ? `${count(lifetimes.length)} ended by the server, after ${seconds(p50)} (p50; longest ` +
      `${seconds(max)}), the wait for a worker included`
    : "none ended by the server";
  return {
    did: `${plural(SIZE.silentAtOnce, "connection")} at a time that send nothing, each opened ` +
      "again once ended",
    saw: `${ended}; ${stillOpen} still open at the end`,
  };
}

// ─── Visitors and their toasts ───────────────────────────────────────────────

interface Visitor {
  cookie: string;
  toast: string;
}

/** The visitor cookie a page sets ("visitor=..."), and a toast for it from the demo (0 s). */
async function newVisitor(origin: string, toast: string): Promise<Visitor> {
  const page = await request(`${origin}/`);
  const cookie = (page.headers["set-cookie"]?.[0] ?? "").split(";")[0] ?? "";
  if (!cookie.startsWith("visitor=")) throw new Error("GET / set no visitor cookie");
  const form = new URLSearchParams({ message: toast, seconds: "0" }).toString();
  const headers = { ...FORM_HEADERS, Cookie: cookie };
  const demo = await request(`${origin}/toasts/demo`, { method: "POST", headers }, form);
  if (demo.status !== 303) throw new Error(`the toast demo answered ${demo.status}`);
  return { cookie, toast };
}

/** Opens the visitor's toast stream: its status, and the unread toasts it lists at first. */
async function unreadToasts(origin: string, cookie: string) {
  const messages: string[] = [];
  const options = { headers: { Cookie: cookie } };
  const { status, req } = await openStream(`${origin}/toasts/stream`, options, (message) => {
    if (message.event !== "toast" || !message.data) return;
    messages.push((JSON.parse(message.data) as { message: string }).message);
  });
  await delay(TOAST_CHECK_MS);
  req.destroy();
  return { status, messages };
}

/** An SSE stream kept open, each message handed over as it comes; its status and request. */
function openStream(url: string, options: http.RequestOptions,
  onMessage: (message: SseMessage, at: number) => void) {
  return new Promise<{ status: number; req: http.ClientRequest }>((resolve, reject) => {
    const req = keep(http.get(url, { agent: false, ...options }));
    req.on("error", reject);
    req.on("response", (res) => {
      resolve({ status: res.statusCode ?? 0, req });
      const reader = new SseReader();
      res.setEncoding("utf8").on("data", (text: string) => {
        const at = performance.now();
        for (const message of reader.read(text)) onMessage(message, at);
      });
      res.on("error", () => {});
    });
  });
}

/**
 * A request's status as soon as its headers come: an event stream is cut then, any other
 * answer is read to its end so its keep-alive connection serves the next request.
 */
function statusOf(url: string, options: http.RequestOptions): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, options);
    keep(req);
    req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error("no answer")));
    req.on("error", reject);
    req.on("response", (res) => {
      const status = res.statusCode ?? 0;
      res.on("error", () => {});
      if (String(res.headers["content-type"]).startsWith("text/event-stream")) {
        req.destroy();
        return resolve(status);
      }
      res.resume();
      res.on("end", () => resolve(status));
    });
  });
}

/** The two bystander visitors of the cookie attacks: one with no tab open, one with its stream. */
const visitors: { idle?: Visitor; followed?: Visitor } = {};

async function makeVisitors({ origin }: Target): Promise<void> {
  visitors.idle = await newVisitor(origin, "for the visitor with no tab open");
  visitors.followed = await newVisitor(origin, "for the visitor whose tab is open");
  // The followed one keeps its toast stream open through the churn, as an open tab does.
  await openStream(`${origin}/toasts/stream`, { headers: { Cookie: visitors.followed.cookie } },
    () => {});
  for (const visitor of [visitors.idle, visitors.followed]) {
    const { messages } = await unreadToasts(origin, visitor.cookie);
    if (!messages.includes(visitor.toast)) throw new Error("a bystander's toast never came");
  }
}

/**
 * `churnRequests` visitors, `churnConcurrency` at a time, for at most churnMs: `one(k)` makes
 * the k-th and answers with the status that counts. Then whether each bystander's toast is left.
 */
async function churn({ origin }: Target, what: string,
  one: (agent: http.Agent) => Promise<number>): Promise<Outcome> {
  const agent = keep(new http.Agent({ keepAlive: true, maxSockets: SIZE.churnConcurrency }));
  const statuses = new Map<string, number>();
  const startedAt = performance.now();
  const until = startedAt + SIZE.churnMs;
  let next = 0;
  const workers = Array.from({ length: SIZE.churnConcurrency }, async () => {
    while (next < SIZE.churnRequests && performance.now() < until) {
      next++;
      try {
        tally(statuses, await one(agent));
      } catch (error) {
        tally(statuses, messageOf(error));
      }
    }
  });
  await Promise.all(workers);
  const tookMs = performance.now() - startedAt;
  agent.destroy();
  const left = async (visitor: Visitor | undefined) => {
    if (!visitor) return "not made";
    const { status, messages } = await unreadToasts(origin, visitor.cookie);
    if (status !== 200) return `its stream answered ${status}`;
    return messages.includes(visitor.toast) ? "**kept**" : "**gone**";
  };
  const idle = await left(visitors.idle);
  const followed = await left(visitors.followed);
  return {
    did: `${count(next)} ${what}, ${SIZE.churnConcurrency} at once, in ${seconds(tookMs)}`,
    saw: `${statusList(statuses)}; the unread toast of the visitor with no tab open: ${idle}, ` +
      `with its tab open: ${followed}`,
  };
}

const randomCookies = (target: Target) =>
  churn(target, "requests to `/toasts/stream` with a random 32-hex visitor cookie", (agent) => {
    const cookie = `visitor=${randomBytes(16).toString("hex")}`;
    return statusOf(`${target.origin}/toasts/stream`, { agent, headers: { Cookie: cookie } });
  });

const issuedCookies = (target: Target) =>
  churn(target, "visitors, each `GET /` for a cookie the server signs, then `/toasts/stream` " +
    "with it (status counted)", async (agent) => {
    const page = await request(`${target.origin}/`, { agent });
    const cookie = (page.headers["set-cookie"]?.[0] ?? "").split(";")[0] ?? "";
    return statusOf(`${target.origin}/toasts/stream`, { agent, headers: { Cookie: cookie } });
  });

// ─── Posting, connections, the database ──────────────────────────────────────

/** `subscribers` room streams; resolves with each one's count of messages, as it grows. */
async function roomSubscribers(origin: string, subscribers: number): Promise<number[]> {
  const got = Array.from({ length: subscribers }, () => 0);
  for (let first = 0; first < subscribers; first += FLOOD_BATCH) {
    const batch = got.slice(first, first + FLOOD_BATCH).map((_, j) => {
      const k = first + j;
      return openStream(`${origin}/room/stream`, { localAddress: sourceAddress(k) }, (m) => {
        if (m.event === "message") got[k]!++;
      });
    });
    for (const { status } of await Promise.all(batch)) {
      if (status !== 200) throw new Error(`a room stream answered ${status}`);
    }
  }
  return got;
}

async function posting({ origin }: Target, deadline: number): Promise<Outcome> {
  const got = await roomSubscribers(origin, SIZE.roomSubscribers);
  const statuses = new Map<string, number>();
  const retryAfter = new Set<string>();
  const startedAt = performance.now();
  let sent = 0;
  const posters = Array.from({ length: SIZE.posters }, async (_, k) => {
    const agent = keep(new http.Agent({ keepAlive: true, maxSockets: 1,
      localAddress: sourceAddress(k) }));
    while (performance.now() < deadline && sent < SIZE.postsMax) {
      sent++;
      const body = JSON.stringify({ name: `poster ${k}`, text: `flood ${sent}` });
      try {
        const answer = await request(`${origin}/room/messages`, { method: "POST", agent,
          headers: JSON_HEADERS }, body);
        tally(statuses, answer.status);
        if (answer.status === 429) retryAfter.add(String(answer.headers["retry-after"]));
      } catch (error) {
        tally(statuses, messageOf(error));
      }
    }
  });
  await Promise.all(posters);
  const tookMs = performance.now() - startedAt;
  await delay(DELIVERY_WAIT_MS);
  const accepted = statuses.get("201") ?? 0;
  const fewest = Math.min(...got);
  const most = Math.max(...got);
  const each = fewest === most ? count(fewest) : `${count(fewest)} to ${count(most)}`;
  const retry = retryAfter.size ? ` (Retry-After: ${[...retryAfter].join(", ")} s)` : "";
  return {
    did: `${count(sent)} POSTs to the room from ${SIZE.posters} addresses, back to back, in ` +
      `${seconds(tookMs)}, ${count(SIZE.roomSubscribers)} room streams open`,
    saw: `${statusList(statuses)}${retry}: ${(accepted / (tookMs / 1000)).toFixed(1)} ` +
      `accepted a second; each subscriber got ${each} of the ${count(accepted)}`,
  };
}

/**
 * `floodConnections` idle connections, FLOOD_BATCH at a time, kept until the deadline; a
 * newcomer's GET / halfway, and another once the flood has gone.
 */
async function connections({ origin, port }: Target, deadline: number): Promise<Outcome> {
  interface Entry { socket: net.Socket; refused: boolean; closed: boolean; head: string }
  const flood: Entry[] = [];
  for (let k = 0; k < SIZE.floodConnections; k++) {
    const socket = keep(net.connect({ port, host: "127.0.0.1", localAddress: sourceAddress(k) }));
    const entry: Entry = { socket, refused: false, closed: false, head: "" };
    flood.push(entry);
    socket.setEncoding("utf8");
    socket.on("data", (text: string) => {
      if (entry.head.length < 20) entry.head += text;
      entry.refused ||= entry.head.startsWith("HTTP/1.1 503");
    });
    socket.on("error", () => {});
    socket.once("close", () => (entry.closed = true));
    if (k % FLOOD_BATCH === FLOOD_BATCH - 1) await delay(FLOOD_PAUSE_MS);
  }
  await delay(Math.max(0, (deadline - performance.now()) / 2));
  const during = await request(`${origin}/`).then((a) => String(a.status), messageOf);
  await delay(Math.max(0, deadline - performance.now()));
  const held = flood.filter((entry) => !entry.closed && !entry.refused).length;
  const refused = flood.filter((entry) => entry.refused).length;
  const otherwise = flood.length - held - refused;
  for (const { socket } of flood) socket.destroy();
  await delay(SIZE.settleMs);
  const after = await request(`${origin}/`).then((a) => String(a.status), messageOf);
  return {
    did: `${count(flood.length)} idle connections against a cap of ` +
      `${count(SIZE.connectionCap)} (the bystander's stream is one of them)`,
    saw: `${count(held)} held, then 503 for ${count(refused)}` +
      `${otherwise ? `, ${count(otherwise)} closed otherwise` : ""}; a newcomer's \`GET /\` ` +
      `while full: ${during}; once the flood left: ${after}`,
  };
}

/**
 * A POST every dbPostEveryMs from the start; dbFreezeAtMs in, every process of the cluster
 * stopped for dbFreezeMs. Each POST is timed; a room stream says when each message arrived;
 * the table says which were stored.
 */
async function frozenDatabase({ origin, cluster, server }: Target, deadline: number):
  Promise<Outcome> {
  if (!cluster) throw new Error("no cluster");
  const arrivals = new Map<string, number>();
  await openStream(`${origin}/room/stream`, {}, (message, at) => {
    if (message.event !== "message" || !message.data) return;
    const { text } = JSON.parse(message.data) as { text: string };
    if (!arrivals.has(text)) arrivals.set(text, at);
  });
  interface Post { text: string; sentAt: number; status: string; tookMs: number }
  const posts: Post[] = [];
  const pending: Promise<void>[] = [];
  const begin = performance.now();
  const freezeAt = begin + SIZE.dbFreezeAtMs;
  let thawAt = Infinity;
  const freezer = (async () => {
    await delay(SIZE.dbFreezeAtMs);
    cluster.freeze();
    try {
      await delay(SIZE.dbFreezeMs);
    } finally {
      cluster.thaw();
      thawAt = performance.now();
    }
  })();
  while (performance.now() < Math.max(deadline, begin + SIZE.dbFreezeAtMs + SIZE.dbFreezeMs)) {
    const post: Post = { text: `post ${posts.length + 1}`, sentAt: performance.now(),
      status: "", tookMs: 0 };
    posts.push(post);
    const body = JSON.stringify({ name: "attack", text: post.text });
    pending.push(request(`${origin}/room/messages`, { method: "POST", headers: JSON_HEADERS },
      body, SIZE.dbAnswerWaitMs).then(
      (answer) => void Object.assign(post, { status: String(answer.status), tookMs: answer.ms }),
      (error) => void Object.assign(post, { status: messageOf(error),
        tookMs: performance.now() - post.sentAt }),
    ));
    await delay(SIZE.dbPostEveryMs);
  }
  await freezer;
  await Promise.all(pending);
  await delay(DELIVERY_WAIT_MS);
  const stored = await cluster.texts();
  const phase = (post: Post) =>
    post.sentAt < freezeAt ? "before" : post.sentAt < thawAt ? "during" : "after";
  const cells: string[] = [];
  for (const name of ["before", "during", "after"]) {
    const these = posts.filter((post) => phase(post) === name);
    if (!these.length) continue;
    const refusedButStored = these.filter((p) => p.status !== "201" && stored.has(p.text)).length;
    const storedNote = refusedButStored ? `, **${refusedButStored} not 201 yet stored**` : "";
    cells.push(`${name} the freeze: ${timedStatuses(these.map((p) => ({ status: p.status,
      ms: p.tookMs })))}${storedNote}`);
  }
  const firstAfter = Math.min(...[...arrivals.values()].filter((at) => at >= thawAt));
  const delivered = Number.isFinite(firstAfter)
    ? `the first message reached the room stream ${ms(firstAfter - thawAt)} after the thaw`
    : "no message reached the room stream after the thaw";
  const relisten = /hub: listening again after ([\d.]+) s/.exec(server.output());
  const listener = relisten
    ? `the server logged "listening again after ${relisten[1]} s"`
    : "the listener never logged a lost connection";
  return {
    did: `${posts.length} POSTs, one every ${SIZE.dbPostEveryMs} ms; the cluster's ` +
      `${processTree(cluster.postmaster).length} processes stopped (SIGSTOP) for ` +
      `${seconds(SIZE.dbFreezeMs)}, ${seconds(SIZE.dbFreezeAtMs)} in`,
    saw: `${cells.join("; ")}; ${delivered}; ${listener}`,
  };
}

// ─── The list ────────────────────────────────────────────────────────────────

const nothing = async (_target: Target, deadline: number): Promise<Outcome> => {
  await delay(Math.max(0, deadline - performance.now()));
  return { did: "nothing", saw: "n/a" };
};

const ATTACKS: Attack[] = [
  { name: "baseline", label: "baseline", kind: "async", run: nothing },
  {
    name: "pipeline-room", label: "pipelined GETs, never read: the room", kind: "async",
    prepare: (target) => fillRoom(target, SIZE.roomPrefill),
    run: (target, deadline) => pipelining(target, "/room/messages?after=0", deadline),
  },
  {
    name: "pipeline-wall", label: "pipelined GETs, never read: the wall", kind: "async",
    run: (target, deadline) => pipelining(target, "/wall/", deadline),
  },
  { name: "ws", label: "WebSocket frames, never read", kind: "async", run: frames },
  { name: "freeze", label: "the blocking fan-out", kind: "async", run: freezes },
  {
    name: "baseline-blocking", label: "baseline", kind: "blocking",
    segmentS: SIZE.blockingSegmentS, run: nothing,
  },
  {
    name: "blocking", label: "connections that send nothing", kind: "blocking",
    segmentS: SIZE.blockingSegmentS, run: silent,
  },
  {
    name: "cookies", label: "cookie churn: made-up cookies", kind: "async",
    prepare: makeVisitors, run: randomCookies,
  },
  {
    name: "cookies-issued", label: "cookie churn: cookies the server issued", kind: "async",
    prepare: makeVisitors, run: issuedCookies,
  },
  { name: "posting", label: "posting flood", kind: "async", run: posting },
  { name: "connections", label: "connection flood", kind: "capped", run: connections },
  { name: "database", label: "PostgreSQL frozen", kind: "database", run: frozenDatabase },
];

// ─── One measurement ─────────────────────────────────────────────────────────

interface Row {
  attack: Attack;
  server: string;
  outcome: Outcome;
  idleKB?: number;
  peakKB?: number;
  bystander?: BystanderReport;
  logged: string[];
  /** How the server ended, if it did while attacked: a defect. */
  died?: string;
  failed?: boolean;
}

function serverLabel(kind: ServerKind): string {
  switch (kind) {
    case "async":
      return "server.ts";
    case "blocking":
      return `blocking-server.ts --workers ${SIZE.blockingWorkers} ` +
        `--timeout ${SIZE.blockingTimeoutS}`;
    case "capped":
      return `server.ts's app, connectionsMax ${count(SIZE.connectionCap)}`;
    case "database":
      return "server.ts --database (a cluster of its own)";
  }
}

async function startTarget(kind: ServerKind, cluster: Cluster | undefined): Promise<Server> {
  switch (kind) {
    case "async":
      return startServer("server.ts", ["--quiet"]);
    case "blocking": {
      const args = ["--workers", String(SIZE.blockingWorkers),
        "--timeout", String(SIZE.blockingTimeoutS)];
      return startServer("blocking-server.ts", args, { ownGroup: true });
    }
    case "capped": {
      const started = startFile("bench/attack.ts", ["--capped", String(SIZE.connectionCap)]);
      return Object.assign(started, { url: await waitForUrl(started, "the capped server") });
    }
    case "database":
      return startServer("server.ts", ["--quiet", "--database", cluster!.url]);
  }
}

const hasEnded = ({ child }: Started) => child.exitCode !== null || child.signalCode !== null;

/**
 * What the server logged, each kind of line once with how often it came (numbers aside), its
 * time and pid left out: "[05:40:02] [5324] " (server.ts), "[date zone] [pid] [LEVEL] ".
 */
function loggedLines(text: string): string[] {
  const kinds = new Map<string, { first: string; times: number }>();
  for (const raw of text.split("\n")) {
    const line = raw.replace(/^\[[^\]]*\] \[\d+\] (\[[A-Z]+\] )?/, "").trim();
    if (!line) continue;
    const kind = line.replace(/\d+(\.\d+)?/g, "#");
    const seen = kinds.get(kind);
    if (seen) seen.times++;
    else kinds.set(kind, { first: line, times: 1 });
  }
  return [...kinds.values()].map(({ first, times }) =>
    `"${first}"${times > 1 ? ` (×${count(times)}, alike)` : ""}`);
}

/** The memory once it holds still and `ready()` says so (see STABLE_STEP_MS). */
async function settled(memory: () => number, ready: () => boolean): Promise<number> {
  await delay(SIZE.settleMs);
  const until = performance.now() + STABLE_MAX_MS;
  let last = memory();
  while (performance.now() < until) {
    await delay(STABLE_STEP_MS);
    const now = memory();
    if (ready() && Math.abs(now - last) <= last * STABLE_SHARE) return now;
    last = now;
  }
  return last;
}

async function measure(attack: Attack, postgres: string | undefined): Promise<Row> {
  const server = serverLabel(attack.kind);
  let cluster: Cluster | undefined;
  let started: Server | undefined;
  let bystander: Started | undefined;
  let sampler: NodeJS.Timeout | undefined;
  try {
    if (attack.kind === "database") cluster = await startCluster(postgres!);
    started = await startTarget(attack.kind, cluster);
    const { url: origin } = started;
    const target: Target = { server: started, origin, port: Number(new URL(origin).port),
      cluster };
    const pid = started.child.pid!;
    const tree = attack.kind === "blocking";
    const memory = () => tree ? sum(processTree(pid).map(rssKB)) : rssKB(pid);
    const processes = tree ? SIZE.blockingWorkers + 1 : 1;
    const idleKB = await settled(memory, () => processTree(pid).length >= processes);
    await attack.prepare?.(target);
    const segment = attack.segmentS === undefined ? [] : ["--segment", String(attack.segmentS)];
    bystander = startFile("bench/attack.ts", ["--bystander", origin, ...segment]);
    await waitForLines(bystander, /^bystander: streaming/, "the bystander");
    let peakKB = memory();
    sampler = setInterval(() => (peakKB = Math.max(peakKB, memory())), RSS_SAMPLE_MS);
    await delay(SIZE.leadMs);
    const logFrom = started.output().length;
    let failed = false;
    const deadline = performance.now() + SIZE.attackMs;
    const outcome = await attack.run(target, deadline).catch((error): Outcome => {
      failed = true;
      return { did: "", saw: `the attack failed: ${messageOf(error)}` };
    });
    closeEverything();
    // An attack that ended early is still watched to the end of its time: rows stay alike.
    await delay(Math.max(0, deadline - performance.now()));
    await delay(SIZE.tailMs);
    await stop(bystander);
    await bystander.closed;
    clearInterval(sampler);
    peakKB = Math.max(peakKB, memory());
    const report = bystander.output().split("\n").find((line) => line.startsWith("{"));
    const row: Row = {
      attack, server, outcome, idleKB, peakKB, failed,
      bystander: report ? (JSON.parse(report) as BystanderReport) : undefined,
      logged: loggedLines(started.output().slice(logFrom)),
    };
    if (hasEnded(started)) {
      const how = started.child.signalCode ?? `code ${started.child.exitCode}`;
      row.died = `exited (${how}): ${started.output().split("\n").slice(-5).join(" / ")}`;
    }
    return row;
  } catch (error) {
    const outcome = { did: "", saw: `could not run: ${messageOf(error)}` };
    return { attack, server, outcome, logged: [], failed: true };
  } finally {
    clearInterval(sampler);
    closeEverything();
    if (bystander) await stop(bystander);
    if (started) await stop(started);
    cluster?.remove();
  }
}

// ─── The report ──────────────────────────────────────────────────────────────

const loadAverage = () => readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ");

function machine(loadBefore: string, loadAfter: string): string {
  const when = new Date().toISOString().slice(0, 16).replace("T", " ");
  const cpu = /model name\s*:\s*(.*)/.exec(readFileSync("/proc/cpuinfo", "utf8"))?.[1]?.trim();
  const load = `load average (1, 5, 15 min) ${loadBefore} at the start, ${loadAfter} at the end`;
  return `**${when} UTC** · ${os.availableParallelism()} cores (${cpu ?? "unknown CPU"}) · ` +
    `Node ${process.version} · ${os.type()} ${os.release()} · loopback only · ${load}`;
}

function bystanderCells(row: Row): [string, string, string] {
  const report = row.bystander;
  if (!report) return ["n/a", "n/a", "n/a"];
  const { p50, p99, max } = report.lateness;
  const failures = Object.entries(report.failures).map(([why, times]) => `${why} ×${times}`);
  const countdowns = row.attack.segmentS === undefined ? "" :
    ` in ${report.countdowns} countdowns of ${row.attack.segmentS} s (longest wait for the ` +
    `first tick ${ms(report.firstWaitMaxMs)})`;
  const extra = failures.length ? `; ${failures.join(", ")}` : "";
  const loop = report.loopDelayMaxMs === undefined ? "n/a" : ms(report.loopDelayMaxMs);
  return [`${count(report.ticks)} of ${count(report.due)}${countdowns}${extra}`,
    `${ms(p50)} · ${ms(p99)} · ${ms(max)}`, loop];
}

function section(rows: Row[], skipped: string[], loadBefore: string, loadAfter: string) {
  const size = flags.tiny ? "the tiny configuration (--tiny)" : "the full configuration";
  const lines = [
    "### Under attack (bench/attack.ts)",
    "",
    machine(loadBefore, loadAfter),
    "",
    `Each attack of issue 18 against a fresh server on loopback, ${size}: at most ` +
      `${seconds(SIZE.attackMs)} each (a few run on to their own count), the attacker in the ` +
      "bench's process. Beside it, one bystander in a process of its own, an ordinary client " +
      `of the countdown (\`/sse/?interval=${BYSTANDER_INTERVAL_MS}\`), opened ` +
      `${seconds(SIZE.leadMs)} before the attack and read until ${seconds(SIZE.tailMs)} after ` +
      "it: each tick's lateness against its schedule (start + k × interval, the start the " +
      "earliest that agrees with every arrival, as in the countdown's table). RSS is VmRSS of " +
      "the server's process (the blocking server: the arbiter and its workers together), " +
      `read every ${RSS_SAMPLE_MS} ms: before the bystander came, and the highest from then ` +
      "to the end. The bench's processes share the machine's cores with the server.",
    "",
    ...tableHead("attack", "server", "the attacker", "what it saw", "server RSS idle → peak",
      "bystander ticks", "bystander lateness p50 · p99 · max", "server's loop delay, worst"),
  ];
  for (const row of rows) {
    const [ticks, lateness, loop] = bystanderCells(row);
    const rss = row.idleKB === undefined ? "n/a"
      : `${mbFromKB(row.idleKB)} → ${mbFromKB(row.peakKB ?? 0)}`;
    const died = row.died ? ` **The server died: ${row.died}**` : "";
    lines.push(tableRow(`**${row.attack.label}**`, row.server, row.outcome.did || "n/a",
      `${row.outcome.saw}${died}`, rss, ticks, lateness, loop));
  }
  for (const reason of skipped) lines.push(tableRow("**PostgreSQL frozen**", "n/a", "n/a",
    `skipped: ${reason}`, "n/a", "n/a", "n/a", "n/a"));
  lines.push("", "What each server logged during its attack (its time and pid left out; lines " +
    "alike but for their numbers counted once):", "");
  for (const row of rows) {
    const said = row.logged.length ? row.logged.join("; ") : "nothing";
    lines.push(`- ${row.attack.label} (${row.server}): ${said}`);
  }
  const given = process.argv.slice(2);
  lines.push("", `How: \`npm run bench:attack${given.length ? ` -- ${given.join(" ")}` : ""}\`.`);
  return lines.join("\n") + "\n";
}

/** The section into bench/results.md: in place of an earlier one, else at the end. */
function writeResults(text: string): void {
  const file = path.join(BENCH, "results.md");
  const old = readFileSync(file, "utf8");
  const at = old.indexOf("### Under attack");
  const next = at === -1 ? -1 : old.indexOf("\n### ", at + 1);
  const before = at === -1 ? `${old.trimEnd()}\n\n` : old.slice(0, at);
  const after = next === -1 ? "" : old.slice(next + 1);
  writeFileSync(file, before + text + (after ? `\n${after}` : ""));
}

// ─── Main ────────────────────────────────────────────────────────────────────

async function main(): Promise<number> {
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.once(signal, () => {
      console.error(`\n${signal}: stopping every server and client the attacks started`);
      process.exit(130);
    });
  }
  const loadBefore = loadAverage();
  const chosen = ATTACKS.filter((a) => !flags.only.length || flags.only.includes(a.name));
  const rows: Row[] = [];
  const skipped: string[] = [];
  for (const attack of chosen) {
    let postgres: string | undefined;
    if (attack.kind === "database") {
      postgres = postgresBin();
      const reason = !process.env.TEST_DATABASE_URL ? "TEST_DATABASE_URL is not set"
        : !postgres ? "no initdb on this machine" : "";
      if (reason) {
        console.error(`attack: ${attack.name} skipped: ${reason}`);
        skipped.push(reason);
        continue;
      }
    }
    console.error(`attack: ${attack.name} (${serverLabel(attack.kind)})`);
    const row = await measure(attack, postgres);
    rows.push(row);
    const lateness = row.bystander ? `bystander p99 ${ms(row.bystander.lateness.p99)}, ` +
      `max ${ms(row.bystander.lateness.max)}, loop delay ${ms(row.bystander.loopDelayMaxMs ?? NaN)}`
      : "no bystander report";
    const rss = `RSS ${mbFromKB(row.idleKB ?? 0)} → ${mbFromKB(row.peakKB ?? 0)}`;
    const died = row.died ? `; DIED ${row.died}` : "";
    console.error(`  ${row.outcome.saw}\n  ${rss}, ${lateness}${died}`);
  }
  const report = section(rows, skipped, loadBefore, loadAverage());
  console.log(report);
  mkdirSync(SCRATCH, { recursive: true });
  writeFileSync(path.join(SCRATCH, "attack.md"), report);
  if (!flags.tiny && !flags.only.length) writeResults(report);
  return rows.some((row) => row.died || row.failed) ? 1 : 0;
}

if (flags.bystander) {
  const segment = flags.segment === undefined ? undefined : Number(flags.segment);
  await runBystander(flags.bystander, segment);
} else if (flags.capped) {
  await serveCapped(Number(flags.capped));
} else {
  try {
    process.exitCode = await main();
  } catch (error) {
    console.error(`attack: ${messageOf(error)}`);
    process.exitCode = 1;
  } finally {
    closeEverything();
    killEverything();
  }
}
