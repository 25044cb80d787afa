/**
 * bench/soak.ts: open a stream, walk away, many times over; is anything left behind?
 *
 * One server.ts runs in this process, every lesson installed as start-up
 * installs them (createApp and install, lessons/index.ts), so its timers,
 * sockets and heap are ours to count. Each cycle opens a countdown and
 * abandons it: most after the first event (the countdown is asleep between
 * ticks), some as soon as the headers arrive, some before any answer. Before
 * and after, with garbage collected: active handles and requests
 * (process.getActiveResourcesInfo), open streams, open connections, heap used.
 * The handles, streams and connections must be the same; the heap must not
 * grow by more than a small allowance (see HEAP_ALLOWANCE).
 *
 * Run:  node --expose-gc --import tsx bench/soak.ts [--cycles 10000] [--json]
 *       (npm run bench -- --soak runs it that way)
 */

import http from "node:http";
import type { AddressInfo } from "node:net";
import { parseArgs } from "node:util";
import { setImmediate as nextTurn, setTimeout as delay } from "node:timers/promises";
import { createApp, install, isMain, type App } from "../server.ts";
import { LESSONS } from "../lessons/index.ts";
import { messageOf, sourceAddress, SseReader } from "./common.ts";

/** Cycles in flight at once. */
const PARALLEL = 100;
/** Cycles before the "before" reading, so lazy pools and compiled code exist on both sides. */
const WARM_UP = 2000;
/** How long one cycle may take before it counts as stuck. */
const CYCLE_DEADLINE_MS = 5000;
/**
 * Heap growth tolerated, in bytes. After the warm-up, the heap after GC lands
 * within about 0.5 MB of the "before" reading whether the soak runs 200 or
 * 40,000 cycles: that much is noise. A leak of 70 bytes a cycle shows at 10,000.
 */
const HEAP_ALLOWANCE = { fixed: 512 * 1024, perCycle: 16 };

export interface Snapshot {
  resources: Record<string, number>;
  streams: number;
  connections: number;
  heapUsed: number;
}

export interface SoakReport {
  cycles: number;
  aborted: number;
  early: number;
  stuck: number;
  before: Snapshot;
  after: Snapshot;
  matches: boolean;
  verdict: string;
  durationMs: number;
}

/** Collects garbage until the heap stops shrinking, then reads everything. */
async function snapshot(app: App): Promise<Snapshot> {
  const gc = (globalThis as { gc?: () => void }).gc!;
  let heapUsed = Infinity;
  for (let round = 0; round < 10; round++) {
    await nextTurn(); // lets close callbacks and finalizers run between collections
    gc();
    const now = process.memoryUsage().heapUsed;
    if (now >= heapUsed) break;
    heapUsed = now;
  }
  const resources: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) resources[kind] = (resources[kind] ?? 0) + 1;
  return { resources, streams: app.streams.size, connections: await connectionsOf(app), heapUsed };
}

function connectionsOf(app: App): Promise<number> {
  return new Promise((resolve) => app.server.getConnections((_error, n) => resolve(n)));
}

/** One cycle: open a countdown, then abandon it at the moment `when` says. */
function cycle(
  port: number,
  index: number,
  when: "first event" | "headers" | "at once",
): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.request({
      host: "127.0.0.1",
      port,
      path: "/sse/?from=100&interval=1000",
      agent: false,
      localAddress: sourceAddress(index),
    });
    const deadline = setTimeout(() => done(false), CYCLE_DEADLINE_MS);
    function done(ok: boolean) {
      clearTimeout(deadline);
      req.destroy();
      resolve(ok);
    }
    req.on("error", () => done(when === "at once"));
    req.on("response", (res) => {
      if (when === "headers") return done(true);
      const reader = new SseReader();
      res.setEncoding("utf8");
      res.on("data", (text: string) => {
        if (reader.read(text).some((message) => message.event === "i")) done(true);
      });
    });
    req.end();
    if (when === "at once") setImmediate(() => done(true));
  });
}

async function cycles(port: number, total: number, offset: number) {
  let next = 0;
  let stuck = 0;
  let early = 0;
  const worker = async () => {
    while (next < total) {
      const index = offset + next++;
      const when = index % 4 === 3 ? "at once" : index % 4 === 2 ? "headers" : "first event";
      if (when !== "first event") early++;
      if (!(await cycle(port, index, when))) stuck++;
    }
  };
  await Promise.all(Array.from({ length: PARALLEL }, worker));
  return { stuck, early };
}

/** Waits, with a deadline, until the server holds no stream and no connection. */
async function drained(app: App) {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (app.streams.size === 0 && (await connectionsOf(app)) === 0) return;
    await delay(20);
  }
}

export async function soak(total: number): Promise<SoakReport> {
  if (typeof (globalThis as { gc?: unknown }).gc !== "function") {
    throw new Error("the soak needs --expose-gc: node --expose-gc --import tsx bench/soak.ts");
  }
  const app = await install(createApp({ quiet: true }), LESSONS);
  const { server } = app;
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  try {
    await cycles(port, WARM_UP, 0);
    await drained(app);
    const before = await snapshot(app);
    const started = performance.now();
    const { stuck, early } = await cycles(port, total, WARM_UP);
    await drained(app);
    const durationMs = performance.now() - started;
    const after = await snapshot(app);

    const problems: string[] = [];
    const streamsLeft = after.streams - before.streams;
    const connectionsLeft = after.connections - before.connections;
    if (stuck) problems.push(`${stuck} cycles got no answer in time`);
    if (handles(before) !== handles(after)) problems.push("the active handles differ");
    if (streamsLeft) problems.push(`${streamsLeft} streams are still open`);
    if (connectionsLeft) problems.push(`${connectionsLeft} connections are still open`);
    const allowance = HEAP_ALLOWANCE.fixed + HEAP_ALLOWANCE.perCycle * total;
    const growth = after.heapUsed - before.heapUsed;
    const kb = (bytes: number) => `${(bytes / 1024).toFixed(0)} KB`;
    if (growth > allowance) {
      problems.push(`the heap grew by ${kb(growth)}, more than the ${kb(allowance)} allowed`);
    }
    const verdict = problems.length
      ? problems.join("; ")
      : `same handles, no stream or connection left, heap within ${kb(allowance)} of where it was`;
    const matches = !problems.length;
    const aborted = total - early;
    return { cycles: total, aborted, early, stuck, before, after, matches, verdict, durationMs };
  } finally {
    server.closeAllConnections();
    app.endStreams();
    await new Promise((resolve) => server.close(resolve));
  }
}

function sorted(record: Record<string, number>) {
  return Object.fromEntries(Object.entries(record).sort(([a], [b]) => a.localeCompare(b)));
}

/** The active handles and requests of a snapshot, in a fixed order, as one string. */
const handles = (snap: Snapshot) => JSON.stringify(sorted(snap.resources));

if (isMain(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      cycles: { type: "string", default: "10000" },
      json: { type: "boolean", default: false },
    },
  });
  const total = Number(values.cycles);
  if (!Number.isInteger(total) || total < 1) {
    console.error("--cycles must be a whole number of at least 1.");
    process.exit(2);
  }
  try {
    const report = await soak(total);
    if (values.json) console.log(JSON.stringify(report));
    else {
      const kb = (bytes: number) => `${(bytes / 1024).toFixed(0)} KB`;
      const { before, after } = report;
      const seconds = (report.durationMs / 1000).toFixed(1);
      console.log(
        `cycles:       ${report.cycles} (${report.early} abandoned before their first event, ` +
          `${report.stuck} stuck) in ${seconds} s`,
      );
      console.log(`handles:      before ${handles(before)}, after ${handles(after)}`);
      console.log(`streams:      before ${before.streams}, after ${after.streams}`);
      console.log(`connections:  before ${before.connections}, after ${after.connections}`);
      console.log(`heap after GC: before ${kb(before.heapUsed)}, after ${kb(after.heapUsed)}`);
      console.log(`${report.matches ? "match" : "NO MATCH"}: ${report.verdict}`);
    }
    process.exitCode = report.matches ? 0 : 1;
  } catch (error) {
    console.error(`soak: ${messageOf(error)}`);
    process.exitCode = 1;
  }
}
