/**
 * lessons/toast-marks.ts: the pure helpers of the toasts (lessons/toasts.ts),
 * kept apart so that lesson reads as routes, streams and the middleware: the
 * bookkeeping of read marks, and the merge of a visitor's two subscriptions.
 * Not a lesson of its own: no route and no state.
 *
 * Why a read toast never comes back. The in-memory hub keeps only the last
 * HUB_KEEP events of each topic. A read mark for a visitor's own toast comes
 * after that toast in the same topic, so the toast always leaves the window
 * first. But a read mark for a broadcast sits in the visitor's topic while the
 * broadcast sits in "toasts:everyone": enough later events for the visitor
 * would push the mark out while the broadcast is still kept, and it would show
 * again. So each read mark carries the ids of every toast the visitor has
 * acknowledged that the hub still keeps, and the newest mark alone says it
 * all. It stays in the window because at most TOASTS_UNREAD_MAX toasts can
 * follow it: the next one past that bound makes room by marking the oldest
 * read, which writes a new mark (see keepUnreadBound in lessons/toasts.ts).
 */

import type { HubEvent } from "./hub.ts";

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

/** The toasts among a topic's events, oldest first. */
export function toastsIn<Toast>(events: HubEvent[]): Toast[] {
  return events.filter((event) => event.type === "toast").map((event) => event.data as Toast);
}

/** Every toast id the read marks kept in a visitor's topic name: each one's own, and each list. */
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

/** Records one more acknowledged toast, and returns the read mark that says so. */
export function readMark(toastId: string, known: Kept): ReadMark {
  known.acknowledged.add(toastId);
  // Only ids the hub still keeps: the list stays as short as the window.
  const kept = toastsIn<{ id: string }>([...known.own, ...known.everyone]);
  const ids = new Set(kept.map((toast) => toast.id));
  return { id: toastId, acknowledged: [...known.acknowledged].filter((id) => ids.has(id)) };
}

/** Yields from several subscriptions as their events come; ends when all of them have. */
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
      pending.set(source, next(source));
      yield result.value;
    }
  } finally {
    // The stream's signal ends the waits still pending; what they settle with is no longer wanted.
    for (const waiting of pending.values()) waiting.catch(() => {});
  }
}
