/**
 * lessons/edits.ts: lesson 4, REST on the room's messages: GET, PUT and
 * DELETE one message, and an edit that changes nothing notifies nobody.
 *
 * This ports "Django REST Framework and Channels" (seed 002), which puts a
 * Django REST Framework viewset on each object and notifies the object's group
 * only when a save really changed a field (django-model-utils' FieldTracker).
 * Here the object is a room message, its group is the room's topic in the hub,
 * and a change is an event of its own, `message_updated` or `message_deleted`,
 * with an id of its own: SSE replay (Last-Event-ID) and the WebSocket's `after`
 * stay exact across changes too. Every open room tab shows them, over either
 * transport (lessons/ws.ts is the WebSocket).
 *
 * Run it:    npx -y tsx server.ts
 * Then try, in a shell (the jar keeps the visitor cookie the room's page sets):
 *   curl -s -c jar -o /dev/null http://localhost:8000/room/
 *   curl -s -b jar -d name=Ada -d text=helo http://localhost:8000/room/messages
 * The answer is the message, with its id: 1 on a fresh server. Ids skip after an
 * edit, since each change takes an id of its own, so use the id your POST got:
 *   curl -s -b jar -X PUT -d text=hello http://localhost:8000/room/messages/1
 * answers the message with its new text; every open http://localhost:8000/room/
 * tab shows the change at once, and the server's log says "message 1 changed
 * (event 2)". The same PUT again answers the same and notifies nobody: no tab
 * changes, and the log says nothing. Then, where the status is all there is to see:
 *   - curl -i -X PUT -d text=hi http://localhost:8000/room/messages/1 (no jar)
 *     answers 403: only the visitor who posted a message may change or delete it;
 *   - curl -i -b jar -X DELETE http://localhost:8000/room/messages/1 answers
 *     204 No Content, and the message leaves every tab.
 */

import { RequestError, wholeNumber, type App, type Handler, type Lesson } from "../server.ts";
import { hubOf, type HubEvent, type HubSection } from "./hub.ts";
import { checkField, checkOrigin, readFields, readVisitor, sendJson } from "./http.ts";
import { eventJson, MESSAGE_ID_RANGE, ROOM_TOPIC, TEXT_MAX } from "./room.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

/**
 * Messages kept readable and editable. Not the hub's window of HUB_KEEP events: that is for
 * replay, and edits fill it too, so a message would fall out of it while every open page still
 * shows it. Past this many, the oldest can no longer be read or changed (a 404 that says so).
 */
export const MESSAGES_KEPT = 1000;

// ─── The messages as they stand ──────────────────────────────────────────────
//
// The room's state is its events: a message is its `message` event, changed by
// the later `message_updated` and `message_deleted` events that name it. This
// lesson keeps a copy of the result, the last MESSAGES_KEPT messages, which the
// hub keeps up to date (hub.watch) and which catches up from the hub's history
// before each answer: with --database, the table, so what another process
// changed a moment ago is there too.

/**
 * A message as it stands now. A `type`, not an `interface`: TypeScript lets eventJson's
 * Record<string, unknown> be cast to an object type, but not to an interface.
 */
type RoomMessage = {
  id: number;
  name: string;
  text: string;
  poster: string | null; // the public id of the visitor who posted it; null when it had no cookie
  at: string;
};

class RoomMessages {
  /** By id; a Map keeps insertion order, so the first is the oldest. */
  private messages = new Map<number, RoomMessage>();
  /** The newest room event applied: events are applied in id order, each once. */
  lastId = 0;
  private app: App;
  private unwatch: (() => void) | undefined;
  private catchingUp: Promise<void> | undefined;
  private boundSaid = false;

  constructor(app: App) {
    this.app = app;
  }

  /** From when the server listens (so that nothing posted is missed), or the first use. */
  start(): void {
    if (this.unwatch) return;
    // An event that is not the next one means some were missed: catching up reads them.
    this.unwatch = hubOf(this.app).watch(ROOM_TOPIC, (event) => {
      if (event.id === this.lastId + 1) this.apply(event);
      else if (event.id > this.lastId) this.catchUpSoon();
    });
    this.catchUpSoon();
  }

  stop(): void {
    this.unwatch?.();
  }

  get(id: number): RoomMessage | undefined {
    return this.messages.get(id);
  }

  /** Applies what `hub` has after the newest event applied: exclusive work reads its own. */
  async catchUp(hub: HubSection = hubOf(this.app)): Promise<void> {
    this.start();
    const missed = await hub.history(ROOM_TOPIC, { after: this.lastId, limit: MESSAGES_KEPT });
    // More missed than that: what the copy holds may have changed unseen, so it starts over.
    if ((missed[0]?.id ?? 0) > this.lastId + 1) this.messages.clear();
    for (const event of missed) if (event.id > this.lastId) this.apply(event);
  }

  /** One catch-up in the background at a time, however many events arrive out of turn. */
  private catchUpSoon() {
    this.catchingUp ??= this.catchUp()
      .catch((error: Error) => this.app.log(`edits: cannot read the room: ${error.message}`))
      .finally(() => (this.catchingUp = undefined));
  }

  private apply(event: HubEvent) {
    this.lastId = event.id;
    const change = event.data as { message?: number; text?: string };
    const changed = this.messages.get(change.message ?? -1);
    if (event.type === "message") this.keep(eventJson(event) as RoomMessage);
    if (event.type === "message_updated" && changed) this.keep({ ...changed, text: change.text! });
    if (event.type === "message_deleted") this.messages.delete(change.message ?? -1);
  }

  private keep(message: RoomMessage) {
    this.messages.set(message.id, message);
    if (this.messages.size <= MESSAGES_KEPT) return;
    const [oldest] = this.messages.keys();
    this.messages.delete(oldest!);
    if (this.boundSaid) return;
    this.boundSaid = true; // said once: a bound hit is a change of state, each hit after is not
    this.app.log(`edits: ${MESSAGES_KEPT} messages kept; from now on the oldest are forgotten`);
  }
}

const states = new WeakMap<App, RoomMessages>();

function messagesOf(app: App): RoomMessages {
  let messages = states.get(app);
  if (!messages) states.set(app, (messages = new RoomMessages(app)));
  return messages;
}

/**
 * A message as it stands, and the newest room event read: a subscription to the message
 * (lessons/ws.ts) follows the room from there. `hub`: exclusive work reads through its own.
 */
export async function findMessage(app: App, id: number, hub?: HubSection) {
  const messages = messagesOf(app);
  await messages.catchUp(hub);
  return { message: messages.get(id), lastId: messages.lastId };
}

/**
 * The id in the path /room/messages/<id>. The route's `:id` stands for any one segment, but
 * lesson 1's router passes no parameters: the id is read from the path.
 */
function idFromPath(url: URL): number {
  return wholeNumber("The message id", url.pathname.split("/").at(-1)!, MESSAGE_ID_RANGE);
}

/** The message as it stands, or a 404. */
async function messageOr404(app: App, id: number, hub?: HubSection): Promise<RoomMessage> {
  const { message } = await findMessage(app, id, hub);
  if (message) return message;
  const why = `it may be deleted, or older than the last ${MESSAGES_KEPT} messages`;
  throw new RequestError(404, `There is no message ${id} in the room (${why}).`);
}

/** Only the visitor who posted a message may change it: seed 002's permission check. */
function checkPoster(message: RoomMessage, visitor: string | undefined, verb: string) {
  if (visitor === undefined || visitor !== message.poster) {
    const sentence = `Only the visitor who posted message ${message.id} may ${verb} it.`;
    throw new RequestError(403, sentence);
  }
}

// ─── Handlers ────────────────────────────────────────────────────────────────
//
// A change is a check, then a publish: is the text new, is the message still
// there? Twenty PUTs at once must not all pass the check before any publishes,
// so each change runs inside hub.exclusive, one at a time per message: in one
// process, a queue per message; with --database, a PostgreSQL advisory lock on
// the message, held by the transaction that reads and publishes, across every
// process. The second PUT then finds the text already changed, the second
// DELETE finds no message.

const getMessage: Handler = async (_req, res, url, app) => {
  sendJson(res, 200, await messageOr404(app, idFromPath(url)));
};

/** Changes a message's text. The same text again changes nothing and notifies nobody. */
const putMessage: Handler = async (req, res, url, app) => {
  checkOrigin(req);
  // The body is read first, as posting reads it: its 415 and 413 come before the lookup.
  const example = '{"text": "..."}';
  const fields = await readFields(req, res, { what: "the message", example });
  const id = idFromPath(url);
  const changed = await hubOf(app).exclusive(ROOM_TOPIC, id, async (hub) => {
    const message = await messageOr404(app, id, hub);
    checkPoster(message, readVisitor(req), "change");
    const text = checkField(fields, "text", TEXT_MAX);
    if (text === message.text) return { message }; // seed 002's FieldTracker: nobody is told
    const event = await hub.publish(ROOM_TOPIC, "message_updated", { message: id, text });
    return { message: { ...message, text }, event };
  });
  if (changed.event && !app.quiet) app.log(`message ${id} changed (event ${changed.event.id})`);
  sendJson(res, 200, changed.message);
};

const deleteMessage: Handler = async (req, res, url, app) => {
  checkOrigin(req);
  const id = idFromPath(url);
  const event = await hubOf(app).exclusive(ROOM_TOPIC, id, async (hub) => {
    checkPoster(await messageOr404(app, id, hub), readVisitor(req), "delete");
    return hub.publish(ROOM_TOPIC, "message_deleted", { message: id });
  });
  if (!app.quiet) app.log(`message ${id} deleted (event ${event.id})`);
  res.writeHead(204).end();
};

// ─── The routes ──────────────────────────────────────────────────────────────

export const edits: Lesson = {
  install(app) {
    Object.assign(app.routes, {
      // `:id` matches any one segment; idFromPath reads it from the path.
      "/room/messages/:id": { GET: getMessage, PUT: putMessage, DELETE: deleteMessage },
    });
    // From the moment it listens, every lesson is installed and the hub chosen (lessons/hub.ts).
    app.server.once("listening", () => messagesOf(app).start());
    app.onStop(() => states.get(app)?.stop());
  },
};
