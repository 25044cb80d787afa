/**
 * server.ts: a countdown streamed to every open tab by ONE process, and the
 * lessons that follow from it.
 *
 * The page at / counts down from 100 to "Blastoff!", one number a second. The
 * numbers arrive over Server-Sent Events from an `async function*` that awaits
 * its sleep, so while one tab's countdown waits for its next tick this process
 * is free to serve every other tab. Compare blocking-server.ts, where the same
 * countdown holds a whole worker process for as long as the tab stays open.
 *
 * Run it:    npx tsx server.ts          (or: node server.ts on Node 22.18+ / 24)
 *
 * Lesson 1, the countdown (the sections up to "The server"). Then try:
 *   - open http://localhost:8000/ in a tab, then open some more: all of them count;
 *   - curl -N http://localhost:8000/sse/ shows the raw events as they are sent;
 *   - press Ctrl-C and start the server again: open tabs carry on where they were;
 *   - http://localhost:8000/?from=10&interval=200 makes a short, fast countdown.
 *
 * Lesson 2, fan-out (the section "Lesson 2"). Then try:
 *   - curl http://localhost:8000/api/aggregated/ calls /api/ ten times at once and
 *     answers in about one second: ten waits of one second, awaited together;
 *   - curl http://localhost:8000/api/aggregated/sequential/ makes the same calls one
 *     after another: about ten seconds, and every countdown tab keeps counting;
 *   - curl "http://localhost:8000/api/blocking/?delay=3000" while a tab counts: the
 *     tab stops for three seconds, then catches up: a sync sleep blocks everything;
 *   - curl "http://localhost:8000/api/aggregated/?via=blocking&n=4" makes four such calls,
 *     four seconds frozen; with ten, the last ones miss their read timeout: 504.
 *
 * Lesson 3, push, don't poll (the sections "Lesson 3"). Then try:
 *   - http://localhost:8000/room/ in two tabs: post in one, the other shows it at once;
 *   - curl -N http://localhost:8000/room/stream, and post from another terminal:
 *     curl -d name=Ada -d text=hello http://localhost:8000/room/messages
 *   - http://localhost:8000/room/?poll=5 asks every 5 seconds instead; each page
 *     counts the requests it made;
 *   - type a line where the server runs and press Enter: every open page shows it
 *     as a toast until closed, and closing it in one tab closes it in all of them;
 *     http://localhost:8000/toasts/ starts seed 000's demo: a toast now, another later;
 *   - --workers 2 runs two processes on the port: a message reaches only the tabs
 *     of the process it was posted to, until --database postgres://... shares the
 *     room and the toasts between them through LISTEN/NOTIFY.
 *
 * Lesson 4, two-way (the sections "Lesson 4"). Then try:
 *   - http://localhost:8000/room/?transport=ws is the room over a WebSocket: a message
 *     posted in a /room/ tab shows there too; after a restart it resumes where it was;
 *   - curl -X PUT a message's new text to /room/messages/<id>: every open room tab
 *     shows the change, and the same text again changes nothing and notifies nobody.
 *
 * The wall, for a workshop projector (the section "The wall"):
 *   - start blocking-server.ts as well and open http://localhost:8000/wall: eight
 *     tiles count on the left; on the right one counts and seven wait;
 *   - npm run crowd -- --streams 5000 adds 5,000 streams here; the left keeps counting.
 */

import cluster, { type Worker } from "node:cluster";
import { createHash, randomBytes } from "node:crypto";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import net from "node:net";
import os from "node:os";
import { readFileSync, realpathSync } from "node:fs";
import { createInterface } from "node:readline";
import { setTimeout as wait } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { parseArgs, type ParseArgsConfig } from "node:util";
// Types only: the postgres package itself is loaded with await import() when --database is given.
import type { Sql } from "postgres";
// Types only: the ws package is loaded with await import() at the first WebSocket upgrade.
import type { WebSocket, WebSocketServer } from "ws";
import type { Duplex } from "node:stream";

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
export function formatEvent(event: string, data: string, id?: number | string): string {
  const idLine = id === undefined ? "" : `id: ${id}\n`;
  return `event: ${event}\n${idLine}data: ${data}\n\n`;
}

/** The countdown's own event: `event: i`, `id: 7`, `data: {"i": 7}`. */
export function countdownEvent(i: number): string {
  return formatEvent("i", `{"i": ${i}}`, i);
}

/** Which process serves this stream, how many streams it has open now, and its resident memory in bytes. */
export function serverEvent(pid: number, streams: number, rss: number): string {
  return formatEvent("server", `{"pid": ${pid}, "streams": ${streams}, "rss": ${rss}}`);
}

/**
 * The countdown may be read from any origin: it carries nothing private, and
 * the wall (see "The wall" below) opens each tile's stream on a host name of its
 * own. Only the stream says so; no other route does.
 */
export function allowEveryOrigin(res: ServerResponse): void {
  res.setHeader("Access-Control-Allow-Origin", "*");
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
  const BYTES_PER_MB = 1024 * 1024;

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
    const { pid, streams, rss } = JSON.parse(event.data);
    const count = streams.toLocaleString("en-US") + (streams === 1 ? " stream" : " streams");
    server.textContent = "served by pid " + pid + ", which holds " + count + " in " + Math.round(rss / BYTES_PER_MB) + " MB";
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
  /** Lesson 2: where this server calls itself, such as http://127.0.0.1:8000. */
  origin: () => string;
  /** Lesson 2: the /api/ requests being answered now, and the most at once so far. */
  apiCalls: ApiCalls;
  /** Lesson 3: where the room's messages are published, and the room's open streams in this process. */
  hub: Hub;
  room: RoomStreams;
  /** Lesson 3: the toasts, which live in the same hub. */
  toasts: Toasts;
}

export type Handler = (req: IncomingMessage, res: ServerResponse, url: URL, state: ServerState) => void | Promise<void>;

/** An answer of one sentence: a user's mistake (4xx), or a call to this server that failed (502, 504). */
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
  allowEveryOrigin(res);
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
      // Piggyback on this tick: tell the page how many streams the process holds, and in how much memory, when that changed.
      const status = streams.size === streamsReported ? "" : serverEvent(process.pid, streams.size, process.memoryUsage.rss());
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

// ─── Routing ─────────────────────────────────────────────────────────────────
//
// A path maps to its methods. Each later lesson adds its paths, a line each,
// at the end of its own section.

export type Routes = Record<string, Partial<Record<string, Handler>>>;

export const ROUTES: Routes = {
  "/": { GET: servePage, HEAD: servePage },
  "/sse/": { GET: serveCountdown },
};

/** The route for a path: its own line, else a line with a :placeholder in place of one segment. */
function findRoute(routes: Routes, pathname: string): Routes[string] | undefined {
  if (routes[pathname]) return routes[pathname];
  const segments = pathname.split("/");
  for (const [pattern, methods] of Object.entries(routes)) {
    const parts = pattern.split("/");
    if (parts.length === segments.length && parts.every((part, k) => part === segments[k] || (part.startsWith(":") && segments[k] !== ""))) return methods;
  }
  return undefined;
}

/**
 * Turns a route table into a request listener that answers 400, 404 and 405
 * with one sentence, and sends a known path without its trailing slash to the
 * path with it (308, query kept), as Django's APPEND_SLASH does.
 */
export function router(routes: Routes, state: ServerState): http.RequestListener {
  // blocking-server.ts shares this router and serves no toasts: its pages stay as they are.
  const servesToasts = "/toasts/stream" in routes;
  return async (req, res) => {
    try {
      const url = readTarget(req.url ?? "");
      const methods = findRoute(routes, url.pathname);
      if (!methods && findRoute(routes, `${url.pathname}/`) && (req.method === "GET" || req.method === "HEAD")) return redirect(res, `${url.pathname}/${url.search}`);
      if (!methods) throw new RequestError(404, `Nothing here at ${url.pathname}; the countdown is at /.`);
      const handler = methods[req.method ?? "GET"];
      if (!handler) {
        res.setHeader("Allow", Object.keys(methods).join(", "));
        throw new RequestError(405, `${url.pathname} answers ${Object.keys(methods).join(" and ")} only.`);
      }
      if (servesToasts) addToasts(req, res);
      await handler(req, res, url, state);
    } catch (error) {
      if (res.headersSent) return; // never an error page after the stream started
      const known = error instanceof RequestError;
      // A failed call is news for whoever runs the server; a user's 4xx is not.
      if (!known) state.log(`error: ${error instanceof Error ? error.message : String(error)}`);
      else if (error.status >= 500) state.log(error.message);
      res.writeHead(known ? error.status : 500, { "Content-Type": "text/plain; charset=utf-8" });
      res.end(known ? `${error.message}\n` : "Something went wrong on the server.\n");
    }
  };
}

/**
 * The request target as a URL of this server. A target that starts with "/"
 * is a path, even "//sse/": read as a URL on its own, that one would name the
 * host "sse" and reach another route. A full URL (absolute-form, which HTTP/1.1
 * servers must accept) keeps its own path.
 */
function readTarget(target: string): URL {
  const path = `http://localhost${target}`;
  if (target.startsWith("/") && URL.canParse(path)) return new URL(path);
  if (/^https?:\/\//i.test(target) && URL.canParse(target)) return new URL(target);
  throw new RequestError(400, "The request target is not a path this server can read.");
}

/** 308, not 301: the browser repeats the same method, and no cache keeps the answer forever. */
function redirect(res: ServerResponse, location: string) {
  res.writeHead(308, { Location: location, "Content-Type": "text/plain; charset=utf-8" });
  res.end(`This page is at ${location}\n`);
}

// ─── The server ──────────────────────────────────────────────────────────────

export interface CountdownServer extends http.Server {
  /** Every countdown being streamed right now. */
  streams: Set<ServerResponse>;
  /** Lesson 3: the hub the room publishes to, and the room's open streams. */
  hub: Hub;
  room: RoomStreams;
  /** Lesson 3: the toasts, with createToast() and createToastAsync() for code. */
  toasts: Toasts;
  /** Lesson 4: this process's WebSockets. */
  notifications: Notifications;
  /** Ends every open stream cleanly, and closes every WebSocket with 1001; browsers reconnect and resume. */
  endStreams(): void;
  /** Lesson 2: the /api/ requests being answered now, and the most at once so far. */
  apiCalls: ApiCalls;
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
  /** Milliseconds between WebSocket pings; tests shorten it. */
  pingInterval?: number;
}

/** One log line: the time, this process's pid, what changed. */
export function logLine(line: string): void {
  console.log(`[${new Date().toTimeString().slice(0, 8)}] [${process.pid}] ${line}`);
}

export function createCountdownServer(options: ServerOptions = {}): CountdownServer {
  const log = options.log ?? logLine;
  const heartbeat = options.heartbeat ?? HEARTBEAT_MS;
  const hub = options.hub ?? new MemoryHub({ log });
  const state: ServerState = {
    streams: new Set(),
    log,
    quiet: options.quiet ?? false,
    heartbeat,
    hub,
    room: new RoomStreams(heartbeat),
    toasts: new Toasts(hub, log, heartbeat),
    origin: () => selfOrigin(server),
    apiCalls: { inFlight: 0, peak: 0 },
  };
  const notifications = new Notifications(state, options.pingInterval ?? WS_PING_INTERVAL_MS);
  const server = http.createServer(router(ROUTES, state));
  // Lesson 4: a request that asks to become a WebSocket arrives here, not at the router.
  server.on("upgrade", (req, socket, head) => void notifications.upgrade(req, socket, head));
  return Object.assign(server, {
    streams: state.streams,
    apiCalls: state.apiCalls,
    hub: state.hub,
    room: state.room,
    toasts: state.toasts,
    notifications,
    endStreams() {
      for (const res of state.streams) res.end();
      state.room.endAll();
      state.toasts.streams.endAll();
      notifications.closeAll();
    },
  });
}

// ─── Lesson 2: fan-out ───────────────────────────────────────────────────────
//
// The story of the post "Django 3.1 Async". /api/ is a slow endpoint: it
// waits, then answers. The aggregated view calls it ten times on this same
// server and answers with all ten answers. Awaiting the ten calls together
// takes about one wait; awaiting them one after another takes ten; and neither
// stops a countdown, because awaiting is not blocking. /api/blocking/ is the
// mistake, on purpose: the same wait as a synchronous sleep, which stops
// everything this process serves until it ends.

/** How long /api/ waits, unless ?delay= says otherwise. */
export const API_DELAY_MS = 1000;
export const DELAY_RANGE = { min: 0, max: 10_000 };
/** How many calls the aggregated view makes, unless ?n= says otherwise. */
export const FAN_OUT = 10;
export const FAN_OUT_RANGE = { min: 1, max: 50 };
/** A call to this server that has no answer after this long fails: httpx's default read timeout, the one the post ran into. */
export const SELF_CALL_TIMEOUT_MS = 5000;
export const TASK_ID = /^[A-Za-z0-9_-]{1,20}$/;
/** Which endpoint the aggregated view calls, by ?via=. */
export const VIA: Record<string, string> = { api: "/api/", blocking: "/api/blocking/" };

export interface ApiCalls {
  inFlight: number;
  peak: number;
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** Blocks the whole thread for `ms`, like Python's time.sleep(): nothing else in this process runs meanwhile. */
export function sleepSync(ms: number): void {
  if (ms > 0) Atomics.wait(sleeper, 0, 0, ms);
}

/** Where a server can call itself: the address it listens on, or loopback when it listens on every address. */
export function selfOrigin(server: net.Server): string {
  const { address, port } = server.address() as net.AddressInfo;
  const host = address === "0.0.0.0" ? "127.0.0.1" : address === "::" ? "::1" : address;
  return `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
}

/** What /api/ is asked for: ?delay= and, when given, ?task_id=, which the answer repeats. */
export function readApiOptions(url: URL): { delay: number; taskId: string | null } {
  const delayParam = url.searchParams.get("delay");
  const taskId = url.searchParams.get("task_id");
  if (taskId !== null && !TASK_ID.test(taskId)) throw new RequestError(400, "task_id must be 1 to 20 characters of A-Z, a-z, 0-9, _ and -.");
  return { delay: delayParam === null ? API_DELAY_MS : wholeNumber("delay", delayParam, DELAY_RANGE), taskId };
}

/** What the aggregated view is asked for: ?n= calls, each with ?delay=. */
export function readFanOutOptions(url: URL): { n: number; delay: number } {
  const nParam = url.searchParams.get("n");
  const n = nParam === null ? FAN_OUT : wholeNumber("n", nParam, FAN_OUT_RANGE);
  return { n, delay: readApiOptions(url).delay };
}

/** The post's answer, the task id included when the caller gave one. */
export function apiAnswer(taskId: string | null): { message: string; task_id?: string } {
  return taskId === null ? { message: "Hello Async World!" } : { message: "Hello Async World!", task_id: taskId };
}

/** The n calls of one aggregated view: task_id 0 to n - 1, each passing the delay on. */
export function taskUrls(origin: string, path: string, { n, delay }: { n: number; delay: number }): string[] {
  return Array.from({ length: n }, (_, taskId) => `${origin}${path}?task_id=${taskId}&delay=${delay}`);
}

/** The aggregated view's answer: the n answers in task order, and how long the calls took. */
export function aggregatedAnswer(responses: unknown[], startedAt: number) {
  const seconds = ((performance.now() - startedAt) / 1000).toFixed(2);
  return { message: "Hello Async World!", responses, debug_message: `fetch executed in ${seconds} seconds.` };
}

/** The one sentence for a call that timed out (504) or failed otherwise (502); `why` may explain the timeout. */
export function callTimedOut(url: string, why = ""): RequestError {
  return new RequestError(504, `The call to ${pathOf(url)} got no answer within ${SELF_CALL_TIMEOUT_MS / 1000} s (its read timeout)${why}.`);
}

export function callFailed(url: string, what: string): RequestError {
  return new RequestError(502, `The call to ${pathOf(url)} failed: ${what}.`);
}

function pathOf(url: string): string {
  const { pathname, search } = new URL(url);
  return pathname + search;
}

/** Counts one /api/ request as in flight while `answer` runs: the tests read the peak. */
async function counted({ apiCalls }: ServerState, answer: () => unknown): Promise<void> {
  apiCalls.inFlight++;
  apiCalls.peak = Math.max(apiCalls.peak, apiCalls.inFlight);
  try {
    await answer();
  } finally {
    apiCalls.inFlight--;
  }
}

/** The slow endpoint, done right: `await` hands the thread back while it waits. */
async function serveApi(_req: IncomingMessage, res: ServerResponse, url: URL, state: ServerState) {
  const { delay, taskId } = readApiOptions(url);
  await counted(state, () => wait(delay));
  sendJson(res, 200, apiAnswer(taskId));
}

/** The same endpoint with the mistake: a sync sleep stops every countdown of this process until it ends. */
async function serveBlockingApi(_req: IncomingMessage, res: ServerResponse, url: URL, state: ServerState) {
  const { delay, taskId } = readApiOptions(url);
  await counted(state, () => sleepSync(delay));
  sendJson(res, 200, apiAnswer(taskId));
}

/** One call to this server, its answer as JSON; a timeout or a failure becomes that call's one sentence. */
export async function callSelf(url: string): Promise<unknown> {
  let answer: Response;
  try {
    answer = await fetch(url, { signal: AbortSignal.timeout(SELF_CALL_TIMEOUT_MS) });
    if (answer.status !== 200) throw callFailed(url, `it answered ${answer.status}`);
    return await answer.json();
  } catch (error) {
    if (error instanceof RequestError) throw error;
    if ((error as Error).name === "TimeoutError") throw callTimedOut(url);
    const cause = (error as { cause?: { code?: string; message?: string } }).cause;
    throw callFailed(url, cause?.code ?? cause?.message ?? (error as Error).message);
  }
}

/** Reads ?n=, ?delay= and ?via=, and lists the calls to make. */
function plannedCalls(url: URL, state: ServerState): string[] {
  const via = url.searchParams.get("via") ?? "api";
  const path = VIA[via];
  if (path === undefined) throw new RequestError(400, `via must be ${Object.keys(VIA).join(" or ")}.`);
  return taskUrls(state.origin(), path, readFanOutOptions(url));
}

/** The post's async view: every call starts at once, and Promise.all waits for the last. */
async function serveAggregated(_req: IncomingMessage, res: ServerResponse, url: URL, state: ServerState) {
  const calls = plannedCalls(url, state);
  const startedAt = performance.now();
  const responses = await Promise.all(calls.map(callSelf));
  sendJson(res, 200, aggregatedAnswer(responses, startedAt));
}

/** The same calls awaited one after another: n waits long, yet the thread stays free between them. */
async function serveAggregatedSequential(_req: IncomingMessage, res: ServerResponse, url: URL, state: ServerState) {
  const calls = plannedCalls(url, state);
  const startedAt = performance.now();
  const responses: unknown[] = [];
  for (const call of calls) responses.push(await callSelf(call));
  sendJson(res, 200, aggregatedAnswer(responses, startedAt));
}

ROUTES["/api/"] = { GET: serveApi };
ROUTES["/api/aggregated/"] = { GET: serveAggregated };
ROUTES["/api/aggregated/sequential/"] = { GET: serveAggregatedSequential };
ROUTES["/api/blocking/"] = { GET: serveBlockingApi };

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
  /** Drops what is kept of a topic (a visitor's toasts, once that visitor is forgotten); its ids go on from where they were. */
  forget(topic: string): Promise<void>;
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

  /** A topic nobody follows goes entirely; one with live subscribers keeps its last id, so they see no repeat. */
  async forget(topicName: string): Promise<void> {
    const topic = this.topics.get(topicName);
    if (!topic) return;
    if (topic.subscribers.size === 0) this.topics.delete(topicName);
    else topic.kept = [];
  }

  /** Ends every subscription (their generators return) and refuses further publishing. */
  async close(): Promise<void> {
    this.closed = true;
    for (const topic of this.topics.values()) for (const subscriber of topic.subscribers) subscriber.wake();
  }
}

// ─── Lesson 3: the room's stream ─────────────────────────────────────────────

/**
 * What a client sees of one event: its id, the fields of its data (an
 * object), when it was published. The room's message is {"id", "name", "text", "at"}.
 */
export function eventJson({ id, data, at }: HubEvent): Record<string, unknown> {
  return { id, ...(data as object), at };
}

/** Each event's wire text, made once however many streams send it. */
const wireText = new WeakMap<HubEvent, string>();

/** One hub event on the wire: `event: message`, `id: 42`, `data: {...}`; a gap has no id. */
export function hubEventToSse(event: HubEvent | HubGap): string {
  if (isGap(event)) return formatEvent("gap", JSON.stringify({ after: event.after }));
  let text = wireText.get(event);
  if (text === undefined) wireText.set(event, (text = formatEvent(event.type, JSON.stringify(eventJson(event)), event.id)));
  return text;
}

/** A gap is the one thing a subscription yields that has no id. */
export function isGap(item: HubEvent | HubGap): item is HubGap {
  return !("id" in item);
}

/** How many tabs are in the room, as the page shows it. */
export function presenceEvent(tabs: number): string {
  // The pid tells tabs apart when --workers N runs several processes, each with a room of its own.
  return formatEvent("presence", JSON.stringify({ tabs, pid: process.pid }));
}

/**
 * The room's events for one reader: the last few (or, after a reconnect,
 * exactly those after the last id it saw), then every event as it is
 * published, until `signal` aborts. The countdown's generator awaited a timer;
 * this one awaits the hub. The SSE stream and the WebSocket both read it.
 */
export async function* roomEvents(hub: Hub, lastEventId: number | undefined, signal: AbortSignal): AsyncGenerator<HubEvent | HubGap> {
  let after = lastEventId;
  if (after === undefined) {
    const recent = await hub.history(ROOM_TOPIC, { limit: ROOM_REPLAY });
    yield* recent;
    // Anything published while those were written is replayed by the hub, from here.
    after = recent.at(-1)?.id ?? 0;
  }
  yield* hub.subscribe(ROOM_TOPIC, { after, signal });
}

/** The SSE messages of one room stream: `event: message`, and later `message_updated`, `message_deleted`. */
export async function* roomStream(hub: Hub, lastEventId: number | undefined, signal: AbortSignal) {
  for await (const event of roomEvents(hub, lastEventId, signal)) yield hubEventToSse(event);
}

/**
 * The SSE streams of one kind open in this process (the room's, the toasts'),
 * and the one timer that gives the silent ones a heartbeat: one timer for all
 * of them, not one per stream. It stops when the last stream closes.
 */
export class OpenStreams {
  /** Each open stream: whether it wrote since the last beat, and the head count it was last told. */
  protected streams = new Map<ServerResponse, { wrote: boolean; told: number }>();
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private heartbeat: number;

  constructor(heartbeat: number) {
    this.heartbeat = heartbeat;
  }

  get size(): number {
    return this.streams.size;
  }

  open(res: ServerResponse) {
    this.streams.set(res, { wrote: false, told: 0 });
    this.heartbeatTimer ??= setInterval(() => this.beat(), this.heartbeat);
  }

  /** The stream wrote something, so it needs no heartbeat this round. */
  wrote(res: ServerResponse) {
    const stream = this.streams.get(res);
    if (stream) stream.wrote = true;
  }

  close(res: ServerResponse) {
    this.streams.delete(res);
    if (this.streams.size > 0) return;
    // Nobody left: no timer stays behind.
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
  }

  /** Ends every stream cleanly (on Ctrl-C); browsers reconnect with the last id they saw. */
  endAll() {
    for (const res of this.streams.keys()) res.end();
  }

  /**
   * Writes what `source` yields to one stream, waiting for a slow reader to
   * drain, until the client leaves (its "close" aborts the source's signal),
   * the server stops, or the hub drops a reader that fell too far behind: that
   * stream is cut, not ended, so its browser reconnects with the last id it
   * read and is replayed the rest. Says how many events went out, and why it ended.
   */
  async pump(res: ServerResponse, source: (signal: AbortSignal) => AsyncIterable<string>, opened: () => void): Promise<{ sent: number; why: string }> {
    const left = new AbortController();
    const leave = () => left.abort();
    res.on("close", leave);
    this.open(res);
    opened();
    let why = "the client left";
    let sent = 0;
    try {
      for await (const message of source(left.signal)) {
        this.wrote(res);
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

/** The heartbeat of the room's and the toasts' streams: a comment, which EventSource ignores. */
export const STILL_HERE = ": still here\n\n";

/**
 * The room's open streams in this process. Presence is not stored in the hub:
 * it is this process's head count, sent to every stream shortly after it
 * changes, at most once per PRESENCE_DELAY_MS however many tabs arrive.
 */
export class RoomStreams extends OpenStreams {
  private presenceTimer: NodeJS.Timeout | undefined;

  override open(res: ServerResponse) {
    super.open(res);
    this.presenceTimer ??= setTimeout(() => this.tellPresence(), PRESENCE_DELAY_MS);
  }

  override close(res: ServerResponse) {
    super.close(res);
    if (this.streams.size > 0) {
      this.presenceTimer ??= setTimeout(() => this.tellPresence(), PRESENCE_DELAY_MS);
      return;
    }
    clearTimeout(this.presenceTimer);
    this.presenceTimer = undefined;
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
  const from = lastEventId === undefined ? `with the last ${ROOM_REPLAY} messages` : `after message ${lastEventId}`;
  const { sent, why } = await room.pump(
    res,
    (signal) => roomStream(hub, lastEventId, signal),
    () => quiet || log(`room stream opened for ${clientName(req.socket)}, ${from} (${room.size} in the room)`),
  );
  if (!quiet) log(`room stream closed after ${sent} events: ${why} (${room.size} in the room)`);
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
  // Each with its type: lesson 4's changes and deletions come in the same list as the messages.
  sendJson(res, 200, events.map((event) => ({ type: event.type, ...eventJson(event) })));
};

/** Posts one message: checks where it comes from, reads and checks it, publishes it, answers 201 with it. */
const postMessage: Handler = async (req, res, url, { hub, log, quiet }) => {
  checkOrigin(req);
  const type = contentType(req);
  const body = await readBody(req, res);
  const fields = type === "application/json" ? parseJsonBody(body) : Object.fromEntries(new URLSearchParams(body));
  // Lesson 4: the poster's public id, so that only this visitor may change or delete it later.
  const message = { name: checkField(fields, "name", NAME_MAX), text: checkField(fields, "text", TEXT_MAX), poster: readVisitor(req) ?? null };
  const event = await hub.publish(ROOM_TOPIC, "message", message);
  // Never the text itself: a log is no place for what people wrote.
  if (!quiet) log(`message ${event.id} posted (a name of ${[...message.name].length} characters)`);
  sendJson(res, 201, eventJson(event));
};

export function sendJson(res: ServerResponse, status: number, value: unknown) {
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
function checkOrigin(req: IncomingMessage, what = "Posts") {
  const origin = req.headers.origin;
  if (origin === undefined) return;
  const host = URL.canParse(origin) ? new URL(origin).host : "";
  if (host === "" || host !== req.headers.host) {
    throw new RequestError(403, `${what} from another site are refused: Origin ${origin} is not this server.`);
  }
}

function contentType(req: IncomingMessage): string {
  const type = (req.headers["content-type"] ?? "").split(";")[0]!.trim().toLowerCase();
  if (type !== "application/json" && type !== "application/x-www-form-urlencoded") {
    throw new RequestError(415, "Send the message as application/json or as a form (application/x-www-form-urlencoded).");
  }
  return type;
}

/**
 * The whole body as text, or a 413 past the limit; the connection then
 * closes, so the rest is never read. A client that hangs up mid-body ends the
 * wait too, so no request is left waiting for an end that never comes.
 */
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
    const onClose = () => {
      stop();
      reject(new RequestError(400, "The request ended before its body did."));
    };
    const stop = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("close", onClose);
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("close", onClose);
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

ROUTES["/room/"] = { GET: serveRoomPage, HEAD: serveRoomPage };
ROUTES["/room/messages"] = { GET: listMessages, POST: postMessage };
ROUTES["/room/stream"] = { GET: serveRoomStream };

// ─── Lesson 3: toasts that stay until acknowledged ───────────────────────────
//
// Seed 000's toasts: a short message for one visitor, or for everyone, that
// shows on every page that visitor has open and stays, across reloads and
// reconnects, until the visitor closes it. There are no accounts: the first
// page a browser loads gives it a `visitor` cookie. Toasts and read marks are
// hub events like the room's messages, so with --database they live in
// PostgreSQL and outlive a restart. Each visitor's stream follows two topics:
// "toasts:everyone" (the broadcasts) and "toasts:<public visitor id>" (that
// visitor's own toasts, and its read marks for both kinds).

export const TOAST_MESSAGE_MAX = 200;
/** Unread toasts a visitor keeps: past this, the oldest go, as if closed. */
export const TOASTS_UNREAD_MAX = 50;
/** Visitors whose toasts this process remembers: past this, the least recently seen go. */
export const VISITORS_MAX = 10_000;
export const TOAST_LEVELS = ["info", "success", "warning", "error"] as const;
/** How long the demo's background task may sleep. */
export const DEMO_SECONDS_RANGE = { min: 0, max: 60 };

export const VISITOR_COOKIE = "visitor";
/** The cookie's value: 128 random bits, as hex. */
const VISITOR_SECRET_BYTES = 16;
const VISITOR_SECRET = /^[0-9a-f]{32}$/;
/** Hex digits of the public visitor id: 64 bits, plenty to tell visitors apart. */
const PUBLIC_ID_LENGTH = 16;
/** Broadcasts are owned by "everyone"; a visitor's own toasts by its public id. */
export const EVERYONE = "everyone";
/** A toast id names its owner, then random bits: `everyone-3f2a...` or `<public id>-9c1d...`. */
const TOAST_ID_RANDOM_BYTES = 8;
const TOAST_ID = /^(everyone|[0-9a-f]{16})-[0-9a-f]{16}$/;

export type ToastLevel = (typeof TOAST_LEVELS)[number];

/** What a page receives, and what POST /toasts/<id>/read answers. */
export interface Toast {
  id: string;
  message: string;
  level: ToastLevel;
  at: string;
}

/** A "read" event's data: the toast acknowledged, and every toast this visitor had acknowledged that the hub still keeps. */
interface ReadMark {
  id: string;
  acknowledged: string[];
}

/** What a visitor's tabs are told: a toast to show, or the id of one to remove. */
export type ToastNews = { type: "toast"; toast: Toast } | { type: "read"; id: string };

export interface ToastOptions {
  /** The public id of the visitor it is for; everyone when omitted. */
  visitor?: string;
  level?: ToastLevel;
}

/**
 * The public visitor id: the first hex digits of the cookie's SHA-256. The
 * same in every process with no table to keep, safe to show in a page, a log
 * or a topic name, and the secret cannot be worked back out of it.
 */
export function publicVisitorId(secret: string): string {
  return createHash("sha256").update(secret).digest("hex").slice(0, PUBLIC_ID_LENGTH);
}

/** The visitor cookie's secret value, when the request carries a well-formed one. */
export function visitorSecret(req: IncomingMessage): string | undefined {
  for (const pair of (req.headers.cookie ?? "").split(";")) {
    const [name, value = ""] = pair.trim().split("=");
    if (name === VISITOR_COOKIE && VISITOR_SECRET.test(value)) return value;
  }
  return undefined;
}

/**
 * A new visitor cookie. HttpOnly: no script in a page can read it, so a
 * message that got rendered as HTML still could not steal it. SameSite=Strict:
 * the browser leaves it out of any request another site starts, so a page
 * elsewhere cannot acknowledge or create toasts in this visitor's name.
 */
export function newVisitorCookie(): string {
  return `${VISITOR_COOKIE}=${randomBytes(VISITOR_SECRET_BYTES).toString("hex")}; HttpOnly; SameSite=Strict; Path=/`;
}

/** The public id of the request's visitor, or a 401 with a sentence. */
function requireVisitor(req: IncomingMessage): string {
  const secret = visitorSecret(req);
  if (!secret) throw new RequestError(401, "No visitor cookie: open a page of this server first, then send the visitor cookie it set.");
  return publicVisitorId(secret);
}

export function toastTopic(owner: string): string {
  return `toasts:${owner}`;
}

/** A message as a toast takes it: trimmed, 1 to the maximum characters, no control characters. */
export function checkToastMessage(message: string): string {
  return checkField({ message }, "message", TOAST_MESSAGE_MAX);
}

const toastsIn = (events: HubEvent[]) => events.filter((event) => event.type === "toast").map((event) => event.data as Toast);

/** Every toast id the read marks kept in a visitor's topic name: each one's own, and each one's list. */
function acknowledgedIn(own: HubEvent[]): Set<string> {
  const acknowledged = new Set<string>();
  for (const event of own) {
    if (event.type !== "read") continue;
    const mark = event.data as ReadMark;
    acknowledged.add(mark.id);
    for (const id of mark.acknowledged) acknowledged.add(id);
  }
  return acknowledged;
}

export function toastEvent(toast: Toast): string {
  return formatEvent("toast", JSON.stringify(toast), toast.id);
}

export function readEvent(id: string): string {
  return formatEvent("read", JSON.stringify({ id }));
}

/** Yields from several subscriptions as their events come; ends when all of them have. */
async function* merge<T>(sources: AsyncGenerator<T>[]): AsyncGenerator<T> {
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

/**
 * The toasts of one process: making them, acknowledging them, streaming them,
 * and the demo's background tasks.
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
 * read, which writes a new mark (see keepUnreadBound).
 */
export class Toasts {
  readonly streams: OpenStreams;
  private hub: Hub;
  private log: (line: string) => void;
  /** Visitors, least recently seen first (a Set keeps insertion order). */
  private visitors = new Set<string>();
  private boundsSaid = new Set<string>();
  /** Aborted on Ctrl-C: every demo task still sleeping stops, with no error and no timer left. */
  private tasks = new AbortController();
  private tasksPending = 0;

  constructor(hub: Hub, log: (line: string) => void, heartbeat: number) {
    this.hub = hub;
    this.log = log;
    this.streams = new OpenStreams(heartbeat);
  }

  /**
   * Seed 000's create_toast, for code that cannot await: returns the toast at
   * once. With the in-memory hub it is stored before this returns; with
   * PostgreSQL a moment later (a failure is logged).
   */
  createToast(message: string, options: ToastOptions = {}): Toast {
    const { toast, stored } = this.publishToast(message, options);
    stored.catch((error: Error) => this.log(`toasts: toast ${toast.id} was not stored: ${error.message}`));
    return toast;
  }

  /** Seed 000's async_create_toast: resolves once the toast is stored and on its way to every open stream. */
  async createToastAsync(message: string, options: ToastOptions = {}): Promise<Toast> {
    const { toast, stored } = this.publishToast(message, options);
    await stored;
    return toast;
  }

  private publishToast(message: string, { visitor, level = "info" }: ToastOptions) {
    if (!TOAST_LEVELS.includes(level)) throw new RequestError(400, `level must be one of ${TOAST_LEVELS.join(", ")}.`);
    const owner = visitor ?? EVERYONE;
    const toast: Toast = { id: `${owner}-${randomBytes(TOAST_ID_RANDOM_BYTES).toString("hex")}`, message: checkToastMessage(message), level, at: new Date().toISOString() };
    if (visitor) this.seen(visitor);
    const published = this.hub.publish(toastTopic(owner), "toast", toast);
    const stored = visitor ? published.then(() => this.keepUnreadBound(visitor)) : published.then(() => {});
    return { toast, stored };
  }

  /** A line from the server's terminal, as a toast for everyone; an empty line is skipped, a long one cut. */
  fromPresenter(line: string): Toast | undefined {
    const characters = [...line.replace(/\p{Cc}/gu, " ").trim()];
    if (characters.length === 0) return undefined;
    if (characters.length > TOAST_MESSAGE_MAX) {
      this.sayOnce("message", `toasts: a line over ${TOAST_MESSAGE_MAX} characters is cut to that length (said once)`);
    }
    const toast = this.createToast(characters.slice(0, TOAST_MESSAGE_MAX).join(""));
    this.log(`toast ${toast.id} for everyone, from the presenter`);
    return toast;
  }

  /** Marks a toast read for this visitor and returns it: 404 when unknown, 403 when it is another visitor's. */
  async read(visitor: string, toastId: string): Promise<Toast> {
    const owner = TOAST_ID.exec(toastId)?.[1];
    if (!owner) throw new RequestError(404, "There is no toast with that id.");
    const known = await this.known(visitor);
    const events = owner === visitor ? known.own : owner === EVERYONE ? known.everyone : await this.hub.history(toastTopic(owner));
    const toast = toastsIn(events).find((candidate) => candidate.id === toastId);
    if (!toast) throw new RequestError(404, "There is no toast with that id.");
    // Seed 000's IsOwner: a visitor acknowledges its own toasts and the broadcasts, nobody else's.
    if (owner !== visitor && owner !== EVERYONE) throw new RequestError(403, "That toast is another visitor's: only its owner may mark it read.");
    if (!known.acknowledged.has(toastId)) await this.markRead(visitor, toastId, known);
    return toast;
  }

  /** What the hub keeps for this visitor: its topic, the broadcasts, and what it acknowledged. */
  private async known(visitor: string) {
    const [own, everyone] = await Promise.all([this.hub.history(toastTopic(visitor)), this.hub.history(toastTopic(EVERYONE))]);
    return { own, everyone, acknowledged: acknowledgedIn(own) };
  }

  private async markRead(visitor: string, toastId: string, known: Awaited<ReturnType<Toasts["known"]>>) {
    known.acknowledged.add(toastId);
    // Only ids the hub still keeps: the list stays as short as the window.
    const kept = new Set([...toastsIn(known.own), ...toastsIn(known.everyone)].map((toast) => toast.id));
    const mark: ReadMark = { id: toastId, acknowledged: [...known.acknowledged].filter((id) => kept.has(id)) };
    await this.hub.publish(toastTopic(visitor), "read", mark);
  }

  /** Past TOASTS_UNREAD_MAX unread toasts of its own, a visitor's oldest are marked read: every tab removes them. */
  private async keepUnreadBound(visitor: string) {
    const known = await this.known(visitor);
    const unread = toastsIn(known.own).filter((toast) => !known.acknowledged.has(toast.id));
    if (unread.length <= TOASTS_UNREAD_MAX) return;
    this.sayOnce("unread", `toasts: a visitor has ${TOASTS_UNREAD_MAX} unread toasts; from now on the oldest go (said once)`);
    for (const toast of unread.slice(0, unread.length - TOASTS_UNREAD_MAX)) await this.markRead(visitor, toast.id, known);
  }

  /** Remembers the visitor as the most recently seen; past VISITORS_MAX, the least recently seen and its toasts are forgotten. */
  seen(visitor: string): void {
    this.visitors.delete(visitor);
    this.visitors.add(visitor);
    if (this.visitors.size <= VISITORS_MAX) return;
    const [oldest] = this.visitors;
    this.visitors.delete(oldest!);
    this.sayOnce("visitors", `toasts: ${VISITORS_MAX} visitors remembered; from now on the least recently seen are forgotten (said once)`);
    this.hub.forget(toastTopic(oldest!)).catch((error: Error) => this.log(`toasts: ${error.message}`));
  }

  private sayOnce(bound: string, line: string) {
    if (this.boundsSaid.has(bound)) return;
    this.boundsSaid.add(bound);
    this.log(line);
  }

  /**
   * What one visitor's tabs are told: first its unread toasts, own and
   * broadcast, oldest first, at most TOASTS_UNREAD_MAX; then, live, each new
   * toast and each read mark, so every tab removes a toast the moment another
   * tab closes it. SSE frames it below; any other transport can frame it too.
   */
  async *follow(visitor: string, signal: AbortSignal): AsyncGenerator<ToastNews> {
    const { own, everyone, acknowledged } = await this.known(visitor);
    const unread = [...toastsIn(own), ...toastsIn(everyone)].filter((toast) => !acknowledged.has(toast.id));
    unread.sort((a, b) => a.at.localeCompare(b.at));
    for (const toast of unread.slice(-TOASTS_UNREAD_MAX)) yield { type: "toast", toast };
    // From the last event read above: whatever was published since is replayed by the hub.
    const live = merge([
      this.hub.subscribe(toastTopic(visitor), { after: own.at(-1)?.id ?? 0, signal }),
      this.hub.subscribe(toastTopic(EVERYONE), { after: everyone.at(-1)?.id ?? 0, signal }),
    ]);
    for await (const event of live) {
      // A gap is followed by everything kept; toasts a page already shows are recognised by their id.
      if (event.type === "toast") yield { type: "toast", toast: (event as HubEvent<Toast>).data };
      if (event.type === "read") yield { type: "read", id: (event as HubEvent<ReadMark>).data.id };
    }
  }

  /** The same, as SSE: `event: toast` with the toast, `event: read` with its id. */
  async *stream(visitor: string, signal: AbortSignal): AsyncGenerator<string> {
    for await (const news of this.follow(visitor, signal)) yield news.type === "toast" ? toastEvent(news.toast) : readEvent(news.id);
  }

  /**
   * Seed 000's demo: "Sleep running for at least N second(s)..." now, the
   * message after N seconds. The task outlives the request that started it.
   */
  async sleepTask(visitor: string, message: string, seconds: number): Promise<void> {
    const { signal } = this.tasks;
    if (signal.aborted) return;
    this.tasksPending++;
    try {
      await this.createToastAsync(`Sleep running for at least ${seconds} second(s)...`, { visitor });
      await wait(seconds * 1000, undefined, { signal });
      await this.createToastAsync(message, { visitor, level: "success" });
    } catch (error) {
      if (!signal.aborted) this.log(`toasts: a demo task failed: ${(error as Error).message}`);
    } finally {
      this.tasksPending--;
    }
  }

  /** Stops every demo task still sleeping (on Ctrl-C); returns how many there were. */
  cancelTasks(): number {
    this.tasks.abort();
    return this.tasksPending;
  }
}

// ─── Lesson 3: the toasts' handlers and the middleware ───────────────────────

/** Streams one visitor's toasts to one tab (or to the one shared worker of all its tabs). */
const serveToastStream: Handler = async (req, res, url, { toasts, log, quiet }) => {
  const visitor = requireVisitor(req);
  toasts.seen(visitor);
  res.writeHead(200, SSE_HEADERS);
  res.flushHeaders();
  const { sent, why } = await toasts.streams.pump(
    res,
    (signal) => toasts.stream(visitor, signal),
    () => quiet || log(`toast stream opened for visitor ${visitor} (${toasts.streams.size} open)`),
  );
  if (!quiet) log(`toast stream closed after ${sent} events: ${why} (${toasts.streams.size} open)`);
};

/** POST /toasts/<id>/read: the owner acknowledges a toast; 200 with the toast. */
const readToast: Handler = async (req, res, url, { toasts, log, quiet }) => {
  checkOrigin(req);
  const visitor = requireVisitor(req);
  toasts.seen(visitor);
  // Left encoded: a toast id has only letters, digits and dashes, so anything encoded is no toast's id.
  const toastId = url.pathname.split("/")[2] ?? "";
  const toast = await toasts.read(visitor, toastId);
  if (!quiet) log(`toast ${toast.id} read by visitor ${visitor}`);
  sendJson(res, 200, toast);
};

/** Seed 000's demo form: starts the background task, and answers at once with 303 back to the page. */
const startDemo: Handler = async (req, res, url, { toasts, log, quiet }) => {
  checkOrigin(req);
  const visitor = requireVisitor(req);
  if (contentType(req) !== "application/x-www-form-urlencoded") throw new RequestError(415, "Send the demo as a form (application/x-www-form-urlencoded).");
  const fields = Object.fromEntries(new URLSearchParams(await readBody(req, res)));
  const message = checkToastMessage(fields.message ?? "");
  const seconds = wholeNumber("seconds", fields.seconds ?? "", DEMO_SECONDS_RANGE);
  void toasts.sleepTask(visitor, message, seconds);
  if (!quiet) log(`toast demo started for visitor ${visitor}: the second toast in ${seconds} s`);
  res.writeHead(303, { Location: "/toasts/" }).end();
};

let toastPages: { demo: string; snippet: string; worker: string } | undefined;

/** The demo page, the snippet every page gets, and the shared worker's script, from pages/, read once. */
function readToastPages() {
  const read = (name: string) => readFileSync(new URL(`./pages/${name}`, import.meta.url), "utf8");
  toastPages ??= {
    demo: read("toasts.html"),
    snippet: `<style>\n${read("toasts.css")}</style>\n<script type="module">\n${read("toasts.js")}</script>\n`,
    worker: read("toasts-worker.js"),
  };
  return toastPages;
}

const serveDemoPage: Handler = (req, res) => {
  const page = readToastPages().demo;
  res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Content-Length": Buffer.byteLength(page) });
  res.end(page);
};

const serveToastWorker: Handler = (req, res) => {
  const script = readToastPages().worker;
  res.writeHead(200, { "Content-Type": "text/javascript; charset=utf-8", "Content-Length": Buffer.byteLength(script) });
  res.end(script);
};

/** The page with the toasts' style and script put in before </body> (else before </html>, else at the end). */
export function withToasts(page: string): string {
  const { snippet } = readToastPages();
  const at = page.lastIndexOf("</body>") !== -1 ? page.lastIndexOf("</body>") : page.lastIndexOf("</html>");
  return at === -1 ? page + snippet : page.slice(0, at) + snippet + page.slice(at);
}

/**
 * Seed 000's middleware, the way django-debug-toolbar's works: every HTML
 * answer gets the toasts inserted, and no page carries a copy of its own.
 * It holds back writeHead until end(), where the whole page is known, puts
 * the toasts in, fixes Content-Length, and gives a browser that has no visitor
 * cookie yet a new one. Anything that is not HTML passes untouched.
 */
function addToasts(req: IncomingMessage, res: ServerResponse): void {
  const writeHead = res.writeHead.bind(res);
  const end = res.end.bind(res);
  let held: { status: number; headers: http.OutgoingHttpHeaders } | undefined;
  res.writeHead = ((status: number, ...rest: unknown[]) => {
    const headers = rest.find((arg) => typeof arg === "object" && arg !== null) as http.OutgoingHttpHeaders | undefined;
    if (!String(headers?.["Content-Type"] ?? "").startsWith("text/html")) return writeHead(status, ...(rest as []));
    held = { status, headers: { ...headers } };
    return res;
  }) as typeof res.writeHead;
  res.end = ((page?: unknown) => {
    if (!held) return end(page as never);
    const body = withToasts(Buffer.isBuffer(page) ? page.toString("utf8") : String(page ?? ""));
    const cookie = visitorSecret(req) ? {} : { "Set-Cookie": newVisitorCookie() };
    writeHead(held.status, { ...held.headers, ...cookie, "Content-Length": Buffer.byteLength(body) });
    return end(body);
  }) as typeof res.end;
}

ROUTES["/toasts/"] = { GET: serveDemoPage, HEAD: serveDemoPage };
ROUTES["/toasts/stream"] = { GET: serveToastStream };
ROUTES["/toasts/demo"] = { POST: startDemo };
ROUTES["/toasts/worker.js"] = { GET: serveToastWorker };
ROUTES["/toasts/:id/read"] = { POST: readToast };

// ─── Lesson 3: toasts from the terminal ──────────────────────────────────────
//
// At a workshop the presenter types a line where the server runs, and every
// screen shows it. With --workers N only the primary reads the terminal, and
// hands each line to one worker, whose hub publishes it: with --database that
// reaches every process; without, only that worker's tabs.

/** A message over IPC from the primary to a worker: one line from the terminal. */
interface PresenterLine {
  presenterLine: string;
}

/** Calls `onLine` for each line of standard input. When it ends (or is /dev/null) the server goes on serving. */
export function readPresenterLines(onLine: (line: string) => void): void {
  const lines = createInterface({ input: process.stdin });
  lines.on("line", onLine);
  lines.on("close", () => logLine("standard input closed: no more toasts from this terminal; still serving"));
}

/** In a worker: toasts from the lines its primary forwards. */
function hearPresenterLines(toasts: Toasts): void {
  process.on("message", (message: Partial<PresenterLine>) => {
    if (typeof message?.presenterLine === "string") toasts.fromPresenter(message.presenterLine);
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

/** How long the primary gives its workers to stop (each has its own grace) before it kills them. */
const WORKERS_STOP_MS = SHUTDOWN_GRACE_MS * 1.5;

/**
 * The primary of `--workers N` serves nothing itself. It forks N workers,
 * prints the banner once the first one listens (on port 0 it learns the port
 * only then), replaces any worker that dies, and on Ctrl-C asks each to stop
 * and waits for them, never longer than WORKERS_STOP_MS.
 */
export async function superviseWorkers(count: number, host: string, port: number, databaseUrl: string): Promise<void> {
  // Try the address and the database once here, so a busy port or a database that is down is one sentence, not one per worker.
  for (const probe of await listen(net.createServer(), host, port)) await new Promise((resolve) => probe.close(resolve));
  if (databaseUrl) {
    const sql = await openDatabase(databaseUrl);
    await createTables(sql, databaseUrl);
    await sql.end();
  }

  let stopping = false;
  let bannerPrinted = false;
  const listened = new Set<number>();
  const alive = () => Object.values(cluster.workers ?? {}).filter((worker) => worker !== undefined);

  // A worker listens once per address (twice for localhost); the first time counts.
  cluster.on("listening", (worker, address) => {
    if (listened.has(worker.id)) return;
    listened.add(worker.id);
    if (!bannerPrinted) {
      printBanner(host, address.port, count, databaseUrl);
      // Only now: a line typed before a worker serves waits in standard input until then.
      forwardPresenterLines(() => alive().filter((serving) => listened.has(serving.id)));
    }
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
    }, WORKERS_STOP_MS).unref();
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

/** In the primary: each line of the terminal to the next serving worker in turn; one that just died is skipped. */
function forwardPresenterLines(serving: () => Worker[]): void {
  let next = 0;
  readPresenterLines((line) => {
    const connected = serving().filter((worker) => worker.isConnected());
    const worker = connected[next++ % Math.max(1, connected.length)];
    if (worker) worker.send({ presenterLine: line } satisfies PresenterLine);
    else logLine("primary: no worker is serving, so that line made no toast");
  });
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

/**
 * Creates the tables when missing, or exits with one sentence. The primary of
 * --workers N does it before any worker starts, and every process does it
 * again at its own start (a second time changes nothing). Processes that start
 * together, on this machine or another, take turns under a lock: two running
 * "create table if not exists" at the same moment can both try to create, and
 * one of them would fail.
 */
async function createTables(sql: Sql, url: string): Promise<void> {
  await sql
    .begin(async (tx) => {
      await tx`select pg_advisory_xact_lock(hashtext(${HUB_CHANNEL}))`;
      await tx.unsafe(SCHEMA);
    })
    .catch((error: Error) => exitWith(1, `Cannot create the hub's tables in ${redactUrl(url)}: ${error.message}.`));
}

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
    await createTables(sql, url);
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

  /** A database that does not answer is this server's trouble, not the request's: a 503 with one sentence (which the router logs). */
  private async ask<T>(query: () => Promise<T>): Promise<T> {
    try {
      return await query();
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? "";
      if (!CONNECTION_ERRORS.has(code)) throw error;
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

  /** Deletes the topic's events; its row in hub_topics stays, so ids never start again from 1 under another process's copy. */
  async forget(topic: string): Promise<void> {
    if (this.local.subscribers(topic) === 0) this.loaded.delete(topic);
    await this.local.forget(topic);
    await this.sql`delete from hub_events where topic = ${topic}`;
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
    for (let pauseMs = RECONNECT_FIRST_MS; ; pauseMs = Math.min(pauseMs * 2, RECONNECT_MAX_MS)) {
      const stopped = await wait(pauseMs, false, { signal: this.closing.signal }).catch(() => true);
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

// ─── Lesson 4: two-way ───────────────────────────────────────────────────────
//
// Seed 002 adds push to a REST API: one WebSocket endpoint where the client
// names what it wants to follow, `{"object_type": "room", "id": "lobby"}`, the
// server checks that this visitor may see it and adds the socket to a group,
// and every save that really changed something is sent to the group. Here the
// groups are the hub's topics (no second hub), and the same room is served
// over both transports, so a reader can compare them side by side.

export const NOTIFICATIONS_PATH = "/ws/notifications";
/** A frame larger than this closes the socket with 1009 ("message too big"): nothing we accept comes near it. */
export const WS_FRAME_LIMIT_BYTES = 4 * 1024;
/** Subscriptions one socket may hold at once; the next one gets an ERROR. */
export const WS_SUBSCRIPTIONS_MAX = 100;
/** Bytes a socket may hold unsent, past what the kernel took, before it is cut: a reader that stopped reading must not hold memory for everyone else. */
export const WS_UNSENT_LIMIT_BYTES = 256 * 1024;
/** How often every socket is pinged; one that has not answered the previous ping by then is dropped. */
export const WS_PING_INTERVAL_MS = 30_000;

/**
 * One place decides what a subscriber receives: the hub's event type on the
 * left, the WebSocket message type on the right (seed 002's Redux names).
 * An event type missing here is never sent over a WebSocket.
 */
export const WS_MESSAGE_TYPES: Readonly<Record<string, string>> = {
  message: "MESSAGE_CREATED",
  message_updated: "MESSAGE_UPDATED",
  message_deleted: "MESSAGE_DELETED",
  toast: "TOAST_CREATED",
  read: "TOAST_READ",
  // Not an object's change, but the subscriber must know, as with SSE's `event: gap`.
  gap: "GAP",
};

/** Each event's WebSocket message, built once however many sockets it goes to. */
const wsMessages = new WeakMap<HubEvent | HubGap, string>();

/** A WebSocket message: `{"type": "MESSAGE_CREATED", "payload": {...}}`, its type from the table above. */
export function wsMessage(type: string, payload: unknown): string {
  return JSON.stringify({ type: WS_MESSAGE_TYPES[type], payload });
}

/** One hub event as a WebSocket message; its payload is what SSE sends as `data:`. */
export function hubEventToWs(event: HubEvent | HubGap): string {
  let message = wsMessages.get(event);
  if (message === undefined) {
    message = wsMessage(event.type, event.type === "gap" ? { after: (event as HubGap).after } : eventJson(event as HubEvent));
    wsMessages.set(event, message);
  }
  return message;
}

// ─── Lesson 4: REST on the room's messages ───────────────────────────────────
//
// Seed 002's viewset: GET, PUT and DELETE on one message. The room's state is
// its events: a message is its `message` event, changed by later
// `message_updated` and `message_deleted` events, each with an id of its own,
// so SSE replay and WebSocket `after` stay exact. The hub keeps the last
// HUB_KEEP events of the room, and a message older than those is gone.

/** A message as it stands now. */
export interface RoomMessage {
  id: number;
  name: string;
  text: string;
  poster: string | null; // the public id of the visitor who posted it; null when it had no cookie
  at: string;
}

/** A message as it stands now, from the room's kept events, and the id of the newest of those events. */
export async function findMessage(hub: Hub, id: number): Promise<{ message?: RoomMessage; lastId: number }> {
  const events = await hub.history(ROOM_TOPIC);
  let message: RoomMessage | undefined;
  for (const event of events) {
    const data = event.data as Partial<RoomMessage> & { message?: number };
    if (event.type === "message" && event.id === id) message = eventJson(event) as unknown as RoomMessage;
    else if (message && data.message === id && event.type === "message_updated") message = { ...message, text: data.text! };
    else if (message && data.message === id && event.type === "message_deleted") message = undefined;
  }
  return { message, lastId: events.at(-1)?.id ?? 0 };
}

/** The message named by the path /room/messages/<id>, or a 404. */
async function messageFromPath(hub: Hub, url: URL): Promise<RoomMessage> {
  const id = wholeNumber("The message id", url.pathname.split("/").at(-1)!, MESSAGE_ID_RANGE);
  const { message } = await findMessage(hub, id);
  if (!message) throw new RequestError(404, `There is no message ${id} in the room (it may be deleted, or older than the last ${HUB_KEEP} events).`);
  return message;
}

/** The public id of the request's visitor (lesson 3's cookie), or undefined without one. */
export function readVisitor(req: IncomingMessage): string | undefined {
  const secret = visitorSecret(req);
  return secret === undefined ? undefined : publicVisitorId(secret);
}

/** Only the visitor who posted a message may change it: seed 002's permission check. */
function checkPoster(message: RoomMessage, visitor: string | undefined, verb: string) {
  if (visitor === undefined || visitor !== message.poster) {
    throw new RequestError(403, `Only the visitor who posted message ${message.id} may ${verb} it.`);
  }
}

const getMessage: Handler = async (req, res, url, { hub }) => {
  sendJson(res, 200, await messageFromPath(hub, url));
};

/** Changes a message's text. The same text again changes nothing and notifies nobody (seed 002's FieldTracker). */
const putMessage: Handler = async (req, res, url, { hub, log, quiet }) => {
  checkOrigin(req);
  const type = contentType(req);
  const body = await readBody(req, res);
  const message = await messageFromPath(hub, url);
  checkPoster(message, readVisitor(req), "change");
  const fields = type === "application/json" ? parseJsonBody(body) : Object.fromEntries(new URLSearchParams(body));
  const text = checkField(fields, "text", TEXT_MAX);
  if (text === message.text) return sendJson(res, 200, message);
  const event = await hub.publish(ROOM_TOPIC, "message_updated", { message: message.id, text });
  if (!quiet) log(`message ${message.id} changed (event ${event.id})`);
  sendJson(res, 200, { ...message, text });
};

const deleteMessage: Handler = async (req, res, url, { hub, log, quiet }) => {
  checkOrigin(req);
  const message = await messageFromPath(hub, url);
  checkPoster(message, readVisitor(req), "delete");
  const event = await hub.publish(ROOM_TOPIC, "message_deleted", { message: message.id });
  if (!quiet) log(`message ${message.id} deleted (event ${event.id})`);
  res.writeHead(204).end();
};

// ─── Lesson 4: the WebSocket endpoint ────────────────────────────────────────

/** What a client may follow, parsed from one frame: the hub topic, where to start, and which of its events to pass on. */
interface Target {
  key: string; // "room lobby", "message 42": names the subscription in replies and in {"unsubscribe": ...}
  reply: { object_type: string; id: string | number };
  topic: string;
  after?: number;
  accepts: (event: HubEvent | HubGap) => boolean;
}

/** One open socket: who it is, what it follows (each subscription stopped by its own AbortController), whether it answered the last ping. */
interface Connection {
  client: string; // its address, as the log names it
  visitor: string | undefined;
  subscriptions: Map<string, AbortController>;
  alive: boolean;
  sent: number;
}

type WsModule = typeof import("ws");

let wsModule: Promise<WsModule | undefined> | undefined;

/** The ws package, loaded at the first upgrade; undefined when it is not installed. */
function loadWs(): Promise<WsModule | undefined> {
  wsModule ??= import("ws").catch(() => undefined);
  return wsModule;
}

export const WS_MISSING = "The WebSocket endpoint needs the ws package, which is not installed: run npm ci first.";

/**
 * GET /ws/notifications without an Upgrade header: says whether the endpoint
 * works here. The page asks this when its WebSocket fails, because a browser's
 * WebSocket never shows the status of a refused handshake.
 */
const describeNotifications: Handler = async (req, res) => {
  if (!(await loadWs())) throw new RequestError(501, WS_MISSING);
  res.setHeader("Upgrade", "websocket");
  throw new RequestError(426, `${NOTIFICATIONS_PATH} speaks WebSocket: open it with new WebSocket("ws://host${NOTIFICATIONS_PATH}").`);
};

/** Answers a refused upgrade the way a handler answers a request: one sentence, then the connection closes. */
function refuseUpgrade(socket: Duplex, status: number, sentence: string) {
  const body = `${sentence}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

/** Reads one frame: a subscription, or `{"unsubscribe": {...}}`. Throws a RequestError whose sentence the ERROR reply carries. */
export function readFrame(text: string): { unsubscribe: boolean; target: Target } {
  let frame: unknown;
  try {
    frame = JSON.parse(text);
  } catch {
    throw new RequestError(400, 'The frame is not JSON; send {"object_type": "room", "id": "lobby"}.');
  }
  if (!isObject(frame)) throw new RequestError(400, 'The frame must be one JSON object, such as {"object_type": "room", "id": "lobby"}.');
  if ("unsubscribe" in frame) {
    if (!isObject(frame.unsubscribe)) throw new RequestError(400, 'unsubscribe takes what was subscribed to: {"unsubscribe": {"object_type": "room", "id": "lobby"}}.');
    return { unsubscribe: true, target: readSubscription(frame.unsubscribe) };
  }
  return { unsubscribe: false, target: readSubscription(frame) };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function readSubscription(frame: Record<string, unknown>): Target {
  const { object_type: objectType, id, after } = frame;
  if (id === undefined || id === null || id === "") throw new RequestError(400, `id is missing: the room is "lobby", a message is its number, toasts are your visitor id.`);
  switch (objectType) {
    case "room": {
      if (id !== "lobby") throw new RequestError(400, 'There is one room, and its id is "lobby".');
      const start = after === undefined ? undefined : wholeNumber("after", typeof after === "number" ? String(after) : "", MESSAGE_ID_RANGE);
      return { key: "room lobby", reply: { object_type: "room", id }, topic: ROOM_TOPIC, after: start, accepts: () => true };
    }
    case "message": {
      const messageId = wholeNumber("A message id", typeof id === "number" ? String(id) : "", MESSAGE_ID_RANGE);
      // Its changes, and a gap: the events about other messages are not this subscriber's business.
      const accepts = (event: HubEvent | HubGap) => event.type === "gap" || (event as HubEvent<{ message?: number }>).data.message === messageId;
      return { key: `message ${messageId}`, reply: { object_type: "message", id: messageId }, topic: ROOM_TOPIC, accepts };
    }
    case "toasts": {
      if (typeof id !== "string") throw new RequestError(400, "The id of toasts is a visitor id, a string.");
      return { key: `toasts ${id}`, reply: { object_type: "toasts", id }, topic: toastTopic(id), accepts: () => true };
    }
    default:
      throw new RequestError(400, "object_type must be room, message or toasts.");
  }
}

/**
 * Every WebSocket of this process. It accepts an upgrade, reads each frame
 * as a (un)subscription, checks it, and relays the hub's events; one timer
 * pings every socket. When a socket closes, its subscriptions are aborted,
 * and with the last socket the timer goes too.
 */
export class Notifications {
  private connections = new Map<WebSocket, Connection>();
  private pingTimer: NodeJS.Timeout | undefined;
  private server: Promise<WebSocketServer | undefined> | undefined;
  private state: ServerState;
  private pingInterval: number;

  constructor(state: ServerState, pingInterval: number) {
    this.state = state;
    this.pingInterval = pingInterval;
  }

  get size(): number {
    return this.connections.size;
  }

  /** Subscriptions held by every socket together. */
  get subscriptions(): number {
    let count = 0;
    for (const connection of this.connections.values()) count += connection.subscriptions.size;
    return count;
  }

  /** The server's `upgrade` event: checks the path and the Origin, loads ws, hands the socket over. */
  async upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on("error", () => {}); // a client that hangs up mid-handshake is normal
    const path = URL.canParse(req.url ?? "", "http://localhost") ? new URL(req.url ?? "", "http://localhost").pathname : "";
    if (path !== NOTIFICATIONS_PATH) return refuseUpgrade(socket, 404, `Only ${NOTIFICATIONS_PATH} speaks WebSocket here.`);
    try {
      // Browsers let any page open a WebSocket to any site: the Origin check is what keeps other sites out.
      checkOrigin(req, "Connections");
    } catch (error) {
      return refuseUpgrade(socket, 403, (error as Error).message);
    }
    const server = await this.webSocketServer();
    if (!server) return refuseUpgrade(socket, 501, WS_MISSING);
    server.handleUpgrade(req, socket, head, (webSocket) => this.opened(webSocket, req));
  }

  private webSocketServer(): Promise<WebSocketServer | undefined> {
    this.server ??= loadWs().then((ws) => ws && new ws.WebSocketServer({ noServer: true, maxPayload: WS_FRAME_LIMIT_BYTES, clientTracking: false }));
    return this.server;
  }

  private opened(socket: WebSocket, req: IncomingMessage) {
    const client = clientName(req.socket);
    const connection: Connection = { client, visitor: readVisitor(req), subscriptions: new Map(), alive: true, sent: 0 };
    this.connections.set(socket, connection);
    this.pingTimer ??= setInterval(() => this.ping(), this.pingInterval);
    if (!this.state.quiet) this.state.log(`websocket opened for ${client} (${this.connections.size} open)`);
    socket.on("error", () => {}); // the close that follows says enough
    socket.on("pong", () => (connection.alive = true));
    socket.on("message", (data, isBinary) => void this.received(socket, connection, isBinary ? undefined : data.toString()));
    socket.on("close", (code) => this.closed(socket, connection, code));
  }

  private closed(socket: WebSocket, connection: Connection, code: number) {
    for (const leave of connection.subscriptions.values()) leave.abort();
    connection.subscriptions.clear();
    this.connections.delete(socket);
    if (this.connections.size === 0) {
      clearInterval(this.pingTimer);
      this.pingTimer = undefined;
    }
    if (!this.state.quiet) this.state.log(`websocket closed for ${connection.client} after ${connection.sent} events: code ${code} (${this.connections.size} open)`);
  }

  /** The ws README's heartbeat: a socket that did not answer the last ping is dropped, every other one is pinged again. */
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

  private async received(socket: WebSocket, connection: Connection, text: string | undefined) {
    try {
      if (text === undefined) throw new RequestError(400, "Send text frames of JSON, not binary ones.");
      const { unsubscribe, target } = readFrame(text);
      if (unsubscribe) return this.unsubscribe(socket, connection, target);
      await this.subscribe(socket, connection, target);
    } catch (error) {
      if (error instanceof RequestError) return socket.send(JSON.stringify({ type: "ERROR", payload: error.message }));
      // Our fault, not the client's: say so in the log, and close as a handler would answer 500.
      this.state.log(`error: ${error instanceof Error ? error.message : String(error)}`);
      socket.close(WS_SERVER_ERROR, "something went wrong on the server");
    }
  }

  /** Checks the request and the permission, answers SUBSCRIBED, then relays the topic's events until unsubscribed or closed. */
  private async subscribe(socket: WebSocket, connection: Connection, target: Target) {
    const { subscriptions } = connection;
    if (subscriptions.has(target.key)) throw new RequestError(400, `Already subscribed to ${target.key}.`);
    if (subscriptions.size >= WS_SUBSCRIPTIONS_MAX) throw new RequestError(400, `At most ${WS_SUBSCRIPTIONS_MAX} subscriptions per connection: unsubscribe from one first.`);
    // Anyone may follow the room and its messages; only the visitor itself may follow its toasts.
    if (target.reply.object_type === "toasts" && target.reply.id !== connection.visitor) {
      throw new RequestError(403, "Only the visitor itself may follow its toasts.");
    }
    let after = target.after;
    if (target.reply.object_type === "message") {
      const found = await findMessage(this.state.hub, target.reply.id as number);
      if (!found.message) throw new RequestError(404, `There is no message ${target.reply.id} in the room.`);
      after = found.lastId; // from the state just read: a change made meanwhile is replayed, not missed
    }
    if (socket.readyState !== socket.OPEN || subscriptions.has(target.key)) return;
    const leave = new AbortController();
    subscriptions.set(target.key, leave);
    socket.send(JSON.stringify({ type: "SUBSCRIBED", payload: target.reply }));
    const from = target.after === undefined ? "" : ` after ${target.after}`;
    if (!this.state.quiet) this.state.log(`websocket ${connection.client} follows ${target.key}${from}`);
    try {
      for await (const message of this.messages(target, after, leave.signal)) {
        // Cut, not closed: a close frame would wait behind all it did not read. Its page reconnects with the last id it read.
        if (socket.bufferedAmount > WS_UNSENT_LIMIT_BYTES) return socket.terminate();
        connection.sent++;
        socket.send(message);
      }
    } catch (error) {
      if (!(error instanceof SlowSubscriberError)) throw error;
      socket.terminate(); // the hub cut it first: it fell too far behind even to be handed its events
    } finally {
      if (subscriptions.get(target.key) === leave) subscriptions.delete(target.key);
    }
  }

  /**
   * The WebSocket messages of one subscription: the room's events (with its
   * replay), one message's changes, or what a visitor's tabs are told of its
   * toasts (its unread ones first, as its SSE stream does).
   */
  private async *messages(target: Target, after: number | undefined, signal: AbortSignal): AsyncGenerator<string> {
    const { hub, toasts } = this.state;
    if (target.reply.object_type === "toasts") {
      for await (const news of toasts.follow(target.reply.id as string, signal)) yield wsMessage(news.type, news.type === "toast" ? news.toast : { id: news.id });
      return;
    }
    const events = target.reply.object_type === "room" ? roomEvents(hub, after, signal) : hub.subscribe(target.topic, { after, signal });
    for await (const event of events) {
      if (!target.accepts(event) || !(event.type in WS_MESSAGE_TYPES)) continue;
      yield hubEventToWs(event);
      // A deleted message has nothing more to say: its subscription ends.
      if (event.type === "message_deleted" && target.reply.object_type === "message") return;
    }
  }

  private unsubscribe(socket: WebSocket, connection: Connection, target: Target) {
    const leave = connection.subscriptions.get(target.key);
    if (!leave) throw new RequestError(400, `Not subscribed to ${target.key}.`);
    leave.abort();
    connection.subscriptions.delete(target.key);
    socket.send(JSON.stringify({ type: "UNSUBSCRIBED", payload: target.reply }));
  }

  /** On Ctrl-C: 1001, "going away", to every socket; the page reconnects and resumes with its last id. */
  closeAll() {
    for (const socket of this.connections.keys()) socket.close(WS_GOING_AWAY, "the server is stopping");
  }
}

/** WebSocket close codes (RFC 6455): going away, an error on the server. */
export const WS_GOING_AWAY = 1001;
export const WS_SERVER_ERROR = 1011;

ROUTES["/room/messages/:id"] = { GET: getMessage, PUT: putMessage, DELETE: deleteMessage };
ROUTES["/ws/notifications"] = { GET: describeNotifications };

// ─── The wall: both servers side by side ─────────────────────────────────────
//
// A page for a workshop projector: tiles counting on this server on the left,
// the same tiles on blocking-server.ts on the right. Its markup and script
// would crowd this file, so it lives in pages/wall.html, read once at start-up
// and served as is: the page's own script reads ?tiles=, ?blocking=, ?server=,
// ?from= and ?interval=, so nothing from a request is ever put into it.

const WALL_PAGE = readFileSync(new URL("./pages/wall.html", import.meta.url));

function serveWall(_req: IncomingMessage, res: ServerResponse): void {
  res.writeHead(200, {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Length": WALL_PAGE.byteLength,
  });
  res.end(WALL_PAGE);
}

ROUTES["/wall"] = { GET: serveWall, HEAD: serveWall };

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

Serves a countdown page and its event stream, and a room (/room/), from one async process.

  --port N         Listens on this TCP port (env PORT; default ${DEFAULT_PORT}).
  --host H         Listens on this address (env HOST; default ${DEFAULT_HOST}, meaning
                   127.0.0.1 and ::1). Use 0.0.0.0 to share it on your LAN at a workshop.
  --workers N      Runs this many processes on the one port, each serving many tabs
                   (env WEB_CONCURRENCY; default ${DEFAULT_WORKERS}).
  --database URL   Keeps the room and the toasts in PostgreSQL, shared by every process
                   (env DATABASE_URL), e.g. postgres://user:password@localhost:5432/countdown.
  --quiet          Leaves out the one line per stream opened and closed and per message
                   posted (for load tests).
  --help           Shows this help.

Each line on standard input becomes a toast for everyone (with --workers, the primary
reads it); when standard input ends or is /dev/null, the server goes on serving.`;

/** What a person reads first: where to point the browser, and what to try. */
function printBanner(host: string, port: number, workers: number, databaseUrl: string): void {
  const urls = urlsFor(host, port);
  const [url = ""] = urls;
  const who = workers === 1 ? `async, pid ${process.pid}` : `async, ${workers} worker processes, primary pid ${process.pid}`;
  console.log(`Countdown server (${who}) listening at ${urls.join(" and ")}`);
  console.log(`  Open ${url} in a tab, then in more tabs: ${workers === 1 ? "one process serves them all" : "each worker serves many"}.`);
  console.log(`  Past 5 tabs, use the page's "Open another tab" link: a browser opens at most 6 connections`);
  console.log(`  per host name and the toasts hold one, so tab6.localhost, tab7.localhost, ... each get their own.`);
  console.log(`  Raw events: curl -N ${url}sse/   Short demo: ${url}?from=10&interval=200`);
  console.log(`  Lesson 3, the room: ${url}room/ in two tabs (its stream: curl -N ${url}room/stream)`);
  console.log(`  Toasts: type a line here and press Enter: every open page shows it. Demo: ${url}toasts/`);
  console.log(`  Both servers side by side: ${url}wall (start blocking-server.ts too)`);
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
  // Before listening: the primary forwards the terminal's lines as soon as a worker serves.
  if (cluster.isWorker) hearPresenterLines(server.toasts);
  const listeners = await listen(server, host, port);
  const actualPort = (server.address() as net.AddressInfo).port;
  // A worker's banner is its primary's, and so is its terminal.
  if (cluster.isPrimary) {
    printBanner(host, actualPort, workers, databaseUrl);
    readPresenterLines((line) => server.toasts.fromPresenter(line));
  }

  let stopping = false;
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    logLine(`${why}: ending ${server.streams.size + server.room.size} open streams and ${server.notifications.size} WebSockets (their browsers will reconnect and resume)`);
    const cancelled = server.toasts.cancelTasks();
    if (cancelled > 0) logLine(`cancelled ${cancelled} toast demo tasks still sleeping`);
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
