/**
 * lessons/hub.ts: the hub, publish and subscribe, and nothing else.
 *
 * Seed 003's room asked the database for news once per tab every few seconds.
 * Here a POST publishes to a hub, and every open stream is a subscriber the
 * hub hands each event to. The room, the toasts and the WebSocket groups talk
 * to the `Hub` interface only: the in-memory hub below is the default, and
 * lessons/postgres.ts puts PostgreSQL behind the same interface.
 *
 * What to try: nothing here has a page of its own; lessons/room.ts is the
 * first lesson that uses it. `hubOf(app)` is how every lesson finds the hub.
 */

import type { ServerResponse } from "node:http";
import { drainOrClose, type App } from "../server.ts";

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

/** Yielded before events when `after` is older than what is kept, or an id never issued. */
export interface HubGap {
  type: "gap";
  topic: string;
  after: number;
}

export interface Hub {
  /** Stores the event, delivers it to every live subscriber of the topic, returns it with its id. */
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
  /** Live subscribers of a topic in this process. */
  subscribers(topic: string): number;
  /** Drops what is kept of a topic; its ids go on from where they were. */
  forget(topic: string): Promise<void>;
  close(): Promise<void>;
}

/** A gap is the one thing a subscription yields that has no id. */
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

const hubs = new WeakMap<App, Hub>();

/**
 * The app's one hub: a MemoryHub, made at the first call, unless the
 * PostgreSQL lesson (--database) or a test chose one first. Lessons ask for it
 * when they serve, not when they install, so that a later lesson may choose.
 */
export function hubOf(app: App): Hub {
  let hub = hubs.get(app);
  if (!hub) {
    chooseHub(app, (hub = new MemoryHub({ log: app.log })));
    app.onStop(() => void hub!.close());
  }
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
}

export interface MemoryHubOptions {
  keep?: number;
  queueLimit?: number;
  /** Where the one line about a dropped subscriber goes. */
  log?: (line: string) => void;
}

/**
 * The hub of one process: each topic keeps its last events in an array, and
 * every subscriber has a queue. Ids start again from 1 when the process does,
 * which is why a reconnect can name an id this hub never issued.
 */
export class MemoryHub implements Hub {
  private topics = new Map<string, Topic>();
  private keep: number;
  private queueLimit: number;
  private log: (line: string) => void;
  private closed = false;

  constructor(options: MemoryHubOptions = {}) {
    this.keep = options.keep ?? HUB_KEEP;
    this.queueLimit = options.queueLimit ?? SUBSCRIBER_QUEUE_LIMIT;
    this.log = options.log ?? (() => {});
  }

  private topic(name: string): Topic {
    let topic = this.topics.get(name);
    if (!topic) this.topics.set(name, (topic = { lastId: 0, kept: [], subscribers: new Set() }));
    return topic;
  }

  /** Synchronous up to its return: stored and queued for every subscriber before anyone awaits. */
  async publish<Data>(topic: string, type: string, data: Data): Promise<HubEvent<Data>> {
    if (this.closed) throw new Error("the hub is closed");
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
    for (const subscriber of topic.subscribers) this.deliver(topic, subscriber, event);
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
    return limit > 0 ? newer.slice(-limit) : [];
  }

  /**
   * Registers the subscriber, then reads what is kept, in the same turn of the
   * event loop: nothing can be published in between, so replay and live
   * events meet with no gap and no duplicate (the id check below guards the
   * seam anyway). Like every async generator it starts at the first next(),
   * and its `finally` removes the subscriber the moment it returns.
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
      // The newest id this subscriber has: live events up to it are already known.
      let lastId = after ?? topic.lastId;
      if (after !== undefined) {
        const oldestKept = topic.kept[0]?.id ?? topic.lastId + 1;
        const exact = after <= topic.lastId && after >= oldestKept - 1;
        const replay = exact ? topic.kept.filter((event) => event.id > after) : [...topic.kept];
        // After a gap the subscriber starts over from what is kept, whatever id it named.
        if (!exact) lastId = oldestKept - 1;
        if (!exact) yield { type: "gap", topic: topicName, after };
        for (const event of replay) {
          if (signal.aborted) return;
          yield event;
          lastId = event.id;
        }
      }
      for (;;) {
        if (subscriber.dropped) throw new SlowSubscriberError(topicName, this.queueLimit);
        if (signal.aborted || this.closed) return;
        const event = subscriber.queue.shift();
        if (!event) {
          await new Promise<void>((resolve) => (subscriber.wake = resolve));
          continue;
        }
        if (event.id <= lastId) continue;
        lastId = event.id;
        yield event;
      }
    } finally {
      topic.subscribers.delete(subscriber);
      signal.removeEventListener("abort", leave);
    }
  }

  subscribers(topicName: string): number {
    return this.topics.get(topicName)?.subscribers.size ?? 0;
  }

  /** A topic nobody follows goes entirely; a followed one keeps its last id, so no id repeats. */
  async forget(topicName: string): Promise<void> {
    const topic = this.topics.get(topicName);
    if (!topic) return;
    if (topic.subscribers.size === 0) this.topics.delete(topicName);
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

/** The heartbeat of the room's and the toasts' streams: a comment, which EventSource ignores. */
export const STILL_HERE = ": still here\n\n";

/**
 * The SSE streams of one kind open in this process (the room's, the toasts'),
 * and the one timer that gives the silent ones a heartbeat: one timer for all
 * of them, not one per stream. It stops when the last stream closes.
 */
export class OpenStreams {
  /** Each open stream: whether it wrote since the last beat, and the head count it was told. */
  protected streams = new Map<ServerResponse, { wrote: boolean; told: number }>();
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private heartbeat: number;

  constructor(heartbeat: number) {
    this.heartbeat = heartbeat;
  }

  get size(): number {
    return this.streams.size;
  }

  protected open(res: ServerResponse) {
    this.streams.set(res, { wrote: false, told: 0 });
    this.heartbeatTimer ??= setInterval(() => this.beat(), this.heartbeat);
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
    for (const res of this.streams.keys()) res.end();
    return count;
  }

  /**
   * Writes what `source` yields to one stream, waiting for a slow reader to
   * drain, until the client leaves (its "close" aborts the source's signal),
   * the server stops, or the hub drops a reader that fell too far behind: that
   * stream is cut, not ended, so its browser reconnects with the last id it
   * read and is replayed the rest. Says how many events went out, and why it ended.
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
        const stream = this.streams.get(res);
        if (stream) stream.wrote = true;
        sent++;
        if (!res.write(message)) await drainOrClose(res);
      }
      if (res.writableEnded) why = "the server is stopping";
    } catch (error) {
      if (!(error instanceof SlowSubscriberError)) throw error;
      why = "too slow to read, cut";
      res.destroy();
    } finally {
      res.off("close", leave);
      this.close(res);
      if (!res.destroyed) res.end();
    }
    return { sent, why };
  }

  private beat() {
    for (const [res, stream] of this.streams) {
      // A stream waiting for a slow reader to drain gets nothing more to hold.
      if (!stream.wrote && !res.writableNeedDrain) res.write(STILL_HERE);
      stream.wrote = false;
    }
  }
}
