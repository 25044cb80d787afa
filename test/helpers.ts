/**
 * test/helpers.ts: what every lesson's suites share. Bounded waits, real
 * clients (HTTP, SSE, raw TCP, child processes, Chromium), and the servers
 * started for them on loopback, each one closed in `after`.
 */

import http from "node:http";
import net from "node:net";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { setTimeout as delay } from "node:timers/promises";
import { suite, type Test } from "uvu";
import * as assert from "uvu/assert";
import type { Browser, BrowserContext, Page } from "playwright-core";
import postgres from "postgres";
import { chromiumMissing, launchChromium } from "../bench/chromium.ts";
import { createApp, install, listen, type App, type AppOptions, type Lesson } from "../server.ts";
import { LESSONS } from "../lessons/index.ts";
import { chooseHub, type Hub } from "../lessons/hub.ts";

// ─── Helpers ─────────────────────────────────────────────────────────────────

// The suites choose each server's port, host, processes and database themselves: a reader's own
// environment (say DATABASE_URL exported for the PostgreSQL lesson) must not choose for them.
for (const name of ["PORT", "HOST", "WEB_CONCURRENCY", "DATABASE_URL"]) delete process.env[name];

/** How long any single wait may take before the test fails with a message. */
export const DEADLINE_MS = 5000;

/** Resolves like `promise`, or rejects after `ms` with a message naming what we waited for. */
export async function within<T>(what: string, promise: Promise<T>, ms = DEADLINE_MS): Promise<T> {
  const timeout = new AbortController();
  const expired = delay(ms, undefined, { signal: timeout.signal }).then(() => {
    throw new Error(`gave up after ${ms} ms waiting for ${what}`);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    timeout.abort();
    expired.catch(() => {}); // the aborted timer rejects; that is expected
  }
}

/** Polls `condition` until it holds, or fails after the deadline. */
export async function until(what: string, condition: () => boolean, ms = DEADLINE_MS): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`gave up after ${ms} ms waiting for ${what}`);
    await delay(10);
  }
}

/** A plain HTTP request (with a body, if given), its whole answer read; agent: false so no socket outlives it. */
export async function request(url: string, options: http.RequestOptions = {}, requestBody?: string, ms = DEADLINE_MS) {
  const req = http.request(url, { agent: false, ...options });
  req.end(requestBody);
  const [res] = (await within(`a response from ${url}`, once(req, "response"), ms)) as [http.IncomingMessage];
  let body = "";
  res.setEncoding("utf8").on("data", (chunk: string) => (body += chunk));
  await within(`the whole body from ${url}`, once(res, "end"), ms);
  return { status: res.statusCode, headers: res.headers, body };
}

/** A response's headers alone: the request is cut as soon as they arrive, for routes whose body never ends. */
export async function responseHeaders(url: string, method = "GET"): Promise<http.IncomingHttpHeaders> {
  const req = http.request(url, { agent: false, method });
  req.on("error", () => {}); // the cut below is ours
  req.end();
  try {
    const [res] = (await within(`the headers of ${method} ${url}`, once(req, "response"))) as [http.IncomingMessage];
    return res.headers;
  } finally {
    req.destroy();
  }
}

/** One SSE message as the browser's EventSource would see it. */
export interface SseMessage {
  event: string;
  id?: string;
  data: string;
}

/**
 * An open SSE stream: `next()` gives the next message, `raw` holds every byte
 * as it came, `ended` settles when the server ends or cuts the response.
 */
export class SseClient {
  raw = "";
  messages: SseMessage[] = [];
  status = 0;
  headers: http.IncomingHttpHeaders = {};
  /** True when the response ended cleanly (chunked terminator seen), false when cut. */
  ended: Promise<boolean>;
  private req: http.ClientRequest;
  private read = 0;
  private cursor = 0;
  private finished = false;
  private wake = () => {};

  constructor(url: string, headers: http.OutgoingHttpHeaders = {}) {
    this.req = http.get(url, { agent: false, headers: { Accept: "text/event-stream", ...headers } });
    this.ended = new Promise((resolve) => {
      this.req.on("error", () => resolve(false));
      this.req.on("response", (res) => {
        this.status = res.statusCode ?? 0;
        this.headers = res.headers;
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          this.raw += chunk;
          this.parse();
          this.wake();
        });
        res.on("end", () => resolve(true));
        res.on("aborted", () => resolve(false));
        res.on("error", () => resolve(false));
      });
    });
    this.ended.then(() => {
      this.finished = true;
      this.wake();
    });
  }

  async opened(): Promise<void> {
    await within("the stream's response headers", once(this.req, "response"));
  }

  private parse() {
    let end: number;
    while ((end = this.raw.indexOf("\n\n", this.read)) !== -1) {
      const block = this.raw.slice(this.read, end);
      this.read = end + 2;
      const message: SseMessage = { event: "message", data: "" };
      let isComment = true;
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        isComment = false;
        const [field, ...rest] = line.split(": ");
        const value = rest.join(": ");
        if (field === "event") message.event = value;
        else if (field === "id") message.id = value;
        else if (field === "data") message.data = value;
      }
      if (!isComment) this.messages.push(message);
    }
  }

  /** The next message of the given event type (skipping others), within the deadline. */
  async next(event = "i", ms = DEADLINE_MS): Promise<SseMessage> {
    const deadline = Date.now() + ms;
    for (;;) {
      const index = this.messages.findIndex((message, at) => at >= this.cursor && message.event === event);
      if (index !== -1) {
        this.cursor = index + 1;
        return this.messages[index]!;
      }
      if (this.finished) throw new Error(`the stream ended before another "${event}" event`);
      const arrived = new Promise<void>((resolve) => (this.wake = resolve));
      await within(`a "${event}" event`, arrived, Math.max(0, deadline - Date.now()));
    }
  }

  /** The countdown numbers received so far. */
  get numbers(): number[] {
    return this.messages.filter((m) => m.event === "i").map((m) => JSON.parse(m.data).i as number);
  }

  close() {
    this.req.destroy();
  }
}

/** What a test's server is made of: the app's options, which lessons, and a hub to keep. */
export interface TestServerOptions extends AppOptions {
  /** The lessons to install: every one by default; lesson 1's suite installs none. */
  lessons?: readonly Lesson[];
  /** The hub, when a test keeps one (across a restart, or a PostgresHub). */
  hub?: Hub;
}

/** An app with its lessons installed, as start-up makes it, its log kept in `lines`. */
export async function createTestApp(options: TestServerOptions = {}, lines: string[] = []) {
  const app = createApp({ log: (line) => lines.push(line), ...options });
  if (options.hub) chooseHub(app, options.hub);
  return install(app, options.lessons ?? LESSONS);
}

/** A countdown server in this process, on an ephemeral loopback port, its log kept in `lines`. */
export async function startServer(options: TestServerOptions = {}) {
  const lines: string[] = [];
  const app = await createTestApp(options, lines);
  app.server.listen(0, "127.0.0.1");
  await within("the server to listen", once(app.server, "listening"));
  const { port } = app.server.address() as net.AddressInfo;
  return { app, lines, url: `http://127.0.0.1:${port}` };
}

/**
 * Stops a server started by startServer, cutting whatever is still open. A
 * WebSocket is no longer the HTTP server's connection: the app's stop ends it.
 */
export async function stopServer(app: App | undefined) {
  if (!app?.server.listening) return;
  app.server.closeAllConnections();
  app.endStreams();
  await within("the server to close", new Promise((resolve) => app.server.close(resolve)));
}

/** How many timers and sockets this process holds: the leak detector of the cleanup tests. */
export function activeResources(): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const kind of process.getActiveResourcesInfo()) counts[kind] = (counts[kind] ?? 0) + 1;
  return counts;
}

/** Waits until this process holds as many timers and sockets as it did `before`, or fails showing both counts. */
export async function untilResourcesReturn(before: Record<string, number>): Promise<void> {
  await until("timers and sockets to return to what they were", () => {
    const now = activeResources();
    return (now.Timeout ?? 0) === (before.Timeout ?? 0) && (now.TCPSocketWrap ?? 0) === (before.TCPSocketWrap ?? 0);
  }).catch((error) => {
    throw new Error(`${error.message}: before ${JSON.stringify(before)}, now ${JSON.stringify(activeResources())}`);
  });
}

/**
 * A child process running one of the servers (with the same loader as this
 * run, so tsx or Node's own type stripping), its output kept line by line.
 */
export class Child {
  process: ChildProcess;
  output = "";
  exited: Promise<number | null>;

  /** With `stdin: "pipe"` a test can type into the server's terminal through `process.stdin`. */
  constructor(file: string, args: string[], env: NodeJS.ProcessEnv = {}, { stdin = "ignore" }: { stdin?: "ignore" | "pipe" } = {}) {
    this.process = spawn(process.execPath, [...process.execArgv, file, ...args], {
      env: { ...process.env, ...env },
      stdio: [stdin, "pipe", "pipe"],
    });
    this.process.stdout!.setEncoding("utf8").on("data", (text: string) => (this.output += text));
    this.process.stderr!.setEncoding("utf8").on("data", (text: string) => (this.output += text));
    this.exited = new Promise((resolve) => this.process.on("exit", (code) => resolve(code)));
  }

  /** Waits for a line of output matching `pattern` and returns its match. */
  async waitFor(pattern: RegExp, ms = DEADLINE_MS): Promise<RegExpMatchArray> {
    let match: RegExpMatchArray | null = null;
    await until(`output matching ${pattern}`, () => (match = this.output.match(pattern)) !== null || this.process.exitCode !== null, ms).catch((error) => {
      throw new Error(`${error.message}; output so far:\n${this.output}`);
    });
    if (!match) throw new Error(`the process exited (code ${this.process.exitCode}) before printing ${pattern}:\n${this.output}`);
    return match;
  }

  /** Sends a signal and waits for the exit code. */
  async stop(signal: NodeJS.Signals = "SIGINT"): Promise<number | null> {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill(signal);
    return within(`${this.process.pid} to exit after ${signal}`, this.exited);
  }

  /** For `after`: whatever happened, leave no process behind. */
  kill() {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill("SIGKILL");
  }
}

/** For a suite's command-line tests: runs `file` with the given arguments, each child kept in `children` for `after`. */
export function runner(file: string, children: Child[]) {
  return (args: string[], env: NodeJS.ProcessEnv = {}): Child => {
    const child = new Child(file, args, env);
    children.push(child);
    return child;
  };
}

/** True while a process with this pid exists. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** True unless SUITES names other suites. */
export function selected(name: string): boolean {
  const only = process.env.SUITES?.split(",").filter(Boolean);
  return !only?.length || only.some((prefix) => name.startsWith(prefix));
}

/** Command lines a server must refuse: its arguments, its environment, the one sentence it prints. */
export type BadFlags = [args: string[], env: NodeJS.ProcessEnv, sentence: string][];

/**
 * A server started on a port that another socket holds says so in one sentence and exits with
 * code 1, suggesting a port that is free: here the next one it would try is taken too.
 */
export function refusesBusyPort(test: Test, run: (args: string[]) => Child) {
  test("a busy port is one sentence and exit code 1, and the port it suggests is free", async () => {
    const listenOn = async (port: number) => {
      const blocker = net.createServer().listen(port, "127.0.0.1");
      await within("a blocker to listen", Promise.race([once(blocker, "listening"), once(blocker, "error")]));
      return blocker;
    };
    const blockers = [await listenOn(0)];
    try {
      const { port } = blockers[0]!.address() as net.AddressInfo;
      blockers.push(await listenOn(port + 2)); // the first it would suggest: now taken
      const child = run(["--port", String(port), "--host", "127.0.0.1"]);
      assert.is(await within("the server to give up", child.exited), 1);
      const [, suggested = ""] = /^port \d+ is in use; try --port (\d+)$/.exec(child.output.trim()) ?? [];
      assert.is(child.output.trim(), `port ${port} is in use; try --port ${suggested}`);
      assert.ok(Number(suggested) > port + 2, `it skipped the taken port ${port + 2}: ${suggested}`);
      const probe = await listenOn(Number(suggested));
      blockers.push(probe);
      assert.ok(probe.listening, `the suggested port ${suggested} is free`);
    } finally {
      for (const blocker of blockers) blocker.close();
    }
  });
}

/** One test per bad command line: it prints its one sentence and exits with code 2. */
export function refusesBadFlags(test: Test, run: (args: string[], env: NodeJS.ProcessEnv) => Child, cases: BadFlags) {
  for (const [args, env, sentence] of cases) {
    test(`"${[...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...args].join(" ")}" is one sentence and exit code 2`, async () => {
      const child = run(args, env);
      assert.is(await within("the server to refuse", child.exited), 2);
      assert.is(child.output.trim(), sentence);
    });
  }
}

/** Registers a suite to run, unless SUITES names other ones. */
export function lesson(name: string, build: (test: Test) => void) {
  if (!selected(name)) return;
  const test = suite(name);
  build(test);
  test.run();
}

// ─── The blocking server, from outside ──────────────────────────────────────

/** The blocking server's short settings: a worker silent this long is killed, ticks come well inside it. */
export const SYNC_TIMEOUT_S = "1";
export const SYNC_TICK_MS = 200;
/** A worker is a new Node process with its TypeScript loader: slower to start than a request is to serve. */
export const BOOT_DEADLINE_MS = 15_000;

/** The pids of the workers booted so far, in order, from their "Booting worker" lines. */
export function workerPids(child: Child): number[] {
  return [...child.output.matchAll(/\[(\d+)\] \[INFO\] Booting worker with pid: \1\n/g)].map((match) => Number(match[1]));
}

/**
 * Starts blocking-server.ts on an ephemeral loopback port and waits until
 * `workers` workers have booted. `--host localhost` in `args` listens on both
 * loopback addresses instead, as a browser's *.localhost names need.
 */
export async function startBlocking(children: Child[], args: string[], workers = 1) {
  const child = new Child("blocking-server.ts", ["--port", "0", "--host", "127.0.0.1", "--workers", String(workers), ...args]);
  children.push(child);
  const [, url = ""] = await child.waitFor(/Listening at: (http:\/\/(?:127\.0\.0\.1|localhost):\d+) \(\d+\)\n/);
  await until(`${workers} workers to boot`, () => workerPids(child).length >= workers, BOOT_DEADLINE_MS).catch((error) => {
    throw new Error(`${error.message}; output so far:\n${child.output}`);
  });
  return { child, url };
}

/** For `after`: SIGINT to each arbiter, which kills its workers; any process still alive then gets SIGKILL. */
export async function stopBlocking(children: Child[]) {
  for (const child of children) {
    await child.stop("SIGINT").catch(() => child.kill());
    for (const pid of workerPids(child)) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // Already gone, as it should be.
      }
    }
  }
}

/** A request over a bare TCP socket: every byte it gets, when the first one came, and when the connection closed. */
export class RawRequest {
  text = "";
  firstByteAt = 0;
  /** The client port, which the arbiter's log names. */
  localPort = 0;
  connected: Promise<void>;
  ended: Promise<void>;
  private socket: net.Socket;

  constructor(url: string, path: string) {
    const { hostname, port } = new URL(url);
    this.socket = net.connect(Number(port), hostname);
    this.socket.on("error", () => {});
    this.connected = within("the connection to be accepted", once(this.socket, "connect")).then(() => {
      this.localPort = this.socket.localPort ?? 0;
    });
    // A test that never awaits `connected` must not crash the run when it rejects; one that
    // awaits it still fails.
    this.connected.catch(() => {});
    this.socket.write(`GET ${path} HTTP/1.1\r\nHost: ${hostname}:${port}\r\n\r\n`);
    this.socket.setEncoding("utf8");
    this.socket.on("data", (chunk: string) => {
      this.firstByteAt ||= performance.now();
      this.text += chunk;
    });
    this.ended = new Promise((resolve) => this.socket.on("close", () => resolve()));
  }

  close() {
    this.socket.destroy();
  }
}

// ─── Tabs in a real browser ──────────────────────────────────────────────────
//
// Chromium, driven by playwright-core, opens the page the way a learner does.
// Two facts about browsers shape these lessons. Over HTTP/1.1 a browser opens
// at most 6 connections to one host name, and a countdown tab holds one for as
// long as it is open. And every *.localhost name leads back to this machine with
// 6 connections of its own, which is what the page's "Open another tab" link uses.

/** How many connections Chromium opens to one host name over HTTP/1.1. */
export const CONNECTIONS_PER_HOST = 6;

/** How long Chromium's EventSource waits before reconnecting: its default, as the server sends no `retry:`. */
export const RECONNECT_DELAY_MS = 3000;

/** How long a page that should not load is watched not loading. */
export const STILL_WAITING_MS = 1000;

/**
 * Runs in every tab before the page's own script. It reports each text that
 * #countdown, #state and #server take, so a test sees every number the learner
 * saw, even ten a second; and it keeps the page's EventSources, so a test can
 * ask whether one is still open and could reconnect.
 */
export const WATCH_THE_PAGE = `
  new MutationObserver((mutations) => {
    for (const mutation of mutations) {
      const id = mutation.target.id;
      if (id !== "countdown" && id !== "state" && id !== "server") continue;
      for (const node of mutation.addedNodes) window.reportChange(id, node.textContent);
    }
  }).observe(document, { childList: true, subtree: true });

  const sources = [];
  window.EventSource = class extends EventSource {
    constructor(...args) {
      super(...args);
      sources.push(this);
    }
  };
  window.openEventSources = () => sources.filter((source) => source.readyState !== EventSource.CLOSED).length;
`;

/** One tab on the countdown page, and every text it showed. */
export class Tab {
  readonly page: Page;
  changes: { id: string; text: string }[] = [];
  constructor(page: Page) {
    this.page = page;
  }

  /** The texts #countdown, #state or #server took, in order. */
  texts(id: "countdown" | "state" | "server"): string[] {
    return this.changes.filter((change) => change.id === id).map((change) => change.text);
  }

  /** Every number shown, then "Blastoff!" if it got there (the page's placeholder left out). */
  get shown(): string[] {
    return this.texts("countdown").filter((text) => /^\d+$|^Blastoff!$/.test(text));
  }

  get numbers(): number[] {
    return this.shown.filter((text) => /^\d+$/.test(text)).map(Number);
  }

  /** What #state says now. */
  get state(): string {
    return this.texts("state").at(-1) ?? "";
  }

  get host(): string {
    return new URL(this.page.url()).hostname;
  }

  /** The numbers shown before the page first said `state`, and those shown after. */
  numbersAround(state: string): [number[], number[]] {
    const at = this.changes.findIndex((change) => change.id === "state" && change.text === state);
    const numbers = (changes: Tab["changes"]) => changes.filter((change) => change.id === "countdown" && /^\d+$/.test(change.text)).map((change) => Number(change.text));
    return at === -1 ? [this.numbers, []] : [numbers(this.changes.slice(0, at)), numbers(this.changes.slice(at))];
  }

  /** How many of the page's EventSources are open or reconnecting. */
  openEventSources(): Promise<number> {
    return this.page.evaluate(() => (window as unknown as { openEventSources(): number }).openEventSources());
  }
}

/**
 * A fresh browser profile, with connection pools of its own. Every tab it
 * opens, whether a test or a link opened it, is watched from its first line.
 */
export class Profile {
  readonly context: BrowserContext;
  private tabs = new Map<Page, Tab>();
  private constructor(context: BrowserContext) {
    this.context = context;
  }

  static async open(browser: Browser): Promise<Profile> {
    const context = await browser.newContext();
    context.setDefaultTimeout(DEADLINE_MS);
    const profile = new Profile(context);
    await context.exposeBinding("reportChange", ({ page }, id: string, text: string) => {
      profile.tab(page).changes.push({ id, text });
    });
    await context.addInitScript({ content: WATCH_THE_PAGE });
    return profile;
  }

  tab(page: Page): Tab {
    let tab = this.tabs.get(page);
    if (!tab) this.tabs.set(page, (tab = new Tab(page)));
    return tab;
  }

  /** Opens `url` in a new tab and waits for its page to load. */
  async open(url: string): Promise<Tab> {
    const page = await this.context.newPage();
    await page.goto(url);
    return this.tab(page);
  }

  /** Clicks the page's "Open another tab" link and returns the tab it opened, loaded. */
  async follow(tab: Tab): Promise<Tab> {
    const [page] = await Promise.all([this.context.waitForEvent("page"), tab.page.click("#another")]);
    await page.waitForLoadState();
    return this.tab(page);
  }

  close(): Promise<void> {
    return within("the browser profile to close", this.context.close());
  }
}

// ─── Suites that need something this machine may not have ─────────────────

/** What each kind of suite needs, how to get it, and the variable that makes it required (CI). */
export const NEEDS = {
  Chromium: { required: "BROWSER_REQUIRED", how: "apt-get install chromium (see the README)" },
  PostgreSQL: { required: "PG_REQUIRED", how: "set TEST_DATABASE_URL (see .ci/run)" },
  nginx: { required: "NGINX_REQUIRED", how: "apt-get install nginx (see docs/proxy.md)" },
} as const;

/** The suites left out so far, by what they need: the run's last line counts them. */
const skippedSuites = new Map<keyof typeof NEEDS, { why: string; names: string[] }>();

/**
 * A suite that needs what is missing: left out, with one line the first time and a count at
 * the end of the run; or, where its variable says it is required (as in CI), a failing test.
 * Returns true when the suite must not be registered.
 */
export function leftOut(need: keyof typeof NEEDS, name: string, why: string): boolean {
  if (process.env[NEEDS[need].required] === "1") {
    const test = suite(`${need} is required`);
    test(`${NEEDS[need].required}=1, so "${name}" must run`, () => assert.unreachable(why));
    test.run();
    return true;
  }
  const skipped = skippedSuites.get(need) ?? { why, names: [] };
  if (skipped.names.length === 0) console.log(`Skipping the suites that need ${need}: ${why}.`);
  skipped.names.push(name);
  skippedSuites.set(need, skipped);
  return true;
}

// After uvu's own summary, which counts only the suites that ran.
process.on("exit", () => {
  if (skippedSuites.size === 0) return;
  const total = [...skippedSuites.values()].reduce((sum, { names }) => sum + names.length, 0);
  console.log(`\nLeft out: ${total} suite${total === 1 ? "" : "s"} did not run (not counted above):`);
  for (const [need, { why, names }] of skippedSuites) {
    const needs = names.length === 1 ? "needs" : "need";
    console.log(`  ${names.length} ${needs} ${need} (${why}); to run them, ${NEEDS[need].how}:`);
    for (const name of names) console.log(`    - ${name}`);
  }
});

/**
 * Registers a lesson that drives Chromium, launched in `before` and closed in
 * `after`. Without Chromium the lesson is left out and one line says why,
 * except under BROWSER_REQUIRED=1 (as in CI), where that is a failing test.
 */
export function browserLesson(name: string, build: (test: Test, browser: () => Browser) => void) {
  if (!selected(name)) return;
  const why = chromiumMissing();
  if (why && leftOut("Chromium", name, why)) return;
  lesson(name, (test: Test) => {
    let browser: Browser | undefined;
    let launchError: unknown;
    // A throw in `before` would stop the whole run; a browser that does not start fails each test instead.
    test.before(async () => {
      try {
        browser = await launchChromium(DEADLINE_MS);
      } catch (error) {
        launchError = error;
      }
    });
    test.before.each(() => {
      if (launchError) throw launchError;
    });
    build(test, () => browser!);
    test.after(async () => {
      await within("Chromium to close", browser?.close() ?? Promise.resolve()).catch(() => {});
    });
  });
}

/** A countdown server in this process, on both loopback addresses like `npm start`, so *.localhost names reach it. */
export interface LoopbackServer {
  app: App;
  /** What it was started with, so a restart makes the same server again. */
  options: TestServerOptions;
  listeners: net.Server[];
  lines: string[];
  port: number;
}

/** Starts one; `hub`, when given, is kept from a server before it, as --database keeps the room. */
export async function startLoopbackServer(port = 0, options: TestServerOptions = {}) {
  const lines: string[] = [];
  const app = await createTestApp(options, lines);
  const listeners = await within("the server to listen", listen(app.server, "localhost", port));
  const running: LoopbackServer = { app, listeners, lines, port: (app.server.address() as net.AddressInfo).port, options };
  return running;
}

export function closeListener(listener: net.Server): Promise<void> {
  return new Promise((resolve) => listener.close(() => resolve()));
}

/** For `after`: cuts whatever is still open and closes every listener. */
export async function stopLoopbackServer(running: LoopbackServer | undefined) {
  if (!running) return;
  running.app.server.closeAllConnections();
  running.app.endStreams();
  await within("the server to close", Promise.all(running.listeners.map(closeListener)));
}

/**
 * Stops a server the way Ctrl-C does, its streams ended cleanly so browsers
 * reconnect, then starts a new one on the same port.
 */
export async function restartLoopbackServer(running: LoopbackServer): Promise<LoopbackServer> {
  const closed = Promise.all(running.listeners.map(closeListener));
  running.app.endStreams();
  await until("the ended streams to close", () => running.app.streams.size === 0);
  running.app.server.closeIdleConnections();
  await within("the old server to close", closed);
  return startLoopbackServer(running.port, running.options);
}

// ─── A real PostgreSQL ───────────────────────────────────────────────────────
//
// The database suites need a PostgreSQL server at TEST_DATABASE_URL, as a
// user who may create databases (.ci/run starts a throwaway one). Each test
// gets a database of its own, dropped in `after`.

/**
 * Registers a lesson that needs PostgreSQL. `database()` creates a fresh
 * database and returns its URL. Without TEST_DATABASE_URL the lesson is left
 * out with one line, except under PG_REQUIRED=1 (as in CI), where that fails.
 */
export function databaseLesson(name: string, build: (test: Test, database: () => Promise<string>) => void) {
  if (!selected(name)) return;
  const adminUrl = process.env.TEST_DATABASE_URL;
  if (!adminUrl) return void leftOut("PostgreSQL", name, "TEST_DATABASE_URL is not set");
  lesson(name, (test) => {
    const created: string[] = [];
    const database = async () => {
      const name = `countdown_test_${randomBytes(6).toString("hex")}`;
      const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
      try {
        await within("PostgreSQL to create a database", admin.unsafe(`create database ${name}`));
      } finally {
        await admin.end({ timeout: 1 });
      }
      created.push(name);
      const url = new URL(adminUrl);
      url.pathname = `/${name}`;
      return url.href;
    };
    build(test, database);
    test.after(async () => {
      const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
      for (const name of created.splice(0)) await admin.unsafe(`drop database if exists ${name} with (force)`).catch(() => {});
      await admin.end({ timeout: 1 });
    });
  });
}
