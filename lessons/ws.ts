/**
 * lessons/ws.ts: lesson 4, two-way: the room, one message, or a visitor's
 * toasts, followed over one WebSocket, with subscriptions and permissions.
 *
 * Seed 002 (../shared/seeds/002_*.txt) adds push to a REST API with Django
 * Channels: one WebSocket endpoint where the client names what it wants to
 * follow, `{"object_type": "room", "id": "lobby"}`; the server checks that
 * this visitor may see it, adds the socket to a group, and sends the group
 * every save that really changed something (lessons/edits.ts makes those
 * saves). Here the groups are the hub's topics, no second hub, and the same
 * room is served over both transports, so a reader can compare them.
 *
 * Run it:    npm ci, then npx tsx server.ts (without the ws package everything
 *            else serves, and this endpoint answers 501 with one sentence)
 * Then try:
 *   - http://localhost:8000/room/?transport=ws in one tab and
 *     http://localhost:8000/room/ in another: a message posted in either shows
 *     in both, and the link at the bottom switches a tab between the two;
 *   - curl -X PUT a message's new text (lessons/edits.ts shows how): the
 *     WebSocket tab shows the change the moment it is made, as MESSAGE_UPDATED;
 *   - press Ctrl-C and start the server again: the WebSocket tab says
 *     "reconnecting", then asks for what came after the last message it showed,
 *     and shows every message once, none missed.
 */

import http, { type IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
// Types only: the ws package is loaded with await import() at the first upgrade.
import type { WebSocket, WebSocketServer } from "ws";
import { clientName, RequestError, wholeNumber } from "../server.ts";
import type { App, Handler, Lesson } from "../server.ts";
import { hubOf, isGap, SlowSubscriberError, type HubEvent, type HubGap } from "./hub.ts";
import { checkOrigin, isObject, readVisitor } from "./http.ts";
import { eventJson, MESSAGE_ID_RANGE, roomEvents, ROOM_TOPIC } from "./room.ts";
import { toastsOf, toastTopic } from "./toasts.ts";
import { findMessage } from "./edits.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

const NOTIFICATIONS_PATH = "/ws/notifications";
/** A frame larger than this closes the socket with 1009: nothing we accept comes near it. */
export const WS_FRAME_LIMIT_BYTES = 4 * 1024;
/** Subscriptions one socket may hold at once; the next one gets an ERROR. */
export const WS_SUBSCRIPTIONS_MAX = 100;
/**
 * Bytes a socket may hold unsent, past what the kernel took, before it is cut:
 * a reader that stopped reading must not hold memory for everyone else.
 */
export const WS_UNSENT_LIMIT_BYTES = 256 * 1024;
/**
 * Every socket is pinged once per this many of the app's heartbeats (lesson
 * 1's HEARTBEAT_MS, which a test shortens); one that has not answered the
 * previous ping by then is dropped.
 */
const PING_EVERY_HEARTBEATS = 2;
/** WebSocket close codes (RFC 6455): going away, an error on the server. */
const WS_GOING_AWAY = 1001;
const WS_SERVER_ERROR = 1011;

// ─── Two-way: what a subscriber receives ─────────────────────────────────────
//
// Seed 002's consumer advises one place that decides what a subscriber
// receives. That place is this table: the hub's event type on the left, the
// WebSocket message type on the right (seed 002's Redux names). An event type
// missing here is never sent over a WebSocket.

const WS_MESSAGE_TYPES: Readonly<Record<string, string>> = {
  message: "MESSAGE_CREATED",
  message_updated: "MESSAGE_UPDATED",
  message_deleted: "MESSAGE_DELETED",
  toast: "TOAST_CREATED",
  read: "TOAST_READ",
  // Not an object's change, but the subscriber must know, as with SSE's `event: gap`.
  gap: "GAP",
};

/** A WebSocket message: `{"type": "MESSAGE_CREATED", "payload": {...}}`, typed by the table. */
function wsMessage(type: string, payload: unknown): string {
  return JSON.stringify({ type: WS_MESSAGE_TYPES[type], payload });
}

/** Each event's WebSocket message, built once however many sockets it goes to. */
const wsMessages = new WeakMap<HubEvent | HubGap, string>();

/** One hub event as a WebSocket message; its payload is what SSE sends as `data:`. */
function hubEventToWs(event: HubEvent | HubGap): string {
  let message = wsMessages.get(event);
  if (message === undefined) {
    const payload = isGap(event) ? { after: event.after } : eventJson(event);
    wsMessages.set(event, (message = wsMessage(event.type, payload)));
  }
  return message;
}

// ─── The frames a client sends ───────────────────────────────────────────────
//
// Each frame is one JSON object: `{"object_type": "room", "id": "lobby"}` (with
// `"after": 41` to resume), `{"object_type": "message", "id": 42}`,
// `{"object_type": "toasts", "id": "<public visitor id>"}`, or
// `{"unsubscribe": {...}}` with one of those. A mistake gets an ERROR with one
// sentence, never a closed socket.

/** What a client may follow: the hub topic, where to start, which of its events to pass on. */
interface Target {
  key: string; // "room lobby", "message 42": names the subscription in replies and in the log
  reply: { object_type: string; id: string | number };
  topic: string;
  after?: number;
  accepts: (event: HubEvent | HubGap) => boolean;
}

const EXAMPLE = '{"object_type": "room", "id": "lobby"}';

/** Reads one frame; throws a RequestError whose sentence the ERROR reply carries. */
function readFrame(text: string): { unsubscribe: boolean; target: Target } {
  let frame: unknown;
  try {
    frame = JSON.parse(text);
  } catch {
    throw new RequestError(400, `The frame is not JSON; send ${EXAMPLE}.`);
  }
  if (!isObject(frame)) {
    throw new RequestError(400, `The frame must be one JSON object, such as ${EXAMPLE}.`);
  }
  if (!("unsubscribe" in frame)) return { unsubscribe: false, target: readSubscription(frame) };
  if (!isObject(frame.unsubscribe)) {
    const example = `{"unsubscribe": ${EXAMPLE}}`;
    throw new RequestError(400, `unsubscribe takes what was subscribed to: ${example}.`);
  }
  return { unsubscribe: true, target: readSubscription(frame.unsubscribe) };
}

function readSubscription(frame: Record<string, unknown>): Target {
  const { object_type: objectType, id, after } = frame;
  const asNumber = (value: unknown) => (typeof value === "number" ? String(value) : "");
  if (id === undefined || id === null || id === "") {
    const ids = 'the room is "lobby", a message is its number, toasts are your visitor id';
    throw new RequestError(400, `id is missing: ${ids}.`);
  }
  switch (objectType) {
    case "room": {
      if (id !== "lobby") throw new RequestError(400, 'There is one room, and its id is "lobby".');
      const start =
        after === undefined ? undefined : wholeNumber("after", asNumber(after), MESSAGE_ID_RANGE);
      const reply = { object_type: "room", id };
      return { key: "room lobby", reply, topic: ROOM_TOPIC, after: start, accepts: () => true };
    }
    case "message": {
      const messageId = wholeNumber("A message id", asNumber(id), MESSAGE_ID_RANGE);
      // Its changes, and a gap: the events about other messages are not this subscriber's.
      const accepts = (event: HubEvent | HubGap) =>
        isGap(event) || (event.data as { message?: number }).message === messageId;
      const reply = { object_type: "message", id: messageId };
      return { key: `message ${messageId}`, reply, topic: ROOM_TOPIC, accepts };
    }
    case "toasts": {
      if (typeof id !== "string") {
        throw new RequestError(400, "The id of toasts is a visitor id, a string.");
      }
      const reply = { object_type: "toasts", id };
      return { key: `toasts ${id}`, reply, topic: toastTopic(id), accepts: () => true };
    }
    default:
      throw new RequestError(400, "object_type must be room, message or toasts.");
  }
}

// ─── The ws package, loaded at the first upgrade ─────────────────────────────
//
// A fresh clone before `npm ci` has no ws package: everything else serves,
// and the endpoint says in one sentence what is missing.

type WsModule = typeof import("ws");

let wsModule: Promise<WsModule | undefined> | undefined;

/** The ws package; undefined when it is not installed. */
function loadWs(): Promise<WsModule | undefined> {
  wsModule ??= import("ws").catch(() => undefined);
  return wsModule;
}

export const WS_MISSING =
  "The WebSocket endpoint needs the ws package, which is not installed: run npm ci first.";

/**
 * GET /ws/notifications without an Upgrade header: says whether the endpoint
 * works here. The page asks this when its WebSocket fails, because a browser's
 * WebSocket never shows the status of a refused handshake.
 */
const describeNotifications: Handler = async (_req, res) => {
  if (!(await loadWs())) throw new RequestError(501, WS_MISSING);
  res.setHeader("Upgrade", "websocket");
  const open = `new WebSocket("ws://host${NOTIFICATIONS_PATH}")`;
  throw new RequestError(426, `${NOTIFICATIONS_PATH} speaks WebSocket: open it with ${open}.`);
};

/** Refuses an upgrade as a handler answers a request: one sentence, then the connection closes. */
function refuseUpgrade(socket: Duplex, status: number, sentence: string) {
  const body = `${sentence}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n` +
      "Content-Type: text/plain; charset=utf-8\r\n" +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

// ─── The WebSocket endpoint ──────────────────────────────────────────────────

/** One open socket: who it is, what it follows, whether it answered the last ping. */
interface Connection {
  client: string; // its address, as the log names it
  visitor: string | undefined;
  /** Each subscription, stopped by its own AbortController. */
  subscriptions: Map<string, AbortController>;
  alive: boolean;
  sent: number;
}

/**
 * Every WebSocket of one app. It accepts an upgrade, reads each frame as a
 * (un)subscription, checks it, and relays the hub's events; one timer pings
 * every socket. When a socket closes, its subscriptions are aborted, and with
 * the last socket the timer goes too.
 */
class Notifications {
  private connections = new Map<WebSocket, Connection>();
  private pingTimer: NodeJS.Timeout | undefined;
  private server: Promise<WebSocketServer | undefined> | undefined;
  private app: App;

  constructor(app: App) {
    this.app = app;
  }

  /** The server's `upgrade` event: checks the path and the Origin, loads ws, hands over. */
  async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on("error", () => {}); // a client that hangs up mid-handshake is normal
    const target = req.url ?? "";
    const base = "http://localhost";
    const path = URL.canParse(target, base) ? new URL(target, base).pathname : "";
    if (path !== NOTIFICATIONS_PATH) {
      return refuseUpgrade(socket, 404, `Only ${NOTIFICATIONS_PATH} speaks WebSocket here.`);
    }
    try {
      // Browsers let any page open a WebSocket to any site: this check keeps other sites out.
      checkOrigin(req, "Connections");
    } catch (error) {
      return refuseUpgrade(socket, 403, (error as Error).message);
    }
    this.server ??= loadWs().then((ws) => {
      const options = { noServer: true, maxPayload: WS_FRAME_LIMIT_BYTES, clientTracking: false };
      return ws && new ws.WebSocketServer(options);
    });
    const server = await this.server;
    if (!server) return refuseUpgrade(socket, 501, WS_MISSING);
    server.handleUpgrade(req, socket, head, (webSocket) => this.opened(webSocket, req));
  }

  private opened(socket: WebSocket, req: IncomingMessage) {
    const { app, connections } = this;
    const client = clientName(req.socket);
    const visitor = readVisitor(req);
    const subscriptions = new Map<string, AbortController>();
    const connection: Connection = { client, visitor, subscriptions, alive: true, sent: 0 };
    connections.set(socket, connection);
    const pingInterval = app.heartbeat * PING_EVERY_HEARTBEATS;
    this.pingTimer ??= setInterval(() => this.ping(), pingInterval);
    if (!app.quiet) app.log(`websocket opened for ${client} (${connections.size} open)`);
    socket.on("error", () => {}); // the close that follows says enough
    socket.on("pong", () => (connection.alive = true));
    socket.on("message", (data, isBinary) => {
      void this.received(socket, connection, isBinary ? undefined : data.toString());
    });
    socket.on("close", (code) => this.closed(socket, connection, code));
  }

  private closed(socket: WebSocket, connection: Connection, code: number) {
    for (const leave of connection.subscriptions.values()) leave.abort();
    connection.subscriptions.clear();
    this.connections.delete(socket);
    if (this.connections.size === 0) {
      clearInterval(this.pingTimer);
      this.pingTimer = undefined;
    }
    if (this.app.quiet) return;
    const { client, sent } = connection;
    const open = `${this.connections.size} open`;
    this.app.log(`websocket closed for ${client} after ${sent} events: code ${code} (${open})`);
  }

  /** The ws README's heartbeat: one that did not answer the last ping is dropped. */
  private ping() {
    for (const [socket, connection] of this.connections) {
      if (!connection.alive) {
        socket.terminate();
        continue;
      }
      connection.alive = false;
      socket.ping();
    }
  }

  private async received(socket: WebSocket, connection: Connection, text: string | undefined) {
    try {
      if (text === undefined) {
        throw new RequestError(400, "Send text frames of JSON, not binary ones.");
      }
      const { unsubscribe, target } = readFrame(text);
      if (unsubscribe) return this.unsubscribe(socket, connection, target);
      await this.subscribe(socket, connection, target);
    } catch (error) {
      if (error instanceof RequestError) {
        return socket.send(JSON.stringify({ type: "ERROR", payload: error.message }));
      }
      // Our fault, not the client's: say so in the log, and close as a handler would answer 500.
      this.app.log(`error: ${error instanceof Error ? error.message : String(error)}`);
      socket.close(WS_SERVER_ERROR, "something went wrong on the server");
    }
  }

  /** Checks the frame and the permission, answers SUBSCRIBED, then relays the topic's events. */
  private async subscribe(socket: WebSocket, connection: Connection, target: Target) {
    const { subscriptions } = connection;
    if (subscriptions.has(target.key)) {
      throw new RequestError(400, `Already subscribed to ${target.key}.`);
    }
    if (subscriptions.size >= WS_SUBSCRIPTIONS_MAX) {
      const sentence = `At most ${WS_SUBSCRIPTIONS_MAX} subscriptions per connection`;
      throw new RequestError(400, `${sentence}: unsubscribe from one first.`);
    }
    // Anyone may follow the room and its messages; only the visitor itself may follow its toasts.
    if (target.reply.object_type === "toasts" && target.reply.id !== connection.visitor) {
      throw new RequestError(403, "Only the visitor itself may follow its toasts.");
    }
    let after = target.after;
    if (target.reply.object_type === "message") {
      const found = await findMessage(hubOf(this.app), target.reply.id as number);
      if (!found.message) {
        throw new RequestError(404, `There is no message ${target.reply.id} in the room.`);
      }
      after = found.lastId; // from the state just read: a change made meanwhile is replayed
    }
    // The socket may have closed, or the same frame come twice, while the message was looked up.
    if (socket.readyState !== socket.OPEN || subscriptions.has(target.key)) return;
    const leave = new AbortController();
    subscriptions.set(target.key, leave);
    socket.send(JSON.stringify({ type: "SUBSCRIBED", payload: target.reply }));
    const from = target.after === undefined ? "" : ` after ${target.after}`;
    const { app } = this;
    if (!app.quiet) app.log(`websocket ${connection.client} follows ${target.key}${from}`);
    try {
      for await (const message of this.messages(target, after, leave.signal)) {
        // Cut, not closed: a close frame would wait behind all it did not read.
        // Its page reconnects with the last id it read.
        if (socket.bufferedAmount > WS_UNSENT_LIMIT_BYTES) return socket.terminate();
        connection.sent++;
        socket.send(message);
      }
    } catch (error) {
      if (!(error instanceof SlowSubscriberError)) throw error;
      socket.terminate(); // the hub cut it first: it fell too far behind even to be handed events
    } finally {
      if (subscriptions.get(target.key) === leave) subscriptions.delete(target.key);
    }
  }

  /**
   * The WebSocket messages of one subscription: the room's events (with its
   * replay), one message's changes, or what a visitor's tabs are told of its
   * toasts (its unread ones first, as its SSE stream does).
   */
  private async *messages(target: Target, after: number | undefined, signal: AbortSignal) {
    const { reply } = target;
    if (reply.object_type === "toasts") {
      for await (const news of toastsOf(this.app).follow(reply.id as string, signal)) {
        yield wsMessage(news.type, news.type === "toast" ? news.toast : { id: news.id });
      }
      return;
    }
    const hub = hubOf(this.app);
    const events =
      reply.object_type === "room"
        ? roomEvents(hub, after, signal)
        : hub.subscribe(target.topic, { after, signal });
    for await (const event of events) {
      if (!target.accepts(event) || !(event.type in WS_MESSAGE_TYPES)) continue;
      yield hubEventToWs(event);
      // A deleted message has nothing more to say: its subscription ends.
      if (event.type === "message_deleted" && reply.object_type === "message") return;
    }
  }

  private unsubscribe(socket: WebSocket, connection: Connection, target: Target) {
    const leave = connection.subscriptions.get(target.key);
    if (!leave) throw new RequestError(400, `Not subscribed to ${target.key}.`);
    leave.abort();
    connection.subscriptions.delete(target.key);
    socket.send(JSON.stringify({ type: "UNSUBSCRIBED", payload: target.reply }));
  }

  /** On Ctrl-C: 1001, "going away", to every socket; pages reconnect and resume. */
  closeAll(): number {
    const count = this.connections.size;
    for (const socket of this.connections.keys()) {
      socket.close(WS_GOING_AWAY, "the server is stopping");
    }
    return count;
  }
}

// ─── Routes ──────────────────────────────────────────────────────────────────

export const webSocket: Lesson = {
  install(app) {
    const notifications = new Notifications(app);
    // A request that asks to become a WebSocket arrives here, not at the router.
    app.server.on("upgrade", (req, socket, head) => void notifications.upgrade(req, socket, head));
    app.onStop(() => {
      const closed = notifications.closeAll();
      return closed > 0 ? `${closed} WebSockets` : undefined;
    });
    Object.assign(app.routes, { [NOTIFICATIONS_PATH]: { GET: describeNotifications } });
  },
};
