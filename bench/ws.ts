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

import http from "node:http";
import { setTimeout as delay } from "node:timers/promises";
import WebSocket from "ws";
import { isMain, readFlags } from "../server.ts";
import {
  count,
  kb,
  mbFromKB,
  messageOf,
  ms,
  percentiles,
  rssKB,
  sourceAddress,
  SseReader,
  startServer,
  stop,
  tableHead,
  tableRow,
  type Percentiles,
} from "./common.ts";

/** Subscribers connecting at once: enough to be quick, too few to overrun the listen backlog. */
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
  delivery: Percentiles;
  idleKB: number;
  loadedKB: number;
  perSubscriberKB: number;
}

export interface WsBenchReport {
  sockets: number;
  runs: TransportReport[][];
  median: TransportReport[];
}

// ─── Subscribers ─────────────────────────────────────────────────────────────

/** A subscriber of either kind: `ready` once subscribed; it calls `arrived` for each message. */
interface Subscriber {
  ready: Promise<void>;
  close(): void;
}

function openWebSocket(url: string, index: number, arrived: (id: number) => void): Subscriber {
  const socket = new WebSocket(`${url.replace(/^http/, "ws")}/ws/notifications`, {
    localAddress: sourceAddress(index),
  });
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
      const reader = new SseReader();
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        for (const { event, id } of reader.read(chunk)) {
          // The first presence event says the server counted this stream in: it is subscribed.
          if (event === "presence") resolve();
          if (event === "message") arrived(Number(id));
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

/**
 * Opens `count` subscribers of one kind, reads the server's RSS, POSTs one
 * message, and times its arrival at each.
 */
async function measure(
  transport: TransportReport["transport"],
  count: number,
): Promise<TransportReport> {
  const server = await startServer("server.ts", ["--quiet"]);
  const { child, url } = server;
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
    const idleKB = rssKB(child.pid!);
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
    const loadedKB = rssKB(child.pid!);

    postedAt = performance.now();
    postedId = await postMessage(url, `one message to ${count} subscribers`);
    const deadline = Date.now() + DELIVERY_DEADLINE_MS;
    while (seen.size < count && Date.now() < deadline) await delay(10);
    return {
      transport,
      subscribers: count,
      received: seen.size,
      lost: count - seen.size,
      duplicated,
      delivery: percentiles(arrivals),
      idleKB,
      loadedKB,
      perSubscriberKB: (loadedKB - idleKB) / count,
    };
  } finally {
    for (const subscriber of subscribers) subscriber.close();
    await stop(server, "SIGKILL");
  }
}

// ─── The report ──────────────────────────────────────────────────────────────

/** Per transport, the run whose p99 delivery is the median one (of an even count, the higher). */
function medianRun(runs: TransportReport[][], index: number): TransportReport {
  const rows = runs.map((run) => run[index]!).sort((a, b) => a.delivery.p99 - b.delivery.p99);
  return rows[rows.length >> 1]!;
}

const TRANSPORTS: TransportReport["transport"][] = ["WebSocket", "SSE"];

const spread = ({ p50, p99, max }: Percentiles, between: string) =>
  [ms(p50), ms(p99), ms(max)].join(between);

export async function runWsBench(sockets: number, runs: number): Promise<WsBenchReport> {
  const all: TransportReport[][] = [];
  for (let run = 0; run < runs; run++) {
    // Every other run in the other order, so neither transport always goes first.
    const order = run % 2 === 0 ? TRANSPORTS : [...TRANSPORTS].reverse();
    const measured: TransportReport[] = [];
    for (const transport of order) {
      const report = await measure(transport, sockets);
      const { p50, p99, max } = report.delivery;
      const received = `${report.received} of ${report.subscribers} received`;
      console.error(
        `run ${run + 1}/${runs} ${transport}: ${received}, ` +
          `delivery p50 ${ms(p50)} p99 ${ms(p99)} max ${ms(max)}, ` +
          `${kb(report.perSubscriberKB)} per subscriber`,
      );
      measured.push(report);
    }
    const byTransport = (transport: string) => measured.find((r) => r.transport === transport)!;
    all.push(TRANSPORTS.map(byTransport));
  }
  return { sockets, runs: all, median: [medianRun(all, 0), medianRun(all, 1)] };
}

export function wsSection(report: WsBenchReport): string {
  const runs = report.runs.length;
  const lines = [
    `**The room over both transports** (bench/ws.ts): ${count(report.sockets)} subscribers of ` +
      `the room on one server.ts process, one POST; ` +
      `${runs === 1 ? "one run" : `the run with the median p99 of ${runs}`}. Delivery is from ` +
      `just before the POST to each arrival, on one clock; per subscriber = (RSS with all ` +
      `subscribed - RSS idle) / subscribers.`,
    "",
    ...tableHead(
      "transport",
      "received",
      "lost · dup",
      "delivery p50 · p99 · max",
      "RSS idle → subscribed",
      "per subscriber",
    ),
    ...report.median.map((row) =>
      tableRow(
        `**${row.transport}**`,
        `${count(row.received)} of ${count(row.subscribers)}`,
        `${row.lost} · ${row.duplicated}`,
        spread(row.delivery, " · "),
        `${mbFromKB(row.idleKB)} → ${mbFromKB(row.loadedKB)}`,
        `**${kb(row.perSubscriberKB)}**`,
      ),
    ),
  ];
  const [socket] = report.median;
  const met = socket!.delivery.p99 <= 100 && socket!.lost === 0;
  lines.push(
    "",
    `Target for WebSocket: p99 at most 100 ms, nothing lost: ${met ? "met" : "**missed**"} ` +
      `(${ms(socket!.delivery.p99)}, ${socket!.lost} lost).`,
  );
  return lines.join("\n");
}

/** True when any run lost or duplicated a message. */
export function wsBroken(report: WsBenchReport): boolean {
  return report.runs.flat().some((row) => row.lost > 0 || row.duplicated > 0);
}

const HELP = `Usage: npx tsx bench/ws.ts [--sockets N] [--runs R]

  --sockets N   Subscribers of each transport (default 10000).
  --runs R      Runs of each, the median reported (default 3).`;

if (isMain(import.meta.url)) {
  const flags = readFlags(
    {
      sockets: { type: "string", default: "10000" },
      runs: { type: "string", default: "3" },
      help: { type: "boolean", default: false },
    },
    HELP,
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
    console.error(`bench/ws.ts: ${messageOf(error)}`);
    process.exitCode = 1;
  }
}
