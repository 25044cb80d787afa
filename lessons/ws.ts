/**
 * lessons/ws.ts: lesson 4, two-way: the room, one message, or a visitor's
 * toasts, followed over one WebSocket, with subscriptions and permissions.
 *
 * This ports "Django REST Framework and Channels" (seed 002), which adds push
 * to a REST API with Django Channels: one WebSocket endpoint where the client
 * names what it wants to follow, `{"object_type": "room", "id": "lobby"}`; the
 * server checks that this visitor may see it, adds the socket to a group, and
 * sends the group every save that really changed something (lessons/edits.ts
 * makes those saves). Here the groups are the hub's topics, no second hub, and
 * the same room is served over both transports, so a reader can compare them.
 *
 * Run it:    npm ci, then npx -y tsx server.ts (without the ws package everything
 *            else serves, and this endpoint answers 501 with one sentence)
 * Then try:
 *   - http://localhost:8000/room/?transport=ws in one tab and
 *     http://localhost:8000/room/ in another: a message posted in either shows
 *     in both, and the link at the bottom switches a tab between the two;
 *   - curl -i http://localhost:8000/ws/notifications answers 426 Upgrade Required
 *     and a sentence: this path speaks WebSocket only;
 *   - send a frame by hand, with the project's own ws package (from this folder):
 *       node -e 'const ws = new (require("ws"))("ws://localhost:8000/ws/notifications");
 *         ws.on("open", () => ws.send(process.argv[1]));
 *         ws.on("message", (data) => console.log(String(data)))' \
 *         '{"object_type": "room", "id": "lobby"}'
 *     prints SUBSCRIBED, the room's recent messages as MESSAGE_CREATED, each new one as
 *     it is posted, and MESSAGE_UPDATED when one is changed (the PUT in lessons/edits.ts);
 *     '{"object_type": "message", "id": 1}' prints the changes of message 1 only, and
 *     '{"object_type": "toasts", "id": "<visitor id>"}' an ERROR: only a socket with that
 *     visitor's cookie (a page's own) may follow its toasts; add "request_id": "r1" to a
 *     frame, and its reply says "request_id":"r1";
 *   - press Ctrl-C and start the server again: the WebSocket tab says
 *     "reconnecting", then asks for what came after the last message it showed.
 *     This in-memory hub starts over from 1, so the page says "some messages were
 *     missed"; with --database URL (lessons/postgres.ts) the hub outlives the
 *     process, and the tab resumes with every message once, none missed.
 */

import http, { type IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
// `import type` is erased when the TypeScript is stripped, so nothing is loaded here: the ws
// package itself is loaded with await import() at the first upgrade (see loadWs below).
import type { WebSocket, WebSocketServer } from "ws";
import { clientName, HEARTBEAT_MS, RequestError } from "../server.ts";
import type { App, Handler, Lesson } from "../server.ts";
import { hubOf, isGap, SlowSubscriberError, type HubEvent, type HubGap } from "./hub.ts";
import { checkOrigin, readVisitor } from "./http.ts";
import { eventJson, roomEvents } from "./room.ts";
import { toastsOf } from "./toasts.ts";
import { findMessage } from "./edits.ts";
import { keyOf, parseFrame, readRequest, readRequestId, replyOf } from "./ws-frames.ts";
import type { Id, Target } from "./ws-frames.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

const NOTIFICATIONS_PATH = "/ws/notifications";

// The guards against a client that misbehaves or stops reading, each one line where it acts:
/** A frame larger than this closes the socket with 1009: nothing we accept comes near it. */
export const WS_FRAME_LIMIT_BYTES = 4 * 1024;
/** Subscriptions one socket may hold at once: each is a hub subscriber, and they cost memory. */
export const WS_SUBSCRIPTIONS_MAX = 100;
const TOO_MANY =
  `At most ${WS_SUBSCRIPTIONS_MAX} subscriptions per connection: unsubscribe from one first.`;
/** Bytes a socket may leave unsent before it is cut: a stalled reader must not hoard memory. */
export const WS_UNSENT_LIMIT_BYTES = 256 * 1024;
/**
 * Frames one socket may send per second; past it, it is closed with 1008. Each frame costs a
 * reply: a client that sends without end must not make the server queue replies without end.
 * Room for a page and for a client that subscribes to WS_SUBSCRIPTIONS_MAX things at once.
 */
export const WS_FRAMES_PER_SECOND = 2 * WS_SUBSCRIPTIONS_MAX;
export const TOO_FAST = `More than ${WS_FRAMES_PER_SECOND} frames in a second: closed.`;
/**
 * Every socket is pinged once per this many app heartbeats (lesson 1's HEARTBEAT_MS, which a
 * test shortens); one silent since the last ping is dropped: a vanished peer sends no close.
 */
const PING_EVERY_HEARTBEATS = 2;
/** WebSocket close codes (RFC 6455): going away, a policy violation, an error on the server. */
const WS_GOING_AWAY = 1001;
const WS_POLICY_VIOLATION = 1008;
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

/**
 * A WebSocket message: `{"type": "MESSAGE_CREATED", "event_id": 42, "payload": {...}}`. A room
 * event carries its hub id in event_id (what `after` names); a reply, the request_id it answers.
 */
function wsMessage(type: string, payload: unknown, ids: { event_id?: number; request_id?: Id }) {
  return JSON.stringify({ type, ...ids, payload });
}

/** A room event's payload: the message's fields, and the message's own id in `id`, always. */
function roomPayload(event: HubEvent): Record<string, unknown> {
  const { message, ...change } = event.data as { message?: number };
  return message === undefined ? eventJson(event) : { id: message, ...change, at: event.at };
}

/**
 * Each event's WebSocket message, as room.ts keeps its SSE text: an event relayed to 10,000
 * sockets is one string, made once, not 10,000. The WeakMap forgets it when the hub does.
 */
const wsMessages = new WeakMap<HubEvent | HubGap, string>();

/** One hub event as a WebSocket message; its payload is what SSE sends as `data:`, by id. */
function hubEventToWs(event: HubEvent | HubGap): string {
  let message = wsMessages.get(event);
  if (message === undefined) {
    const type = WS_MESSAGE_TYPES[event.type]!;
    message = isGap(event)
      ? wsMessage(type, { after: event.after }, {})
      : wsMessage(type, roomPayload(event), { event_id: event.id });
    wsMessages.set(event, message);
  }
  return message;
}

// ─── The WebSocket endpoint ──────────────────────────────────────────────────

/** One open socket: who it is, what it follows, whether it answered the last ping. */
interface Connection {
  client: string; // its address, as the log names it
  visitor: string | undefined;
  subscriptions: Map<string, AbortController>; // by key, each stopped by its own controller
  alive: boolean;
  sent: number;
  frames: { since: number; count: number }; // what it sent in the second since its first
}

/**
 * Every WebSocket of one app, in the order a socket lives: upgrade, opened,
 * each frame received, subscribe and relay, unsubscribe, closed. One timer
 * pings every socket; it goes with the last one.
 */
class Notifications {
  private connections = new Map<WebSocket, Connection>();
  /** NodeJS.Timeout: what Node's setInterval returns, an object where a browser's is a number. */
  private pingTimer: NodeJS.Timeout | undefined;
  private server: Promise<WebSocketServer | undefined> | undefined; // ws's, at the first upgrade
  private app: App;
  private boundsSaid = new Set<string>();

  constructor(app: App) {
    this.app = app;
  }

  /**
   * The server's `upgrade` event. Node stops parsing HTTP and hands over the
   * connection itself: `socket`, a Duplex stream (we both read and write it),
   * and `head`, the bytes the client sent past the request's headers. ws takes
   * both, answers the handshake, and gives back a WebSocket.
   */
  async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on("error", () => {}); // a client that hangs up mid-handshake is normal
    // req.url is a path ("/ws/notifications?x=1"): URL needs some base to parse it.
    const [target, base] = [req.url ?? "", "http://localhost"];
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
    // `??=` assigns only if undefined: the first upgrade makes the ws server, the others share it.
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
    const frames = { since: -Infinity, count: 0 };
    const connection: Connection = { client, visitor, subscriptions, alive: true, sent: 0, frames };
    connections.set(socket, connection);
    const beat = app.heartbeat || HEARTBEAT_MS; // --heartbeat 0 turns off comments, not pings
    this.pingTimer ??= setInterval(() => this.ping(), beat * PING_EVERY_HEARTBEATS);
    if (!app.quiet) app.log(`websocket opened for ${client} (${connections.size} open)`);
    socket.on("error", () => {}); // the close that follows says enough
    socket.on("pong", () => (connection.alive = true));
    socket.on("message", (data, isBinary) => {
      // `void`: received() catches its own errors; nobody waits for it, ws no more than we do.
      void this.received(socket, connection, isBinary ? undefined : data.toString());
    });
    socket.on("close", (code) => this.closed(socket, connection, code));
  }

  private async received(socket: WebSocket, connection: Connection, text: string | undefined) {
    if (socket.readyState !== socket.OPEN || this.tooFast(socket, connection)) return;
    let requestId: Id | undefined;
    try {
      const frame = parseFrame(text);
      requestId = readRequestId(frame);
      const { unsubscribe, target } = readRequest(frame);
      if (unsubscribe) return this.unsubscribe(socket, connection, target, requestId);
      await this.subscribe(socket, connection, target, requestId);
    } catch (error) {
      if (error instanceof RequestError) {
        const reply = wsMessage("ERROR", error.message, { request_id: requestId });
        return this.send(socket, reply);
      }
      // Our fault, not the client's: say so in the log, and close as a handler would answer 500.
      this.app.log(`error: ${error instanceof Error ? error.message : String(error)}`);
      socket.close(WS_SERVER_ERROR, "something went wrong on the server");
    }
  }

  /**
   * Counts the frame in the second that began with the first one counted; past
   * WS_FRAMES_PER_SECOND the socket is closed with 1008 and the sentence, and what it sends
   * until it is gone is ignored: no reply queues behind it.
   */
  private tooFast(socket: WebSocket, { frames }: Connection): boolean {
    const now = performance.now();
    if (now - frames.since >= 1000) Object.assign(frames, { since: now, count: 0 });
    if (++frames.count <= WS_FRAMES_PER_SECOND) return false;
    this.sayOnce(`a socket that sent over ${WS_FRAMES_PER_SECOND} frames in a second was closed`);
    socket.close(WS_POLICY_VIOLATION, TOO_FAST);
    return true;
  }

  /** A guard reached is news once, not once per socket that reaches it. */
  private sayOnce(news: string) {
    if (this.boundsSaid.has(news)) return;
    this.boundsSaid.add(news);
    this.app.log(`websocket: ${news}; from now on, others without a word (said once)`);
  }

  /**
   * Every message to a socket goes out here, replies and events alike. A socket that left more
   * than WS_UNSENT_LIMIT_BYTES unsent is cut, not closed: a close frame would wait behind all it
   * did not read. Its page reconnects with the last id it read.
   */
  private send(socket: WebSocket, message: string): void {
    if (socket.readyState !== socket.OPEN) return;
    if (socket.bufferedAmount <= WS_UNSENT_LIMIT_BYTES) return socket.send(message);
    this.sayOnce(`a socket that left over ${WS_UNSENT_LIMIT_BYTES} bytes unsent was cut`);
    socket.terminate();
  }

  /** Checks the frame and the permission, answers SUBSCRIBED, then relays the events. */
  private async subscribe(socket: WebSocket, connection: Connection, target: Target, id?: Id) {
    const { subscriptions } = connection;
    const key = keyOf(target);
    if (subscriptions.has(key)) throw new RequestError(400, `Already subscribed to ${key}.`);
    if (subscriptions.size >= WS_SUBSCRIPTIONS_MAX) throw new RequestError(400, TOO_MANY);
    // Anyone may follow the room and its messages; only the visitor itself may follow its toasts,
    // and it counts among the visitors the toasts remember (a 503 when they are too many).
    if (target.kind === "toasts" && target.id !== connection.visitor) {
      throw new RequestError(403, "Only the visitor itself may follow its toasts.");
    }
    if (target.kind === "toasts") toastsOf(this.app).visitors.seen(target.id);
    // Held from now, before the lookup below awaits: a burst of frames counts every one of them.
    const leave = new AbortController();
    subscriptions.set(key, leave);
    try {
      const asked = target.kind === "room" ? target.after : undefined; // the room's, to resume
      let after = asked;
      if (target.kind === "message") {
        const found = await findMessage(this.app, target.id);
        const missing = `There is no message ${target.id} in the room.`;
        if (!found.message) throw new RequestError(404, missing);
        // Followed from the newest event the lookup read: the hub replays any change published
        // while we waited, so none falls between the lookup and the subscription.
        after = found.lastId;
      }
      // The socket may have closed, or the client unsubscribed, while the message was looked up.
      if (leave.signal.aborted || socket.readyState !== socket.OPEN) return;
      const reply = wsMessage("SUBSCRIBED", replyOf(target), { request_id: id });
      this.send(socket, reply);
      // The log says where the client asked to resume; a message's start is ours, not logged.
      const from = asked === undefined ? "" : ` after ${asked}`;
      if (!this.app.quiet) this.app.log(`websocket ${connection.client} follows ${key}${from}`);
      await this.relay(socket, connection, this.messages(target, after, leave.signal), leave);
    } finally {
      // Only if it is still ours: an unsubscribe and a new subscribe to the same key may have
      // come while this one was ending, and that newer one must stay.
      if (subscriptions.get(key) === leave) subscriptions.delete(key);
    }
  }

  /** Sends each message of a subscription, until it ends, is left, or the socket falls behind. */
  private async relay(
    socket: WebSocket,
    connection: Connection,
    messages: AsyncIterable<string>,
    { signal: left }: AbortController,
  ) {
    try {
      for await (const message of messages) {
        // An event already on its way when UNSUBSCRIBED went out stays unsent.
        if (left.aborted) return;
        connection.sent++;
        this.send(socket, message);
      }
    } catch (error) {
      if (!(error instanceof SlowSubscriberError)) throw error;
      socket.terminate(); // the hub cut it first: it fell too far behind even to be handed events
    }
  }

  /**
   * One subscription's WebSocket messages: the room's events (its replay first), one message's
   * changes, or what a visitor's tabs are told of its toasts (unread ones first, as over SSE).
   */
  private async *messages(target: Target, after: number | undefined, signal: AbortSignal) {
    if (target.kind === "toasts") {
      for await (const news of toastsOf(this.app).follow(target.id, signal)) {
        const payload = news.type === "toast" ? news.toast : { id: news.id };
        yield wsMessage(WS_MESSAGE_TYPES[news.type]!, payload, {});
      }
      return;
    }
    for await (const event of roomEvents(hubOf(this.app), after, signal)) {
      // Two filters: the table says what a WebSocket may ever be sent, this what a message's
      // subscriber wants (its own changes, and a gap), not the rest of the room.
      if (!(event.type in WS_MESSAGE_TYPES)) continue;
      const about = isGap(event) ? undefined : (event.data as { message?: number }).message;
      if (target.kind === "message" && !isGap(event) && about !== target.id) continue;
      yield hubEventToWs(event);
      // A deleted message has nothing more to say: its subscription ends.
      if (event.type === "message_deleted" && target.kind === "message") return;
    }
  }

  private unsubscribe(socket: WebSocket, connection: Connection, target: Target, id?: Id) {
    const key = keyOf(target);
    const leave = connection.subscriptions.get(key);
    if (!leave) throw new RequestError(400, `Not subscribed to ${key}.`);
    leave.abort();
    connection.subscriptions.delete(key);
    this.send(socket, wsMessage("UNSUBSCRIBED", replyOf(target), { request_id: id }));
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
    const events = `${sent} event${sent === 1 ? "" : "s"}`;
    this.app.log(`websocket closed for ${client} after ${events}: code ${code} (${open})`);
  }

  /** The ws README's heartbeat: a socket that did not answer the last ping is dropped. */
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

  /** On Ctrl-C: 1001, "going away", to every socket; pages reconnect and resume. */
  closeAll(): number {
    const count = this.connections.size;
    for (const socket of this.connections.keys()) {
      socket.close(WS_GOING_AWAY, "the server is stopping");
    }
    return count;
  }
}

// ─── Refusals, and the ws package loaded when first used ─────────────────────
//
// A fresh clone before `npm ci` has no ws package: everything else serves,
// and the endpoint says in one sentence what is missing.

/** typeof import("ws"): the type of what `await import("ws")` gives, the package's exports. */
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
 * GET /ws/notifications without an Upgrade header: says whether the endpoint works here. The
 * page asks when its WebSocket fails: a browser never shows the status of a refused handshake.
 */
const describeNotifications: Handler = async (_req, res) => {
  if (!(await loadWs())) throw new RequestError(501, WS_MISSING);
  res.setHeader("Upgrade", "websocket");
  const open = `new WebSocket("ws://host${NOTIFICATIONS_PATH}")`;
  throw new RequestError(426, `${NOTIFICATIONS_PATH} speaks WebSocket: open it with ${open}.`);
};

/** Refuses an upgrade as a handler answers: one sentence, then the connection closes. */
function refuseUpgrade(socket: Duplex, status: number, sentence: string) {
  const body = `${sentence}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n` +
      "Content-Type: text/plain; charset=utf-8\r\n" +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

// ─── The routes ──────────────────────────────────────────────────────────────

export const webSocket: Lesson = {
  install(app) {
    const notifications = new Notifications(app);
    // A request that asks to become a WebSocket arrives here, not at the router.
    app.onUpgrade((req, socket, head) => void notifications.upgrade(req, socket, head));
    app.onStop(() => {
      const closed = notifications.closeAll();
      if (closed > 0) return closed === 1 ? "1 WebSocket" : `${closed} WebSockets`;
    });
    Object.assign(app.routes, { [NOTIFICATIONS_PATH]: { GET: describeNotifications } });
  },
};
