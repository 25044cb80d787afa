/**
 * server.ts: a countdown streamed to every open tab by ONE process.
 *
 * The page at / counts down from 100 to "Blastoff!", one number a second. The
 * numbers arrive over Server-Sent Events from an `async function*` that awaits
 * its sleep, so while one tab's countdown waits for its next tick this process
 * is free to serve every other tab. Compare blocking-server.ts, where the same
 * countdown holds a whole worker process for as long as the tab stays open.
 *
 * Run it:    npx tsx server.ts          (or: node server.ts on Node 22.18+ / 24)
 * Then try:
 *   - open http://localhost:8000/ in a tab, then open some more: all of them count;
 *   - curl -N http://localhost:8000/sse/ shows the raw events as they are sent;
 *   - press Ctrl-C and start the server again: open tabs carry on where they were;
 *   - http://localhost:8000/?from=10&interval=200 makes a short, fast countdown.
 */

import cluster from "node:cluster";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import net from "node:net";
import os from "node:os";
import { readFileSync, realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { setTimeout as pause } from "node:timers/promises";
import { parseArgs, type ParseArgsConfig } from "node:util";
// Types only: the postgres package itself is loaded with await import() when --database is given.
import type { Sql } from "postgres";

// ─── Settings ────────────────────────────────────────────────────────────────

export const DEFAULT_PORT = 8000;
/** "localhost" means both loopback addresses, 127.0.0.1 and ::1 (see listen()). */
export const DEFAULT_HOST = "localhost";

/** Where a countdown starts and how long a tick lasts, unless ?from= and ?interval= say otherwise. */
export const COUNTDOWN_FROM = 100;
export const TICK_INTERVAL_MS = 1000;
export const FROM_RANGE = { min: 0, max: 100_000 };
export const INTERVAL_RANGE = { min: 10, max: 60_000 };

/** A stream that has been silent this long gets a comment line, so proxies do not drop it. */
export const HEARTBEAT_MS = 15_000;

/** On Ctrl-C, how long open connections get to close before the process exits anyway. */
const SHUTDOWN_GRACE_MS = 1000;

/** How many processes serve the port: one, unless --workers says more (see "Several processes"). */
export const DEFAULT_WORKERS = 1;
export const WORKERS_RANGE = { min: 1, max: 64 };

// ─── The stream ──────────────────────────────────────────────────────────────
//
// One countdown is one async generator. `await sleep(...)` hands the thread
// back to the event loop, so a process holds thousands of these at once: each
// is a paused function plus one timer, a few kilobytes.

/**
 * Yields the SSE messages of one countdown: `from`, `from - 1`, ... 0.
 * Tick k is due at start + k × interval, not "interval after the last write",
 * so the countdown ends on time however long the writes take.
 * When the client hangs up, the sleep in progress ends at once, the generator
 * returns, and its `finally` leaves no timer or listener behind.
 */
export async function* countdown(from: number, interval: number, res: ServerResponse, heartbeat = HEARTBEAT_MS) {
  // One "close" listener for the whole stream, one timer per sleep: the leanest
  // bookkeeping that still stops a countdown the moment its client leaves.
  let timer: NodeJS.Timeout | undefined;
  let wake = () => {};
  const hangUp = () => {
    clearTimeout(timer);
    wake();
  };
  // Over when the client left, or when the server ended the stream (on Ctrl-C).
  const over = () => res.destroyed || res.writableEnded;
  // A stream that ended while we were writing (not sleeping) must not sleep a whole tick more.
  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      wake = resolve;
      timer = setTimeout(resolve, over() ? 0 : ms);
    });
  res.on("close", hangUp);

  try {
    const start = performance.now();
    for (let i = from; i >= 0; i--) {
      yield countdownEvent(i);
      if (i === 0) return;
      const due = start + (from - i + 1) * interval;
      while (due - performance.now() > heartbeat) {
        await sleep(heartbeat);
        if (over()) return;
        yield HEARTBEAT;
      }
      await sleep(due - performance.now());
      if (over()) return;
    }
  } finally {
    clearTimeout(timer);
    res.off("close", hangUp);
  }
}

// ─── The SSE wire format ─────────────────────────────────────────────────────

export const SSE_HEADERS = {
  // The browser's EventSource only accepts this type; the charset spares it a guess.
  "Content-Type": "text/event-stream; charset=utf-8",
  // Every event is news: no cache may keep or replay it, no proxy may recompress it.
  "Cache-Control": "no-cache, no-transform",
  // nginx buffers responses by default, which would hold back events until the end.
  "X-Accel-Buffering": "no",
};

/** One SSE message: `event:` names it, `id:` lets a reconnecting browser say where it was. */
export function formatEvent(event: string, data: string, id?: number): string {
  const idLine = id === undefined ? "" : `id: ${id}\n`;
  return `event: ${event}\n${idLine}data: ${data}\n\n`;
}

/** The countdown's own event: `event: i`, `id: 7`, `data: {"i": 7}`. */
export function countdownEvent(i: number): string {
  return formatEvent("i", `{"i": ${i}}`, i);
}

/** Which process serves this stream and how many streams it has open now. */
export function serverEvent(pid: number, streams: number): string {
  return formatEvent("server", `{"pid": ${pid}, "streams": ${streams}}`);
}

/** A line starting with ":" is a comment: EventSource ignores it, proxies see traffic. */
export const HEARTBEAT = ": still counting\n\n";

// ─── The page ────────────────────────────────────────────────────────────────
//
// One constant, served as is: nothing from the request is ever put into it.
// The script passes the page's own query (?from=, ?interval=) on to the stream.

export const PAGE = `<!doctype html>
<html lang="en">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Countdown</title>
<style>
  body { margin: 0; min-height: 100vh; display: grid; place-content: center; gap: 0.5rem;
         text-align: center; font-family: system-ui, sans-serif; background: #10131a; color: #e8e8e8; }
  h1 { margin: 0; font-weight: 400; font-size: 1.5rem; color: #9aa3b2; }
  #countdown { font-size: min(40vw, 14rem); line-height: 1; font-variant-numeric: tabular-nums; }
  #state { font-size: 1.25rem; margin: 0; }
  #state[data-state="streaming"] { color: #6fdc8c; }
  #state[data-state="reconnecting"] { color: #f1c21b; }
  #state[data-state="finished"] { color: #78a9ff; }
  #server, #tabs { margin: 0; color: #9aa3b2; }
  #tabs small { display: block; max-width: 34rem; margin: 0.25rem auto 0; }
  a { color: #78a9ff; }
</style>
<h1>Countdown</h1>
<div id="countdown">&hellip;</div>
<p id="state" data-state="connecting">connecting</p>
<p id="server">waiting for the server</p>
<p id="tabs" hidden><a id="another" target="_blank" href="/">Open another tab</a>
  <small>A browser opens at most 6 connections to one host name, and every tab here keeps one open.
  So each new tab gets a name of its own (tab2.localhost, tab3.localhost, ...): all of them lead back to this server.</small></p>
<script type="module">
  const countdown = document.getElementById("countdown");
  const state = document.getElementById("state");
  const server = document.getElementById("server");
  const another = document.getElementById("another");

  function show(name) {
    state.dataset.state = name;
    state.textContent = name;
  }

  const source = new EventSource("/sse/" + location.search);
  source.onopen = () => show("streaming");
  // After a dropped connection EventSource retries on its own and sends the last
  // id it saw, so the countdown resumes; a 204 answer closes it for good.
  source.onerror = () => show(source.readyState === EventSource.CLOSED ? "finished" : "reconnecting");
  source.addEventListener("i", (event) => {
    const { i } = JSON.parse(event.data);
    countdown.textContent = i > 0 ? i : "Blastoff!";
    if (i === 0) {
      source.close();
      show("finished");
    }
  });

  // "Open another tab" goes to a fresh *.localhost name, which browsers resolve
  // to this machine; shown only when this page itself was opened on loopback.
  const onLoopback = /(^|\\.)localhost$|^127\\.|^\\[::1\\]$/.test(location.hostname);
  let nextTab = Number(/^tab(\\d+)\\./.exec(location.hostname)?.[1] ?? 1) + 1;
  function updateLink() {
    const port = location.port ? ":" + location.port : "";
    another.href = location.protocol + "//tab" + nextTab + ".localhost" + port + "/" + location.search;
    another.textContent = "Open another tab (tab" + nextTab + ".localhost)";
  }
  if (onLoopback) {
    document.getElementById("tabs").hidden = false;
    updateLink();
    another.addEventListener("click", () => setTimeout(() => { nextTab += 1; updateLink(); }));
  }

  source.addEventListener("server", (event) => {
    const { pid, streams } = JSON.parse(event.data);
    server.textContent = "served by pid " + pid + ", which has " + streams + (streams === 1 ? " stream" : " streams") + " open";
    if (streams + 1 > nextTab) {
      nextTab = streams + 1;
      if (onLoopback) updateLink();
    }
  });
</script>
</html>
`;

// ─── Handlers ────────────────────────────────────────────────────────────────

/** What every handler gets besides the request: the server's open streams and its log. */
export interface ServerState {
  streams: Set<ServerResponse>;
  log: (line: string) => void;
  quiet: boolean;
  heartbeat: number;
  /** Lesson 3: where the room's messages are published, and the room's open streams in this process. */
  hub: Hub;
  room: RoomStreams;
}

export type Handler = (req: IncomingMessage, res: ServerResponse, url: URL, state: ServerState) => void | Promise<void>;

/** A user's mistake, answered with one sentence and a 4xx status. */
export class RequestError extends Error {
  status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

/** Parses a whole number within bounds, or throws a 400 that names the parameter and its range. */
export function wholeNumber(name: string, text: string, range: { min: number; max: number }): number {
  const value = /^\d{1,15}$/.test(text) ? Number(text) : NaN;
  if (!(value >= range.min && value <= range.max)) {
    throw new RequestError(400, `${name} must be a whole number from ${range.min} to ${range.max}.`);
  }
  return value;
}

/**
 * The countdown a request asks for: ?from= and ?interval=, and, when a browser
 * reconnects, the Last-Event-ID it sends, which resumes the countdown at the
 * next number. `from` is -1 when the countdown already reached 0.
 */
export function readCountdownOptions(req: IncomingMessage, url: URL): { from: number; interval: number } {
  const fromParam = url.searchParams.get("from");
  const intervalParam = url.searchParams.get("interval");
  let from = fromParam === null ? COUNTDOWN_FROM : wholeNumber("from", fromParam, FROM_RANGE);
  const interval = intervalParam === null ? TICK_INTERVAL_MS : wholeNumber("interval", intervalParam, INTERVAL_RANGE);
  const lastEventId = req.headers["last-event-id"];
  if (typeof lastEventId === "string" && lastEventId !== "") from = wholeNumber("Last-Event-ID", lastEventId, FROM_RANGE) - 1;
  return { from, interval };
}

export const servePage: Handler = (req, res, url) => {
  readCountdownOptions(req, url); // a bad ?from= fails here, where the reader can see it
  res.writeHead(200, {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Length": Buffer.byteLength(PAGE),
  });
  res.end(PAGE);
};

/** Streams one countdown to one client, for as long as its tab stays open. */
const serveCountdown: Handler = async (req, res, url, { streams, log, quiet, heartbeat }) => {
  const { from, interval } = readCountdownOptions(req, url);
  if (from < 0) {
    // The browser saw event 0 already; 204 is how SSE says "do not reconnect".
    res.writeHead(204).end();
    return;
  }
  res.writeHead(200, SSE_HEADERS);
  res.flushHeaders(); // so the browser's `open` fires now, not with the first tick
  streams.add(res);
  if (!quiet) log(`stream opened for ${clientName(req.socket)}, counting from ${from} (${streams.size} open)`);

  let eventsSent = 0;
  let streamsReported = 0;
  try {
    for await (const message of countdown(from, interval, res, heartbeat)) {
      // Piggyback on this tick: tell the page how many streams the process holds, when that changed.
      const status = streams.size === streamsReported ? "" : serverEvent(process.pid, streams.size);
      streamsReported = streams.size;
      if (message !== HEARTBEAT) eventsSent++;
      // A slow reader: wait until the socket drains (or closes) rather than buffer without bound.
      if (!res.write(status + message)) await drainOrClose(res);
    }
  } finally {
    const why = res.writableEnded ? "the server is stopping" : res.destroyed ? "the client left" : "blastoff";
    streams.delete(res);
    if (!res.destroyed) res.end();
    if (!quiet) log(`stream closed after ${eventsSent} events: ${why} (${streams.size} open)`);
  }
};

/** The client's address and port as a log shows them: 127.0.0.1:51712, [::1]:51712. */
export function clientName({ remoteAddress = "?", remotePort }: net.Socket): string {
  return `${remoteAddress.includes(":") ? `[${remoteAddress}]` : remoteAddress}:${remotePort}`;
}

/** Resolves when the response can take more data again, or when it closed: never hangs. */
export function drainOrClose(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.on("drain", done);
    res.on("close", done);
  });
}

// ─── Lesson 3: push, don't poll ──────────────────────────────────────────────
//
// A room where a posted message reaches every open tab at once. Seed 003's
// first attempt asked the database for news once per tab every 5 seconds; here
// the POST publishes the message to a hub, and every open stream is a
// subscriber the hub hands it to. Nothing happens between messages: no timer,
// no query, no request. The polling version is kept beside it, so a tab can
// count what each costs.

/** How many events the hub keeps per topic, for replay after a reconnect. */
export const HUB_KEEP = 100;
/** Events a subscriber may leave unread before the hub drops it, rather than queue without bound. */
export const SUBSCRIBER_QUEUE_LIMIT = 1000;

/** The one room there is. Topics name what they carry, so toasts can live beside it later. */
export const ROOM_TOPIC = "room:lobby";
/** How many recent messages a fresh tab is shown. */
export const ROOM_REPLAY = 20;
export const NAME_MAX = 40;
export const TEXT_MAX = 280;
export const BODY_LIMIT_BYTES = 4 * 1024;
/** ?poll=SECONDS makes the page ask for news on a timer instead of opening a stream. */
export const POLL_RANGE_S = { min: 1, max: 60 };
/** Message ids a request may name: ?after= and Last-Event-ID. */
export const MESSAGE_ID_RANGE = { min: 0, max: 1_000_000_000_000 };
/** Head counts are sent at most this often, so 10,000 tabs arriving cost a few rounds of writes, not 10,000. */
export const PRESENCE_DELAY_MS = 100;

// ─── Lesson 3: the hub ───────────────────────────────────────────────────────
//
// Publish/subscribe, and nothing else. The room, and later the toasts and the
// WebSocket groups, talk to this interface only; the in-memory hub below is
// the default, and a PostgreSQL one can stand beside it.

/** One stored event: a room message, a toast, a read mark. What every subscriber and every transport receives. */
export interface HubEvent<Data = unknown> {
  topic: string; // "room:lobby"; later "toasts:<visitor>", "toasts:everyone"
  id: number; // increasing integers per topic, from 1
  type: string; // the SSE event name: "message"; later "message_updated", "toast", "read"
  data: Data;
  at: string; // ISO 8601, when it was published
}

/** Yielded instead of (before) events when `after` is older than what is kept, or an id this hub never issued. */
export interface HubGap {
  type: "gap";
  topic: string;
  after: number;
}

export interface Hub {
  /** Stores the event, delivers it to every live subscriber of the topic, returns it with its id. */
  publish<Data>(topic: string, type: string, data: Data): Promise<HubEvent<Data>>;
  /** What is kept after `after` (all kept when omitted), oldest first, at most `limit` (the newest ones). */
  history(topic: string, options?: { after?: number; limit?: number }): Promise<HubEvent[]>;
  /** First what is kept after `after` (a HubGap first when it cannot be exact), then live events, until `signal` aborts. With `after` omitted: live events only. */
  subscribe(topic: string, options: { after?: number; signal: AbortSignal }): AsyncGenerator<HubEvent | HubGap>;
  /** Live subscribers of a topic in this process. */
  subscribers(topic: string): number;
  close(): Promise<void>;
}

/** Thrown by a subscription whose reader fell more than the queue limit behind: it has been dropped. */
export class SlowSubscriberError extends Error {
  constructor(topic: string, limit: number) {
    super(`a subscriber of ${topic} left ${limit} events unread and was dropped`);
  }
}

/** One subscription's mailbox: what was published to it and not yet read, and how to wake its reader. */
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

  constructor({ keep = HUB_KEEP, queueLimit = SUBSCRIBER_QUEUE_LIMIT, log = () => {} }: MemoryHubOptions = {}) {
    this.keep = keep;
    this.queueLimit = queueLimit;
    this.log = log;
  }

  private topic(name: string): Topic {
    let topic = this.topics.get(name);
    if (!topic) this.topics.set(name, (topic = { lastId: 0, kept: [], subscribers: new Set() }));
    return topic;
  }

  /** Synchronous up to its return: the event is stored and queued for every subscriber before anyone awaits. */
  async publish<Data>(topicName: string, type: string, data: Data): Promise<HubEvent<Data>> {
    if (this.closed) throw new Error("the hub is closed");
    const event: HubEvent<Data> = { topic: topicName, id: this.lastId(topicName) + 1, type, data, at: new Date().toISOString() };
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
      // Drop it now and free its queue: one reader that stopped reading must not hold memory for everyone else.
      topic.subscribers.delete(subscriber);
      subscriber.queue = [];
      subscriber.dropped = true;
      this.log(`hub: dropped a subscriber of ${event.topic}: ${this.queueLimit} events unread`);
    } else {
      subscriber.queue.push(event);
    }
    subscriber.wake();
  }

  async history(topicName: string, { after = 0, limit = this.keep }: { after?: number; limit?: number } = {}): Promise<HubEvent[]> {
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
  async *subscribe(topicName: string, { after, signal }: { after?: number; signal: AbortSignal }): AsyncGenerator<HubEvent | HubGap> {
    if (this.closed || signal.aborted) return;
    const topic = this.topic(topicName);
    const subscriber: Subscriber = { queue: [], dropped: false, wake: () => {} };
    const leave = () => subscriber.wake();
    topic.subscribers.add(subscriber);
    signal.addEventListener("abort", leave);
    try {
      let lastId = after ?? topic.lastId;
      if (after !== undefined) {
        const oldestKept = topic.kept[0]?.id ?? topic.lastId + 1;
        const exact = after <= topic.lastId && after >= oldestKept - 1;
        const replay = exact ? topic.kept.filter((event) => event.id > after) : [...topic.kept];
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

  /** Ends every subscription (their generators return) and refuses further publishing. */
  async close(): Promise<void> {
    this.closed = true;
    for (const topic of this.topics.values()) for (const subscriber of topic.subscribers) subscriber.wake();
  }
}

// ─── Lesson 3: the room's stream ─────────────────────────────────────────────

/** What a client sees of one event: its id, its data, when it was published. The room's message is {"id", "name", "text", "at"}. */
export function eventJson({ id, data, at }: HubEvent): Record<string, unknown> {
  return { id, ...(data as object), at };
}

/** One hub event on the wire: `event: message`, `id: 42`, `data: {...}`; a gap has no id. */
export function hubEventToSse(event: HubEvent | HubGap): string {
  if (event.type === "gap") return formatEvent("gap", JSON.stringify({ after: (event as HubGap).after }));
  const stored = event as HubEvent;
  return formatEvent(stored.type, JSON.stringify(eventJson(stored)), stored.id);
}

/** How many tabs are in the room, as the page shows it. */
export function presenceEvent(tabs: number): string {
  // The pid tells tabs apart when --workers N runs several processes, each with a room of its own.
  return formatEvent("presence", JSON.stringify({ tabs, pid: process.pid }));
}

export const ROOM_HEARTBEAT = ": still here\n\n";

/**
 * Yields the SSE messages of one room stream: the last few messages (or,
 * after a reconnect, exactly those after the last id the browser saw), then
 * every message as it is published, until `signal` aborts. The countdown's
 * generator awaited a timer; this one awaits the hub.
 */
export async function* roomStream(hub: Hub, lastEventId: number | undefined, signal: AbortSignal) {
  let after = lastEventId;
  if (after === undefined) {
    const recent = await hub.history(ROOM_TOPIC, { limit: ROOM_REPLAY });
    for (const event of recent) yield hubEventToSse(event);
    // Anything published while those were written is replayed by the hub, from here.
    after = recent.at(-1)?.id ?? 0;
  }
  for await (const event of hub.subscribe(ROOM_TOPIC, { after, signal })) yield hubEventToSse(event);
}

/**
 * The room's open streams in this process. Presence is not stored in the hub:
 * it is this process's head count, sent to every stream shortly after it
 * changes. One shared timer gives every silent stream its heartbeat.
 */
export class RoomStreams {
  private streams = new Map<ServerResponse, { told: number; wrote: boolean }>();
  private presenceTimer: NodeJS.Timeout | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private heartbeat: number;

  constructor(heartbeat: number) {
    this.heartbeat = heartbeat;
  }

  get size(): number {
    return this.streams.size;
  }

  open(res: ServerResponse) {
    this.streams.set(res, { told: 0, wrote: false });
    this.heartbeatTimer ??= setInterval(() => this.beat(), this.heartbeat);
    this.presenceTimer ??= setTimeout(() => this.tellPresence(), PRESENCE_DELAY_MS);
  }

  /** The stream wrote something, so it needs no heartbeat this round. */
  wrote(res: ServerResponse) {
    const stream = this.streams.get(res);
    if (stream) stream.wrote = true;
  }

  close(res: ServerResponse) {
    this.streams.delete(res);
    if (this.streams.size > 0) {
      this.presenceTimer ??= setTimeout(() => this.tellPresence(), PRESENCE_DELAY_MS);
      return;
    }
    // Nobody left to tell: no timer stays behind.
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.presenceTimer);
    this.heartbeatTimer = this.presenceTimer = undefined;
  }

  /** Ends every stream cleanly (on Ctrl-C); browsers reconnect with the last id they saw. */
  endAll() {
    for (const res of this.streams.keys()) res.end();
  }

  private tellPresence() {
    this.presenceTimer = undefined;
    for (const [res, stream] of this.streams) {
      if (stream.told === this.streams.size) continue;
      stream.told = this.streams.size;
      stream.wrote = true;
      res.write(presenceEvent(this.streams.size));
    }
  }

  private beat() {
    for (const [res, stream] of this.streams) {
      // A stream waiting for a slow reader to drain gets nothing more to hold.
      if (!stream.wrote && !res.writableNeedDrain) res.write(ROOM_HEARTBEAT);
      stream.wrote = false;
    }
  }
}

// ─── Lesson 3: the room's handlers ───────────────────────────────────────────

let roomPage: string | undefined;

/** The room's page, from pages/room.html beside this file, read once. */
function readRoomPage(): string {
  roomPage ??= readFileSync(new URL("./pages/room.html", import.meta.url), "utf8");
  return roomPage;
}

/** ?poll=SECONDS: 0 (stream) when absent. A bad one fails on the page request, where the reader sees it. */
export function readPollSeconds(url: URL): number {
  const poll = url.searchParams.get("poll");
  return poll === null ? 0 : wholeNumber("poll", poll, POLL_RANGE_S);
}

const serveRoomPage: Handler = (req, res, url) => {
  readPollSeconds(url);
  const page = readRoomPage();
  res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Content-Length": Buffer.byteLength(page) });
  res.end(page);
};

/** Streams the room to one tab: recent messages, then every new one, until the tab closes. */
const serveRoomStream: Handler = async (req, res, url, { hub, room, log, quiet }) => {
  const lastEventId = readMessageId(req.headers["last-event-id"], "Last-Event-ID");
  res.writeHead(200, SSE_HEADERS);
  res.flushHeaders();
  // The one listener that ends this stream's subscription when the tab goes.
  const left = new AbortController();
  const leave = () => left.abort();
  res.on("close", leave);
  room.open(res);
  const from = lastEventId === undefined ? `with the last ${ROOM_REPLAY} messages` : `after message ${lastEventId}`;
  if (!quiet) log(`room stream opened for ${clientName(req.socket)}, ${from} (${room.size} in the room)`);

  let why = "the client left";
  let eventsSent = 0;
  try {
    for await (const message of roomStream(hub, lastEventId, left.signal)) {
      room.wrote(res);
      eventsSent++;
      if (!res.write(message)) await drainOrClose(res);
    }
    if (res.writableEnded) why = "the server is stopping";
  } catch (error) {
    if (!(error instanceof SlowSubscriberError)) throw error;
    // Cut, not ended: its browser reconnects with the last id it read and is replayed the rest.
    why = "too slow to read, cut";
    res.destroy();
  } finally {
    res.off("close", leave);
    room.close(res);
    if (!res.destroyed) res.end();
    if (!quiet) log(`room stream closed after ${eventsSent} events: ${why} (${room.size} in the room)`);
  }
};

/** A message id from ?after= or Last-Event-ID; undefined when absent or empty. */
function readMessageId(text: string | string[] | null | undefined, name: string): number | undefined {
  if (typeof text !== "string" || text === "") return undefined;
  return wholeNumber(name, text, MESSAGE_ID_RANGE);
}

/**
 * The polling version, seed 003's first attempt: the page asks every few
 * seconds what came after the last id it has. When that id is older than what
 * is kept, or one this hub never issued (after a restart), it gets everything
 * kept, and sees the gap from the ids.
 */
const listMessages: Handler = async (req, res, url, { hub }) => {
  const after = readMessageId(url.searchParams.get("after"), "after");
  let events = await hub.history(ROOM_TOPIC, after === undefined ? { limit: ROOM_REPLAY } : { after });
  if (after !== undefined && events.length === 0) {
    const [newest] = await hub.history(ROOM_TOPIC, { limit: 1 });
    if (newest && newest.id < after) events = await hub.history(ROOM_TOPIC);
  }
  sendJson(res, 200, events.map(eventJson));
};

/** Posts one message: checks where it comes from, reads and checks it, publishes it, answers 201 with it. */
const postMessage: Handler = async (req, res, url, { hub, log, quiet }) => {
  checkOrigin(req);
  const type = contentType(req);
  const body = await readBody(req, res);
  const fields = type === "application/json" ? parseJsonBody(body) : Object.fromEntries(new URLSearchParams(body));
  const message = { name: checkField(fields, "name", NAME_MAX), text: checkField(fields, "text", TEXT_MAX) };
  const event = await hub.publish(ROOM_TOPIC, "message", message);
  // Never the text itself: a log is no place for what people wrote.
  if (!quiet) log(`message ${event.id} posted (a name of ${[...message.name].length} characters)`);
  sendJson(res, 201, eventJson(event));
};

function sendJson(res: ServerResponse, status: number, value: unknown) {
  const body = JSON.stringify(value);
  res.writeHead(status, { "Content-Type": "application/json; charset=utf-8", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

/**
 * A page on another site could make a visitor's browser post here (a form
 * submits across sites without asking). Browsers name the posting page's
 * origin in `Origin`, which a page cannot forge, so a post whose Origin is not
 * this server's own host name is refused. A request without Origin is not from
 * a browser page (curl, a script), and is allowed.
 */
function checkOrigin(req: IncomingMessage) {
  const origin = req.headers.origin;
  if (origin === undefined) return;
  const host = URL.canParse(origin) ? new URL(origin).host : "";
  if (host === "" || host !== req.headers.host) {
    throw new RequestError(403, `Posts from another site are refused: Origin ${origin} is not this server.`);
  }
}

function contentType(req: IncomingMessage): string {
  const type = (req.headers["content-type"] ?? "").split(";")[0]!.trim().toLowerCase();
  if (type !== "application/json" && type !== "application/x-www-form-urlencoded") {
    throw new RequestError(415, "Send the message as application/json or as a form (application/x-www-form-urlencoded).");
  }
  return type;
}

/** The whole body as text, or a 413 past the limit; the connection then closes, so the rest is never read. */
function readBody(req: IncomingMessage, res: ServerResponse): Promise<string> {
  const tooLarge = () => {
    res.setHeader("Connection", "close");
    return new RequestError(413, `The body is over ${BODY_LIMIT_BYTES} bytes.`);
  };
  if (Number(req.headers["content-length"]) > BODY_LIMIT_BYTES) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= BODY_LIMIT_BYTES) return void chunks.push(chunk);
      stop();
      reject(tooLarge());
    };
    const onEnd = () => {
      stop();
      resolve(Buffer.concat(chunks).toString("utf8"));
    };
    const stop = () => {
      req.off("data", onData);
      req.off("end", onEnd);
    };
    req.on("data", onData);
    req.on("end", onEnd);
  });
}

function parseJsonBody(body: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    throw new RequestError(400, 'The body is not JSON; send {"name": "...", "text": "..."}.');
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new RequestError(400, 'The body must be one JSON object: {"name": "...", "text": "..."}.');
  }
  return value as Record<string, unknown>;
}

/** One field of a message, trimmed; a 400 that names the field and its limit when it is missing, empty, too long or not plain text. */
function checkField(fields: Record<string, unknown>, name: string, max: number): string {
  const value = fields[name];
  const text = typeof value === "string" ? value.trim() : "";
  if (text === "") throw new RequestError(400, `${name} is missing: it takes 1 to ${max} characters.`);
  if ([...text].length > max) throw new RequestError(400, `${name} is too long: at most ${max} characters.`);
  if (/\p{Cc}/u.test(text)) throw new RequestError(400, `${name} must not contain control characters such as line breaks.`);
  return text;
}

// ─── Routing ─────────────────────────────────────────────────────────────────
//
// A path maps to its methods. A new lesson adds a line here.

export type Routes = Record<string, Partial<Record<string, Handler>>>;

export const ROUTES: Routes = {
  "/": { GET: servePage, HEAD: servePage },
  "/sse/": { GET: serveCountdown },
  "/room/": { GET: serveRoomPage, HEAD: serveRoomPage },
  "/room/messages": { GET: listMessages, POST: postMessage },
  "/room/stream": { GET: serveRoomStream },
};

/** Turns a route table into a request listener that answers 400, 404 and 405 with one sentence. */
export function router(routes: Routes, state: ServerState): http.RequestListener {
  return async (req, res) => {
    try {
      const url = URL.canParse(req.url ?? "", "http://localhost") ? new URL(req.url ?? "", "http://localhost") : undefined;
      if (!url) throw new RequestError(400, "The request target is not a path this server can read.");
      const methods = routes[url.pathname];
      if (!methods) throw new RequestError(404, `Nothing here at ${url.pathname}; the countdown is at /.`);
      const handler = methods[req.method ?? "GET"];
      if (!handler) {
        res.setHeader("Allow", Object.keys(methods).join(", "));
        throw new RequestError(405, `${url.pathname} answers ${Object.keys(methods).join(" and ")} only.`);
      }
      await handler(req, res, url, state);
    } catch (error) {
      if (res.headersSent) return; // never an error page after the stream started
      const known = error instanceof RequestError;
      if (!known) state.log(`error: ${error instanceof Error ? error.message : String(error)}`);
      res.writeHead(known ? error.status : 500, { "Content-Type": "text/plain; charset=utf-8" });
      res.end(known ? `${error.message}\n` : "Something went wrong on the server.\n");
    }
  };
}

// ─── The server ──────────────────────────────────────────────────────────────

export interface CountdownServer extends http.Server {
  /** Every countdown being streamed right now. */
  streams: Set<ServerResponse>;
  /** Lesson 3: the hub the room publishes to, and the room's open streams. */
  hub: Hub;
  room: RoomStreams;
  /** Ends every open stream cleanly; browsers reconnect and resume. */
  endStreams(): void;
}

export interface ServerOptions {
  /** Leave out the per-stream log lines. */
  quiet?: boolean;
  /** Where log lines go (tests collect them). */
  log?: (line: string) => void;
  /** Milliseconds of silence before a comment line; tests shorten it. */
  heartbeat?: number;
  /** The hub the room publishes to: a new MemoryHub unless another is given. */
  hub?: Hub;
}

/** One log line: the time, this process's pid, what changed. */
export function logLine(line: string): void {
  console.log(`[${new Date().toTimeString().slice(0, 8)}] [${process.pid}] ${line}`);
}

export function createCountdownServer(options: ServerOptions = {}): CountdownServer {
  const log = options.log ?? logLine;
  const heartbeat = options.heartbeat ?? HEARTBEAT_MS;
  const state: ServerState = {
    streams: new Set(),
    log,
    quiet: options.quiet ?? false,
    heartbeat,
    hub: options.hub ?? new MemoryHub({ log }),
    room: new RoomStreams(heartbeat),
  };
  const server = http.createServer(router(ROUTES, state));
  return Object.assign(server, {
    streams: state.streams,
    hub: state.hub,
    room: state.room,
    endStreams() {
      for (const res of state.streams) res.end();
      state.room.endAll();
    },
  });
}

// ─── Lesson 3: several processes, one port ──────────────────────────────────
//
// One Node process uses one core. `--workers N` runs N copies of this file on
// one port, as uvicorn's and gunicorn's --workers do: node:cluster's primary
// accepts each connection and hands it to the next worker in turn. Countdowns
// need nothing more. The room and the toasts do: each process has its own
// in-memory hub, so a message posted to one worker reaches only that worker's
// tabs, until --database puts them all on one PostgreSQL.

/**
 * The primary of `--workers N` serves nothing itself. It forks N workers,
 * prints the banner once the first one listens (on port 0 it learns the port then), replaces any worker that dies,
 * and on Ctrl-C asks each to stop and waits for them, never longer than the grace.
 */
export async function superviseWorkers(count: number, host: string, port: number, databaseUrl: string): Promise<void> {
  // Try the address and the database once here, so a busy port or a database that is down is one sentence, not one per worker.
  for (const probe of await listen(net.createServer(), host, port)) await new Promise((resolve) => probe.close(resolve));
  if (databaseUrl) await (await openDatabase(databaseUrl)).end();

  let stopping = false;
  let bannerPrinted = false;
  const listened = new Set<number>();
  const alive = () => Object.values(cluster.workers ?? {}).filter((worker) => worker !== undefined);

  // A worker listens once per address (twice for localhost); the first time counts.
  cluster.on("listening", (worker, address) => {
    if (listened.has(worker.id)) return;
    listened.add(worker.id);
    if (!bannerPrinted) printBanner(host, address.port, count, databaseUrl);
    bannerPrinted = true;
    logLine(`primary: worker ${worker.process.pid} is serving`);
  });
  cluster.on("exit", (worker, code, signal) => {
    const how = signal ?? `code ${code}`;
    if (stopping) {
      if (alive().length === 0) process.exit(0);
      return;
    }
    if (!listened.has(worker.id)) {
      // It never got to serve: it said why on stderr. Forking it again would fail the same way.
      stopping = true;
      for (const other of alive()) other.process.kill("SIGKILL");
      process.exit(code ?? 1);
    }
    logLine(`primary: worker ${worker.process.pid} exited (${how}); starting another`);
    cluster.fork();
  });

  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logLine(`primary: ${signal}: stopping ${alive().length} workers`);
    // A terminal's Ctrl-C reaches every process of the group already; a signal sent to the primary alone does not.
    for (const worker of alive()) worker.process.kill("SIGTERM");
    setTimeout(() => {
      for (const worker of alive()) worker.process.kill("SIGKILL");
      process.exit(0);
    }, SHUTDOWN_GRACE_MS + SHUTDOWN_GRACE_MS / 2).unref();
    // A second Ctrl-C means "now".
    process.once("SIGINT", () => {
      for (const worker of alive()) worker.process.kill("SIGKILL");
      process.exit(130);
    });
  };
  process.once("SIGINT", () => stop("SIGINT"));
  process.once("SIGTERM", () => stop("SIGTERM"));

  for (let i = 0; i < count; i++) cluster.fork();
}

// ─── Lesson 3: one room across processes, through PostgreSQL ─────────────────
//
// With --database, the hub's events live in a table, and every process hears
// of each new one through LISTEN/NOTIFY, on one connection of its own that
// does nothing else. A publish is one transaction: the INSERT, and a NOTIFY
// that PostgreSQL delivers only when it commits, to every listening process,
// in commit order. A NOTIFY is not stored: a process whose connection was down
// misses it. That is why the events are in a table: on reconnect, each process
// reads what was committed meanwhile, and nothing is lost. The postgres
// package is loaded only here, so a server without --database needs nothing installed.

/** How long a connection attempt may take before the database counts as unreachable. */
export const DATABASE_CONNECT_TIMEOUT_S = 5;

/** The URL as a log line may show it: the password replaced by ***. */
export function redactUrl(url: string): string {
  if (!URL.canParse(url)) return "(not a URL)";
  const parsed = new URL(url);
  if (parsed.password) parsed.password = "***";
  return parsed.href;
}

/** Connects to the database from --database and checks it answers, or exits with one sentence that says why not. */
export async function openDatabase(url: string): Promise<Sql> {
  const parsed = URL.canParse(url) ? new URL(url) : undefined;
  if (!parsed || !["postgres:", "postgresql:"].includes(parsed.protocol) || !parsed.hostname) {
    exitWith(1, "--database must be a URL such as postgres://user:password@localhost:5432/countdown.");
  }
  const { default: postgres } = await import("postgres").catch(() =>
    exitWith(1, "--database needs the postgres package, which is not installed: run npm ci first."),
  );
  const sql = postgres(url, { connect_timeout: DATABASE_CONNECT_TIMEOUT_S, onnotice: () => {} });
  try {
    await sql`select 1`;
    return sql;
  } catch (error) {
    await sql.end({ timeout: 0 });
    exitWith(1, databaseErrorSentence(error as NodeJS.ErrnoException, parsed));
  }
}

/** A URL part as a person typed it; left encoded when it is not valid percent-encoding. */
function decodeSafely(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** One sentence for what went wrong while connecting, never with the password in it. */
function databaseErrorSentence(error: NodeJS.ErrnoException, url: URL): string {
  const where = `${url.hostname}:${url.port || 5432}`;
  const user = decodeSafely(url.username);
  const database = decodeSafely(url.pathname.slice(1)) || user;
  switch (error.code) {
    case "ECONNREFUSED":
      return `Cannot reach PostgreSQL at ${where}: the connection was refused. Is the server running?`;
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return `Cannot reach PostgreSQL at ${where}: there is no such host.`;
    case "CONNECT_TIMEOUT":
      return `Cannot reach PostgreSQL at ${where}: no answer within ${DATABASE_CONNECT_TIMEOUT_S} seconds.`;
    case "28P01":
    case "28000":
      return `PostgreSQL at ${where} refused the login of user "${user}": check the user and password in --database.`;
    case "3D000":
      return `PostgreSQL at ${where} has no database "${database}": create it, or name another in --database.`;
    default:
      return `Cannot use PostgreSQL at ${where}: ${error.message}.`;
  }
}

/** The channel every process LISTENs on. */
export const HUB_CHANNEL = "hub_events";
/** NOTIFY refuses payloads of 8000 bytes or more; a larger event is announced by its id and read from the table. */
export const NOTIFY_MAX_BYTES = 7900;
/** Reconnecting the listener waits this long at first, doubling up to the maximum. */
export const RECONNECT_FIRST_MS = 250;
export const RECONNECT_MAX_MS = 8000;

/** What the driver and PostgreSQL say when the database is down or went away, rather than refusing one query. */
const CONNECTION_ERRORS = new Set([
  "ECONNREFUSED", "ECONNRESET", "ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT",
  "CONNECT_TIMEOUT", "CONNECTION_CLOSED", "CONNECTION_ENDED", "CONNECTION_DESTROYED",
  "57P01", "57P02", "57P03", // admin_shutdown, crash_shutdown, cannot_connect_now
]);

/** The tables, created at start when missing: a second start changes nothing. */
const SCHEMA = `
  create table if not exists hub_topics (
    topic text primary key,
    last_id bigint not null
  );
  create table if not exists hub_events (
    topic text not null,
    id bigint not null,
    type text not null,
    data jsonb not null,
    at timestamptz not null default now(),
    primary key (topic, id)
  );
`;

interface EventRow {
  topic: string;
  id: string | number; // bigint arrives as a string
  type: string;
  data: unknown;
  at: Date | string;
}

function rowToEvent(row: EventRow): HubEvent {
  return { topic: row.topic, id: Number(row.id), type: row.type, data: row.data, at: new Date(row.at).toISOString() };
}

/**
 * The hub of every process at once. Events are stored in PostgreSQL; each
 * process keeps the last few per topic in an in-memory hub of its own, which
 * fans them out to its streams, so a thousand tabs cost one LISTEN, not a
 * thousand connections (seed 003 opened one per tab).
 */
export class PostgresHub implements Hub {
  private sql: Sql;
  private listener: Sql;
  /** This process's subscribers, and its copy of the last events of each topic it serves. */
  private local: MemoryHub;
  /** Topics whose recent events were read from the table; notifications for others are not needed here. */
  private loaded = new Map<string, Promise<void>>();
  /** Notifications are handled one at a time, in the order they came. */
  private queue: Promise<void> = Promise.resolve();
  private log: (line: string) => void;
  /** Aborted by close(): ends a reconnect's pause. */
  private closing = new AbortController();
  private reconnecting = false;

  private constructor(sql: Sql, listener: Sql, log: (line: string) => void) {
    this.sql = sql;
    this.listener = listener;
    this.log = log;
    this.local = new MemoryHub({ log });
  }

  /** Creates the tables when missing, then LISTENs; a database that fails here ends the start with one sentence. */
  static async open(url: string, log: (line: string) => void): Promise<PostgresHub> {
    const sql = await openDatabase(url);
    await sql
      .begin(async (tx) => {
        // Workers start together: without the lock two would create the same table at once, and one would fail.
        await tx`select pg_advisory_xact_lock(hashtext(${HUB_CHANNEL}))`;
        await tx.unsafe(SCHEMA);
      })
      .catch((error: Error) => exitWith(1, `Cannot create the hub's tables in ${redactUrl(url)}: ${error.message}.`));
    const { default: postgres } = await import("postgres");
    let hub: PostgresHub | undefined;
    // The listener's own connection: one per process, kept open, never recycled. The driver
    // hands each NOTIFY that arrives on it to `onnotify` (its own listen() helper uses the same option).
    const listenerOptions = {
      max: 1,
      idle_timeout: 0,
      max_lifetime: null,
      connect_timeout: DATABASE_CONNECT_TIMEOUT_S,
      onnotice: () => {},
      onclose: () => hub?.lost(),
      onnotify: (_channel: string, payload: string) => hub?.notified(payload),
    };
    const listener = postgres(url, listenerOptions as Parameters<typeof postgres>[1]);
    hub = new PostgresHub(sql, listener, log);
    await hub.listen();
    return hub;
  }

  async publish<Data>(topic: string, type: string, data: Data): Promise<HubEvent<Data>> {
    const event = await this.ask(() => this.sql.begin(async (tx) => {
      // The topic's row is locked until commit, so two processes publishing to one topic take ids in turn, and commit in id order.
      const [row] = await tx<EventRow[]>`
        with next as (
          insert into hub_topics (topic, last_id) values (${topic}, 1)
          on conflict (topic) do update set last_id = hub_topics.last_id + 1
          returning last_id
        )
        insert into hub_events (topic, id, type, data)
        select ${topic}, last_id, ${type}, ${tx.json(data as never)} from next
        returning topic, id, type, data, at`;
      const stored = rowToEvent(row!) as HubEvent<Data>;
      const full = JSON.stringify(stored);
      const payload = Buffer.byteLength(full) < NOTIFY_MAX_BYTES ? full : JSON.stringify({ topic, id: stored.id });
      // A parameter, never SQL built from the text: pg_notify(channel, payload) is a plain function call.
      await tx`select pg_notify(${HUB_CHANNEL}, ${payload})`;
      return stored;
    }));
    return event;
  }

  async history(topic: string, { after = 0, limit = HUB_KEEP }: { after?: number; limit?: number } = {}): Promise<HubEvent[]> {
    if (limit <= 0) return [];
    const rows = await this.ask(() => this.sql<EventRow[]>`
      select topic, id, type, data, at from hub_events
      where topic = ${topic} and id > ${after}
      order by id desc limit ${limit}`);
    return rows.reverse().map(rowToEvent);
  }

  /** A database that does not answer is this server's trouble, not the request's: a 503 with one sentence, and a log line. */
  private async ask<T>(query: () => Promise<T>): Promise<T> {
    try {
      return await query();
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? "";
      if (!CONNECTION_ERRORS.has(code)) throw error;
      this.log(`hub: the database did not answer (${code})`);
      throw new RequestError(503, "The database is not answering right now; try again in a moment.");
    }
  }

  /** The local hub's subscription, once this process holds the topic's recent events: the same replay, gap and bound. */
  async *subscribe(topic: string, options: { after?: number; signal: AbortSignal }): AsyncGenerator<HubEvent | HubGap> {
    await this.load(topic);
    yield* this.local.subscribe(topic, options);
  }

  subscribers(topic: string): number {
    return this.local.subscribers(topic);
  }

  async close(): Promise<void> {
    this.closing.abort();
    await this.local.close();
    await this.listener.end({ timeout: 0 });
    await this.sql.end({ timeout: 1 });
  }

  /** Reads a topic's recent events into the local hub, once. Notifications for it wait until then. */
  private load(topic: string): Promise<void> {
    let loading = this.loaded.get(topic);
    if (!loading) {
      loading = this.serially(async () => {
        for (const event of await this.history(topic)) this.local.relay(event);
      });
      this.loaded.set(topic, loading);
    }
    return loading;
  }

  /** Runs `work` after every notification before it has been handled, so events reach the local hub in id order. */
  private serially(work: () => Promise<void>): Promise<void> {
    const done = this.queue.then(work);
    this.queue = done.catch((error) => this.log(`hub: ${(error as Error).message}`));
    return done;
  }

  private async listen(): Promise<void> {
    await this.listener.unsafe(`listen ${HUB_CHANNEL}`);
  }

  /** Notifications are handled in the order they arrive, one at a time. */
  private notified(payload: string): void {
    void this.serially(() => this.heard(payload));
  }

  /** One notification: the event itself, or its id when it was too large to carry. Anything skipped before it is read from the table. */
  private async heard(payload: string): Promise<void> {
    const notified = JSON.parse(payload) as HubEvent;
    if (!this.loaded.has(notified.topic)) return;
    const lastId = this.local.lastId(notified.topic);
    if (notified.id <= lastId) return;
    if (notified.id > lastId + 1 || notified.data === undefined) {
      for (const event of await this.history(notified.topic, { after: lastId, limit: notified.id - lastId })) this.local.relay(event);
    } else {
      this.local.relay(notified);
    }
  }

  /** The listening connection closed: say so once, then try again, with pauses that grow, until it is back. */
  private lost(): void {
    if (this.closing.signal.aborted || this.reconnecting) return;
    this.reconnecting = true;
    this.log("hub: lost the database connection; listening again as soon as it answers");
    void this.relisten(performance.now());
  }

  private async relisten(since: number): Promise<void> {
    for (let wait = RECONNECT_FIRST_MS; ; wait = Math.min(wait * 2, RECONNECT_MAX_MS)) {
      const stopped = await pause(wait, false, { signal: this.closing.signal }).catch(() => true);
      if (stopped) return;
      try {
        await this.listen();
        // Whatever was committed while nobody here listened is in the table.
        await this.serially(() => this.catchUp());
      } catch {
        continue; // still down: the next pause is longer
      }
      this.reconnecting = false;
      const seconds = ((performance.now() - since) / 1000).toFixed(1);
      this.log(`hub: listening again after ${seconds} s; caught up from the table`);
      return;
    }
  }

  private async catchUp(): Promise<void> {
    for (const topic of this.loaded.keys()) {
      for (const event of await this.history(topic, { after: this.local.lastId(topic), limit: Number.MAX_SAFE_INTEGER })) this.local.relay(event);
    }
  }
}

// ─── Start-up: flags, listening, stopping ────────────────────────────────────

/** Says one sentence on stderr and exits: the way every mistake on the command line ends. */
export function exitWith(code: number, sentence: string): never {
  console.error(sentence);
  process.exit(code);
}

/** parseArgs, with its errors turned into one sentence and exit code 2. */
export function readFlags<const T extends NonNullable<ParseArgsConfig["options"]>>(options: T, help: string) {
  try {
    const { values } = parseArgs({ options, strict: true, allowPositionals: false });
    if ((values as { help?: boolean }).help) {
      console.log(help);
      process.exit(0);
    }
    return values;
  } catch (error) {
    const firstSentence = (error as Error).message.split(/\.\s/)[0]?.replace(/\.$/, "");
    exitWith(2, `${firstSentence}. Try --help.`);
  }
}

/** A flag's value, else its environment variable, else its default; a bad one exits with code 2. */
export function flagNumber(flag: string, value: string | undefined, envName: string, fallback: number, range: { min: number; max: number }): number {
  const text = value ?? process.env[envName];
  if (text === undefined || text === "") return fallback;
  try {
    return wholeNumber(value === undefined ? envName : `--${flag}`, text, range);
  } catch (error) {
    exitWith(2, (error as Error).message);
  }
}

/**
 * Starts listening. "localhost" listens on both loopback addresses, because
 * browsers try ::1 first for localhost and *.localhost names; a second socket
 * on ::1 hands its connections to the same server. Returns every listening
 * socket; a busy port exits with one sentence.
 */
export async function listen(server: net.Server, host: string, port: number, { pauseOnConnect = false } = {}): Promise<net.Server[]> {
  const listeners = [server];
  await listenOne(server, host === DEFAULT_HOST ? "127.0.0.1" : host, port);
  if (host === DEFAULT_HOST) {
    const twin = net.createServer({ pauseOnConnect }, (socket) => server.emit("connection", socket));
    try {
      await listenOne(twin, "::1", (server.address() as net.AddressInfo).port);
      listeners.push(twin);
    } catch {
      // No IPv6 on this machine: 127.0.0.1 alone serves localhost.
    }
  }
  return listeners;
}

function listenOne(server: net.Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => {
      if (host === "::1" && error.code !== "EADDRINUSE") return reject(error);
      if (error.code === "EADDRINUSE") exitWith(1, `port ${port} is in use; try --port ${port + 2}`);
      if (error.code === "EACCES") exitWith(1, `port ${port} needs more privileges; try --port ${DEFAULT_PORT}`);
      exitWith(1, `cannot listen on ${host}:${port} (${error.code ?? error.message}); check --host`);
    };
    server.once("error", onError);
    server.listen(port, host, () => {
      server.off("error", onError);
      resolve();
    });
  });
}

/** The addresses a person can open: localhost, or the machine's LAN addresses for 0.0.0.0. */
export function urlsFor(host: string, port: number): string[] {
  if (host === "0.0.0.0" || host === "::") {
    const lan = Object.values(os.networkInterfaces())
      .flat()
      .filter((address) => address && address.family === "IPv4" && !address.internal)
      .map((address) => `http://${address!.address}:${port}/`);
    return [`http://localhost:${port}/`, ...lan];
  }
  return [`http://${host.includes(":") ? `[${host}]` : host}:${port}/`];
}

/** True when this file is the program being run, not a module imported by another (tsx and plain node alike). */
export function isMain(moduleUrl: string): boolean {
  const script = process.argv[1];
  if (!script) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(moduleUrl));
  } catch {
    return false;
  }
}

const HELP = `Usage: npx tsx server.ts [--port N] [--host H] [--workers N] [--database URL] [--quiet]

Serves a countdown page and its event stream from one async process.

  --port N         Listens on this TCP port (env PORT; default ${DEFAULT_PORT}).
  --host H         Listens on this address (env HOST; default ${DEFAULT_HOST}, meaning
                   127.0.0.1 and ::1). Use 0.0.0.0 to share it on your LAN at a workshop.
  --workers N      Runs this many processes on the one port, each serving many tabs
                   (env WEB_CONCURRENCY; default ${DEFAULT_WORKERS}).
  --database URL   Keeps the room and the toasts in PostgreSQL, shared by every process
                   (env DATABASE_URL), e.g. postgres://user:password@localhost:5432/countdown.
  --quiet          Leaves out the one line per stream opened and closed (for load tests).
  --help           Shows this help.`;

/** What a person reads first: where to point the browser, and what to try. */
function printBanner(host: string, port: number, workers: number, databaseUrl: string): void {
  const urls = urlsFor(host, port);
  const [url = ""] = urls;
  const who = workers === 1 ? `async, pid ${process.pid}` : `async, ${workers} worker processes, primary pid ${process.pid}`;
  console.log(`Countdown server (${who}) listening at ${urls.join(" and ")}`);
  console.log(`  Open ${url} in a tab, then in more tabs: ${workers === 1 ? "one process serves them all" : "each worker serves many"}.`);
  console.log(`  Past 6 tabs, use the page's "Open another tab" link: a browser opens at most 6 connections`);
  console.log(`  per host name, so tab7.localhost, tab8.localhost, ... each get their own.`);
  console.log(`  Raw events: curl -N ${url}sse/   Short demo: ${url}?from=10&interval=200`);
  if (databaseUrl) {
    console.log(`  The room and the toasts live in PostgreSQL at ${redactUrl(databaseUrl)}: every process hears every message.`);
  } else if (workers > 1) {
    console.log(`  The room and the toasts stay within each process: a message reaches only the tabs of the worker`);
    console.log(`  it was posted to. Add --database URL to share them through PostgreSQL.`);
  }
}

async function main() {
  const flags = readFlags(
    {
      port: { type: "string" },
      host: { type: "string" },
      workers: { type: "string" },
      database: { type: "string" },
      quiet: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    HELP,
  );
  const port = flagNumber("port", flags.port, "PORT", DEFAULT_PORT, { min: 0, max: 65535 });
  const host = flags.host || process.env.HOST || DEFAULT_HOST;
  const workers = flagNumber("workers", flags.workers, "WEB_CONCURRENCY", DEFAULT_WORKERS, WORKERS_RANGE);
  const databaseUrl = flags.database || process.env.DATABASE_URL || "";
  if (workers > 1 && cluster.isPrimary) return superviseWorkers(workers, host, port, databaseUrl);

  const hub = databaseUrl ? await PostgresHub.open(databaseUrl, logLine) : undefined;
  const server = createCountdownServer({ quiet: flags.quiet, hub });
  const listeners = await listen(server, host, port);
  const actualPort = (server.address() as net.AddressInfo).port;
  // A worker's banner is its primary's.
  if (cluster.isPrimary) printBanner(host, actualPort, workers, databaseUrl);

  let stopping = false;
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    logLine(`${why}: ending ${server.streams.size} open streams (their browsers will reconnect and resume)`);
    // A second Ctrl-C means "now".
    process.once("SIGINT", () => process.exit(130));
    for (const listener of listeners) listener.close();
    server.endStreams();
    void server.hub.close();
    setImmediate(() => server.closeIdleConnections());
    setTimeout(() => process.exit(0), SHUTDOWN_GRACE_MS).unref();
  };
  process.once("SIGINT", () => stop("SIGINT"));
  process.once("SIGTERM", () => stop("SIGTERM"));
  // A worker whose primary is gone would serve a port nobody hands connections to.
  if (cluster.isWorker) process.once("disconnect", () => stop("the primary process is gone"));
}

if (isMain(import.meta.url)) await main();
