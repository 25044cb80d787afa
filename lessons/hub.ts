/**
 * lessons/hub.ts: the hub, publish and subscribe, and nothing else.
 *
 * In "Writing a chat application in Django 4.2 using async StreamingHttpResponse,
 * Server-Sent Events and PostgreSQL LISTEN/NOTIFY", the room first asked the
 * database for news once per tab every few seconds. Here a POST publishes to a
 * hub, and every open stream is a subscriber the hub hands each event to, as
 * Channels' group_send does in "Django REST Framework and Channels". The room,
 * the toasts and the WebSocket talk to the `Hub` interface only: the in-memory
 * hub below is the default, and lessons/postgres.ts puts PostgreSQL behind it.
 *
 * Run it:    npx -y tsx server.ts       (no page of its own: the room uses it)
 * Then try:
 *   curl -N -H 'Last-Event-ID: 99' http://localhost:8000/room/stream
 *   names an id this hub never issued (it counts from 1 whenever the server starts),
 *   so the stream opens with `event: gap`, `data: {"after":99}`, then the messages
 *   kept (none yet on a fresh server), then the room's `event: presence`.
 */

import type { ServerResponse } from "node:http";
import { drainOrClose, RequestError, type App } from "../server.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

/** How many events the hub keeps per topic, for replay after a reconnect. */
export const HUB_KEEP = 100;
/** Events a subscriber may leave unread before it is dropped, rather than queue without bound. */
export const SUBSCRIBER_QUEUE_LIMIT = 1000;

// ─── The interface ───────────────────────────────────────────────────────────

/** One stored event: a room message, a toast, a read mark. What every transport receives. */
export interface HubEvent<Data = unknown> {
  topic: string; // "room:lobby", "toasts:<visitor>", "toasts:everyone"
  id: number; // increasing integers per topic, from 1
  type: string; // the SSE event name: "message", "message_updated", "toast", "read"
  data: Data;
  at: string; // ISO 8601, when it was published
}

/**
 * What a subscriber is told first when it missed events: the id it named is older
 * than what is kept, or one this hub never issued (a MemoryHub counts from 1 again
 * when its process restarts, so a reconnecting browser can name a bigger id).
 */
export interface HubGap {
  type: "gap";
  topic: string;
  after: number;
}

/**
 * The room (lessons/room.ts) uses publish, history and subscribe; the toasts
 * (lessons/toasts.ts) also forget a topic; the tests count subscribers to see a
 * stream reach the hub; close is for stopping.
 */
export interface Hub {
  /** Stores the event, hands it to every live subscriber of its topic, returns it with its id. */
  publish<Data>(topic: string, type: string, data: Data): Promise<HubEvent<Data>>;
  /** What is kept after `after` (all when omitted), oldest first, at most `limit` (the newest). */
  history(topic: string, options?: { after?: number; limit?: number }): Promise<HubEvent[]>;
  /**
   * First what is kept after `after` (a HubGap first when it cannot be exact), then live
   * events, until `signal` aborts. With `after` omitted: live events only.
   */
  subscribe(
    topic: string,
    options: { after?: number; signal: AbortSignal },
  ): AsyncGenerator<HubEvent | HubGap>;
  /**
   * Calls `listener` with each new event of a topic, at once, in id order, until the returned
   * function is called: to keep a copy (edits.ts's messages). No replay, no queue, not counted.
   */
  watch(topic: string, listener: (event: HubEvent) => void): () => void;
  /**
   * Runs `work` while no other work on the same topic and key runs, in any process sharing the
   * hub: what it reads through `hub` is fresh, what it publishes is stored before the next
   * starts, so a check and the publish it allows never interleave with another's (edits.ts).
   */
  exclusive<T>(topic: string, key: number, work: (hub: HubSection) => Promise<T>): Promise<T>;
  /** Live subscribers of a topic in this process. */
  subscribers(topic: string): number;
  /** Drops what is kept of a topic; its ids go on from where they were. */
  forget(topic: string): Promise<void>;
  close(): Promise<void>;
}

/** What exclusive work may do: read and publish, inside the lock. */
export type HubSection = Pick<Hub, "history" | "publish">;

/**
 * A gap is the one thing a subscription yields that has no id. `item is HubGap` is
 * a type predicate: where isGap(item) is true, TypeScript knows item is a HubGap.
 */
export function isGap(item: HubEvent | HubGap): item is HubGap {
  return !("id" in item);
}

/** Thrown by a subscription whose reader fell more than the queue limit behind: it was dropped. */
export class SlowSubscriberError extends Error {
  constructor(topic: string, limit: number) {
    super(`a subscriber of ${topic} left ${limit} events unread and was dropped`);
  }
}

// ─── One hub per server ──────────────────────────────────────────────────────
//
// One process can hold several apps (the tests start many; a restart in a test
// makes a new one), so state lives per app, not in a module-level variable: a
// WeakMap keyed by the app, which lets an app that is gone take its state along.
// Every later lesson keeps its own state the same way.

const hubs = new WeakMap<App, Hub>();

/**
 * The app's one hub: a MemoryHub, made at the first call, unless the
 * PostgreSQL lesson (--database) or a test chose one first. Lessons ask for it
 * when they serve, not when they install, so that a later lesson may choose.
 */
export function hubOf(app: App): Hub {
  const chosen = hubs.get(app);
  if (chosen) return chosen;
  const hub = new MemoryHub({ log: app.log });
  chooseHub(app, hub);
  // Made here, so closed here on stop. Not awaited: a MemoryHub closes at once.
  app.onStop(() => {
    hub.close();
  });
  return hub;
}

/** Makes `hub` the app's one hub; whoever made it closes it (a test keeps one across restarts). */
export function chooseHub(app: App, hub: Hub): void {
  if (hubs.has(app)) throw new Error("this app's hub is chosen already: choose before serving");
  hubs.set(app, hub);
}

// ─── The in-memory hub ───────────────────────────────────────────────────────

/** One subscription's mailbox: what was published to it and not yet read, and its reader. */
interface Subscriber {
  queue: HubEvent[];
  dropped: boolean;
  wake: () => void;
}

interface Topic {
  lastId: number;
  kept: HubEvent[];
  subscribers: Set<Subscriber>;
  watchers: Set<(event: HubEvent) => void>;
}

export interface MemoryHubOptions {
  keep?: number;
  queueLimit?: number;
  /** Where the one line about a dropped subscriber goes. */
  log?: (line: string) => void;
}

/**
 * The hub of one process: each topic keeps its last events in an array, and
 * every subscriber has a queue. Its ids start again from 1 when the process does.
 */
export class MemoryHub implements Hub {
  private topics = new Map<string, Topic>();
  private keep: number;
  private queueLimit: number;
  private log: (line: string) => void;
  private closed = false;
  /** Each key's newest exclusive work, settled or not: the next waits for it (see exclusive). */
  private sections = new Map<string, Promise<unknown>>();

  constructor(options: MemoryHubOptions = {}) {
    this.keep = options.keep ?? HUB_KEEP;
    this.queueLimit = options.queueLimit ?? SUBSCRIBER_QUEUE_LIMIT;
    this.log = options.log ?? (() => {});
  }

  private topic(name: string): Topic {
    let topic = this.topics.get(name);
    if (!topic) {
      topic = { lastId: 0, kept: [], subscribers: new Set(), watchers: new Set() };
      this.topics.set(name, topic);
    }
    return topic;
  }

  // A topic nobody follows or watches that keeps nothing goes: else each fresh visitor whose
  // toasts were followed once would leave one behind for good. (Not a newer one of that name.)
  private dropIfEmpty(name: string, topic: Topic) {
    const empty = topic.subscribers.size + topic.watchers.size + topic.kept.length === 0;
    if (empty && this.topics.get(name) === topic) this.topics.delete(name);
  }

  /** Whether this hub holds anything of a topic (the PostgreSQL hub asks before catching up). */
  holds(topicName: string): boolean {
    return this.topics.has(topicName);
  }

  /**
   * Async only because the Hub interface is (the PostgreSQL hub waits for the
   * database): this one awaits nothing, so the event is stored and queued for
   * every subscriber before publish returns.
   */
  async publish<Data>(topic: string, type: string, data: Data): Promise<HubEvent<Data>> {
    // Ctrl-C closes the hub before the last requests are answered: they hear why, as a 503.
    if (this.closed) throw new RequestError(503, "This server is stopping; try again in a moment.");
    const at = new Date().toISOString();
    const event: HubEvent<Data> = { topic, id: this.lastId(topic) + 1, type, data, at };
    this.relay(event);
    return event;
  }

  /**
   * Keeps and delivers an event whose id is already decided: by publish, or,
   * for the PostgreSQL hub, by the database. Ids only go up: an older one is ignored.
   */
  relay(event: HubEvent): void {
    const topic = this.topic(event.topic);
    if (event.id <= topic.lastId) return;
    topic.lastId = event.id;
    topic.kept.push(event);
    if (topic.kept.length > this.keep) topic.kept.shift();
    for (const watcher of topic.watchers) watcher(event);
    for (const subscriber of topic.subscribers) this.deliver(topic, subscriber, event);
  }

  watch(topicName: string, listener: (event: HubEvent) => void): () => void {
    const topic = this.topic(topicName);
    topic.watchers.add(listener);
    return () => {
      topic.watchers.delete(listener);
      this.dropIfEmpty(topicName, topic);
    };
  }

  /** One process takes turns without a database: each key's work waits for the one before. */
  async exclusive<T>(topic: string, key: number, work: (hub: HubSection) => Promise<T>) {
    const name = `${topic} ${key}`;
    const mine = (this.sections.get(name) ?? Promise.resolve()).then(() => work(this));
    const settled = mine.catch(() => {});
    this.sections.set(name, settled);
    try {
      return await mine;
    } finally {
      if (this.sections.get(name) === settled) this.sections.delete(name);
    }
  }

  /** The newest id of a topic, 0 before its first event. */
  lastId(topicName: string): number {
    return this.topics.get(topicName)?.lastId ?? 0;
  }

  private deliver(topic: Topic, subscriber: Subscriber, event: HubEvent) {
    if (subscriber.queue.length >= this.queueLimit) {
      // Drop it now and free its queue: one reader that stopped must not hold memory for all.
      topic.subscribers.delete(subscriber);
      subscriber.queue = [];
      subscriber.dropped = true;
      this.log(`hub: dropped a subscriber of ${event.topic}: ${this.queueLimit} events unread`);
    } else {
      subscriber.queue.push(event);
    }
    subscriber.wake();
  }

  async history(topicName: string, options: { after?: number; limit?: number } = {}) {
    const { after = 0, limit = this.keep } = options;
    const kept = this.topics.get(topicName)?.kept ?? [];
    const newer = kept.filter((event) => event.id > after);
    // Not slice(-0): that is slice(0), the whole array, where a limit of 0 means none.
    return limit > 0 ? newer.slice(-limit) : [];
  }

  /**
   * Joins the topic's subscribers and copies the replay in one step, before the
   * first yield: from then on every new event goes to the queue only, so
   * replay and live events meet with no gap and no duplicate, even though each
   * yield waits for the reader and events are published meanwhile. Like every
   * async generator it starts at the first next(), and its `finally` removes
   * the subscriber the moment it returns.
   */
  async *subscribe(
    topicName: string,
    { after, signal }: { after?: number; signal: AbortSignal },
  ): AsyncGenerator<HubEvent | HubGap> {
    if (this.closed || signal.aborted) return;
    const topic = this.topic(topicName);
    const subscriber: Subscriber = { queue: [], dropped: false, wake: () => {} };
    const leave = () => subscriber.wake();
    topic.subscribers.add(subscriber);
    signal.addEventListener("abort", leave);
    try {
      if (after !== undefined) {
        // Exact when `after` was issued here and every event after it is still kept.
        const oldestKept = topic.kept[0]?.id ?? topic.lastId + 1;
        const exact = after <= topic.lastId && after >= oldestKept - 1;
        // After a gap the subscriber starts over from what is kept, whatever id it named.
        const replay = exact ? topic.kept.filter((event) => event.id > after) : [...topic.kept];
        if (!exact) yield { type: "gap", topic: topicName, after };
        for (const event of replay) {
          if (signal.aborted) return;
          yield event;
        }
      }
      for (;;) {
        if (subscriber.dropped) throw new SlowSubscriberError(topicName, this.queueLimit);
        if (signal.aborted || this.closed) return;
        const event = subscriber.queue.shift();
        if (event) {
          yield event;
          continue;
        }
        // Sleeps until deliver, close or an abort calls wake: as in server.ts's countdown,
        // the Promise's resolve is kept where they can call it.
        await new Promise<void>((resolve) => (subscriber.wake = resolve));
      }
    } finally {
      topic.subscribers.delete(subscriber);
      signal.removeEventListener("abort", leave);
      this.dropIfEmpty(topicName, topic);
    }
  }

  subscribers(topicName: string): number {
    return this.topics.get(topicName)?.subscribers.size ?? 0;
  }

  /** A topic nobody follows goes entirely; a followed one keeps its last id, so no id repeats. */
  async forget(topicName: string): Promise<void> {
    const topic = this.topics.get(topicName);
    if (!topic) return;
    if (topic.subscribers.size === 0 && topic.watchers.size === 0) this.topics.delete(topicName);
    else topic.kept = [];
  }

  /** Ends every subscription (their generators return) and refuses further publishing. */
  async close(): Promise<void> {
    this.closed = true;
    for (const topic of this.topics.values()) {
      for (const subscriber of topic.subscribers) subscriber.wake();
    }
  }
}

// ─── The streams that follow the hub ─────────────────────────────────────────

/**
 * A comment line, which EventSource ignores, like lesson 1's HEARTBEAT: its own
 * words, because these streams (the room's, the toasts') are not counting down.
 */
const STILL_HERE = ": still here\n\n";

/**
 * The SSE streams of one kind open in this process (the room's, the toasts'),
 * and the one timer that gives them a heartbeat: one timer for all of them,
 * not one per stream. It stops when the last stream closes. Each beat goes to
 * every stream, even one that was just sent an event: skipping those would let
 * a stream written to just after a beat wait two intervals for its next byte
 * (the room's presence line made its first heartbeat come that late), and a
 * comment line is cheap.
 */
export class OpenStreams {
  protected streams = new Set<ServerResponse>();
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private heartbeat: number;

  constructor(heartbeat: number) {
    this.heartbeat = heartbeat;
  }

  get size(): number {
    return this.streams.size;
  }

  protected open(res: ServerResponse) {
    this.streams.add(res);
    // `??=` assigns only when the left side is undefined: the first stream starts the timer.
    // --heartbeat 0 sends none: no timer at all.
    if (this.heartbeat > 0) this.heartbeatTimer ??= setInterval(() => this.beat(), this.heartbeat);
  }

  protected close(res: ServerResponse) {
    this.streams.delete(res);
    if (this.streams.size > 0) return;
    // Nobody left: no timer stays behind.
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
  }

  /** Ends every stream cleanly (on Ctrl-C); browsers reconnect with the last id they saw. */
  endAll(): number {
    const count = this.streams.size;
    for (const res of this.streams) res.end();
    return count;
  }

  /**
   * Writes what `source` yields to one stream, waiting for a slow reader to
   * drain, until the client leaves (its "close" aborts the source's signal),
   * the server stops, or the hub drops a reader that fell too far behind.
   * `opened` runs once the stream counts among the open ones, so that its log
   * line can say how many are open. Says how many events went out, and why it ended.
   */
  async pump(
    res: ServerResponse,
    source: (signal: AbortSignal) => AsyncIterable<string>,
    opened: () => void,
  ): Promise<{ sent: number; why: string }> {
    const left = new AbortController();
    const leave = () => left.abort();
    res.on("close", leave);
    this.open(res);
    opened();
    let why = "the client left";
    let sent = 0;
    try {
      for await (const message of source(left.signal)) {
        sent++;
        if (!res.write(message)) await drainOrClose(res);
      }
      if (res.writableEnded) why = "the server is stopping";
    } catch (error) {
      if (!(error instanceof SlowSubscriberError)) throw error;
      why = "too slow to read, cut";
      // Destroyed, not ended: ending would first send all that is still buffered to a
      // reader that could not keep up. Either way its browser reconnects with the last
      // id it read, and is replayed the rest (or told of a gap).
      res.destroy();
    } finally {
      res.off("close", leave);
      this.close(res);
      if (!res.destroyed) res.end();
    }
    return { sent, why };
  }

  private beat() {
    // A stream waiting for a slow reader to drain gets nothing more to hold.
    for (const res of this.streams) if (!res.writableNeedDrain) res.write(STILL_HERE);
  }
}
