/**
 * lessons/http.ts: the HTTP pieces the later lessons share on top of lesson 1:
 * their pages from pages/, JSON answers, request bodies (JSON or a form), the
 * Origin check, the signed visitor cookie that says who is asking, and how
 * often one may post.
 *
 * Not a lesson of its own, and it ports no post: the room (lessons/room.ts) is
 * the first to use it. Lesson 1 needs none of this: its one page is a constant,
 * and a countdown has no body and no visitor.
 */

import cluster from "node:cluster";
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { RequestError, sendPage, type Handler } from "../server.ts";
import type { Hub } from "./hub.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

/** The largest body a request may send: a message, a toast demo's form. */
export const BODY_LIMIT_BYTES = 4 * 1024;

export const VISITOR_COOKIE = "visitor";
/** The cookie's value: 128 random bits as hex, a dot, and this server's signature of them. */
const VISITOR_SECRET_BYTES = 16;
const VISITOR_COOKIE_VALUE = /^([0-9a-f]{32})\.([0-9a-f]{64})$/;
/** Hex digits of the public visitor id: 64 bits, plenty to tell visitors apart. */
const PUBLIC_ID_LENGTH = 16;
/** The key that signs visitor cookies: 256 random bits, as long as SHA-256's own block wants. */
const VISITOR_KEY_BYTES = 32;
/** Where the primary of --workers leaves the key for its workers (see "Who is asking"). */
const VISITOR_KEY_ENV = "COUNTDOWN_VISITOR_KEY";
/** The hub topic that keeps the key with --database: every process and every restart agree. */
const VISITOR_KEY_TOPIC = "visitor-key";

/** Posts a sender may make in a row, then how many a second after that: a person types slower. */
export const POSTS_PER_SENDER = { burst: 20, perSecond: 1 };
/** Posts every sender together may make: each one is written to every open stream. */
export const POSTS_PER_SERVER = { burst: 50, perSecond: 10 };
/** Senders whose rate is kept at once; past this the longest untouched goes (see PostRate). */
const RATE_SENDERS_MAX = 10_000;

// ─── Pages and answers ───────────────────────────────────────────────────────

/** A file of pages/, read at its first request and kept. */
export function pageFile(name: string): () => string {
  // import.meta.url is this file's own URL: pages/ is found beside lessons/, wherever
  // the server was started from.
  const file = new URL(`../pages/${name}`, import.meta.url);
  let text: string | undefined;
  // `??=` assigns only when text is still undefined: the file is read once.
  return () => (text ??= readFileSync(file, "utf8"));
}

/** A handler that serves one file of pages/ as is: nothing from the request goes into it. */
export function servePageFile(name: string, type = "text/html"): Handler {
  const page = pageFile(name);
  return (_req, res) => sendPage(res, page(), type);
}

/** A JSON answer, with a newline so a shell prompt does not stick to it. */
export function sendJson(res: ServerResponse, status: number, value: unknown) {
  const body = `${JSON.stringify(value)}\n`;
  res.writeHead(status, {
    "Content-Type": "application/json; charset=utf-8",
    "Content-Length": Buffer.byteLength(body),
  });
  res.end(body);
}

// ─── Posts from another site ─────────────────────────────────────────────────

/**
 * A page on another site could make a visitor's browser post here (a form
 * submits across sites without asking). Browsers name the posting page's
 * origin in `Origin`, which a page cannot forge, so a request whose Origin is
 * not this server's own host name is refused. A request without Origin is not
 * from a browser page (curl, a script), and is allowed.
 */
export function checkOrigin(req: IncomingMessage, what = "Posts") {
  const origin = req.headers.origin;
  if (origin === undefined) return;
  const host = URL.canParse(origin) ? new URL(origin).host : "";
  if (host === "" || host !== req.headers.host) {
    const sentence = `${what} from another site are refused: Origin ${origin} is not this server.`;
    throw new RequestError(403, sentence);
  }
}

// ─── Bodies ──────────────────────────────────────────────────────────────────

/** A value that is one JSON object, not an array or null. */
export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

const JSON_TYPE = "application/json";
const FORM_TYPE = "application/x-www-form-urlencoded";

/**
 * The fields of a body sent as JSON or as a form, whichever the request says
 * (`formOnly`: a form alone). `what` names the body in the 415 ("the message"),
 * `example` is the JSON a sender should use. 413 past BODY_LIMIT_BYTES, 400
 * for JSON that is not one object.
 */
export async function readFields(
  req: IncomingMessage,
  res: ServerResponse,
  { what, example, formOnly = false }: { what: string; example: string; formOnly?: boolean },
): Promise<Record<string, unknown>> {
  const type = (req.headers["content-type"] ?? "").split(";")[0]!.trim().toLowerCase();
  const accepted = type === FORM_TYPE || (type === JSON_TYPE && !formOnly);
  if (!accepted) {
    const form = `a form (${FORM_TYPE})`;
    const allowed = formOnly ? form : `${JSON_TYPE} or as ${form}`;
    throw new RequestError(415, `Send ${what} as ${allowed}.`);
  }
  const body = await readBody(req, res);
  if (type !== JSON_TYPE) return Object.fromEntries(new URLSearchParams(body));
  let value: unknown;
  try {
    value = JSON.parse(body);
  } catch {
    throw new RequestError(400, `The body is not JSON; send ${example}.`);
  }
  if (!isObject(value)) {
    throw new RequestError(400, `The body must be one JSON object: ${example}.`);
  }
  return value;
}

/**
 * The whole body as text, or a 413 past the limit: the rest is never read. A
 * request is a stream of chunks, read here with `for await`; a client that
 * hangs up mid-body makes the loop throw, so nothing waits for an end that
 * never comes. Leaving the loop early (`break`) destroys the request, and Node
 * keeps its socket for the answer.
 */
async function readBody(req: IncomingMessage, res: ServerResponse): Promise<string> {
  // Without Content-Length, Number() gives NaN and NaN > N is false: counted as it comes.
  if (Number(req.headers["content-length"]) > BODY_LIMIT_BYTES) throw tooLarge(res);
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of req) {
      size += chunk.length;
      if (size > BODY_LIMIT_BYTES) break;
      chunks.push(chunk);
    }
  } catch {
    throw new RequestError(400, "The request ended before its body did.");
  }
  if (size > BODY_LIMIT_BYTES) throw tooLarge(res);
  return Buffer.concat(chunks).toString("utf8");
}

function tooLarge(res: ServerResponse): RequestError {
  // Connection: close, so Node hangs up after the 413 instead of reading the rest of
  // the body, however long, to use the connection for another request.
  res.setHeader("Connection", "close");
  return new RequestError(413, `The body is over ${BODY_LIMIT_BYTES} bytes.`);
}

/**
 * One text field, trimmed; a 400 that names the field and its limit when it
 * is missing, empty, too long or not plain text.
 */
export function checkField(fields: Record<string, unknown>, name: string, max: number): string {
  const value = fields[name];
  const text = typeof value === "string" ? value.trim() : "";
  const plainText = "must not contain control characters such as line breaks";
  let problem = "";
  if (text === "") problem = `is missing: it takes 1 to ${max} characters`;
  // [...text] splits by character (code point), not by UTF-16 unit: "é" or an emoji is one.
  else if ([...text].length > max) problem = `is too long: at most ${max} characters`;
  else if (/\p{Cc}/u.test(text)) problem = plainText;
  // A lone surrogate ("\ud800" in JSON) is half of a character: no UTF-8 can carry it, and
  // PostgreSQL refuses it. Under the u flag, \p{Cs} matches only a half with no partner.
  else if (/\p{Cs}/u.test(text)) problem = "must be well-formed Unicode: it holds half a character";
  if (problem) throw new RequestError(400, `${name} ${problem}.`);
  return text;
}

// ─── Who is asking: the visitor cookie ───────────────────────────────────────
//
// There are no accounts. The first page a browser loads gives it a `visitor`
// cookie: the toasts (lessons/toasts.ts, the lesson after the room) set it, by
// wrapping every page. Without them, or from curl, a request has none, so a room
// message's `poster` is null. The public id names the visitor in topics, logs
// and toast ids, so the secret itself never leaves the cookie.
//
// The cookie carries an HMAC of its secret under a key only this server knows, so a
// client cannot make up visitors by the thousand: only a cookie this server issued
// counts. The key is new with each run (a cookie from an earlier run is a stranger, and
// its browser gets a new one), and the primary of --workers hands its own to its
// workers in the environment, which cluster.fork copies. With --database the key is
// kept in the hub (lessons/postgres.ts calls shareVisitorKey), so every process and
// every restart sign alike, as the room and the toasts they keep outlive a restart too.

/** This process's key: its primary's under --workers, else a new one. */
let visitorKey = (cluster.isWorker && process.env[VISITOR_KEY_ENV])
  || randomBytes(VISITOR_KEY_BYTES).toString("hex");
if (cluster.isPrimary) process.env[VISITOR_KEY_ENV] = visitorKey; // for the workers it forks

/**
 * Signs with the key kept in `hub`: the first ever stored there, else this run's, stored
 * now. Two processes that store at once both read back the first, so they agree.
 */
export async function shareVisitorKey(hub: Hub): Promise<void> {
  const first = async () => (await hub.history(VISITOR_KEY_TOPIC))[0]?.data;
  let kept = await first();
  if (typeof kept !== "string") {
    await hub.publish(VISITOR_KEY_TOPIC, "key", visitorKey);
    kept = await first();
  }
  if (typeof kept === "string") visitorKey = kept;
}

function signature(secret: string): string {
  return createHmac("sha256", visitorKey).update(secret).digest("hex");
}

/** The cookie's value for a secret: `secret.signature`; tests use it to make visitors. */
export function signedVisitor(secret: string): string {
  return `${secret}.${signature(secret)}`;
}

/**
 * The public visitor id: the first hex digits of the secret's SHA-256. The
 * same in every process with no table to keep, safe to show in a page, a log
 * or a topic name, and the secret cannot be worked back out of it.
 */
export function publicVisitorId(secret: string): string {
  return createHash("sha256").update(secret).digest("hex").slice(0, PUBLIC_ID_LENGTH);
}

/** The visitor cookie's secret, when the request carries one this server signed. */
export function visitorSecret(req: IncomingMessage): string | undefined {
  for (const pair of (req.headers.cookie ?? "").split(";")) {
    const [name, value = ""] = pair.trim().split("=");
    const [, secret = "", signed = ""] = VISITOR_COOKIE_VALUE.exec(value) ?? [];
    if (name !== VISITOR_COOKIE || !secret) continue;
    // timingSafeEqual takes as long however many digits match: no clue to guess by.
    if (timingSafeEqual(Buffer.from(signed), Buffer.from(signature(secret)))) return secret;
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
  const secret = randomBytes(VISITOR_SECRET_BYTES).toString("hex");
  return `${VISITOR_COOKIE}=${signedVisitor(secret)}; HttpOnly; SameSite=Strict; Path=/`;
}

/** The public id of the request's visitor, or undefined without a cookie this server signed. */
export function readVisitor(req: IncomingMessage): string | undefined {
  const secret = visitorSecret(req);
  return secret === undefined ? undefined : publicVisitorId(secret);
}

/**
 * The public id of the request's visitor, or a 401 with a sentence (the toasts need one).
 * Given `res`, a cookie this server did not sign (from an earlier run, or made up) gets a
 * new one with the 401, so that a page's stream, trying again, follows under it.
 */
export function requireVisitor(req: IncomingMessage, res?: ServerResponse): string {
  const visitor = readVisitor(req);
  if (visitor) return visitor;
  const pairs = (req.headers.cookie ?? "").split(";");
  const stranger = pairs.some((pair) => pair.trim().startsWith(`${VISITOR_COOKIE}=`));
  if (res && stranger) res.setHeader("Set-Cookie", newVisitorCookie());
  throw new RequestError(
    401,
    "No visitor cookie: open a page of this server first, then send the visitor cookie it set.",
  );
}

// ─── How often one may post ──────────────────────────────────────────────────

/** A rate as a bucket of tokens: `burst` at most, `perSecond` back each second. */
type Rate = { burst: number; perSecond: number };
type Bucket = { tokens: number; at: number };

/**
 * Each post costs every open stream a write, and the room keeps only its last events: a
 * script posting without pause would make every tab late and push out every real message.
 * So posting is rationed per sender (its visitor, else its address, for curl) and for the
 * server as a whole, as token buckets: full at first, one token per post, refilled with
 * time. An empty bucket answers 429 with Retry-After, the seconds until the next token.
 */
export class PostRate {
  private senders = new Map<string, Bucket>();
  private server: Bucket;
  private said = false;
  private what: string;
  private log: (line: string) => void;

  constructor(what: string, log: (line: string) => void) {
    this.what = what;
    this.log = log;
    this.server = { tokens: POSTS_PER_SERVER.burst, at: performance.now() };
  }

  /** Takes a token from the sender's bucket and the server's, or throws a 429 that says when. */
  take(req: IncomingMessage, res: ServerResponse): void {
    const sender = readVisitor(req) ?? req.socket.remoteAddress ?? "";
    const now = performance.now();
    const own = this.senders.get(sender) ?? { tokens: POSTS_PER_SENDER.burst, at: now };
    const waitMs = Math.max(
      refill(own, POSTS_PER_SENDER, now),
      refill(this.server, POSTS_PER_SERVER, now),
    );
    if (waitMs > 0) {
      const seconds = Math.ceil(waitMs / 1000);
      if (!this.said) this.log(`${this.what}: posts came faster than allowed: 429 (said once)`);
      this.said = true;
      res.setHeader("Retry-After", seconds);
      throw new RequestError(429, `Too many ${this.what} at once: try again in ${seconds} s.`);
    }
    own.tokens--;
    this.server.tokens--;
    this.senders.delete(sender); // put back last: the Map's first is the longest untouched
    this.senders.set(sender, own);
    const [oldest] = this.senders.keys();
    if (this.senders.size > RATE_SENDERS_MAX && oldest !== undefined) this.senders.delete(oldest);
  }
}

/** Adds the tokens earned since the bucket was last looked at; the ms until one is there. */
function refill(bucket: Bucket, rate: Rate, now: number): number {
  bucket.tokens = Math.min(rate.burst, bucket.tokens + ((now - bucket.at) / 1000) * rate.perSecond);
  bucket.at = now;
  return bucket.tokens >= 1 ? 0 : ((1 - bucket.tokens) / rate.perSecond) * 1000;
}
