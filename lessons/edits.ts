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

import { RequestError, wholeNumber, type Handler, type Lesson } from "../server.ts";
import { HUB_KEEP, hubOf, type Hub } from "./hub.ts";
import { checkField, checkOrigin, readFields, readVisitor, sendJson } from "./http.ts";
import { eventJson, MESSAGE_ID_RANGE, ROOM_TOPIC, TEXT_MAX } from "./room.ts";

// ─── A message as it stands ──────────────────────────────────────────────────
//
// The room's state is its events: a message is its `message` event, changed
// by the later `message_updated` and `message_deleted` events that name it.
// The hub keeps the room's last HUB_KEEP events, and a message older than
// those is gone.

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

/** A message as it stands, from the room's kept events, and the id of the newest of those. */
export async function findMessage(
  hub: Hub,
  id: number,
): Promise<{ message?: RoomMessage; lastId: number }> {
  const events = await hub.history(ROOM_TOPIC);
  let message: RoomMessage | undefined;
  for (const event of events) {
    const change = event.data as { message?: number; text?: string };
    if (event.type === "message" && event.id === id) {
      message = eventJson(event) as RoomMessage;
    } else if (message && change.message === id) {
      if (event.type === "message_updated") message = { ...message, text: change.text! };
      if (event.type === "message_deleted") message = undefined;
    }
  }
  return { message, lastId: events.at(-1)?.id ?? 0 };
}

/**
 * The message named by the path /room/messages/<id>, or a 404. The route's `:id` stands for
 * any one segment, but lesson 1's router passes no parameters: the id is read from the path.
 */
async function messageFromPath(hub: Hub, url: URL): Promise<RoomMessage> {
  const id = wholeNumber("The message id", url.pathname.split("/").at(-1)!, MESSAGE_ID_RANGE);
  const { message } = await findMessage(hub, id);
  if (message) return message;
  const why = `it may be deleted, or older than the last ${HUB_KEEP} events`;
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

const getMessage: Handler = async (_req, res, url, app) => {
  sendJson(res, 200, await messageFromPath(hubOf(app), url));
};

/** Changes a message's text. The same text again changes nothing and notifies nobody. */
const putMessage: Handler = async (req, res, url, app) => {
  checkOrigin(req);
  // The body is read first, as posting reads it: its 415 and 413 come before the lookup.
  const example = '{"text": "..."}';
  const fields = await readFields(req, res, { what: "the message", example });
  const hub = hubOf(app);
  const message = await messageFromPath(hub, url);
  checkPoster(message, readVisitor(req), "change");
  const text = checkField(fields, "text", TEXT_MAX);
  if (text === message.text) return sendJson(res, 200, message); // seed 002's FieldTracker
  const event = await hub.publish(ROOM_TOPIC, "message_updated", { message: message.id, text });
  if (!app.quiet) app.log(`message ${message.id} changed (event ${event.id})`);
  sendJson(res, 200, { ...message, text });
};

const deleteMessage: Handler = async (req, res, url, app) => {
  checkOrigin(req);
  const hub = hubOf(app);
  const message = await messageFromPath(hub, url);
  checkPoster(message, readVisitor(req), "delete");
  const event = await hub.publish(ROOM_TOPIC, "message_deleted", { message: message.id });
  if (!app.quiet) app.log(`message ${message.id} deleted (event ${event.id})`);
  res.writeHead(204).end();
};

// ─── The routes ──────────────────────────────────────────────────────────────

export const edits: Lesson = {
  install(app) {
    Object.assign(app.routes, {
      // `:id` matches any one segment; messageFromPath reads it from the path.
      "/room/messages/:id": { GET: getMessage, PUT: putMessage, DELETE: deleteMessage },
    });
  },
};
