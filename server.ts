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
import { realpathSync } from "node:fs";
import { fileURLToPath } from "node:url";
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

// ─── Routing ─────────────────────────────────────────────────────────────────
//
// A path maps to its methods. A new lesson adds a line here.

export type Routes = Record<string, Partial<Record<string, Handler>>>;

export const ROUTES: Routes = {
  "/": { GET: servePage, HEAD: servePage },
  "/sse/": { GET: serveCountdown },
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
}

/** One log line: the time, this process's pid, what changed. */
export function logLine(line: string): void {
  console.log(`[${new Date().toTimeString().slice(0, 8)}] [${process.pid}] ${line}`);
}

export function createCountdownServer(options: ServerOptions = {}): CountdownServer {
  const state: ServerState = {
    streams: new Set(),
    log: options.log ?? logLine,
    quiet: options.quiet ?? false,
    heartbeat: options.heartbeat ?? HEARTBEAT_MS,
  };
  const server = http.createServer(router(ROUTES, state));
  return Object.assign(server, {
    streams: state.streams,
    endStreams() {
      for (const res of state.streams) res.end();
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
export async function superviseWorkers(count: number, host: string, port: number): Promise<void> {
  // Try the address once here, so a busy port is one sentence, not one per worker.
  for (const probe of await listen(net.createServer(), host, port)) await new Promise((resolve) => probe.close(resolve));

  let stopping = false;
  let bannerPrinted = false;
  const listened = new Set<number>();
  const alive = () => Object.values(cluster.workers ?? {}).filter((worker) => worker !== undefined);

  // A worker listens once per address (twice for localhost); the first time counts.
  cluster.on("listening", (worker, address) => {
    if (listened.has(worker.id)) return;
    listened.add(worker.id);
    logLine(`primary: worker ${worker.process.pid} is serving`);
    if (bannerPrinted) return;
    bannerPrinted = true;
    printBanner(host, address.port, count);
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
// With --database, every process keeps the room and the toasts in PostgreSQL
// and hears of each new event through LISTEN/NOTIFY. The package is loaded only
// here, so a server without --database needs nothing installed.

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

const HELP = `Usage: npx tsx server.ts [--port N] [--host H] [--workers N] [--quiet]

Serves a countdown page and its event stream from one async process.

  --port N      Listens on this TCP port (env PORT; default ${DEFAULT_PORT}).
  --host H      Listens on this address (env HOST; default ${DEFAULT_HOST}, meaning
                127.0.0.1 and ::1). Use 0.0.0.0 to share it on your LAN at a workshop.
  --workers N   Runs this many processes on the one port, each serving many tabs
                (env WEB_CONCURRENCY; default ${DEFAULT_WORKERS}).
  --quiet       Leaves out the one line per stream opened and closed (for load tests).
  --help        Shows this help.`;

/** What a person reads first: where to point the browser, and what to try. */
function printBanner(host: string, port: number, workers: number): void {
  const urls = urlsFor(host, port);
  const [url = ""] = urls;
  const who = workers === 1 ? `async, pid ${process.pid}` : `async, ${workers} worker processes, primary pid ${process.pid}`;
  console.log(`Countdown server (${who}) listening at ${urls.join(" and ")}`);
  console.log(`  Open ${url} in a tab, then in more tabs: ${workers === 1 ? "one process serves them all" : "each worker serves many"}.`);
  console.log(`  Past 6 tabs, use the page's "Open another tab" link: a browser opens at most 6 connections`);
  console.log(`  per host name, so tab7.localhost, tab8.localhost, ... each get their own.`);
  console.log(`  Raw events: curl -N ${url}sse/   Short demo: ${url}?from=10&interval=200`);
}

async function main() {
  const flags = readFlags(
    {
      port: { type: "string" },
      host: { type: "string" },
      workers: { type: "string" },
      quiet: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
    HELP,
  );
  const port = flagNumber("port", flags.port, "PORT", DEFAULT_PORT, { min: 0, max: 65535 });
  const host = flags.host || process.env.HOST || DEFAULT_HOST;
  const workers = flagNumber("workers", flags.workers, "WEB_CONCURRENCY", DEFAULT_WORKERS, WORKERS_RANGE);
  if (workers > 1 && cluster.isPrimary) return superviseWorkers(workers, host, port);

  const server = createCountdownServer({ quiet: flags.quiet });
  const listeners = await listen(server, host, port);
  const actualPort = (server.address() as net.AddressInfo).port;
  // A worker's banner is its primary's.
  if (cluster.isPrimary) printBanner(host, actualPort, workers);

  let stopping = false;
  const stop = (why: string) => {
    if (stopping) return;
    stopping = true;
    logLine(`${why}: ending ${server.streams.size} open streams (their browsers will reconnect and resume)`);
    // A second Ctrl-C means "now".
    process.once("SIGINT", () => process.exit(130));
    for (const listener of listeners) listener.close();
    server.endStreams();
    setImmediate(() => server.closeIdleConnections());
    setTimeout(() => process.exit(0), SHUTDOWN_GRACE_MS).unref();
  };
  process.once("SIGINT", () => stop("SIGINT"));
  process.once("SIGTERM", () => stop("SIGTERM"));
  // A worker whose primary is gone would serve a port nobody hands connections to.
  if (cluster.isWorker) process.once("disconnect", () => stop("the primary process is gone"));
}

if (isMain(import.meta.url)) await main();
