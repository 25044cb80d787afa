/**
 * bench/floor.ts: the least node:http can spend on one open stream.
 *
 * The same wire format, URL and schedule as server.ts (tick k of a stream is
 * due at its start + k × interval), but no generator, no promise, no timer and
 * no listener per stream: one shared timer walks a queue of open responses.
 * (Not a plain setInterval over every response: that would tick all streams at
 * once, off their own schedules, and the floor's lateness and first-event
 * times could not be set beside server.ts's.) Whatever server.ts spends beyond
 * this, per stream, is the price of writing the countdown as a readable
 * `async function*`.
 *
 * Run:  npx tsx bench/floor.ts [--port 8002] [--host 127.0.0.1] [--quiet]
 */

import http, { type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { parseArgs } from "node:util";
import { countdownEvent, SSE_HEADERS, COUNTDOWN_FROM, TICK_INTERVAL_MS } from "../server.ts";

/** One open stream: the response, the next number to send and when it is due. */
interface OpenStream {
  res: ServerResponse;
  next: number;
  due: number;
}

const { values: flags } = parseArgs({
  options: {
    port: { type: "string", default: "8002" },
    host: { type: "string", default: "127.0.0.1" },
    // Accepted so the floor starts like server.ts; it logs nothing per stream anyway.
    quiet: { type: "boolean", default: false },
  },
});

// Streams with one interval stay in due order when each goes to the back of
// the queue after its tick, so the head is always the next one due. Streams of
// another interval get a queue of their own. `head` skips the streams already
// taken from the front, so a tick costs only the streams it sends to.
const queues = new Map<number, { streams: OpenStream[]; head: number }>();
let timer: NodeJS.Timeout | undefined;

function schedule() {
  clearTimeout(timer);
  let soonest = Infinity;
  for (const { streams, head } of queues.values()) if (head < streams.length) soonest = Math.min(soonest, streams[head]!.due);
  if (soonest !== Infinity) timer = setTimeout(tick, Math.max(0, soonest - performance.now()));
}

function tick() {
  const now = performance.now();
  for (const [interval, queue] of queues) {
    const { streams } = queue;
    for (; queue.head < streams.length && streams[queue.head]!.due <= now; queue.head++) {
      const stream = streams[queue.head]!;
      if (stream.res.destroyed) continue; // the client left: just drop it
      stream.res.write(countdownEvent(stream.next));
      if (stream.next-- === 0) stream.res.end();
      else {
        stream.due += interval;
        streams.push(stream);
      }
    }
    if (queue.head === streams.length) queues.delete(interval);
    else if (queue.head > 1024 && queue.head * 2 > streams.length) {
      streams.splice(0, queue.head);
      queue.head = 0;
    }
  }
  schedule();
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url ?? "/", "http://localhost");
  if (url.pathname !== "/sse/") return void res.writeHead(404).end();
  const from = Number(url.searchParams.get("from") ?? COUNTDOWN_FROM);
  const interval = Number(url.searchParams.get("interval") ?? TICK_INTERVAL_MS);
  res.writeHead(200, SSE_HEADERS);
  res.write(countdownEvent(from));
  if (from <= 0) return void res.end();
  const queue = queues.get(interval) ?? queues.set(interval, { streams: [], head: 0 }).get(interval)!;
  queue.streams.push({ res, next: from - 1, due: performance.now() + interval });
  if (queue.streams.length - queue.head === 1) schedule();
});

server.listen(Number(flags.port), flags.host, () => {
  const { address, port } = server.address() as AddressInfo;
  console.log(`floor server (pid ${process.pid}) listening at http://${address}:${port}/sse/`);
});
process.once("SIGTERM", () => process.exit(0));
process.once("SIGINT", () => process.exit(0));
