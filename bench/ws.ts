/**
 * bench/ws.ts: the room over both transports, under load. One server.ts
 * process on loopback; this process opens --sockets WebSockets to it, each
 * subscribed to the room, then POSTs one message and times its arrival at
 * every socket. Then the same with as many SSE streams of the room. For each:
 * the delivery delay (p50, p99, max, from just before the POST to each
 * arrival), messages lost or duplicated, and the server's resident memory per
 * subscriber (RSS with every subscriber open, minus RSS idle, over subscribers).
 *
 * Run:   npx tsx bench/ws.ts                          (10,000 of each, median of 3 runs)
 *        npx tsx bench/ws.ts --sockets 200 --runs 1   (a tiny one)
 * `npm run bench` runs it too, with --streams as --sockets and the same --runs.
 *
 * It asserts nothing about speed. It exits 1 when a message is lost or
 * duplicated, or when the server does not start.
 */

import { spawn, type ChildProcess } from "node:child_process";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { setTimeout as delay } from "node:timers/promises";
import WebSocket from "ws";
import { isMain, readFlags } from "../server.ts";

const BENCH = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.dirname(BENCH);
const TSX = process.execArgv.some((flag) => flag.includes("tsx")) ? process.execArgv : ["--import", "tsx"];

/** Subscribers connecting at once: enough to be quick, few enough not to overrun the listen backlog. */
const CONNECT_BATCH = 500;
/** How long after the POST the last arrival may come before the rest count as lost. */
const DELIVERY_DEADLINE_MS = 30_000;
/** Pause before reading RSS, so start-up garbage and the last handshakes settle. */
const SETTLE_MS = 1000;

export interface TransportReport {
  transport: "WebSocket" | "SSE";
  subscribers: number;
  received: number;
  lost: number;
  duplicated: number;
  delivery: { p50: number; p99: number; max: number };
  idleKB: number;
  loadedKB: number;
  perSubscriberKB: number;
}

export interface WsBenchReport {
  sockets: number;
  runs: TransportReport[][];
  median: TransportReport[];
}

// ─── The server under test ───────────────────────────────────────────────────

/** A port free on 127.0.0.1 right now (bench/run.ts uses it too). */
export async function freePort(): Promise<number> {
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address() as net.AddressInfo;
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

async function startServer(): Promise<{ child: ChildProcess; url: string }> {
  const port = await freePort();
  const child = spawn(process.execPath, [...TSX, path.join(ROOT, "server.ts"), "--quiet", "--host", "127.0.0.1", "--port", String(port)], {
    cwd: ROOT,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout!.setEncoding("utf8").on("data", (text: string) => (output += text));
  child.stderr!.setEncoding("utf8").on("data", (text: string) => (output += text));
  const deadline = Date.now() + 30_000;
  while (!output.includes("listening at")) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`server.ts did not start:\n${output}`);
    await delay(50);
  }
  return { child, url: `http://127.0.0.1:${port}` };
}

function readRssKB(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
}

// ─── Subscribers ─────────────────────────────────────────────────────────────

/** One subscriber of either kind: resolves `ready` once subscribed, calls `arrived` for each room message. */
interface Subscriber {
  ready: Promise<void>;
  close(): void;
}

/** A source address on 127.0.0.0/8 for subscriber `index`, as bench/client.ts does, so repeated runs never run out of ports. */
function sourceAddress(index: number): string {
  return `127.0.0.${2 + (index % 253)}`;
}

function openWebSocket(url: string, index: number, arrived: (id: number) => void): Subscriber {
  const socket = new WebSocket(`${url.replace(/^http/, "ws")}/ws/notifications`, { localAddress: sourceAddress(index) });
  const ready = new Promise<void>((resolve, reject) => {
    socket.on("error", reject);
    socket.on("open", () => socket.send(JSON.stringify({ object_type: "room", id: "lobby" })));
    socket.on("message", (data) => {
      const { type, payload } = JSON.parse(data.toString());
      if (type === "SUBSCRIBED") resolve();
      if (type === "MESSAGE_CREATED") arrived(payload.id);
    });
  });
  return { ready, close: () => socket.terminate() };
}

function openSse(url: string, index: number, arrived: (id: number) => void): Subscriber {
  const req = http.get(`${url}/room/stream`, { agent: false, localAddress: sourceAddress(index) });
  const ready = new Promise<void>((resolve, reject) => {
    req.on("error", reject);
    req.on("response", (res) => {
      let buffer = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        buffer += chunk;
        let end: number;
        while ((end = buffer.indexOf("\n\n")) !== -1) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          // The first presence event says the server counted this stream in: it is subscribed.
          if (block.startsWith("event: presence")) resolve();
          if (block.startsWith("event: message\n")) arrived(Number(/^id: (\d+)$/m.exec(block)?.[1]));
        }
      });
    });
  });
  return { ready, close: () => req.destroy() };
}

/** POSTs a message to the room and returns its id. */
async function postMessage(url: string, text: string): Promise<number> {
  const answer = await fetch(`${url}/room/messages`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name: "bench", text }),
  });
  return ((await answer.json()) as { id: number }).id;
}

function percentile(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]! : NaN;
}

/** Opens `count` subscribers of one kind, reads the server's RSS, POSTs one message, and times its arrival at each. */
async function measure(transport: TransportReport["transport"], count: number): Promise<TransportReport> {
  const { child, url } = await startServer();
  const subscribers: Subscriber[] = [];
  try {
    const open = transport === "WebSocket" ? openWebSocket : openSse;
    // One message and one subscriber first, so that neither this process's fetch, nor the server's
    // POST path, nor the ws package it loads at the first upgrade, is counted or timed cold.
    await postMessage(url, "warming up");
    const first = open(url, count, () => {});
    await first.ready;
    first.close();
    await delay(SETTLE_MS);
    const idleKB = readRssKB(child.pid!);
    let postedAt = 0;
    let postedId = -1;
    const arrivals: number[] = [];
    let duplicated = 0;
    const seen = new Set<number>();
    for (let first = 0; first < count; first += CONNECT_BATCH) {
      const batch = Array.from({ length: Math.min(CONNECT_BATCH, count - first) }, (_, k) => {
        const index = first + k;
        return open(url, index, (id) => {
          if (id !== postedId) return;
          if (seen.has(index)) duplicated++;
          seen.add(index);
          arrivals.push(performance.now() - postedAt);
        });
      });
      subscribers.push(...batch);
      await Promise.all(batch.map((subscriber) => subscriber.ready));
    }
    await delay(SETTLE_MS);
    const loadedKB = readRssKB(child.pid!);

    postedAt = performance.now();
    postedId = await postMessage(url, `one message to ${count} subscribers`);
    const deadline = Date.now() + DELIVERY_DEADLINE_MS;
    while (seen.size < count && Date.now() < deadline) await delay(10);
    const sorted = [...arrivals].sort((a, b) => a - b);
    return {
      transport,
      subscribers: count,
      received: seen.size,
      lost: count - seen.size,
      duplicated,
      delivery: { p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted.at(-1) ?? NaN },
      idleKB,
      loadedKB,
      perSubscriberKB: (loadedKB - idleKB) / count,
    };
  } finally {
    for (const subscriber of subscribers) subscriber.close();
    child.kill("SIGKILL");
  }
}

// ─── The report ──────────────────────────────────────────────────────────────

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** The run whose p99 delivery is the median one, per transport. */
function medianRun(runs: TransportReport[][], index: number): TransportReport {
  const rows = runs.map((run) => run[index]!);
  const p99 = median(rows.map((row) => row.delivery.p99));
  return rows.find((row) => row.delivery.p99 === p99)!;
}

export async function runWsBench(sockets: number, runs: number): Promise<WsBenchReport> {
  const all: TransportReport[][] = [];
  for (let run = 0; run < runs; run++) {
    const order: TransportReport["transport"][] = run % 2 === 0 ? ["WebSocket", "SSE"] : ["SSE", "WebSocket"];
    const measured: TransportReport[] = [];
    for (const transport of order) {
      const report = await measure(transport, sockets);
      console.error(`run ${run + 1}/${runs} ${transport}: ${report.received} of ${report.subscribers} received, delivery p50 ${ms(report.delivery.p50)} p99 ${ms(report.delivery.p99)} max ${ms(report.delivery.max)}, ${report.perSubscriberKB.toFixed(1)} KB per subscriber`);
      measured.push(report);
    }
    all.push(["WebSocket", "SSE"].map((transport) => measured.find((report) => report.transport === transport)!));
  }
  return { sockets, runs: all, median: [medianRun(all, 0), medianRun(all, 1)] };
}

const ms = (value: number) => (Number.isFinite(value) ? `${value.toFixed(1)} ms` : "n/a");
const count = (value: number) => value.toLocaleString("en");

export function wsSection(report: WsBenchReport): string {
  const runs = report.runs.length;
  const lines = [
    `**The room over both transports** (bench/ws.ts): ${count(report.sockets)} subscribers of the room on one server.ts process, one POST; ${runs === 1 ? "one run" : `the run with the median p99 of ${runs}`}. Delivery is from just before the POST to each arrival, on one clock; per subscriber = (RSS with all subscribed - RSS idle) / subscribers.`,
    "",
    "| transport | received | lost · dup | delivery p50 · p99 · max | RSS idle → subscribed | per subscriber |",
    "|---|---|---|---|---|---|",
    ...report.median.map(
      (row) =>
        `| **${row.transport}** | ${count(row.received)} of ${count(row.subscribers)} | ${row.lost} · ${row.duplicated} | ${ms(row.delivery.p50)} · ${ms(row.delivery.p99)} · ${ms(row.delivery.max)} | ${(row.idleKB / 1024).toFixed(1)} MB → ${(row.loadedKB / 1024).toFixed(1)} MB | **${row.perSubscriberKB.toFixed(1)} KB** |`,
    ),
  ];
  const [socket] = report.median;
  lines.push("", `Target for WebSocket: p99 at most 100 ms, nothing lost: ${socket!.delivery.p99 <= 100 && socket!.lost === 0 ? "met" : "**missed**"} (${ms(socket!.delivery.p99)}, ${socket!.lost} lost).`);
  return lines.join("\n");
}

/** True when any run lost or duplicated a message. */
export function wsBroken(report: WsBenchReport): boolean {
  return report.runs.flat().some((row) => row.lost > 0 || row.duplicated > 0);
}

if (isMain(import.meta.url)) {
  const flags = readFlags(
    {
      sockets: { type: "string", default: "10000" },
      runs: { type: "string", default: "3" },
      help: { type: "boolean", default: false },
    },
    "Usage: npx tsx bench/ws.ts [--sockets N] [--runs R]\n\n  --sockets N   Subscribers of each transport (default 10000).\n  --runs R      Runs of each, the median reported (default 3).",
  );
  const sockets = Number(flags.sockets);
  const runs = Number(flags.runs);
  if (!Number.isInteger(sockets) || sockets < 1 || !Number.isInteger(runs) || runs < 1) {
    console.error("--sockets and --runs must be whole numbers of at least 1.");
    process.exit(2);
  }
  try {
    const report = await runWsBench(sockets, runs);
    console.log(wsSection(report));
    process.exitCode = wsBroken(report) ? 1 : 0;
  } catch (error) {
    console.error(`bench/ws.ts: ${error instanceof Error ? error.message : String(error)}`);
    process.exitCode = 1;
  }
}
