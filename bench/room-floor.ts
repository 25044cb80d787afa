/**
 * bench/room-floor.ts: the least node:http can spend to push one message to
 * every open room stream, for bench/room.ts to set server.ts beside.
 *
 * The same wire format and URLs as the room (lessons/room.ts), but no hub, no
 * generator, no promise per stream: every open /room/stream response sits in
 * one Set, and a POST writes the message to each of them in one loop before
 * it answers 201. No validation, no replay: only the fan-out. Whatever
 * server.ts spends beyond this is the price of the hub and the `async function*`.
 *
 * Run:  npx tsx bench/room-floor.ts [--port 8003] [--host 127.0.0.1]
 */

import http, { type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { parseArgs } from "node:util";
import { formatEvent, SSE_HEADERS } from "../server.ts";
import { presenceEvent, PRESENCE_DELAY_MS } from "../lessons/room.ts";

const { values: flags } = parseArgs({
  options: {
    port: { type: "string", default: "8003" },
    host: { type: "string", default: "127.0.0.1" },
    quiet: { type: "boolean", default: false },
  },
});

const streams = new Set<ServerResponse>();
let lastId = 0;
let presenceTimer: NodeJS.Timeout | undefined;

/** The head count, coalesced as the room does it, so the load client knows when everyone is in. */
function tellPresence() {
  presenceTimer = undefined;
  for (const res of streams) res.write(presenceEvent(streams.size));
}

function openStream(res: ServerResponse) {
  res.writeHead(200, SSE_HEADERS);
  streams.add(res);
  res.on("close", () => streams.delete(res));
  presenceTimer ??= setTimeout(tellPresence, PRESENCE_DELAY_MS);
}

function postMessage(req: http.IncomingMessage, res: ServerResponse) {
  let body = "";
  req.setEncoding("utf8").on("data", (text: string) => (body += text));
  req.on("end", () => {
    const message = { id: ++lastId, ...JSON.parse(body), at: new Date().toISOString() };
    const json = JSON.stringify(message);
    const text = formatEvent("message", json, message.id);
    for (const stream of streams) stream.write(text);
    res.writeHead(201, { "Content-Type": "application/json; charset=utf-8" }).end(json);
  });
}

const server = http.createServer((req, res) => {
  const path = new URL(req.url ?? "/", "http://localhost").pathname;
  if (path === "/room/stream") openStream(res);
  else if (path === "/room/messages" && req.method === "POST") postMessage(req, res);
  else res.writeHead(404).end();
});

server.listen(Number(flags.port), flags.host, () => {
  const { address, port } = server.address() as AddressInfo;
  console.log(`room floor listening at http://${address}:${port}/`);
});
