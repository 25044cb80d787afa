/**
 * server.ts: lesson 1, a countdown streamed to every open tab by ONE process.
 *
 * The page at / counts down from 100 to "Blastoff!", one number a second. The
 * numbers arrive over Server-Sent Events from an `async function*` that awaits
 * its sleep, so while one tab's countdown waits for its next tick this process
 * is free to serve every other tab. Compare blocking-server.ts, where the same
 * countdown holds a whole worker process for as long as the tab stays open.
 * It ports the post "Why I am excited about ASGI & Django"; it needs nothing installed.
 *
 * Run it:    npx -y tsx server.ts       (or: node server.ts on Node 22.18+ / 24)
 * Then try:
 *   - open http://localhost:8000/ in a tab, then open some more: all of them count;
 *   - curl -N http://localhost:8000/sse/ shows the raw events as they are sent;
 *   - press Ctrl-C and start the server again: open tabs carry on where they were;
 *   - http://localhost:8000/?from=10&interval=200 makes a short, fast countdown.
 *
 * The later lessons live in lessons/, one file each; lessons/index.ts lists them
 * in reading order. Start-up installs them through the seam (see "The server")
 * when that folder is beside this file; copied alone, this serves lesson 1 only.
 */

import http, { type IncomingMessage, type ServerResponse } from "node:http";
import net from "node:net";
import os from "node:os";
import type { Duplex } from "node:stream";
import { existsSync, realpathSync } from "node:fs";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { parseArgs, type ParseArgsConfig } from "node:util";

// ─── Settings ────────────────────────────────────────────────────────────────

export const DEFAULT_PORT = 8000;
/** "localhost" means both loopback addresses, 127.0.0.1 and ::1 (see listen()). */
export const DEFAULT_HOST = "localhost";
/** Where a countdown starts and how long a tick lasts, unless ?from= and ?interval= say. */
export const COUNTDOWN_FROM = 100;
export const TICK_INTERVAL_MS = 1000;
export const FROM_RANGE = { min: 0, max: 100_000 };
export const INTERVAL_RANGE = { min: 10, max: 60_000 };
/** A stream that has been silent this long gets a comment line, so proxies do not drop it. */
export const HEARTBEAT_MS = 15_000;
/** --heartbeat in seconds: 0 turns it off (to watch a proxy cut a silent stream). */
export const HEARTBEAT_RANGE_S = { min: 0, max: 3600 };
/** On Ctrl-C, how long open connections get to close before the process exits anyway. */
export const SHUTDOWN_GRACE_MS = 1000;
/** The loop's delay is sampled this often, and the worst of each second is what pages see. */
const LOOP_SAMPLE_MS = 10;
const LOOP_WINDOW_MS = 1000;
/** A page is told the delay again when it moved by more than this, not at every wobble. */
export const DELAY_NEWS_MS = 20;
// The guards that keep one client from hurting every other (see "Guards" below):
/** Connections open at once: under the 20,000 files a process may hold, with room to spare. */
export const CONNECTIONS_MAX = 19_000;
/** Requests one connection may send ahead of their answers (pipelined): each answer waits. */
export const PIPELINED_MAX = 16;
/** A client that takes no byte of its waiting answer for this long is cut. */
export const STALLED_READER_MS = 30_000;

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
export async function* countdown(from: number, interval: number, res: ServerResponse,
  heartbeat = HEARTBEAT_MS) {
  const beatEvery = heartbeat > 0 ? heartbeat : Infinity; // 0: no heartbeat at all
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
      while (due - performance.now() > beatEvery) {
        await sleep(beatEvery);
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

// ─── The one thread, and how long it kept everyone waiting ───────────────────
//
// Every tab's countdown runs on this process's one thread, between awaits. While any
// code runs without awaiting (a sync sleep, a long loop), every other callback waits:
// no tick goes out anywhere. Node measures how late its loop comes round; pages show
// the worst of the last second, so a stall is a number, not just a pause.

const loopDelay = monitorEventLoopDelay({ resolution: LOOP_SAMPLE_MS });
let loopWatchers = 0;
let windowStart = 0;
let worstLastWindow = 0;
let rolling: NodeJS.Timeout | undefined;

/** Measures while at least one stream is open (on), and stops with the last one (off). */
function watchLoop(on: boolean) {
  loopWatchers += on ? 1 : -1;
  if (on && loopWatchers === 1) {
    loopDelay.reset();
    loopDelay.enable();
    windowStart = performance.now();
    worstLastWindow = 0; // a stall from before, when no stream was open, is no news
  }
  if (loopWatchers === 0) {
    loopDelay.disable();
    clearTimeout(rolling);
    rolling = undefined;
  }
}

/** The worst delay of the last whole second, in milliseconds beyond the sampling interval. */
function worstLoopDelay(): number {
  if (!rolling && performance.now() - windowStart >= LOOP_WINDOW_MS) {
    // Read a little later, not now: the tick asking may run just after a stall, before the
    // monitor's own sample that measures it, and reset() would throw that sample away.
    rolling = setTimeout(() => {
      rolling = undefined;
      // max is in nanoseconds, and includes the sampling interval itself.
      worstLastWindow = Math.max(0, Math.round(loopDelay.max / 1e6 - LOOP_SAMPLE_MS));
      loopDelay.reset();
      windowStart = performance.now();
    }, 2 * LOOP_SAMPLE_MS);
  }
  return worstLastWindow;
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

/**
 * Which process serves this stream, how many streams it holds now, its memory in bytes, and
 * (when measured) the longest its event loop kept a ready callback waiting in the last second.
 */
export function serverEvent(pid: number, streams: number, rss: number, delay?: number): string {
  const delayField = delay === undefined ? "" : `, "delay": ${delay}`;
  const figures = `"pid": ${pid}, "streams": ${streams}, "rss": ${rss}${delayField}`;
  return formatEvent("server", `{${figures}}`);
}

/**
 * The countdown may be read from any origin: it carries nothing private, and
 * the wall (a later lesson) opens each tile's stream on a host name of its
 * own. Only the stream says so; no other route does.
 */
export function allowEveryOrigin(res: ServerResponse) {
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
<link rel="icon" href="data:,"><!-- no favicon: a browser asks for none, and holds no worker -->
<style>
  body { margin: 0; min-height: 100vh; display: grid; place-content: safe center; gap: 0.5rem;
         text-align: center; font-family: system-ui, sans-serif;
         background: #10131a; color: #e8e8e8; }
  h1 { margin: 0; font-weight: 400; font-size: 1.5rem; color: #9aa3b2; }
  #countdown { font-size: min(40vw, 14rem); line-height: 1; font-variant-numeric: tabular-nums; }
  #state { font-size: 1.25rem; margin: 0; }
  #state[data-state="streaming"] { color: #6fdc8c; }
  #state[data-state="reconnecting"] { color: #f1c21b; }
  #state[data-state="finished"] { color: #78a9ff; }
  #state[data-state="cut"] { color: #ff8389; }
  /* Big enough to read from the back of a room: these lines are what a workshop points at. */
  #server, #loop, #tabs { margin: 0; color: #9aa3b2; font-size: 1.25rem; }
  #tabs small { display: block; max-width: 40rem; margin: 0.25rem auto 0; font-size: 1.1rem; }
  a { color: #78a9ff; }
</style>
<h1>Countdown</h1>
<div id="countdown">&hellip;</div>
<p id="state" data-state="connecting">connecting</p>
<p id="server">waiting for the server</p>
<p id="loop"></p>
<p id="tabs" hidden><a id="another" target="_blank" href="/">Open another tab</a>
  <small>A browser opens at most 6 connections to one host name, and every tab here keeps
  one open. So each new tab gets a name of its own (tab2.localhost, tab3.localhost, ...):
  all of them lead back to this server.</small></p>
<script type="module">
  const [countdown, state, server, loop, another] = ["countdown", "state", "server", "loop",
    "another"].map((id) => document.getElementById(id));
  const BYTES_PER_MB = 1024 * 1024;
  const RETRY_FIRST_MS = 1000;
  const RETRY_MAX_MS = 30000;
  const show = (name, text = name) => { state.dataset.state = name; state.textContent = text; };

  let last; // the last number shown
  let retryMs = RETRY_FIRST_MS;
  function follow() {
    const query = new URLSearchParams(location.search);
    if (last !== undefined) query.set("from", last - 1); // a new stream goes on where it was
    const source = new EventSource("/sse/?" + query);
    source.onopen = () => { show("streaming"); retryMs = RETRY_FIRST_MS; };
    // After a dropped connection EventSource retries on its own and sends the last id it
    // saw, so the countdown resumes. An answer that is no stream (a proxy's 502) closes it
    // for good: then this page tries again itself, waiting longer each time.
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) return show("reconnecting");
      show("cut", "cut off: trying again in " + retryMs / 1000 + " s");
      setTimeout(follow, retryMs);
      retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
    };
    source.addEventListener("i", (event) => {
      last = JSON.parse(event.data).i;
      countdown.textContent = last > 0 ? last : "Blastoff!";
      if (last === 0) { source.close(); show("finished"); }
    });
    source.addEventListener("server", tellServer);
  }
  follow();

  // "Open another tab" goes to a fresh *.localhost name, which browsers resolve
  // to this machine; shown only when this page itself was opened on loopback.
  const onLoopback = /(^|\\.)localhost$|^127\\.|^\\[::1\\]$/.test(location.hostname);
  let nextTab = Number(/^tab(\\d+)\\./.exec(location.hostname)?.[1] ?? 1) + 1;
  function updateLink() {
    const host = "tab" + nextTab + ".localhost" + (location.port ? ":" + location.port : "");
    another.href = location.protocol + "//" + host + "/" + location.search;
    another.textContent = "Open another tab (tab" + nextTab + ".localhost)";
  }
  if (onLoopback) {
    document.getElementById("tabs").hidden = false;
    updateLink();
    another.addEventListener("click", () => setTimeout(() => { nextTab += 1; updateLink(); }));
  }

  function tellServer(event) {
    const { pid, streams, rss, delay } = JSON.parse(event.data);
    const count = streams.toLocaleString("en-US") + (streams === 1 ? " stream" : " streams");
    const mb = Math.round(rss / BYTES_PER_MB);
    server.textContent = "served by pid " + pid + ", which holds " + count + " in " + mb + " MB";
    // One thread serves every tab: this is how long it kept them all waiting, at worst.
    const waited = delay === undefined ? "" : delay.toLocaleString("en-US") + " ms";
    loop.textContent = waited && "its one thread kept every tab waiting at most " + waited +
      " in the last second";
    if (streams + 1 > nextTab) {
      nextTab = streams + 1;
      if (onLoopback) updateLink();
    }
  }
</script>
</html>
`;

// ─── Handlers ────────────────────────────────────────────────────────────────

/** A handler gets the request, the response, the parsed URL, and the app it serves in. */
export type Handler = (req: IncomingMessage, res: ServerResponse, url: URL, app: App) =>
  void | Promise<void>;

/** An answer of one sentence: a user's mistake (4xx), or a failed call to elsewhere (5xx). */
export class RequestError extends Error {
  status: number;
  said: boolean; // true: a bound that logged itself once; its 5xx is not logged at every hit
  constructor(status: number, message: string, said = false) {
    super(message);
    this.status = status;
    this.said = said;
  }
}

/** Parses a whole number within bounds, or throws a 400 naming the parameter and its range. */
export function wholeNumber(name: string, text: string, { min, max }: typeof FROM_RANGE) {
  const value = /^\d{1,15}$/.test(text) ? Number(text) : NaN;
  if (value >= min && value <= max) return value;
  throw new RequestError(400, `${name} must be a whole number from ${min} to ${max}.`);
}

/**
 * The countdown a request asks for: ?from= and ?interval=, and, when a browser
 * reconnects, the Last-Event-ID it sends, which resumes the countdown at the
 * next number. `from` is -1 when the countdown already reached 0.
 */
export function readCountdownOptions(req: IncomingMessage, url: URL) {
  const read = (name: string, fallback: number, range: typeof FROM_RANGE) => {
    const text = url.searchParams.get(name);
    return text === null ? fallback : wholeNumber(name, text, range);
  };
  const lastEventId = req.headers["last-event-id"];
  const from = typeof lastEventId === "string" && lastEventId !== ""
    ? wholeNumber("Last-Event-ID", lastEventId, FROM_RANGE) - 1
    : read("from", COUNTDOWN_FROM, FROM_RANGE);
  return { from, interval: read("interval", TICK_INTERVAL_MS, INTERVAL_RANGE) };
}

/** Sends a fixed page: lesson 1's, and the later lessons' pages from pages/. */
export function sendPage(res: ServerResponse, page: string | Buffer, type = "text/html") {
  const length = Buffer.byteLength(page);
  res.writeHead(200, { "Content-Type": `${type}; charset=utf-8`, "Content-Length": length });
  res.end(page);
}

export const servePage: Handler = (req, res, url) => {
  readCountdownOptions(req, url); // a bad ?from= fails here, where the reader can see it
  sendPage(res, PAGE);
};

/** Streams one countdown to one client, for as long as its tab stays open. */
const serveCountdown: Handler = async (req, res, url, { streams, log, quiet, heartbeat }) => {
  allowEveryOrigin(res);
  const { from, interval } = readCountdownOptions(req, url);
  if (from < 0) {
    res.writeHead(204).end(); // the browser saw event 0 already: 204 says "do not reconnect"
    return;
  }
  res.writeHead(200, SSE_HEADERS);
  res.flushHeaders(); // so the browser's `open` fires now, not with the first tick
  streams.add(res);
  watchLoop(true);
  const client = clientName(req.socket);
  if (!quiet) log(`stream opened for ${client}, counting from ${from} (${streams.size} open)`);
  let eventsSent = 0;
  let told = { streams: 0, delay: 0 };
  try {
    for await (const message of countdown(from, interval, res, heartbeat)) {
      // Piggybacked on a tick, when a figure changed: how many streams this process holds,
      // in how much memory, and how long its loop kept them waiting.
      let serverNews = "";
      const now = { streams: streams.size, delay: worstLoopDelay() };
      if (now.streams !== told.streams || Math.abs(now.delay - told.delay) > DELAY_NEWS_MS) {
        told = now;
        serverNews = serverEvent(process.pid, now.streams, process.memoryUsage.rss(), now.delay);
      }
      if (message !== HEARTBEAT) eventsSent++;
      // write() says false when the client reads slower than we send: the bytes wait in
      // memory. Wait until they drain (or the client leaves) rather than buffer without bound.
      if (!res.write(serverNews + message)) await drainOrClose(res);
    }
  } finally {
    const why = res.writableEnded ? "the server is stopping"
      : res.destroyed ? "the client left" : "blastoff";
    streams.delete(res);
    watchLoop(false);
    if (!res.destroyed) res.end();
    const events = `${eventsSent} event${eventsSent === 1 ? "" : "s"}`;
    if (!quiet) log(`stream closed after ${events}: ${why} (${streams.size} open)`);
  }
};

/** An address as a URL or a log shows it: 127.0.0.1, [::1]. */
export const bracketed = (address: string) => (address.includes(":") ? `[${address}]` : address);

/** The client's address and port as a log shows them: 127.0.0.1:51712, [::1]:51712. */
export const clientName = ({ remoteAddress = "?", remotePort }: net.Socket) =>
  `${bracketed(remoteAddress)}:${remotePort}`;

/**
 * Resolves when the response can take more data again, or when it closed: never hangs. A
 * client that takes nothing for STALLED_READER_MS is cut, so its bytes do not wait forever.
 */
export function drainOrClose(res: ServerResponse, stalledMs = STALLED_READER_MS): Promise<void> {
  return new Promise((resolve) => {
    const stalled = setTimeout(() => res.destroy(), stalledMs);
    const done = () => {
      clearTimeout(stalled);
      res.off("drain", done).off("close", done);
      resolve();
    };
    res.on("drain", done).on("close", done);
  });
}

// ─── Routing ─────────────────────────────────────────────────────────────────
//
// A path maps to its methods. A later lesson adds its own paths (see "The server").

export type Routes = Record<string, Partial<Record<string, Handler>>>;

export const ROUTES: Routes = {
  "/": { GET: servePage, HEAD: servePage },
  "/sse/": { GET: serveCountdown },
};

const PLAIN_TEXT = { "Content-Type": "text/plain; charset=utf-8" };

/** The route for a path: its own line, else a line with a :placeholder for one segment. */
function findRoute(routes: Routes, path: string): Routes[string] | undefined {
  const segments = path.split("/");
  const fits = (part: string, k: number) =>
    part === segments[k] || (part.startsWith(":") && segments[k] !== "");
  const matches = ([pattern]: [string, unknown]) =>
    pattern.split("/").length === segments.length && pattern.split("/").every(fits);
  return routes[path] ?? Object.entries(routes).find(matches)?.[1];
}

/**
 * The app's request listener: answers 400, 404 and 405 with one sentence, and
 * sends a known path without its trailing slash to the path with it (308,
 * query kept), as Django's APPEND_SLASH does.
 */
function router(app: App, wrappers: PageWrapper[], notHere: string): http.RequestListener {
  return async (req, res) => {
    try {
      if (tooManyAhead(app, req, res)) return;
      checkHost(app, req);
      const url = readTarget(req.url ?? "");
      const { pathname: path, search } = url;
      const methods = findRoute(app.routes, path);
      const reading = req.method === "GET" || req.method === "HEAD";
      if (!methods && reading && findRoute(app.routes, `${path}/`)) {
        // 308, not 301: the browser repeats the method, and no cache keeps it forever.
        res.writeHead(308, { Location: `${path}/${search}`, ...PLAIN_TEXT });
        return void res.end(`This page is at ${path}/${search}\n`);
      }
      if (!methods) throw new RequestError(404, `Nothing here at ${path}; ${notHere}.`);
      const handler = methods[req.method ?? "GET"];
      if (!handler) {
        res.setHeader("Allow", Object.keys(methods).join(", "));
        throw new RequestError(405, `${path} answers ${Object.keys(methods).join(" and ")} only.`);
      }
      for (const wrap of wrappers) wrap(req, res);
      await handler(req, res, url, app);
    } catch (error) {
      if (res.headersSent) return; // never an error page after the stream started
      const known = error instanceof RequestError;
      // A failed call is news for whoever runs the server; a user's 4xx is not, nor a bound
      // that said so once already.
      if (!known) app.log(`error: ${error instanceof Error ? error.message : String(error)}`);
      else if (error.status >= 500 && !error.said) app.log(error.message);
      res.writeHead(known ? error.status : 500, PLAIN_TEXT);
      res.end(known ? `${error.message}\n` : "Something went wrong on the server.\n");
    }
  };
}

/**
 * The request target as a URL of this server. A target that starts with "/"
 * is a path, even "//sse/": read as a URL on its own, that one would name the
 * host "sse". A full URL (absolute-form, which HTTP/1.1 servers must accept)
 * keeps its own path.
 */
function readTarget(target: string): URL {
  const path = `http://localhost${target}`;
  if (target.startsWith("/") && URL.canParse(path)) return new URL(path);
  if (/^https?:\/\//i.test(target) && URL.canParse(target)) return new URL(target);
  throw new RequestError(400, "The request target is not a path this server can read.");
}

// ─── The server, and the seam for the later lessons ─────────────────────────
//
// Lesson 1 knows no later lesson. Each one (lessons/*.ts) is a `Lesson` that
// may add flags, banner lines and its own way to start, and installs itself
// into the `App`: it adds routes, may wrap every page, may take upgrades on
// `app.server`, and takes its share of stopping. It keeps its own state.

/** Rewrites a response before its handler runs (the toasts put their script into pages). */
export type PageWrapper = (req: IncomingMessage, res: ServerResponse) => void;
/** Every flag's value, after parseArgs: lesson 1's and each lesson's own. */
export type FlagValues = Record<string, string | boolean | undefined>;

export interface App {
  readonly server: http.Server;
  readonly routes: Routes; // lesson 1's; a lesson adds its paths
  readonly flags: FlagValues; // from the command line, or a test's
  readonly streams: Set<ServerResponse>; // every countdown streamed now: lesson 1's own state
  readonly log: (line: string) => void;
  readonly quiet: boolean;
  readonly heartbeat: number;
  /** Runs `wrap` on every response of a known route, before its handler. */
  wrapPages(wrap: PageWrapper): void;
  /** Takes requests that ask to become another protocol (a WebSocket), once the Host is checked. */
  onUpgrade(take: (req: IncomingMessage, socket: Duplex, head: Buffer) => void): void;
  /** Host names answered beside loopback's: this machine's on a LAN, and --allowed-host. */
  readonly allowedHosts: Set<string>;
  /** On stop: ends what a lesson holds open, and names it ("2 WebSockets") when it ended any. */
  onStop(stop: () => string | void): void;
  /** Ends every open stream cleanly, lessons' too; browsers reconnect and resume. */
  endStreams(): string[];
}

/** What start-up hands a lesson that may run the process its own way. */
export interface Startup {
  flags: FlagValues;
  host: string;
  port: number;
  /** Prints the banner (lesson 1's lines, then every lesson's) under this headline. */
  printBanner(port: number, who: string): void;
}

export interface Lesson {
  flags?: FlagOptions; // as util.parseArgs takes them
  help?: string; // their lines for --help
  banner?(url: string, flags: FlagValues): string[];
  /** "taken over": the lesson runs this process its own way; "serve handed": no listening and
   * no banner, the lesson hands the server its connections (a worker of --workers). */
  start?(startup: Startup): Promise<"taken over" | "serve handed" | undefined>;
  install(app: App): void | Promise<void>;
  /** Once the app serves, in a process started from the command line (never in a test). */
  listening?(app: App): void;
}

export interface AppOptions {
  quiet?: boolean; // no line per stream opened and closed
  log?: (line: string) => void; // tests collect the lines
  heartbeat?: number; // milliseconds of silence before a comment line, 0 for none
  flags?: FlagValues;
  lessonsHere?: boolean; // false: the 404 sentence says where the later lessons live
  allowedHosts?: string[]; // beside loopback's names
  connectionsMax?: number; // CONNECTIONS_MAX unless a test wants to reach it
}

/** One log line: the time, this process's pid, what changed. */
export function logLine(line: string): void {
  console.log(`[${new Date().toTimeString().slice(0, 8)}] [${process.pid}] ${line}`);
}

/** A server with lesson 1's routes; `install` adds the later lessons. */
export function createApp(options: AppOptions = {}): App {
  const wrappers: PageWrapper[] = [];
  const upgrades: Parameters<App["onUpgrade"]>[0][] = [];
  const stops: (() => string | void)[] = [];
  const app: App = {
    server: http.createServer(),
    routes: { ...ROUTES },
    flags: options.flags ?? {},
    streams: new Set(),
    log: options.log ?? logLine,
    quiet: options.quiet ?? false,
    heartbeat: options.heartbeat ?? HEARTBEAT_MS,
    wrapPages(wrap) {
      wrappers.push(wrap);
    },
    onUpgrade(take) {
      upgrades.push(take);
    },
    allowedHosts: new Set(options.allowedHosts),
    onStop(stop) {
      stops.push(stop);
    },
    endStreams() {
      const open = app.streams.size;
      const ended = [`${open} open stream${open === 1 ? "" : "s"}`];
      for (const res of app.streams) res.end();
      for (const stop of stops) ended.push(stop() || "");
      return ended.filter((phrase) => phrase !== "");
    },
  };
  const elsewhere = ", and the later lessons live in lessons/, not beside this copy";
  const notHere = `the countdown is at /${options.lessonsHere === false ? elsewhere : ""}`;
  app.server.on("request", router(app, wrappers, notHere));
  app.server.on("upgrade", (req, socket, head) => {
    try {
      checkHost(app, req);
    } catch (error) {
      return refuse(socket, 400, (error as Error).message);
    }
    if (upgrades.length === 0) return socket.destroy(); // nobody here speaks another protocol
    for (const take of upgrades) take(req, socket, head);
  });
  capConnections(app, options.connectionsMax ?? CONNECTIONS_MAX);
  return app;
}

/** Installs each lesson into the app, in reading order. */
export async function install(app: App, lessons: readonly Lesson[]): Promise<App> {
  for (const lesson of lessons) await lesson.install(app);
  return app;
}

// ─── Guards: one client must not hurt the others ─────────────────────────────
//
// A browser is polite; a script need not be. These checks bound what one client can
// make this process hold, and refuse requests meant for another site.

/** A one-sentence answer written straight to a socket that no handler holds. */
export function refuse(socket: Duplex, status: number, sentence: string) {
  const body = `${sentence}\n`;
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n` +
      "Content-Type: text/plain; charset=utf-8\r\n" +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

/** Past `max` connections open at once, a new one gets a 503 and is closed; logged once. */
function capConnections(app: App, max: number) {
  let open = 0;
  let said = false;
  app.server.on("connection", (socket: net.Socket) => {
    if (open >= max) {
      if (!said) app.log(`${max} connections open: refusing more (said once)`);
      said = true;
      return refuse(socket, 503, `This server holds ${max} connections already; try again later.`);
    }
    open++;
    socket.once("close", () => open--);
  });
}

const ahead = new WeakMap<net.Socket, number>();
let aheadSaid = false;

/**
 * Node reads every request a connection sends, even before the answers to earlier ones went
 * out, and each waiting answer sits in memory. Browsers never send ahead; a client that sends
 * more than PIPELINED_MAX ahead is cut.
 */
function tooManyAhead(app: App, req: IncomingMessage, res: ServerResponse): boolean {
  const { socket } = req; // kept: by the time the answer closes, req.socket may be gone
  const count = (ahead.get(socket) ?? 0) + 1;
  ahead.set(socket, count);
  res.once("close", () => ahead.set(socket, (ahead.get(socket) ?? 1) - 1));
  if (count <= PIPELINED_MAX) return false;
  if (!aheadSaid) app.log(`a client sent over ${PIPELINED_MAX} requests ahead: cut (said once)`);
  aheadSaid = true;
  socket.destroy();
  return true;
}

/**
 * A page on evil.example whose name resolves to 127.0.0.1 ("DNS rebinding") would reach this
 * server as its own site. So only Host names that mean this machine are answered: loopback,
 * *.localhost (browsers keep those here), and what `app.allowedHosts` adds.
 */
export function checkHost(app: App, req: IncomingMessage) {
  const host = req.headers.host ?? "";
  const name = URL.canParse(`http://${host}`) ? new URL(`http://${host}`).hostname : "";
  const loopback = name === "localhost" || name.endsWith(".localhost") || name === "[::1]" ||
    /^127\.\d+\.\d+\.\d+$/.test(name);
  if (loopback || app.allowedHosts.has(name)) return;
  const flag = `--allowed-host ${name || "NAME"}`;
  throw new RequestError(400, `This server does not answer for the host ${host}: add ${flag}.`);
}

/** The names a LAN reaches this machine by, when --host listens beyond loopback. */
function machineNames(host: string): string[] {
  const addresses = Object.values(os.networkInterfaces()).flat();
  return [host, os.hostname(), ...addresses.map((address) => bracketed(address?.address ?? ""))];
}

// ─── Start-up: flags, listening, stopping ────────────────────────────────────

/** Says one sentence on stderr and exits: the way every mistake on the command line ends. */
export function exitWith(code: number, sentence: string): never {
  console.error(sentence);
  process.exit(code);
}

type FlagOptions = NonNullable<ParseArgsConfig["options"]>;

/** parseArgs, with its errors turned into one sentence and exit code 2. */
export function readFlags<const T extends FlagOptions>(options: T, help: string) {
  // "--port -1" reads as two flags to parseArgs: join a negative number to its flag, so that
  // the range check can say what is wrong with it.
  const args: string[] = [];
  for (const arg of process.argv.slice(2)) {
    const flag = options[args.at(-1)?.slice(2) ?? ""];
    if (/^-\d/.test(arg) && flag?.type === "string") args.push(`${args.pop()}=${arg}`);
    else args.push(arg);
  }
  try {
    const { values } = parseArgs({ args, options, strict: true, allowPositionals: false });
    if (!(values as { help?: boolean }).help) return values;
    console.log(help);
    process.exit(0);
  } catch (error) {
    const firstSentence = (error as Error).message.split(/\.\s/)[0]?.replace(/\.$/, "");
    exitWith(2, `${firstSentence}. Try --help.`);
  }
}

/** A flag's value, else its environment variable, else its default; a bad one exits with 2. */
export function flagNumber(flag: string, value: string | boolean | undefined, envName: string,
  fallback: number, range: typeof FROM_RANGE): number {
  const text = typeof value === "string" ? value : envName ? process.env[envName] : undefined;
  if (text === undefined || text === "") return fallback;
  try {
    return wholeNumber(typeof value === "string" ? `--${flag}` : envName, text, range);
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
export async function listen(server: net.Server, host: string, port: number, paused = false) {
  const listeners = [server];
  await listenOne(server, host === DEFAULT_HOST ? "127.0.0.1" : host, port);
  // 0.0.0.0 is every IPv4 address: ::1, where browsers try localhost first, needs its own.
  if (host !== DEFAULT_HOST && host !== "0.0.0.0") return listeners;
  const twin = net.createServer({ pauseOnConnect: paused }, (s) => server.emit("connection", s));
  try {
    await listenOne(twin, "::1", (server.address() as net.AddressInfo).port);
    listeners.push(twin);
  } catch {
    // No IPv6 on this machine: 127.0.0.1 alone serves localhost.
  }
  return listeners;
}

function listenOne(server: net.Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = ({ code, message }: NodeJS.ErrnoException) => {
      // No ::1 on this machine is no mistake of the user's: listen() goes on without it.
      if (host === "::1" && code !== "EADDRINUSE") return reject(new Error(message));
      if (code === "EADDRINUSE") {
        return void freePortNear(port, host).then((free) => {
          exitWith(1, `port ${port} is in use; try --port ${free}`);
        });
      }
      const privileged = `port ${port} needs more privileges; try --port ${DEFAULT_PORT}`;
      if (code === "EACCES") exitWith(1, privileged);
      exitWith(1, `cannot listen on ${host}:${port} (${code ?? message}); check --host`);
    };
    server.once("error", onError);
    server.listen(port, host, () => {
      server.off("error", onError);
      resolve();
    });
  });
}

/** A port near `port` that is free now (every other one, past the blocking server's), else 0. */
async function freePortNear(port: number, host: string): Promise<number> {
  const PORTS_TRIED = 10;
  for (let next = port + 2; next <= Math.min(port + 2 * PORTS_TRIED, 65535); next += 2) {
    const probe = net.createServer();
    const free = await new Promise<boolean>((resolve) => {
      probe.once("error", () => resolve(false));
      probe.listen(next, host === DEFAULT_HOST ? "127.0.0.1" : host, () => resolve(true));
    });
    await new Promise((resolve) => (free ? probe.close(resolve) : resolve(undefined)));
    if (free) return next;
  }
  return 0;
}

/** The addresses a person can open: localhost, or the machine's LAN addresses for 0.0.0.0. */
export function urlsFor(host: string, port: number): string[] {
  if (host !== "0.0.0.0" && host !== "::") return [`http://${bracketed(host)}:${port}/`];
  const lan = Object.values(os.networkInterfaces())
    .flat()
    .filter((address) => address && address.family === "IPv4" && !address.internal)
    .map((address) => `http://${address!.address}:${port}/`);
  return [`http://localhost:${port}/`, ...lan];
}

/** True when this file is the program being run, not a module another imports (tsx or node). */
export function isMain(moduleUrl: string): boolean {
  try {
    return realpathSync(process.argv[1] ?? "") === realpathSync(fileURLToPath(moduleUrl));
  } catch {
    return false;
  }
}

const FLAGS = {
  port: { type: "string" },
  host: { type: "string" },
  heartbeat: { type: "string" },
  "allowed-host": { type: "string", multiple: true },
  quiet: { type: "boolean", default: false },
  help: { type: "boolean", default: false },
} as const;

const HELP = `Usage: npx tsx server.ts [--port N] [--host H] [--quiet] [a later lesson's flags]

Serves a countdown page and its event stream from one async process.

  --port N         Listens on this TCP port (env PORT; default ${DEFAULT_PORT}).
  --host H         Listens on this address (env HOST; default ${DEFAULT_HOST}, meaning
                   127.0.0.1 and ::1). Use 0.0.0.0 to share it on your LAN at a workshop.
  --heartbeat S    Sends a comment line on a stream silent for S seconds, so that proxies
                   keep it open (default ${HEARTBEAT_MS / 1000}; 0 sends none).
  --allowed-host H Also answers requests for this host name (may be given again); loopback
                   names and, with --host beyond loopback, this machine's names need none.
  --quiet          Leaves out the line per stream opened and closed, and the later lessons'
                   lines per request (for load tests).`;

/** What a person reads first: where to point the browser, and what to try. */
const bannerLines = ([url = "", ...more]: string[], who: string) => [
  `Countdown server (${who}) listening at ${[url, ...more].join(" and ")}`,
  `  Open ${url} in a tab, then in more tabs: every one of them counts at once.`,
  `  A browser opens at most 6 connections per host name and each tab holds one: for more`,
  `  tabs, use the page's "Open another tab" link (tab2.localhost, ...: all lead here).`,
  `  Raw events: curl -N ${url}sse/   Short demo: ${url}?from=10&interval=200`,
];

/** lessons/index.ts lists the later lessons; a copy of this file alone has none. */
const LESSONS_URL = new URL("./lessons/index.ts", import.meta.url);

async function main() {
  // Loaded here, not imported above: a lesson imports this file, which must be done loading.
  const lessons: Lesson[] = existsSync(LESSONS_URL) ? (await import(LESSONS_URL.href)).LESSONS : [];
  // A lesson's flag lines (indented) join lesson 1's; its other lines close the help.
  const more = lessons.flatMap((lesson) => lesson.help?.split("\n") ?? []);
  const flagLines = more.filter((line) => line.startsWith("  "));
  const notes = more.filter((line) => line !== "" && !line.startsWith("  "));
  const notesPart = notes.length > 0 ? ["", ...notes] : [];
  const help = [HELP, ...flagLines, "  --help           Shows this help.", ...notesPart].join("\n");
  const options = Object.assign({}, FLAGS, ...lessons.map((lesson) => lesson.flags ?? {}));
  const flags = readFlags(options, help) as FlagValues;
  const port = flagNumber("port", flags.port, "PORT", DEFAULT_PORT, { min: 0, max: 65535 });
  const host = (flags.host as string) || process.env.HOST || DEFAULT_HOST;
  const heartbeatS = HEARTBEAT_MS / 1000;
  const heartbeat = flagNumber("heartbeat", flags.heartbeat, "", heartbeatS, HEARTBEAT_RANGE_S);
  const printBanner = (actualPort: number, who: string) => {
    const urls = urlsFor(host, actualPort);
    const extra = lessons.flatMap((lesson) => lesson.banner?.(urls[0] ?? "", flags) ?? []);
    console.log([...bannerLines(urls, who), ...extra].join("\n"));
  };

  let decision: "taken over" | "serve handed" | undefined;
  const startup: Startup = { flags, host, port, printBanner };
  for (const lesson of lessons) decision ??= await lesson.start?.(startup);
  if (decision === "taken over") return;
  const quiet = flags.quiet === true;
  const lessonsHere = lessons.length > 0;
  const allowedHosts = (flags["allowed-host"] as unknown as string[] | undefined) ?? [];
  const beyondLoopback = host !== DEFAULT_HOST && !/^(127\.|::1$)/.test(host);
  if (beyondLoopback) allowedHosts.push(...machineNames(host));
  const app = createApp({ quiet, flags, heartbeat: heartbeat * 1000, lessonsHere, allowedHosts });
  await install(app, lessons);
  const handed = decision === "serve handed";
  const listeners = handed ? [] : await listen(app.server, host, port);
  if (!handed) {
    const bound = (app.server.address() as net.AddressInfo).port;
    printBanner(bound, `async, pid ${process.pid}`);
  }
  for (const lesson of lessons) lesson.listening?.(app);

  let stopping = false;
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    process.once("SIGINT", () => process.exit(130)); // a second Ctrl-C means "now"
    for (const listener of listeners) listener.close();
    const ended = app.endStreams();
    const list = ended.length > 1 ? `${ended.slice(0, -1).join(", ")} and ${ended.at(-1)}` : ended;
    logLine(`${why}: ending ${list} (their browsers will reconnect and resume)`);
    setImmediate(() => app.server.closeIdleConnections());
    setTimeout(() => process.exit(0), SHUTDOWN_GRACE_MS).unref();
  };
  process.once("SIGINT", () => stop("SIGINT"));
  process.once("SIGTERM", () => stop("SIGTERM"));
}

// Not awaited: a lesson that main() loads imports this file, which must finish loading first.
if (isMain(import.meta.url)) main().catch((error: Error) => exitWith(1, error.message));
