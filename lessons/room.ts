/**
 * lessons/room.ts: lesson 3, push, don't poll: a room where a posted message
 * reaches every open tab at once.
 *
 * This ports "Writing a chat application in Django 4.2 using async
 * StreamingHttpResponse, Server-Sent Events and PostgreSQL LISTEN/NOTIFY"
 * (Víðir Valberg Guðmundsson), whose first attempt asked the database for news
 * once per tab every 5 seconds. Here a POST publishes the message to the hub
 * (lessons/hub.ts), and every open stream is a subscriber the hub hands it to.
 * Nothing happens between messages: no timer, no query, no request. The polling
 * version is kept beside it, so a tab can count what each costs. The page, with
 * the EventSource that reads the stream, is pages/room.html.
 *
 * Run it:    npx -y tsx server.ts       (the room is at /room/)
 * Then try:
 *   - http://localhost:8000/room/ in two tabs: post in one, the other shows it at once,
 *     and its "requests for news" stays at 1;
 *   - curl -N http://localhost:8000/room/stream, and post from another terminal:
 *     curl -d name=Ada -d text=hello http://localhost:8000/room/messages
 *     the stream prints `event: presence`, `data: {"tabs":1,...}`, then, the moment the
 *     POST answers, `event: message`, `id: 1`, `data: {"id":1,"name":"Ada",...}`;
 *   - http://localhost:8000/room/?poll=5 asks every 5 seconds instead; each page
 *     counts the requests it made, and the polling one shows a message up to 5 s late;
 *   - post a message, press Ctrl-C and start the server again: the open tab reconnects,
 *     says some messages were missed (this hub counts from 1 again), and goes on.
 */

import type { ServerResponse } from "node:http";
import {
  clientName,
  formatEvent,
  sendPage,
  SSE_HEADERS,
  wholeNumber,
  type App,
  type Handler,
  type Lesson,
  type Routes,
} from "../server.ts";
import { hubOf, isGap, OpenStreams, type Hub, type HubEvent, type HubGap } from "./hub.ts";
import { checkField, checkOrigin, pageFile, PostRate, readFields, readVisitor } from "./http.ts";
import { sendJson } from "./http.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

/** The one room there is. Topics name what they carry, so toasts can live beside it. */
export const ROOM_TOPIC = "room:lobby";
/** How many recent messages a fresh tab is shown. */
export const ROOM_REPLAY = 20;
export const NAME_MAX = 40;
export const TEXT_MAX = 280;
/** ?poll=SECONDS makes the page ask for news on a timer instead of opening a stream. */
const POLL_RANGE_S = { min: 1, max: 60 };
/**
 * Message ids a request may name: ?after= and Last-Event-ID. The maximum is far
 * beyond any id a room reaches; a bound, so that a wild id gets a 400 naming the range.
 */
export const MESSAGE_ID_RANGE = { min: 0, max: 1_000_000_000_000 };
/** Head counts go out at most this often (see RoomStreams). */
export const PRESENCE_DELAY_MS = 100;

/** What the JSON body of a post looks like, for the sentences that refuse a bad one. */
const MESSAGE_EXAMPLE = '{"name": "...", "text": "..."}';

// ─── The room's stream ───────────────────────────────────────────────────────

/**
 * What a client sees of one event: its id, the fields of its data (an
 * object), when it was published. The room's message is {"id", "name", "text", "poster", "at"}.
 */
export function eventJson({ id, data, at }: HubEvent): Record<string, unknown> {
  return { id, ...(data as object), at };
}

/**
 * Each event's wire text, made once: 10,000 open streams then send one shared
 * string, not 10,000 copies of its JSON. Keyed weakly, so it goes with the event.
 */
const wireText = new WeakMap<HubEvent, string>();

/** One hub event on the wire: `event: message`, `id: 42`, `data: {...}`; a gap has no id. */
function hubEventToSse(event: HubEvent | HubGap): string {
  if (isGap(event)) return formatEvent("gap", JSON.stringify({ after: event.after }));
  let text = wireText.get(event);
  if (text === undefined) {
    text = formatEvent(event.type, JSON.stringify(eventJson(event)), event.id);
    wireText.set(event, text);
  }
  return text;
}

/** How many tabs are in the room, and which process counted them, as the page shows it. */
export function presenceEvent(tabs: number): string {
  return formatEvent("presence", JSON.stringify({ tabs, pid: process.pid }));
}

/**
 * The room's events for one reader: the last few (or, after a reconnect,
 * exactly those after the last id it saw), then every event as it is
 * published, until `signal` aborts. The countdown's generator awaited a timer;
 * this one awaits the hub.
 */
export async function* roomEvents(
  hub: Hub,
  lastEventId: number | undefined,
  signal: AbortSignal,
): AsyncGenerator<HubEvent | HubGap> {
  let after = lastEventId;
  if (after === undefined) {
    const recent = await hub.history(ROOM_TOPIC, { limit: ROOM_REPLAY });
    yield* recent;
    // Anything published while those were being yielded is replayed by the hub, from here.
    after = recent.at(-1)?.id ?? 0;
  }
  yield* hub.subscribe(ROOM_TOPIC, { after, signal });
}

/** The SSE messages of one room stream: each event under its own type (`event: message`). */
async function* roomStream(hub: Hub, lastEventId: number | undefined, signal: AbortSignal) {
  for await (const event of roomEvents(hub, lastEventId, signal)) yield hubEventToSse(event);
}

/**
 * The room's open streams in this process, and their head count. Presence is
 * not stored in the hub: it is this process's count, told to every stream
 * PRESENCE_DELAY_MS after it changes, once for however many came or went
 * meanwhile, so 10,000 tabs arriving cost a few rounds of writes, not 10,000.
 */
class RoomStreams extends OpenStreams {
  /** The head count each stream was last told (none yet: not in the map). */
  private told = new Map<ServerResponse, number>();
  private presenceTimer: NodeJS.Timeout | undefined;

  // OpenStreams calls open and close as each stream comes and goes; these add the head
  // count. `override`: they replace its own, which `super` still runs.
  protected override open(res: ServerResponse) {
    super.open(res);
    this.countChanged();
  }

  protected override close(res: ServerResponse) {
    super.close(res);
    this.told.delete(res);
    this.countChanged();
  }

  private countChanged() {
    if (this.size === 0) {
      // The last tab left: nobody is left to tell.
      clearTimeout(this.presenceTimer);
      this.presenceTimer = undefined;
      return;
    }
    // `??=` sets the timer only when none is set: changes meanwhile wait for the same one.
    this.presenceTimer ??= setTimeout(() => this.tellPresence(), PRESENCE_DELAY_MS);
  }

  private tellPresence() {
    this.presenceTimer = undefined;
    const tabs = this.size;
    for (const res of this.streams) {
      if (this.told.get(res) === tabs) continue; // no news for this one
      this.told.set(res, tabs);
      res.write(presenceEvent(tabs));
    }
  }
}

/** Each app's room streams, made when the lesson installs (per app: see lessons/hub.ts). */
const rooms = new WeakMap<App, RoomStreams>();
/** How often each app's room may be posted to (lessons/http.ts says why, and how). */
const postRates = new WeakMap<App, PostRate>();

// ─── The room's handlers ─────────────────────────────────────────────────────

/** The room's page, from pages/room.html, read once. */
const roomPage = pageFile("room.html");

/** ?poll=SECONDS: 0 (stream) when absent. A bad one fails on the page, where the reader sees it. */
function readPollSeconds(url: URL): number {
  const poll = url.searchParams.get("poll");
  return poll === null ? 0 : wholeNumber("poll", poll, POLL_RANGE_S);
}

const serveRoomPage: Handler = (_req, res, url) => {
  readPollSeconds(url);
  sendPage(res, roomPage());
};

/** A message id from ?after= or Last-Event-ID; undefined when absent or empty. */
function readMessageId(
  text: string | string[] | null | undefined,
  name: string,
): number | undefined {
  if (typeof text !== "string" || text === "") return undefined;
  return wholeNumber(name, text, MESSAGE_ID_RANGE);
}

/** Streams the room to one tab: recent messages, then every new one, until the tab closes. */
const serveRoomStream: Handler = async (req, res, url, app) => {
  const { log, quiet } = app;
  const room = rooms.get(app)!; // `!`: set in install, before any request
  const hub = hubOf(app);
  // ?after= for a page that opens a new EventSource, which cannot send Last-Event-ID itself.
  const lastEventId = readMessageId(req.headers["last-event-id"], "Last-Event-ID")
    ?? readMessageId(url.searchParams.get("after"), "after");
  res.writeHead(200, SSE_HEADERS);
  res.flushHeaders(); // so the browser's `open` fires now, not with the first message
  const from = lastEventId === undefined
    ? `with the last ${ROOM_REPLAY} messages`
    : `after message ${lastEventId}`;
  const client = clientName(req.socket);
  const source = (signal: AbortSignal) => roomStream(hub, lastEventId, signal);
  const { sent, why } = await room.pump(res, source, () => {
    if (!quiet) log(`room stream opened for ${client}, ${from} (${room.size} in the room)`);
  });
  const events = `${sent} event${sent === 1 ? "" : "s"}`;
  if (!quiet) log(`room stream closed after ${events}: ${why} (${room.size} in the room)`);
};

/**
 * The polling version, what the post set out to replace: the page asks every few
 * seconds what came after the last id it has. When that id is older than what
 * is kept, or one this hub never issued (after a restart), it gets everything
 * kept, and sees the gap from the ids.
 */
const listMessages: Handler = async (_req, res, url, app) => {
  const hub = hubOf(app);
  const after = readMessageId(url.searchParams.get("after"), "after");
  const range = after === undefined ? { limit: ROOM_REPLAY } : { after };
  let events = await hub.history(ROOM_TOPIC, range);
  if (after !== undefined && events.length === 0) {
    const [newest] = await hub.history(ROOM_TOPIC, { limit: 1 });
    if (newest && newest.id < after) events = await hub.history(ROOM_TOPIC);
  }
  // Each with its type: a later lesson puts other events than messages in the room's topic.
  sendJson(res, 200, events.map((event) => ({ type: event.type, ...eventJson(event) })));
};

/** Posts one message: checks its origin, reads and checks it, publishes it, answers 201 with it. */
const postMessage: Handler = async (req, res, _url, app) => {
  checkOrigin(req);
  const fields = await readFields(req, res, { what: "the message", example: MESSAGE_EXAMPLE });
  const message = {
    name: checkField(fields, "name", NAME_MAX),
    text: checkField(fields, "text", TEXT_MAX),
    // Who posted it, for a later lesson's edits: null without a visitor cookie (curl; a
    // browser gets one from the toasts, the next lesson, on its first page).
    poster: readVisitor(req) ?? null,
  };
  postRates.get(app)!.take(req, res); // a good message only: a mistake costs no turn
  const event = await hubOf(app).publish(ROOM_TOPIC, "message", message);
  // The name's length, never the name or the text: a log is no place for what people write.
  const nameLength = [...message.name].length;
  if (!app.quiet) app.log(`message ${event.id} posted (a name of ${nameLength} characters)`);
  sendJson(res, 201, eventJson(event));
};

// ─── The lesson ──────────────────────────────────────────────────────────────

const ROOM_ROUTES: Routes = {
  "/room/": { GET: serveRoomPage, HEAD: serveRoomPage },
  "/room/messages": { GET: listMessages, POST: postMessage },
  "/room/stream": { GET: serveRoomStream },
};

export const room: Lesson = {
  banner: (url) => [
    `  Lesson 3, the room: ${url}room/ in two tabs (its stream: curl -N ${url}room/stream)`,
  ],

  install(app) {
    const streams = new RoomStreams(app.heartbeat);
    rooms.set(app, streams);
    postRates.set(app, new PostRate("room messages", app.log));
    // Ended cleanly on Ctrl-C: each browser reconnects with the last id it saw.
    app.onStop(() => {
      const count = streams.endAll();
      if (count > 0) return count === 1 ? "1 room stream" : `${count} room streams`;
    });
    Object.assign(app.routes, ROOM_ROUTES);
  },
};
