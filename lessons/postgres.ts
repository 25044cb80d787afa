/**
 * lessons/postgres.ts: lesson 3, one hub for every process, through PostgreSQL.
 *
 * With --workers 2 (lessons/processes.ts) each process has a hub of its own, so a message
 * reaches only the tabs of the process it was posted to. Víðir Valberg Guðmundsson's "Writing
 * a chat application in Django 4.2 using async StreamingHttpResponse, Server-Sent Events and
 * PostgreSQL LISTEN/NOTIFY" (seed 003) answers with LISTEN/NOTIFY, "batteries included" in the
 * database you already run. Here the hub's events live in a table, and every process hears of
 * each new one through LISTEN, on one connection of its own: a thousand tabs cost one
 * connection per process, not one per tab as in the post. The room, the toasts and the
 * WebSocket talk to the same `Hub` interface (lessons/hub.ts) and never know.
 *
 * It needs a running PostgreSQL with a database in it (docs/postgres.md has the three
 * commands for a local one; its "postgres" database will do), and the postgres package (npm ci).
 * Run it:    npx -y tsx server.ts --workers 2 \
 *              --database postgres://postgres:countdown@localhost:5432/postgres
 * Then try:
 *   - http://localhost:8000/room/ in two tabs served by different pids (the page
 *     says which): a message posted in one shows in both, with the same id;
 *   - Ctrl-C and start again: the room replays its history, with the same ids;
 *   - sudo pg_ctlcluster 15 main stop: countdowns go on and open tabs stay open, but a
 *     post is refused with 503, "The database is not answering right now; try again in
 *     a moment."; sudo pg_ctlcluster 15 main start: within seconds each process listens
 *     again, reads from the table whatever it missed, and posts reach every tab again.
 * You should see the banner say "The room and the toasts live in PostgreSQL at
 * postgres://postgres:***@localhost:5432/postgres": the password never appears in a
 * log line. While the database is away, each process says so once, and once more
 * when it is back:
 *   [05:40:02] [5324] hub: lost the database connection; listening again as soon as it answers
 *   [05:40:09] [5324] hub: listening again after 7.8 s; caught up from the table
 */

import { setTimeout as wait } from "node:timers/promises";
// Types only: the postgres package itself is loaded with await import() when --database is given.
import type { Sql, TransactionSql } from "postgres";
import { exitWith, RequestError, type FlagValues, type Lesson } from "../server.ts";
import { chooseHub, HUB_KEEP, MemoryHub } from "./hub.ts";
import type { Hub, HubEvent, HubGap, HubSection } from "./hub.ts";
import { shareVisitorKey } from "./http.ts";
import { databaseErrorSentence, DATABASE_CONNECT_TIMEOUT_S } from "./postgres-faults.ts";
import { outliveDroppedConnections } from "./postgres-faults.ts";
import { QUERY_DEADLINE_MS, SENTENCES, STOPPING, TOO_LATE } from "./postgres-faults.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

// The deadlines, and the sentences of a 503 or a failed start: lessons/postgres-faults.ts.
/** The channel every process LISTENs on. */
const HUB_CHANNEL = "hub_events";
/** NOTIFY refuses payloads of 8000 bytes or more: a larger event is announced by its id. */
export const NOTIFY_MAX_BYTES = 7900;
/** Reconnecting the listener tries this long after the last try began, doubling to the max. */
const RECONNECT_FIRST_MS = 250;
const RECONNECT_MAX_MS = 8000;

// ─── Connecting ──────────────────────────────────────────────────────────────

/** --database, else DATABASE_URL; "" when neither is given. */
export function databaseUrl(flags: FlagValues): string {
  return (flags.database as string | undefined) || process.env.DATABASE_URL || "";
}

/** The URL as a log line may show it: the password replaced by ***. */
function redactUrl(url: string): string {
  if (!URL.canParse(url)) return "(not a URL)";
  const parsed = new URL(url);
  if (parsed.password) parsed.password = "***";
  return parsed.href;
}

const POOL_OPTIONS = { connect_timeout: DATABASE_CONNECT_TIMEOUT_S, onnotice: () => {} };

/** Connects and checks the database answers, or exits with one sentence that says why not. */
async function openDatabase(url: string): Promise<Sql> {
  const parsed = URL.canParse(url) ? new URL(url) : undefined;
  if (!parsed || !["postgres:", "postgresql:"].includes(parsed.protocol) || !parsed.hostname) {
    const example = "postgres://postgres:countdown@localhost:5432/postgres";
    exitWith(1, `--database must be a URL such as ${example}.`);
  }
  const { default: postgres } = await import("postgres").catch(() =>
    exitWith(1, "--database needs the postgres package, which is not installed: run npm ci first."),
  );
  const sql = postgres(url, POOL_OPTIONS);
  try {
    await sql`select 1`;
    return sql;
  } catch (error) {
    await sql.end({ timeout: 0 });
    exitWith(1, databaseErrorSentence(error as NodeJS.ErrnoException, parsed));
  }
}

// ─── The tables ──────────────────────────────────────────────────────────────

/** The tables, created at start when missing: a second start changes nothing. */
const SCHEMA = `
  create table if not exists hub_topics (topic text primary key, last_id bigint not null);
  create table if not exists hub_events (
    topic text not null, id bigint not null, type text not null, data jsonb not null,
    at timestamptz not null default now(), primary key (topic, id)
  );
`;

/**
 * Creates the tables when missing, or exits with one sentence. Processes that start together,
 * on this machine or another, take turns under a lock: two running "create table if not exists"
 * at the same moment can both try to create, and one of them would fail.
 */
async function createTables(sql: Sql, url: string): Promise<void> {
  await sql
    .begin(async (tx) => {
      // An advisory lock is a lock on a number of our choosing (here a hash of the channel's
      // name) that PostgreSQL keeps for whoever asks, until this transaction ends: a second
      // process asking for the same number waits here until the first has made the tables.
      await tx`select pg_advisory_xact_lock(hashtext(${HUB_CHANNEL}))`;
      await tx.unsafe(SCHEMA);
    })
    .catch((error: Error) =>
      exitWith(1, `Cannot create the hub's tables in ${redactUrl(url)}: ${error.message}.`),
    );
}

/**
 * For the primary of --workers N: a database that cannot be used is one sentence, not N.
 * Each worker then opens the database and checks the tables once more (PostgresHub.open):
 * connections cannot pass from one process to another, and a second check changes nothing.
 */
export async function probeDatabase(url: string): Promise<void> {
  const sql = await openDatabase(url);
  await createTables(sql, url);
  await sql.end();
}

/** A row of hub_events as the driver gives it: a bigint arrives as a string. */
interface EventRow {
  topic: string; id: string | number; type: string; data: unknown; at: Date | string;
}

function rowToEvent({ topic, id, type, data, at }: EventRow): HubEvent {
  return { topic, id: Number(id), type, data, at: new Date(at).toISOString() };
}

// ─── The hub of every process ────────────────────────────────────────────────
//
// A publish is one transaction: the INSERT, and a NOTIFY that PostgreSQL delivers only when it
// commits, to every listening session, in commit order. A NOTIFY is not stored: a process whose
// connection was down misses it. That is why the events are in a table: on reconnect, each
// process reads what was committed meanwhile, and nothing is lost.

/**
 * The hub of every process at once. Events are stored in PostgreSQL; each process keeps the
 * last few per topic in an in-memory hub of its own, which fans them out to its streams.
 */
export class PostgresHub implements Hub {
  private sql: Sql;
  private listener: Sql;
  /** This process's subscribers, and its copy of the last events of each topic it serves. */
  private local: MemoryHub;
  /** Topics whose recent events were read from the table; others' notifications are not needed. */
  private loaded = new Map<string, Promise<void>>();
  /** Notifications are handled one at a time, in the order they came. */
  private queue: Promise<void> = Promise.resolve();
  private log: (line: string) => void;
  /** Aborted by close(): ends a reconnect's pause. */
  private closing = new AbortController();
  private reconnecting = false;
  /** A new pool for `sql`, when a query on the old one missed its deadline. */
  private connect: () => Sql;
  /** Since a query missed its deadline, until one is answered: said once each way. */
  private late = false;

  // Private: the way in is PostgresHub.open() below, because a constructor cannot await, and
  // a hub needs its connections open and its tables made before anyone uses it.
  private constructor(sql: Sql, listener: Sql, log: (line: string) => void, connect: () => Sql) {
    this.sql = sql;
    this.listener = listener;
    this.log = log;
    this.connect = connect;
    this.local = new MemoryHub({ log });
  }

  /** Creates the tables when missing, then LISTENs; a database that fails is one sentence. */
  static async open(url: string, log: (line: string) => void): Promise<PostgresHub> {
    const sql = await openDatabase(url);
    await createTables(sql, url);
    outliveDroppedConnections(log);
    // The same module openDatabase loaded: Node loads a module once, and import() returns it.
    const { default: postgres } = await import("postgres");
    let hub: PostgresHub | undefined;
    // The listener's own connection: one per process, kept open, never recycled. The driver
    // hands each NOTIFY on it to `onnotify`, the option its own sql.listen() is built on. Not
    // sql.listen() itself: after a drop it tries once, at once, and gives up silently if the
    // database is still down; lost() below retries, says so, and reads what it missed.
    const listenerOptions = {
      ...POOL_OPTIONS, max: 1, idle_timeout: 0, max_lifetime: null, onclose: () => hub?.lost(),
      onnotify: (_channel: string, payload: string) => hub?.notified(payload),
    };
    // The cast: `onnotify` is missing from the package's types, though its listen() uses it.
    const listener = postgres(url, listenerOptions as Parameters<typeof postgres>[1]);
    hub = new PostgresHub(sql, listener, log, () => postgres(url, POOL_OPTIONS));
    await hub.listen();
    return hub;
  }

  async publish<Data>(topic: string, type: string, data: Data): Promise<HubEvent<Data>> {
    return this.ask(() => this.sql.begin((tx) => this.insert(tx, topic, type, data)));
  }

  private async insert<Data>(tx: TransactionSql, topic: string, type: string, data: Data) {
    // One statement, two steps: take the topic's next id, then store the event under it.
    // The topic's row stays locked until commit, so two processes publishing to one topic
    // take ids in turn and commit in id order: NOTIFYs arrive in commit order. (`as never`:
    // the driver's JSON type is narrower than Data, and whatever a lesson publishes is JSON.)
    const [row] = await tx<EventRow[]>`
      with next as ( -- a new topic starts at id 1; a known topic's row takes one more:
        insert into hub_topics (topic, last_id) values (${topic}, 1)
        on conflict (topic) do update set last_id = hub_topics.last_id + 1
        returning last_id
      ) -- the event, stored under that id, and the row as stored, with the database's time:
      insert into hub_events (topic, id, type, data)
      select ${topic}, last_id, ${type}, ${tx.json(data as never)} from next
      returning topic, id, type, data, at`;
    const stored = rowToEvent(row!) as HubEvent<Data>;
    const full = JSON.stringify(stored);
    const small = Buffer.byteLength(full) < NOTIFY_MAX_BYTES;
    const payload = small ? full : JSON.stringify({ topic, id: stored.id });
    // A parameter, never SQL built from the text: pg_notify(channel, payload) is a function
    // call. Listeners hear it when this transaction commits, and not if it rolls back.
    await tx`select pg_notify(${HUB_CHANNEL}, ${payload})`;
    return stored;
  }

  // `sql` is the transaction of exclusive() when it reads in one.
  async history(topic: string, options: { after?: number; limit?: number } = {},
    sql: Sql | TransactionSql = this.sql) {
    const { after = 0, limit = HUB_KEEP } = options;
    if (limit <= 0) return [];
    const rows = await this.ask(() => sql<EventRow[]>`
      select topic, id, type, data, at from hub_events
      where topic = ${topic} and id > ${after}
      order by id desc limit ${limit}`);
    return rows.reverse().map(rowToEvent);
  }

  /**
   * Every query, with its deadline. A database that fails or does not answer is this
   * server's trouble, not the request's: a 503 with one sentence (which the router logs).
   */
  private async ask<T>(query: () => Promise<T>): Promise<T> {
    if (this.closing.signal.aborted) throw new RequestError(503, STOPPING);
    const pool = this.sql;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new RequestError(503, TOO_LATE)), QUERY_DEADLINE_MS);
    });
    try {
      const answer = await Promise.race([query(), deadline]);
      if (this.late && pool === this.sql) {
        this.late = false;
        this.log("hub: the database answers again");
      }
      return answer;
    } catch (error) {
      if (error instanceof RequestError) {
        if (error.message === TOO_LATE) this.renew(pool);
        throw error; // a 503 already, perhaps from an ask() inside this one
      }
      const sentence = SENTENCES.get((error as NodeJS.ErrnoException).code ?? "");
      if (sentence === undefined) throw error;
      throw new RequestError(503, this.closing.signal.aborted ? STOPPING : sentence);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * After a missed deadline, the pool's connections are closed and new ones opened. Closing
   * them is what makes PostgreSQL, once it answers again, roll back the transactions of the
   * requests that got 503: none of them sent its COMMIT. Their queries, and any still queued,
   * end with the pool (503s too), so a frozen database holds nothing here for long.
   */
  private renew(pool: Sql): void {
    if (pool !== this.sql || this.closing.signal.aborted) return;
    if (!this.late) {
      const late = `a query got no answer within ${QUERY_DEADLINE_MS / 1000} s`;
      this.log(`hub: ${late}; closing the database connections, opening new ones`);
    }
    this.late = true;
    this.sql = this.connect();
    void pool.end({ timeout: 0 });
  }

  /** The local hub's subscription, once this process holds the topic's recent events. */
  async *subscribe(topic: string, options: { after?: number; signal: AbortSignal }):
    AsyncGenerator<HubEvent | HubGap> {
    do await this.load(topic); while (!this.loaded.has(topic)); // dropped meanwhile (below)?
    try {
      // The same replay, gap and queue limit as a single process's hub.
      yield* this.local.subscribe(topic, options);
    } finally {
      // Nobody here follows it, and nothing is kept of it: no catching up at a reconnect either.
      if (!this.local.holds(topic)) this.loaded.delete(topic);
    }
  }

  watch(topic: string, listener: (event: HubEvent) => void): () => void {
    this.load(topic).catch(() => this.loaded.delete(topic)); // logged; the next call tries again
    return this.local.watch(topic, listener);
  }

  /** Turns in this process (one connection per key), then an advisory lock on the pair, held
   * by the transaction `work` reads and publishes in: the next waits for its commit. */
  exclusive<T>(topic: string, key: number, work: (hub: HubSection) => Promise<T>): Promise<T> {
    return this.local.exclusive(topic, key, () => this.ask(() => this.sql.begin(async (tx) => {
      await tx`select pg_advisory_xact_lock(hashtextextended(${`${topic} ${key}`}, 0))`;
      const history: HubSection["history"] = (name, options) => this.history(name, options, tx);
      return work({ history, publish: (name, type, data) => this.insert(tx, name, type, data) });
    })) as Promise<T>);
  }

  subscribers(topic: string): number { return this.local.subscribers(topic); }

  /** Deletes the topic's events; its row in hub_topics stays, so its ids never start again. */
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

  /** Reads a topic's recent events into the local hub, once. Notifications for it wait. */
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

  /** Everything in the table after the newest event this process has of a topic, in order. */
  private async readMissed(topic: string): Promise<void> {
    const missed = { after: this.local.lastId(topic), limit: Number.MAX_SAFE_INTEGER }; // no limit
    for (const event of await this.history(topic, missed)) this.local.relay(event);
  }

  /** Runs `work` after the notifications that came before it: the local hub gets ids in order. */
  private serially(work: () => Promise<void>): Promise<void> {
    const done = this.queue.then(work);
    // The queue goes on after `done` even when it fails: without this catch, one failed
    // step would reject every step queued after it.
    this.queue = done.catch((error) => this.log(`hub: ${(error as Error).message}`));
    return done;
  }

  private async listen(): Promise<void> { await this.listener.unsafe(`listen ${HUB_CHANNEL}`); }

  /** One session's notifications arrive in order; they are handled in that order, one at a time. */
  private notified(payload: string): void {
    void this.serially(() => this.heard(payload));
  }

  /**
   * One notification: the event itself, or only its id when it was too large to
   * carry. Anything skipped before it (missed while the connection was down) is
   * read from the table, and with it any newer event already there.
   */
  private async heard(payload: string): Promise<void> {
    const notified = JSON.parse(payload) as HubEvent;
    if (!this.loaded.has(notified.topic)) return;
    const lastId = this.local.lastId(notified.topic);
    if (notified.id <= lastId) return;
    const gapOrLarge = notified.id > lastId + 1 || notified.data === undefined;
    if (gapOrLarge) await this.readMissed(notified.topic);
    else this.local.relay(notified);
  }

  /** The listening connection closed: say so once, then try again, with pauses that grow. */
  private lost(): void {
    if (this.closing.signal.aborted || this.reconnecting) return;
    this.reconnecting = true;
    this.log("hub: lost the database connection; listening again as soon as it answers");
    void this.relisten(performance.now());
  }

  private async relisten(since: number): Promise<void> {
    let triedAt = since;
    for (let pauseMs = RECONNECT_FIRST_MS; ; pauseMs = Math.min(pauseMs * 2, RECONNECT_MAX_MS)) {
      // From the last try's start: one that waited for a frozen database (its connect timeout)
      // does not push the next past RECONNECT_MAX_MS. close() cuts the pause short.
      const pause = Math.max(0, pauseMs - (performance.now() - triedAt));
      await wait(pause, undefined, { signal: this.closing.signal }).catch(() => {});
      if (this.closing.signal.aborted) return;
      triedAt = performance.now();
      try {
        await this.listen();
        // NOTIFYs sent while nobody here listened were dropped; their events are in the table.
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
    for (const topic of this.loaded.keys()) await this.readMissed(topic);
  }
}

// ─── The lesson ──────────────────────────────────────────────────────────────

export const database: Lesson = {
  flags: { database: { type: "string" } },
  help: `  --database URL   Keeps the room and the toasts in PostgreSQL, shared by every process
                   (env DATABASE_URL), e.g. postgres://postgres:countdown@localhost:5432/postgres.`,

  banner(_url, flags) {
    const url = databaseUrl(flags);
    const where = `PostgreSQL at ${redactUrl(url)}: every process hears every message.`;
    return url ? [`  The room and the toasts live in ${where}`] : [];
  },

  /** Installed after the room and the toasts, which ask for the hub only when they serve. */
  async install(app) {
    const url = databaseUrl(app.flags);
    if (!url) return;
    const hub = await PostgresHub.open(url, app.log);
    chooseHub(app, hub);
    await shareVisitorKey(hub); // visitor cookies signed alike by every process, every run
    app.onStop(() => void hub.close());
  },
};
