/**
 * test/ws-client.ts: what lesson 4's suites share (test/edits.ts, test/ws.ts):
 * a real WebSocket client (the ws package's own), two visitors, and the room's
 * REST calls made as one of them. No suite of its own.
 */

import { once } from "node:events";
import * as assert from "uvu/assert";
import WebSocket from "ws";
import { publicVisitorId, signedVisitor } from "../lessons/http.ts";
import { DEADLINE_MS, request, until, within } from "./helpers.ts";

// ─── Two visitors ────────────────────────────────────────────────────────────

/** Two visitors, as their cookies' secrets. */
export const ADA = "a".repeat(32);
export const BO = "b".repeat(32);
export const cookie = (secret: string) => `visitor=${signedVisitor(secret)}`;
/** The public id a page, a log or a message shows for a visitor. */
export const publicId = publicVisitorId;

// ─── A WebSocket client ──────────────────────────────────────────────────────

/** One server message: `{"type": ..., "payload": ...}`, with an event_id or a request_id. */
export interface WsMessage {
  type: string;
  event_id?: number; // a room event's own id, the one `after` names
  request_id?: string | number; // a reply's: the frame's own
  payload: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

const REPLIES = ["SUBSCRIBED", "UNSUBSCRIBED", "ERROR"];

/**
 * An open WebSocket to /ws/notifications and every message it received.
 * `next(type)` waits for the next message of that type, `closed` settles
 * with the close code.
 */
export class WsClient {
  socket: WebSocket;
  received: WsMessage[] = [];
  closed: Promise<number>;
  private cursor = 0;
  private wake = () => {};

  constructor(url: string, options: WebSocket.ClientOptions = {}) {
    this.socket = new WebSocket(`${url.replace(/^http/, "ws")}/ws/notifications`, options);
    this.socket.on("error", () => {});
    this.socket.on("message", (data) => {
      this.received.push(JSON.parse(data.toString()));
      this.wake();
    });
    this.closed = new Promise((resolve) => this.socket.on("close", (code) => resolve(code)));
  }

  static async open(url: string, options: WebSocket.ClientOptions = {}): Promise<WsClient> {
    const client = new WsClient(url, options);
    await within("the WebSocket to open", once(client.socket, "open"));
    return client;
  }

  send(frame: unknown) {
    const text = typeof frame === "string" || Buffer.isBuffer(frame) ? frame : JSON.stringify(frame);
    this.socket.send(text);
  }

  /** The next message of this type, skipping others. */
  async next(type: string): Promise<WsMessage> {
    const deadline = Date.now() + DEADLINE_MS;
    for (;;) {
      const index = this.received.findIndex((message, at) => at >= this.cursor && message.type === type);
      if (index !== -1) {
        this.cursor = index + 1;
        return this.received[index]!;
      }
      const arrived = new Promise<void>((resolve) => (this.wake = resolve));
      await within(`a ${type} message`, arrived, Math.max(0, deadline - Date.now()));
    }
  }

  /** Sends a frame and returns the reply to it: the next SUBSCRIBED, UNSUBSCRIBED or ERROR. */
  async ask(frame: unknown): Promise<WsMessage> {
    const from = this.received.length;
    const reply = () => this.received.slice(from).find((message) => REPLIES.includes(message.type));
    this.send(frame);
    await until(`a reply to ${JSON.stringify(frame).slice(0, 60)}`, () => reply() !== undefined);
    const found = reply()!;
    this.cursor = Math.max(this.cursor, this.received.indexOf(found) + 1);
    return found;
  }

  types(): string[] {
    return this.received.map((message) => message.type);
  }

  close() {
    this.socket.terminate();
  }
}

/**
 * How many WebSockets the server holds, from its log: the count its last
 * "websocket opened" or "websocket closed" line gave; 0 before the first.
 */
export function socketsOpen(lines: string[]): number {
  for (let at = lines.length - 1; at >= 0; at--) {
    const match = /^websocket (?:opened|closed) for .*\((\d+) open\)$/.exec(lines[at]!);
    if (match) return Number(match[1]);
  }
  return 0;
}

/** How many subscriptions the server's log says were made: its "follows" lines. */
export function follows(lines: string[], what = "room lobby"): number {
  return lines.filter((line) => /^websocket \S+ follows /.test(line) && line.includes(` follows ${what}`)).length;
}

// ─── The room's REST calls ───────────────────────────────────────────────────

export const json = (secret?: string, extra: Record<string, string> = {}) => ({
  "Content-Type": "application/json",
  ...(secret ? { Cookie: cookie(secret) } : {}),
  ...extra,
});

/** Posts a message as a visitor (Ada by default) and returns what the 201 answered. */
export async function post(url: string, text: string, secret = ADA) {
  const body = JSON.stringify({ name: "Ada", text });
  const answer = await request(`${url}/room/messages`, { method: "POST", headers: json(secret) }, body);
  assert.is(answer.status, 201);
  return JSON.parse(answer.body) as { id: number; text: string; poster: string };
}

export function put(url: string, id: number, body: unknown, secret?: string, extra: Record<string, string> = {}) {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  return request(`${url}/room/messages/${id}`, { method: "PUT", headers: json(secret, extra) }, text);
}

export function remove(url: string, id: number, secret?: string, extra: Record<string, string> = {}) {
  const headers = secret ? { Cookie: cookie(secret), ...extra } : extra;
  return request(`${url}/room/messages/${id}`, { method: "DELETE", headers });
}
