/**
 * lessons/toast-marks.ts: the bookkeeping of the toasts (lessons/toasts.ts),
 * kept apart so that lesson reads as routes, streams and the middleware: the
 * read marks, the merge of a visitor's two subscriptions, and which visitors
 * this process remembers. Not a lesson of its own: no route.
 *
 * Why a read toast never comes back. The hub keeps only the last HUB_KEEP
 * events of each topic: call them the topic's window. A read mark for a
 * visitor's own toast is published after that toast, in the same topic, so the
 * toast leaves the window first. A broadcast is different: the toast is in
 * "toasts:everyone", its read mark in the visitor's own topic. For example, Ada
 * closes the broadcast "Coffee at 11", then the demo sends her HUB_KEEP toasts
 * of her own: her topic's window no longer holds that read mark, while
 * "toasts:everyone" still holds "Coffee at 11", so her next reload would show it again.
 *
 * So each read mark carries the ids of every toast the visitor has acknowledged
 * that the hub still keeps, and the newest mark alone says it all. The newest
 * mark itself stays in the window: at most TOASTS_UNREAD_MAX toasts can follow
 * it, because the next one past that bound makes room by marking the oldest
 * read, which writes a new mark (keepUnreadBound in lessons/toasts.ts).
 */

import { RequestError } from "../server.ts";
import type { HubEvent } from "./hub.ts";

/** Visitors this process remembers the toasts of: past this, the least recently seen idle goes. */
export const VISITORS_MAX = 10_000;

/** A "read" event's data: the toast acknowledged, and every one acknowledged that is still kept. */
export interface ReadMark {
  id: string;
  acknowledged: string[];
}

/** What the hub keeps for one visitor: its own topic, the broadcasts, and what it acknowledged. */
export interface Kept {
  own: HubEvent[];
  everyone: HubEvent[];
  acknowledged: Set<string>;
}

/** The toasts among a topic's events, oldest first (`Data`: what a toast event carries). */
export function toastsIn<Data>(events: HubEvent[]): Data[] {
  return events.filter((event) => event.type === "toast").map((event) => event.data as Data);
}

/** The ids a visitor acknowledged, from the read marks in its topic: each one's id and list. */
export function acknowledgedIn(own: HubEvent[]): Set<string> {
  const acknowledged = new Set<string>();
  for (const event of own) {
    if (event.type !== "read") continue;
    const mark = event.data as ReadMark;
    acknowledged.add(mark.id);
    for (const id of mark.acknowledged) acknowledged.add(id);
  }
  return acknowledged;
}

/** Adds one toast to `known.acknowledged`, and returns the read mark to publish for it. */
export function acknowledge(toastId: string, known: Kept): ReadMark {
  known.acknowledged.add(toastId);
  // Only ids the hub still keeps: the list stays as short as the window.
  const kept = toastsIn<{ id: string }>([...known.own, ...known.everyone]);
  const ids = new Set(kept.map((toast) => toast.id));
  return { id: toastId, acknowledged: [...known.acknowledged].filter((id) => ids.has(id)) };
}

/**
 * Yields from several subscriptions as their events come; ends when all of them
 * have. Not one for-await loop per subscription: the first loop would run until
 * its subscription ended, and the second would only start then. Instead each
 * subscription has one next() pending, and Promise.race takes whichever settles first.
 */
export async function* merge<T>(sources: AsyncGenerator<T>[]): AsyncGenerator<T> {
  const next = (source: AsyncGenerator<T>) => source.next().then((result) => ({ source, result }));
  const pending = new Map(sources.map((source) => [source, next(source)]));
  try {
    while (pending.size > 0) {
      const { source, result } = await Promise.race(pending.values());
      if (result.done) {
        pending.delete(source);
        continue;
      }
      pending.set(source, next(source)); // ask that one again, the others are still pending
      yield result.value;
    }
  } finally {
    // The stream's signal ends the next() calls still pending, and nobody awaits them now:
    // a catch that ignores what they settle with keeps Node from reporting (and, by
    // default, crashing on) an unhandled rejection.
    for (const waiting of pending.values()) waiting.catch(() => {});
  }
}

/**
 * The visitors this process remembers, least recently seen first (a Map keeps insertion
 * order), each with how many streams and WebSocket subscriptions follow its toasts now.
 * Every new cookie could be a new visitor, so they are bounded: past VISITORS_MAX, the
 * least recently seen visitor that nothing follows is forgotten, its toasts and read marks
 * with it (docs/toasts.md says what that visitor then sees). One that is followed is never
 * forgotten; when every one is, a newcomer gets a 503 until one leaves.
 */
export class Visitors {
  private following = new Map<string, number>();
  private said = false;
  /** Called with the visitor to forget, and with the one line that says the bound was hit. */
  private forget: (visitor: string) => void;
  private log: (line: string) => void;

  constructor(forget: (visitor: string) => void, log: (line: string) => void) {
    this.forget = forget;
    this.log = log;
  }

  /** Remembers the visitor as the most recent, making room if need be, or throws a 503. */
  seen(visitor: string): void {
    const follows = this.following.get(visitor);
    this.following.delete(visitor);
    this.following.set(visitor, follows ?? 0);
    if (follows !== undefined || this.following.size <= VISITORS_MAX) return;
    let idle = visitor; // the newcomer itself, when every visitor before it is followed
    for (const [name, count] of this.following) {
      if (count > 0) continue;
      idle = name; // the first one nothing follows: the least recently seen of them
      break;
    }
    if (!this.said) {
      this.log(`toasts: ${VISITORS_MAX} visitors remembered; from now on the least recently `
        + "seen idle one is forgotten (said once)");
      this.said = true;
    }
    if (idle === visitor) {
      this.following.delete(visitor);
      const sentence = `This server follows ${VISITORS_MAX} visitors' open pages already`;
      throw new RequestError(503, `${sentence}; try again later.`);
    }
    this.following.delete(idle);
    this.forget(idle);
  }

  /** One more stream or subscription follows the visitor's toasts: it is not forgotten. */
  follows(visitor: string): void {
    this.seen(visitor);
    this.following.set(visitor, this.following.get(visitor)! + 1);
  }

  left(visitor: string): void {
    const count = this.following.get(visitor);
    if (count !== undefined) this.following.set(visitor, count - 1);
  }
}
