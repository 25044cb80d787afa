/**
 * lessons/http.ts: the HTTP pieces the later lessons share on top of lesson 1:
 * their pages from pages/, JSON answers, request bodies (JSON or a form), the
 * Origin check, and the visitor cookie that says who is asking.
 *
 * Not a lesson of its own, and it ports no post: the room (lessons/room.ts) is
 * the first to use it. Lesson 1 needs none of this: its one page is a constant,
 * and a countdown has no body and no visitor.
 */

import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { RequestError, sendPage, type Handler } from "../server.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

/** The largest body a request may send: a message, a toast demo's form. */
export const BODY_LIMIT_BYTES = 4 * 1024;

export const VISITOR_COOKIE = "visitor";
/** The cookie's value: 128 random bits, as hex. */
const VISITOR_SECRET_BYTES = 16;
const VISITOR_SECRET = /^[0-9a-f]{32}$/;
/** Hex digits of the public visitor id: 64 bits, plenty to tell visitors apart. */
const PUBLIC_ID_LENGTH = 16;

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
  const secret = randomBytes(VISITOR_SECRET_BYTES).toString("hex");
  return `${VISITOR_COOKIE}=${secret}; HttpOnly; SameSite=Strict; Path=/`;
}

/** The public id of the request's visitor, or undefined without a cookie. */
export function readVisitor(req: IncomingMessage): string | undefined {
  const secret = visitorSecret(req);
  return secret === undefined ? undefined : publicVisitorId(secret);
}

/** The public id of the request's visitor, or a 401 with a sentence (the toasts need one). */
export function requireVisitor(req: IncomingMessage): string {
  const visitor = readVisitor(req);
  if (visitor) return visitor;
  throw new RequestError(
    401,
    "No visitor cookie: open a page of this server first, then send the visitor cookie it set.",
  );
}
