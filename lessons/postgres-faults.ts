/**
 * lessons/postgres-faults.ts: what lessons/postgres.ts says when the database fails it, kept
 * apart so that lesson reads as the hub: connect, store, NOTIFY, listen again. Not a lesson of
 * its own: no route. It holds the two deadlines that turn a silent database into a failure,
 * the sentence of a 503 for each way a request can fail, and the one sentence a failed start
 * exits with (never with the password in it). Used by lessons/postgres.ts only.
 */

/** How long a connection attempt may take before the database counts as unreachable. */
export const DATABASE_CONNECT_TIMEOUT_S = 5;
/**
 * How long one query may take. A frozen database (a stopped process, a cut network) answers
 * nothing and closes nothing, so without a deadline a request would wait for ever.
 */
export const QUERY_DEADLINE_MS = 5000;

// ─── The sentence of a 503 ───────────────────────────────────────────────────

/** What the driver and PostgreSQL say when the database is down or went away. */
const CONNECTION_ERRORS = [
  "ECONNREFUSED", "ECONNRESET", "ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT",
  "CONNECT_TIMEOUT", "CONNECTION_CLOSED", "CONNECTION_ENDED", "CONNECTION_DESTROYED",
  "57P01", "57P02", "57P03", // admin_shutdown, crash_shutdown, cannot_connect_now
];
const NOT_ANSWERING = "The database is not answering right now; try again in a moment.";
const TOO_MANY_CLIENTS = "The database has no connection to spare right now (too many" +
  " clients); try again in a moment.";
export const TOO_LATE = `The database did not answer within ${QUERY_DEADLINE_MS / 1000}` +
  " seconds; try again in a moment.";
export const STOPPING = "This server is stopping; try again in a moment.";
/** An error's code to its sentence; a code not in here is a bug of ours, not a 503. */
export const SENTENCES = new Map(CONNECTION_ERRORS.map((code) => [code, NOT_ANSWERING]));
SENTENCES.set("53300", TOO_MANY_CLIENTS); // too_many_connections

// ─── The sentence of a failed start ──────────────────────────────────────────

/** A URL part as a person typed it; left encoded when it is not valid percent-encoding. */
function decodeSafely(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

/** One sentence for what went wrong while connecting, never with the password in it. */
export function databaseErrorSentence(error: NodeJS.ErrnoException, url: URL): string {
  const where = `${url.hostname}:${url.port || 5432}`;
  const user = decodeSafely(url.username);
  const database = decodeSafely(url.pathname.slice(1)) || user;
  switch (error.code) {
    case "ECONNREFUSED":
      return `Cannot reach PostgreSQL at ${where}: the connection was refused. ` +
        "Is the server running?";
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return `Cannot reach PostgreSQL at ${where}: there is no such host.`;
    case "CONNECT_TIMEOUT":
      return `Cannot reach PostgreSQL at ${where}: ` +
        `no answer within ${DATABASE_CONNECT_TIMEOUT_S} seconds.`;
    case "28P01":
    case "28000":
      return `PostgreSQL at ${where} refused the login of user "${user}": ` +
        "check the user and password in --database.";
    case "3D000":
      return `PostgreSQL at ${where} has no database "${database}": ` +
        "create it, or name another in --database.";
    default:
      return `Cannot use PostgreSQL at ${where}: ${error.message}.`;
  }
}

/**
 * The driver, made to drop its connections while queries are on them (renew() and close() do,
 * on purpose, when the database froze or the server stops), now and then rejects a promise of
 * its own that no caller holds: every query of ours is already answered, with a 503, by then.
 * Seen once in about ten runs of bench/attack.ts's frozen database, as a crash with a stack
 * trace. That rejection alone (its code CONNECTION_DESTROYED) is let go, with one line; any
 * other that nobody handled still ends the process, as it would without this listener.
 */
export function outliveDroppedConnections(log: (line: string) => void): void {
  if (process.listeners("unhandledRejection").includes(droppedConnection)) return;
  dropLog = log;
  process.on("unhandledRejection", droppedConnection);
}

let dropLog: (line: string) => void = () => {};
let dropSaid = false;
function droppedConnection(reason: unknown): void {
  if ((reason as NodeJS.ErrnoException | undefined)?.code !== "CONNECTION_DESTROYED") throw reason;
  if (!dropSaid) dropLog("hub: a dropped database connection took a query with it (said once)");
  dropSaid = true;
}
