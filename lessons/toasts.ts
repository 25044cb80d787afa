/**
 * lessons/toasts.ts: lesson 3, toasts that stay until acknowledged.
 *
 * A toast is a short message for one visitor, or for everyone, in a corner of every
 * page that visitor has open. It stays across reloads and reconnects (and, with
 * --database, restarts) until the visitor closes it, and closing it in one tab closes
 * it in all of them. The pages know nothing of it: a page wrapper puts the toasts into
 * every HTML answer, as the post's middleware does. Toasts and read marks are hub
 * events (lessons/hub.ts), like the room's messages. This file ports seed 000,
 * massover's "Building realtime toasts with ASGI and Django".
 *
 * Run it:    npx -y tsx server.ts       (lessons/ beside it installs this lesson)
 * Then try:
 *   - type a line where the server runs and press Enter: every open page shows it in its
 *     corner, the countdown and the room alike (with --workers, only if --database is
 *     given too; else only the tabs of the worker that got the line show it);
 *   - close that toast in one tab: it goes from every other tab at once, and a
 *     reload does not bring it back;
 *   - http://localhost:8000/toasts/ is the post's demo: sending the form shows
 *     "Sleep running for at least N second(s)..." at once, and a background task
 *     sends your message N seconds later, to your tabs only;
 *   - curl -i http://localhost:8000/toasts/stream answers 401 Unauthorized: a
 *     stream belongs to the visitor named by the cookie a page set, and curl has none.
 */

import cluster from "node:cluster";
import { randomBytes } from "node:crypto";
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import { createInterface } from "node:readline";
import { setTimeout as wait } from "node:timers/promises";
import { formatEvent, logLine, RequestError, SSE_HEADERS, wholeNumber } from "../server.ts";
import type { App, Handler, Lesson } from "../server.ts";
import { hubOf, OpenStreams, type Hub, type HubEvent } from "./hub.ts";
import { acknowledge, acknowledgedIn, merge, toastsIn, Visitors } from "./toast-marks.ts";
import type { Kept, ReadMark } from "./toast-marks.ts";
import { checkField, checkOrigin, isObject, newVisitorCookie, pageFile, PostRate } from "./http.ts";
import { readFields, requireVisitor, sendJson, servePageFile, visitorSecret } from "./http.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

export const TOAST_MESSAGE_MAX = 200;
const TOAST_LEVELS = ["info", "success", "warning", "error"] as const;
/** How long the demo's background task may sleep. */
const DEMO_SECONDS_RANGE = { min: 0, max: 60 };

// Guards. The demo's rate is rationed (PostRate), visitors are bounded (toast-marks.ts's
// Visitors), and this bound also keeps a visitor's newest read mark in the hub's window.
/** Unread toasts a visitor keeps: past this, the oldest go, as if closed. */
export const TOASTS_UNREAD_MAX = 50;
/** Of a browser's 6 connections per host name, the toasts take 1 and a reload 1 more. */
export const COUNTDOWN_TABS_PER_NAME = 4;

/** Broadcasts are owned by "everyone"; a visitor's own toasts by its public id. */
export const EVERYONE = "everyone";
/** A toast id names its owner, then random bits: `everyone-3f2a...` or `<public id>-9c1d...`. */
const TOAST_ID_RANDOM_BYTES = 8;
const TOAST_ID = /^(everyone|[0-9a-f]{16})-[0-9a-f]{16}$/;
const NO_SUCH_TOAST = "There is no toast with that id.";
const NOT_YOURS = "That toast is another visitor's: only its owner may mark it read.";

// ─── Toasts and read marks ───────────────────────────────────────────────────
//
// No accounts: a visitor is a cookie (lessons/http.ts). Its stream follows two topics:
// "toasts:everyone" (the broadcasts) and "toasts:<public visitor id>" (its own toasts,
// and its read marks for both kinds).

type ToastLevel = (typeof TOAST_LEVELS)[number];

/** What a page receives, and what POST /toasts/<id>/read answers. */
export interface Toast {
  id: string;
  message: string;
  level: ToastLevel;
  at: string;
}

/** What a visitor's tabs are told: a toast to show, or the id of one to remove. */
export type ToastNews = { type: "toast"; toast: Toast } | { type: "read"; id: string };

/** `visitor`: the public id of the visitor a toast is for; everyone when omitted. */
type ToastOptions = { visitor?: string; level?: ToastLevel };

export function toastTopic(owner: string): string {
  return `toasts:${owner}`;
}

/** A request's message: trimmed, 1 to the maximum characters, no control characters, or a 400. */
function checkToastMessage(message: string): string {
  return checkField({ message }, "message", TOAST_MESSAGE_MAX);
}

// ─── The toasts of one server ────────────────────────────────────────────────

/** Making toasts, acknowledging them, streaming them, and the demo's tasks. */
export class Toasts {
  readonly streams: OpenStreams;
  /** Who this process remembers; ws.ts calls visitors.seen() before it follows a visitor. */
  readonly visitors: Visitors;
  readonly demoRate: PostRate;
  private hub: Hub;
  private log: (line: string) => void;
  /** The guards already reached, each named once in the log. */
  private boundsSaid = new Set<string>();
  /** Aborted on Ctrl-C: every demo task still sleeping stops, with no error and no timer left. */
  private tasks = new AbortController();
  private tasksPending = 0;

  constructor(hub: Hub, log: (line: string) => void, heartbeat: number) {
    this.hub = hub;
    this.log = log;
    this.streams = new OpenStreams(heartbeat);
    this.demoRate = new PostRate("toast demos", log);
    this.visitors = new Visitors((visitor) => {
      this.hub.forget(toastTopic(visitor)).catch((error: Error) => log(`toasts: ${error.message}`));
    }, log);
  }

  /**
   * The post's create_toast, for code that cannot await (here the terminal's line handler):
   * returns the toast at once, stored by then in memory, a moment later in PostgreSQL.
   */
  createToast(message: string, options: ToastOptions = {}): Toast {
    const { toast, done } = this.publishToast(message, options);
    done.catch((error: Error) => {
      this.log(`toasts: toast ${toast.id} was not stored: ${error.message}`);
    });
    return toast;
  }

  /** The post's async_create_toast: resolves once the toast is stored and on its way out. */
  async createToastAsync(message: string, options: ToastOptions = {}): Promise<Toast> {
    const { toast, done } = this.publishToast(message, options);
    await done;
    return toast;
  }

  /** What both share. `done`: the toast is published and, for a visitor's own, its bound kept. */
  private publishToast(message: string, { visitor, level = "info" }: ToastOptions) {
    if (!TOAST_LEVELS.includes(level)) {
      throw new RequestError(400, `level must be one of ${TOAST_LEVELS.join(", ")}.`);
    }
    const owner = visitor ?? EVERYONE;
    const id = `${owner}-${randomBytes(TOAST_ID_RANDOM_BYTES).toString("hex")}`;
    const at = new Date().toISOString();
    const toast: Toast = { id, message: checkToastMessage(message), level, at };
    if (visitor) this.visitors.seen(visitor);
    const published = this.hub.publish(toastTopic(owner), "toast", toast);
    const done = published.then(() => (visitor ? this.keepUnreadBound(visitor) : undefined));
    return { toast, done };
  }

  /** A terminal line, as a toast for everyone: cut when too long, since a typist sees no 400. */
  fromPresenter(line: string): Toast | undefined {
    // \p{Cc}: control characters (a tab, an arrow key's escape), which a toast refuses.
    // [...string] splits by character, not by UTF-16 unit: a cut never halves an emoji.
    const characters = [...line.replace(/\p{Cc}/gu, " ").trim()];
    if (characters.length === 0) return undefined;
    if (characters.length > TOAST_MESSAGE_MAX) {
      const cut = `a line over ${TOAST_MESSAGE_MAX} characters is cut to that length`;
      this.sayOnce("message", `toasts: ${cut} (said once)`);
    }
    const toast = this.createToast(characters.slice(0, TOAST_MESSAGE_MAX).join(""));
    this.log(`toast ${toast.id} for everyone, from the presenter`);
    return toast;
  }

  /** Marks a toast read for this visitor, returns it: 404 when unknown, 403 when another's. */
  async read(visitor: string, toastId: string): Promise<Toast> {
    const owner = TOAST_ID.exec(toastId)?.[1];
    if (!owner) throw new RequestError(404, NO_SUCH_TOAST);
    const known = await this.known(visitor);
    // 404 before 403, so another's topic is read too: a 403 says "that toast is another
    // visitor's", true only of a toast that exists (and its random part cannot be guessed).
    const events = owner === visitor ? known.own
      : owner === EVERYONE ? known.everyone
      : await this.hub.history(toastTopic(owner));
    const toast = toastsIn<Toast>(events).find((candidate) => candidate.id === toastId);
    if (!toast) throw new RequestError(404, NO_SUCH_TOAST);
    // The post's IsOwner: a visitor acknowledges its own toasts and the broadcasts, nobody else's.
    if (owner !== visitor && owner !== EVERYONE) throw new RequestError(403, NOT_YOURS);
    this.visitors.seen(visitor); // recorded only now: an id that names no toast records nobody
    if (!known.acknowledged.has(toastId)) await this.markRead(visitor, toastId, known);
    return toast;
  }

  /** What the hub keeps for this visitor: its topic, the broadcasts, and what it acknowledged. */
  private async known(visitor: string): Promise<Kept> {
    const [own, everyone] = await Promise.all([
      this.hub.history(toastTopic(visitor)),
      this.hub.history(toastTopic(EVERYONE)),
    ]);
    return { own, everyone, acknowledged: acknowledgedIn(own) };
  }

  /** Each read mark lists every acknowledged id still kept: lessons/toast-marks.ts says why. */
  private async markRead(visitor: string, toastId: string, known: Kept) {
    await this.hub.publish(toastTopic(visitor), "read", acknowledge(toastId, known));
  }

  /**
   * What one visitor's tabs are told: first its unread toasts, own and
   * broadcast, oldest first, at most TOASTS_UNREAD_MAX; then, live, each new
   * toast and each read mark, so every tab removes a toast the moment another
   * tab closes it. SSE frames it below; the WebSocket (lessons/ws.ts) too. While it
   * runs, the visitor counts as followed, and is not forgotten (see Visitors).
   */
  async *follow(visitor: string, signal: AbortSignal): AsyncGenerator<ToastNews> {
    this.visitors.follows(visitor);
    try {
      const { own, everyone, acknowledged } = await this.known(visitor);
      const unread = [...toastsIn<Toast>(own), ...toastsIn<Toast>(everyone)]
        .filter((toast) => !acknowledged.has(toast.id))
        .sort((a, b) => a.at.localeCompare(b.at));
      for (const toast of unread.slice(-TOASTS_UNREAD_MAX)) yield { type: "toast", toast };
      // From the last event read above: whatever was published since is replayed by the hub.
      const live = merge([
        this.hub.subscribe(toastTopic(visitor), { after: own.at(-1)?.id ?? 0, signal }),
        this.hub.subscribe(toastTopic(EVERYONE), { after: everyone.at(-1)?.id ?? 0, signal }),
      ]);
      for await (const event of live) {
        // A gap is dropped here: everything kept follows it, and a page knows its toasts by id.
        const { data } = event as HubEvent<Toast & ReadMark>;
        if (event.type === "toast") yield { type: "toast", toast: data };
        if (event.type === "read") yield { type: "read", id: data.id };
      }
    } finally {
      this.visitors.left(visitor);
    }
  }

  /**
   * The same, as SSE: `event: toast` with the toast, `event: read` with its id. The SSE id
   * names the toast for curl; no Last-Event-ID is read: a reconnect gets every unread again.
   */
  async *stream(visitor: string, signal: AbortSignal): AsyncGenerator<string> {
    for await (const news of this.follow(visitor, signal)) {
      yield news.type === "toast"
        ? formatEvent("toast", JSON.stringify(news.toast), news.toast.id)
        : formatEvent("read", JSON.stringify({ id: news.id }));
    }
  }

  /**
   * The post's demo: "Sleep running for at least N second(s)..." now, the
   * message after N seconds. The task outlives the request that started it.
   */
  async sleepTask(visitor: string, message: string, seconds: number): Promise<void> {
    const { signal } = this.tasks;
    if (signal.aborted) return;
    this.tasksPending++;
    try {
      const sleeping = `Sleep running for at least ${seconds} second(s)...`;
      await this.createToastAsync(sleeping, { visitor });
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

  // The guards (see Settings): each is said once per process, not once per toast or
  // visitor, so a client that keeps pushing past one cannot flood the log either.

  /** Past TOASTS_UNREAD_MAX unread toasts of its own, a visitor's oldest are marked read. */
  private async keepUnreadBound(visitor: string) {
    const known = await this.known(visitor);
    const unread = toastsIn<Toast>(known.own).filter((toast) => !known.acknowledged.has(toast.id));
    if (unread.length <= TOASTS_UNREAD_MAX) return;
    const bound = `a visitor has ${TOASTS_UNREAD_MAX} unread toasts; from now on the oldest go`;
    this.sayOnce("unread", `toasts: ${bound} (said once)`);
    for (const toast of unread.slice(0, unread.length - TOASTS_UNREAD_MAX)) {
      await this.markRead(visitor, toast.id, known);
    }
  }

  private sayOnce(bound: string, line: string) {
    if (this.boundsSaid.has(bound)) return;
    this.boundsSaid.add(bound);
    this.log(line);
  }
}

const states = new WeakMap<App, Toasts>();

/**
 * The app's toasts, made at their first use, not in install(): lessons/index.ts installs
 * the PostgreSQL lesson after this one, and only then is the hub they live in chosen.
 */
export function toastsOf(app: App): Toasts {
  let toasts = states.get(app);
  if (!toasts) states.set(app, (toasts = new Toasts(hubOf(app), app.log, app.heartbeat)));
  return toasts;
}

// ─── The handlers ────────────────────────────────────────────────────────────

/** Streams one visitor's toasts to one tab (or to the one shared worker of all its tabs). */
const serveToastStream: Handler = async (req, res, _url, app) => {
  const { log, quiet } = app;
  const toasts = toastsOf(app);
  const visitor = requireVisitor(req, res); // with a new cookie for a stranger's
  toasts.visitors.seen(visitor); // now, so that a full house is a 503, not a stream that ends
  res.writeHead(200, SSE_HEADERS);
  res.flushHeaders();
  const { sent, why } = await toasts.streams.pump(res, (signal) => toasts.stream(visitor, signal),
    () => quiet || log(`toast stream opened for visitor ${visitor} (${toasts.streams.size} open)`));
  const events = `${sent} event${sent === 1 ? "" : "s"}`;
  if (!quiet) log(`toast stream closed after ${events}: ${why} (${toasts.streams.size} open)`);
};

/** POST /toasts/<id>/read: the owner acknowledges a toast; 200 with the toast. */
const readToast: Handler = async (req, res, url, app) => {
  checkOrigin(req);
  const toasts = toastsOf(app);
  const visitor = requireVisitor(req);
  // Left encoded: a toast id has only letters, digits and dashes, so nothing encoded is an id.
  const toastId = url.pathname.split("/")[2] ?? "";
  const toast = await toasts.read(visitor, toastId);
  if (!app.quiet) app.log(`toast ${toast.id} read by visitor ${visitor}`);
  sendJson(res, 200, toast);
};

/** The post's demo page: a form that starts a background task. */
const serveDemoPage = servePageFile("toasts.html");

/** The demo's form: starts the background task, and answers at once with 303 to the page. */
const startDemo: Handler = async (req, res, _url, app) => {
  checkOrigin(req);
  const toasts = toastsOf(app);
  const visitor = requireVisitor(req);
  const example = "message=Done&seconds=3";
  const fields = await readFields(req, res, { what: "the demo", example, formOnly: true });
  const text = (name: string) => (typeof fields[name] === "string" ? fields[name] : "");
  const message = checkToastMessage(text("message"));
  const seconds = wholeNumber("seconds", text("seconds"), DEMO_SECONDS_RANGE);
  toasts.demoRate.take(req, res); // a good form only: a mistake costs no turn
  toasts.visitors.seen(visitor);
  void toasts.sleepTask(visitor, message, seconds);
  const later = `the second toast in ${seconds} s`;
  if (!app.quiet) app.log(`toast demo started for visitor ${visitor}: ${later}`);
  res.writeHead(303, { Location: "/toasts/" }).end();
};

// ─── The middleware: toasts on every page ────────────────────────────────────

const toastsStyle = pageFile("toasts.css");
const toastsScript = pageFile("toasts.js");

/** The page with the toasts' style and script before </body> (else </html>, else at the end). */
export function withToasts(page: string): string {
  const snippet = `<style>\n${toastsStyle()}</style>\n`
    + `<script type="module">\n${toastsScript()}</script>\n`;
  const body = page.lastIndexOf("</body>");
  const at = body !== -1 ? body : page.lastIndexOf("</html>");
  return at === -1 ? page + snippet : page.slice(0, at) + snippet + page.slice(at);
}

/**
 * The post's middleware, the way django-debug-toolbar's works: every HTML
 * answer gets the toasts inserted, and no page carries a copy of its own.
 * It holds back writeHead until end(), where the whole page is known, puts
 * the toasts in, fixes Content-Length, and gives a browser that has no visitor
 * cookie yet a new one. It knows a page by a "Content-Type" given to writeHead,
 * spelled so, as every page here is sent; anything else passes untouched.
 */
function addToasts(req: IncomingMessage, res: ServerResponse): void {
  // Node's own two, bound to this response, so our replacements can still call them. The
  // casts below: Node types both with several overloads, and one function stands for them all.
  const writeHead = res.writeHead.bind(res);
  const end = res.end.bind(res);
  let held: { status: number; headers: OutgoingHttpHeaders } | undefined;
  // writeHead(status, [statusMessage], [headers]): the headers are the object among the rest.
  res.writeHead = ((status: number, ...rest: unknown[]) => {
    const headers = (rest.find(isObject) ?? {}) as OutgoingHttpHeaders;
    const isHtml = String(headers["Content-Type"] ?? "").startsWith("text/html");
    if (!isHtml) return writeHead(status, ...(rest as []));
    held = { status, headers: { ...headers } };
    return res;
  }) as typeof res.writeHead;
  res.end = ((page?: unknown) => {
    if (!held) return end(page as never);
    const body = withToasts(Buffer.isBuffer(page) ? page.toString("utf8") : String(page ?? ""));
    if (!visitorSecret(req)) held.headers["Set-Cookie"] = newVisitorCookie();
    held.headers["Content-Length"] = Buffer.byteLength(body);
    writeHead(held.status, held.headers);
    return end(body);
  }) as typeof res.end;
}

// ─── Toasts from the terminal ────────────────────────────────────────────────
//
// At a workshop the presenter types a line where the server runs, and every screen shows
// it. With --workers (the next lesson) the primary reads it and hands each line to a worker.

/** Calls `onLine` for each line of standard input; when it ends, the server goes on serving. */
export function readPresenterLines(onLine: (line: string) => void): void {
  // node:readline cuts standard input into lines: one chunk may hold half a line, or three.
  const lines = createInterface({ input: process.stdin });
  lines.on("line", onLine);
  lines.on("close", () => {
    logLine("standard input closed: no more toasts from this terminal; still serving");
  });
}

// ─── The lesson ──────────────────────────────────────────────────────────────

export const toasts: Lesson = {
  help: `
Each line on standard input becomes a toast for everyone (with --workers, the primary
reads it); when standard input ends or is /dev/null, the server goes on serving.`,
  banner: (url) => [
    `  Toasts: type a line here and press Enter: every open page shows it. Demo: ${url}toasts/`,
    `  Of the 6 connections a browser opens per host name, the toasts' stream takes one and a`,
    `  reload briefly one more: ${COUNTDOWN_TABS_PER_NAME} countdown tabs per name, then the link.`,
  ],
  install(app) {
    Object.assign(app.routes, {
      "/toasts/": { GET: serveDemoPage, HEAD: serveDemoPage },
      "/toasts/stream": { GET: serveToastStream },
      "/toasts/demo": { POST: startDemo },
      "/toasts/worker.js": { GET: servePageFile("toasts-worker.js", "text/javascript") },
      "/toasts/:id/read": { POST: readToast },
    });
    app.wrapPages(addToasts);
    // On Ctrl-C: the demo tasks still sleeping, then the streams (nothing, if never made).
    app.onStop(() => {
      const toasts = states.get(app);
      const cancelled = toasts?.cancelTasks() ?? 0;
      const tasks = cancelled === 1 ? "task" : "tasks";
      if (cancelled > 0) app.log(`cancelled ${cancelled} toast demo ${tasks} still sleeping`);
      const ended = toasts?.streams.endAll() ?? 0;
      if (ended > 0) return `${ended} toast stream${ended === 1 ? "" : "s"}`;
    });
  },
  // Only in a process started from the command line, never in a test (a test's terminal is
  // not a presenter's). A worker of --workers leaves the terminal to its primary.
  listening(app) {
    if (!cluster.isWorker) readPresenterLines((line) => void toastsOf(app).fromPresenter(line));
  },
};
