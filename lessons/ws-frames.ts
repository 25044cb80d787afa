/**
 * lessons/ws-frames.ts: the frames a WebSocket client sends to lessons/ws.ts,
 * read and checked, kept apart so that lesson reads as the socket's life:
 * upgrade, subscribe, relay, close. Not a lesson of its own: no route.
 *
 * Each frame is one JSON object: `{"object_type": "room", "id": "lobby"}` (with
 * `"after": 41` to resume), `{"object_type": "message", "id": 42}`,
 * `{"object_type": "toasts", "id": "<public visitor id>"}`, or
 * `{"unsubscribe": {...}}` with one of those. A visitor's public id is the
 * `poster` of each message it posted (lessons/http.ts makes it from the
 * cookie). Any frame may add `"request_id": "r1"`, which its reply repeats. A
 * mistake gets an ERROR with one sentence, never a closed socket: only a flood does.
 */

import { RequestError, wholeNumber } from "../server.ts";
import { isObject } from "./http.ts";
import { MESSAGE_ID_RANGE } from "./room.ts";

/** A client's `request_id`, echoed in the reply: a string this long at most, or a number. */
const REQUEST_ID_MAX = 100;

/** What a client may follow; `kind` says which, and with it, the type of `id`. */
export type Target =
  | { kind: "room"; id: "lobby"; after?: number }
  | { kind: "message"; id: number }
  | { kind: "toasts"; id: string };
/** A client's name for one of its frames: whatever it chose, repeated in the reply. */
export type Id = string | number;

/** "room lobby", "message 42": names a subscription in sentences, in the log and in its Map. */
export const keyOf = (target: Target) => `${target.kind} ${target.id}`;
/** What SUBSCRIBED and UNSUBSCRIBED answer with: the frame's own words. */
export const replyOf = (target: Target) => ({ object_type: target.kind, id: target.id });

const EXAMPLE = '{"object_type": "room", "id": "lobby"}';

/** One frame's JSON object, or a RequestError whose sentence the ERROR reply carries. */
export function parseFrame(text: string | undefined): Record<string, unknown> {
  if (text === undefined) throw new RequestError(400, "Send text frames of JSON, not binary ones.");
  let frame: unknown;
  try {
    frame = JSON.parse(text);
  } catch {
    throw new RequestError(400, `The frame is not JSON; send ${EXAMPLE}.`);
  }
  if (isObject(frame)) return frame;
  throw new RequestError(400, `The frame must be one JSON object, such as ${EXAMPLE}.`);
}

export function readRequestId({ request_id: id }: Record<string, unknown>): Id | undefined {
  const fits = typeof id === "string" ? id.length <= REQUEST_ID_MAX : Number.isFinite(id);
  if (id === undefined || fits) return id as Id | undefined;
  const most = `at most ${REQUEST_ID_MAX} characters`;
  throw new RequestError(400, `request_id must be a string of ${most}, or a number.`);
}

/** A subscription, or `{"unsubscribe": ...}` with one. */
export function readRequest(frame: Record<string, unknown>): {
  unsubscribe: boolean;
  target: Target;
} {
  if (!("unsubscribe" in frame)) return { unsubscribe: false, target: readSubscription(frame) };
  if (!isObject(frame.unsubscribe)) {
    const example = `{"unsubscribe": ${EXAMPLE}}`;
    throw new RequestError(400, `unsubscribe takes what was subscribed to: ${example}.`);
  }
  return { unsubscribe: true, target: readSubscription(frame.unsubscribe) };
}

/**
 * A number in a frame, checked by lesson 1's wholeNumber so a bad one gets
 * the same sentence as in a query. wholeNumber reads text: a JSON number goes
 * in as its digits; anything else fails, the string "42" too (ids are numbers).
 */
function frameNumber(name: string, value: unknown): number {
  return wholeNumber(name, typeof value === "number" ? String(value) : "", MESSAGE_ID_RANGE);
}

function readSubscription(frame: Record<string, unknown>): Target {
  const { object_type: kind, id, after } = frame;
  if (id === undefined || id === null || id === "") {
    const ids = 'the room is "lobby", a message is its number, toasts are your visitor id';
    throw new RequestError(400, `id is missing: ${ids}.`);
  }
  switch (kind) {
    case "room":
      if (id !== "lobby") throw new RequestError(400, 'There is one room, and its id is "lobby".');
      return { kind, id, after: after === undefined ? undefined : frameNumber("after", after) };
    case "message":
      return { kind, id: frameNumber("A message id", id) };
    case "toasts":
      if (typeof id !== "string") {
        throw new RequestError(400, "The id of toasts is a visitor id, a string.");
      }
      return { kind, id };
    default:
      throw new RequestError(400, "object_type must be room, message or toasts.");
  }
}
