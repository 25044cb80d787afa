/**
 * test/ws.ts: lesson 4, two-way. The WebSocket endpoint through a real
 * WebSocket client (the ws package's own): subscriptions to the room, a
 * message and toasts, with their permissions; every bad frame; the REST edits
 * that notify SSE and WebSocket subscribers alike, and only on a real change;
 * cleanup, the ping, Ctrl-C; the endpoint without the ws package; and the room
 * page over a WebSocket in a real browser, across a server restart.
 */

import type { IncomingMessage } from "node:http";
import { once } from "node:events";
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import * as assert from "uvu/assert";
import WebSocket from "ws";
import {
  ROOM_TOPIC,
  TEXT_MAX,
  WS_FRAME_LIMIT_BYTES,
  WS_MISSING,
  WS_SUBSCRIPTIONS_MAX,
  WS_UNSENT_LIMIT_BYTES,
  readVisitor,
  PostgresHub,
  type CountdownServer,
} from "../server.ts";
import {
  activeResources,
  untilResourcesReturn,
  BOOT_DEADLINE_MS,
  browserLesson,
  Child,
  databaseLesson,
  lesson,
  Profile,
  request,
  restartLoopbackServer,
  SseClient,
  startBlocking,
  startLoopbackServer,
  startServer,
  stopBlocking,
  stopLoopbackServer,
  stopServer,
  until,
  within,
  DEADLINE_MS,
  type LoopbackServer,
} from "./helpers.ts";

// ─── A WebSocket client for the tests ────────────────────────────────────────

/** One server message: `{"type": ..., "payload": ...}`. */
interface WsMessage {
  type: string;
  payload: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

/** Two visitors, as their cookies and their public ids. */
const ADA = "a".repeat(32);
const BO = "b".repeat(32);
const cookie = (secret: string) => `visitor=${secret}`;
const publicId = (secret: string) => readVisitor({ headers: { cookie: cookie(secret) } } as IncomingMessage)!;

/**
 * An open WebSocket and every message it received. `next(type)` waits for the
 * next message of that type, `closed` settles with the close code.
 */
class WsClient {
  socket: WebSocket;
  received: WsMessage[] = [];
  closed: Promise<number>;
  private cursor = 0;
  private wake = () => {};

  constructor(url: string, options: WebSocket.ClientOptions = {}) {
    this.socket = new WebSocket(`${url.replace(/^http/, "ws")}/ws/notifications`, options);
    this.socket.on("error", () => {});
    this.socket.on("message", (data) => {
      this.received.push(JSON.parse(data.toString()));
      this.wake();
    });
    this.closed = new Promise((resolve) => this.socket.on("close", (code) => resolve(code)));
  }

  static async open(url: string, options: WebSocket.ClientOptions = {}): Promise<WsClient> {
    const client = new WsClient(url, options);
    await within("the WebSocket to open", once(client.socket, "open"));
    return client;
  }

  send(frame: unknown) {
    this.socket.send(typeof frame === "string" || Buffer.isBuffer(frame) ? frame : JSON.stringify(frame));
  }

  /** The next message of this type, skipping others. */
  async next(type: string): Promise<WsMessage> {
    const deadline = Date.now() + DEADLINE_MS;
    for (;;) {
      const index = this.received.findIndex((message, at) => at >= this.cursor && message.type === type);
      if (index !== -1) {
        this.cursor = index + 1;
        return this.received[index]!;
      }
      const arrived = new Promise<void>((resolve) => (this.wake = resolve));
      await within(`a ${type} message`, arrived, Math.max(0, deadline - Date.now()));
    }
  }

  /** Sends a frame and returns the reply to it: the next SUBSCRIBED, UNSUBSCRIBED or ERROR. */
  async ask(frame: unknown): Promise<WsMessage> {
    const from = this.received.length;
    this.send(frame);
    await until(`a reply to ${JSON.stringify(frame).slice(0, 60)}`, () => this.received.slice(from).some((m) => ["SUBSCRIBED", "UNSUBSCRIBED", "ERROR"].includes(m.type)));
    const reply = this.received.slice(from).find((m) => ["SUBSCRIBED", "UNSUBSCRIBED", "ERROR"].includes(m.type))!;
    this.cursor = Math.max(this.cursor, this.received.indexOf(reply) + 1);
    return reply;
  }

  types(): string[] {
    return this.received.map((message) => message.type);
  }

  close() {
    this.socket.terminate();
  }
}

/** The status and body of a refused upgrade. */
async function refusedUpgrade(url: string, options: WebSocket.ClientOptions = {}, path = "/ws/notifications") {
  const socket = new WebSocket(`${url.replace(/^http/, "ws")}${path}`, options);
  socket.on("error", () => {});
  const [, res] = (await within("the refusal", once(socket, "unexpected-response"))) as [unknown, IncomingMessage];
  let body = "";
  res.setEncoding("utf8").on("data", (chunk: string) => (body += chunk));
  await within("the refusal's body", once(res, "end"));
  return { status: res.statusCode, body };
}

const json = (secret?: string, extra: Record<string, string> = {}) => ({
  "Content-Type": "application/json",
  ...(secret ? { Cookie: cookie(secret) } : {}),
  ...extra,
});

async function post(url: string, text: string, secret = ADA) {
  const answer = await request(`${url}/room/messages`, { method: "POST", headers: json(secret) }, JSON.stringify({ name: "Ada", text }));
  assert.is(answer.status, 201);
  return JSON.parse(answer.body) as { id: number; text: string; poster: string };
}

function put(url: string, id: number, body: unknown, secret?: string, extra: Record<string, string> = {}) {
  return request(`${url}/room/messages/${id}`, { method: "PUT", headers: json(secret, extra) }, typeof body === "string" ? body : JSON.stringify(body));
}

function remove(url: string, id: number, secret?: string, extra: Record<string, string> = {}) {
  return request(`${url}/room/messages/${id}`, { method: "DELETE", headers: secret ? { Cookie: cookie(secret), ...extra } : extra });
}

/**
 * server.ts and its pages, alone in a temporary folder with no node_modules
 * above it: a fresh clone before `npm ci`, where `import("ws")` fails.
 */
function bareCopy(): string {
  const bare = mkdtempSync(path.join(os.tmpdir(), "countdown-no-ws-"));
  for (const file of ["server.ts", "package.json", "pages"]) cpSync(file, path.join(bare, file), { recursive: true });
  assert.throws(() => createRequire(path.join(bare, "server.ts")).resolve("ws"), /Cannot find module/, "ws must not be found from there");
  return bare;
}

/** Starts the bare copy's server.ts on an ephemeral loopback port. */
async function startBare(bare: string, children: Child[]): Promise<{ child: Child; url: string }> {
  const child = new Child(path.join(bare, "server.ts"), ["--port", "0", "--host", "127.0.0.1"]);
  children.push(child);
  const [, url = ""] = await child.waitFor(/listening at (http:\/\/127\.0\.0\.1:\d+)\//, BOOT_DEADLINE_MS);
  return { child, url };
}

// ─── Subscriptions ───────────────────────────────────────────────────────────

lesson("ws: subscriptions and their permissions", (test) => {
  let server: CountdownServer | undefined;
  let url = "";
  const clients: WsClient[] = [];
  const open = async (secret?: string) => {
    const client = await WsClient.open(url, secret ? { headers: { Cookie: cookie(secret) } } : {});
    clients.push(client);
    return client;
  };
  test.before(async () => {
    ({ server, url } = await startServer());
  });
  test.after.each(async () => {
    for (const client of clients.splice(0)) client.close();
    await until("every socket to close on the server", () => server!.notifications.size === 0);
  });
  test.after(() => stopServer(server));

  test("a subscriber of the room receives a POSTed message as MESSAGE_CREATED, the stored message the 201 answered", async () => {
    const client = await open();
    assert.equal(await client.ask({ object_type: "room", id: "lobby" }), { type: "SUBSCRIBED", payload: { object_type: "room", id: "lobby" } });
    const stored = await post(url, "hello sockets");
    assert.equal((await client.next("MESSAGE_CREATED")).payload, stored);
    assert.is(stored.poster, publicId(ADA), "the message records its poster's public id");
  });

  test("`after` replays exactly what was missed, then goes on live: as Last-Event-ID does for SSE", async () => {
    const seen = await post(url, "seen");
    const missed = [await post(url, "missed 1"), await post(url, "missed 2")];
    const client = await open();
    await client.ask({ object_type: "room", id: "lobby", after: seen.id });
    const live = await post(url, "live");
    await until("three messages", () => client.types().filter((type) => type === "MESSAGE_CREATED").length === 3);
    assert.equal(client.received.filter((m) => m.type === "MESSAGE_CREATED").map((m) => m.payload.id), [...missed, live].map((m) => m.id));
  });

  test("a subscription to another visitor's toasts gets ERROR and receives nothing; to its own, its unread toasts, then every toast and read mark", async () => {
    const waiting = await server!.toasts.createToastAsync("waiting for Ada", { visitor: publicId(ADA) });
    const client = await open(ADA);
    const refused = await client.ask({ object_type: "toasts", id: publicId(BO) });
    assert.equal(refused, { type: "ERROR", payload: "Only the visitor itself may follow its toasts." });
    assert.equal(await client.ask({ object_type: "toasts", id: publicId(ADA) }), { type: "SUBSCRIBED", payload: { object_type: "toasts", id: publicId(ADA) } });
    await client.ask({ object_type: "room", id: "lobby" });
    const { toasts } = server!;
    await toasts.createToastAsync("for Bo only", { visitor: publicId(BO) });
    const forAda = await toasts.createToastAsync("for Ada", { visitor: publicId(ADA) });
    await toasts.createToastAsync("for everyone");
    const read = await request(`${url}/toasts/${forAda.id}/read`, { method: "POST", headers: { Cookie: cookie(ADA) } });
    assert.is(read.status, 200);
    // A message to the room comes after all of them: if Bo's toast were sent, it would be here by now.
    const after = await post(url, "after the toasts");
    await until("the room message", () => client.received.some((m) => m.type === "MESSAGE_CREATED" && m.payload.id === after.id));
    const received = client.received.filter((m) => m.type.startsWith("TOAST_"));
    assert.equal(received.map((m) => [m.type, m.payload.id, m.payload.message]), [
      ["TOAST_CREATED", waiting.id, "waiting for Ada"],
      ["TOAST_CREATED", forAda.id, "for Ada"],
      ["TOAST_CREATED", received[2]?.payload.id, "for everyone"],
      ["TOAST_READ", forAda.id, undefined],
    ]);
  });

  test("a socket without a visitor cookie may follow the room, not toasts", async () => {
    const client = await open();
    assert.is((await client.ask({ object_type: "toasts", id: publicId(ADA) })).type, "ERROR");
    assert.is((await client.ask({ object_type: "room", id: "lobby" })).type, "SUBSCRIBED");
  });

  test("unsubscribe leaves the group: nothing more arrives; unsubscribing twice is an ERROR", async () => {
    const client = await open();
    await client.ask({ object_type: "room", id: "lobby" });
    await until("the subscription to register", () => server!.hub.subscribers(ROOM_TOPIC) === 1);
    assert.equal(await client.ask({ unsubscribe: { object_type: "room", id: "lobby" } }), { type: "UNSUBSCRIBED", payload: { object_type: "room", id: "lobby" } });
    await until("the hub to forget it", () => server!.hub.subscribers(ROOM_TOPIC) === 0);
    const unheard = await post(url, "nobody listens");
    assert.equal(await client.ask({ unsubscribe: { object_type: "room", id: "lobby" } }), { type: "ERROR", payload: "Not subscribed to room lobby." });
    assert.not.ok(client.received.some((m) => m.type === "MESSAGE_CREATED" && m.payload.id === unheard.id));
  });

  const badFrames: [string, string | Buffer, string][] = [
    ["a frame that is not JSON", "{object_type:", 'The frame is not JSON; send {"object_type": "room", "id": "lobby"}.'],
    ["a JSON list", "[1]", 'The frame must be one JSON object, such as {"object_type": "room", "id": "lobby"}.'],
    ["an unknown object_type", '{"object_type": "user", "id": 1}', "object_type must be room, message or toasts."],
    ["a missing object_type", '{"id": 1}', "object_type must be room, message or toasts."],
    ["a missing id", '{"object_type": "room"}', 'id is missing: the room is "lobby", a message is its number, toasts are your visitor id.'],
    ["another room", '{"object_type": "room", "id": "kitchen"}', 'There is one room, and its id is "lobby".'],
    ["a bad after", '{"object_type": "room", "id": "lobby", "after": -1}', "after must be a whole number from 0 to 1000000000000."],
    ["a message id that is not a number", '{"object_type": "message", "id": "42"}', "A message id must be a whole number from 0 to 1000000000000."],
    ["an unknown message", '{"object_type": "message", "id": 999999}', "There is no message 999999 in the room."],
    ["toasts named by a number", '{"object_type": "toasts", "id": 7}', "The id of toasts is a visitor id, a string."],
    ["a bad unsubscribe", '{"unsubscribe": "room"}', 'unsubscribe takes what was subscribed to: {"unsubscribe": {"object_type": "room", "id": "lobby"}}.'],
    ["a binary frame", Buffer.from("{}"), "Send text frames of JSON, not binary ones."],
  ];
  for (const [what, frame, sentence] of badFrames) {
    test(`${what} gets an ERROR with one sentence, and the socket stays open`, async () => {
      const client = await open();
      assert.equal(await client.ask(frame), { type: "ERROR", payload: sentence });
      assert.is((await client.ask({ object_type: "room", id: "lobby" })).type, "SUBSCRIBED");
    });
  }

  test("subscribing twice to the same thing is an ERROR", async () => {
    const client = await open();
    await client.ask({ object_type: "room", id: "lobby" });
    assert.equal(await client.ask({ object_type: "room", id: "lobby" }), { type: "ERROR", payload: "Already subscribed to room lobby." });
  });

  test(`a frame over ${WS_FRAME_LIMIT_BYTES} bytes closes the socket with 1009`, async () => {
    const client = await open();
    client.send(JSON.stringify({ object_type: "room", id: "x".repeat(WS_FRAME_LIMIT_BYTES) }));
    assert.is(await within("the close", client.closed), 1009);
  });

  test(`subscription ${WS_SUBSCRIPTIONS_MAX + 1} on one socket gets an ERROR`, async () => {
    const ids: number[] = [];
    for (let k = 0; k < WS_SUBSCRIPTIONS_MAX; k++) ids.push((await server!.hub.publish(ROOM_TOPIC, "message", { name: "Ada", text: `n${k}`, poster: null })).id);
    const client = await open();
    assert.is((await client.ask({ object_type: "room", id: "lobby" })).type, "SUBSCRIBED");
    for (const id of ids.slice(1)) assert.is((await client.ask({ object_type: "message", id })).type, "SUBSCRIBED");
    assert.equal(await client.ask({ object_type: "message", id: ids[0] }), {
      type: "ERROR",
      payload: `At most ${WS_SUBSCRIPTIONS_MAX} subscriptions per connection: unsubscribe from one first.`,
    });
    assert.is(server!.notifications.subscriptions, WS_SUBSCRIPTIONS_MAX);
  });

  test("an upgrade from another site gets 403; from this server's own address, and without Origin, it opens", async () => {
    const refused = await refusedUpgrade(url, { headers: { Origin: "http://evil.example" } });
    assert.equal(refused, { status: 403, body: "Connections from another site are refused: Origin http://evil.example is not this server.\n" });
    const { host } = new URL(url);
    const same = await open(undefined);
    const sameSite = await WsClient.open(url, { headers: { Origin: `http://${host}` } });
    clients.push(sameSite);
    assert.is(same.socket.readyState, WebSocket.OPEN);
    assert.is(sameSite.socket.readyState, WebSocket.OPEN);
  });

  test("an upgrade elsewhere gets 404, and a plain GET of the endpoint 426 with one sentence", async () => {
    assert.equal(await refusedUpgrade(url, {}, "/room/stream"), { status: 404, body: "Only /ws/notifications speaks WebSocket here.\n" });
    const plain = await request(`${url}/ws/notifications`);
    assert.equal([plain.status, plain.headers.upgrade, plain.body], [426, "websocket", '/ws/notifications speaks WebSocket: open it with new WebSocket("ws://host/ws/notifications").\n']);
  });
});

// ─── REST edits ──────────────────────────────────────────────────────────────

lesson("ws: REST edits notify SSE and WebSocket subscribers, only on change", (test) => {
  let server: CountdownServer | undefined;
  let url = "";
  const clients: (WsClient | SseClient)[] = [];
  test.before(async () => {
    ({ server, url } = await startServer());
  });
  test.after.each(async () => {
    for (const client of clients.splice(0)) client.close();
    await until("every socket and stream to close", () => server!.notifications.size === 0 && server!.room.size === 0);
  });
  test.after(() => stopServer(server));

  /** A WebSocket subscribed to the room and an SSE stream of it, both live. */
  async function subscribers() {
    const socket = await WsClient.open(url);
    const stream = new SseClient(`${url}/room/stream`);
    clients.push(socket, stream);
    await socket.ask({ object_type: "room", id: "lobby" });
    await stream.next("presence");
    await until("both to subscribe", () => server!.hub.subscribers(ROOM_TOPIC) === 2);
    return { socket, stream };
  }

  test("GET answers the message as it stands; PUT with the same text changes nothing and notifies nobody; a new text notifies both", async () => {
    const { socket, stream } = await subscribers();
    const message = await post(url, "first words");
    const kept = (await server!.hub.history(ROOM_TOPIC)).length;
    const same = await put(url, message.id, { text: "  first words " }, ADA);
    assert.equal([same.status, JSON.parse(same.body)], [200, message]);
    assert.is((await server!.hub.history(ROOM_TOPIC)).length, kept, "nothing was published");
    const changed = await put(url, message.id, { text: "second thoughts" }, ADA);
    assert.equal([changed.status, JSON.parse(changed.body)], [200, { ...message, text: "second thoughts" }]);
    const got = JSON.parse((await request(`${url}/room/messages/${message.id}`)).body);
    assert.equal(got, { ...message, text: "second thoughts" });

    // Each subscriber saw the message, then exactly one change: the same-text PUT sent nothing in between.
    const update = await socket.next("MESSAGE_UPDATED");
    assert.equal(socket.received.filter((m) => m.type.startsWith("MESSAGE_")).map((m) => m.type), ["MESSAGE_CREATED", "MESSAGE_UPDATED"]);
    assert.equal([update.payload.message, update.payload.text], [message.id, "second thoughts"]);
    const sse = await stream.next("message_updated");
    assert.equal(JSON.parse(sse.data), update.payload, "the same change over both transports");
    assert.is(sse.id, String(update.payload.id), "with an id of its own, so replay stays exact");
    assert.equal(stream.messages.filter((m) => m.event.startsWith("message")).map((m) => m.event), ["message", "message_updated"]);
  });

  test("DELETE by its poster answers 204, notifies both, and the message is gone", async () => {
    const { socket, stream } = await subscribers();
    const message = await post(url, "soon gone");
    const answer = await remove(url, message.id, ADA);
    assert.is(answer.status, 204);
    assert.is((await socket.next("MESSAGE_DELETED")).payload.message, message.id);
    assert.is(JSON.parse((await stream.next("message_deleted")).data).message, message.id);
    const gone = await request(`${url}/room/messages/${message.id}`);
    assert.is(gone.status, 404);
    assert.is((await remove(url, message.id, ADA)).status, 404);
  });

  test("a subscriber of one message gets its changes and its deletion, nothing about others", async () => {
    const [mine, other] = [await post(url, "mine"), await post(url, "other")];
    const socket = await WsClient.open(url);
    clients.push(socket);
    assert.equal(await socket.ask({ object_type: "message", id: mine.id }), { type: "SUBSCRIBED", payload: { object_type: "message", id: mine.id } });
    await put(url, other.id, { text: "other, changed" }, ADA);
    await put(url, mine.id, { text: "mine, changed" }, ADA);
    await remove(url, mine.id, ADA);
    await socket.next("MESSAGE_DELETED");
    assert.equal(socket.received.slice(1).map((m) => [m.type, m.payload.message]), [["MESSAGE_UPDATED", mine.id], ["MESSAGE_DELETED", mine.id]]);
    await until("the finished subscription to be dropped", () => server!.notifications.subscriptions === 0);
  });

  test("PUT and DELETE by another visitor, or by none, get 403 and publish nothing", async () => {
    const message = await post(url, "Ada's");
    const kept = (await server!.hub.history(ROOM_TOPIC)).length;
    for (const secret of [BO, undefined]) {
      const changed = await put(url, message.id, { text: "not yours" }, secret);
      assert.equal([changed.status, changed.body], [403, `Only the visitor who posted message ${message.id} may change it.\n`]);
      const deleted = await remove(url, message.id, secret);
      assert.equal([deleted.status, deleted.body], [403, `Only the visitor who posted message ${message.id} may delete it.\n`]);
    }
    assert.is((await server!.hub.history(ROOM_TOPIC)).length, kept);
  });

  test("bad edits get 400, 404, 405, 413, 415 or 403 with one sentence, as posting does", async () => {
    const message = await post(url, "to be badly edited");
    const cases: [Promise<{ status?: number; body: string }>, number, string][] = [
      [put(url, message.id, {}, ADA), 400, `text is missing: it takes 1 to ${TEXT_MAX} characters.`],
      [put(url, message.id, "{text:", ADA), 400, 'The body is not JSON; send {"name": "...", "text": "..."}.'],
      [put(url, message.id, { text: "x".repeat(5000) }, ADA), 413, "The body is over 4096 bytes."],
      [request(`${url}/room/messages/${message.id}`, { method: "PUT", headers: { "Content-Type": "text/plain", Cookie: cookie(ADA) } }, "hi"), 415, "Send the message as application/json or as a form (application/x-www-form-urlencoded)."],
      [put(url, message.id, { text: "hi" }, ADA, { Origin: "http://evil.example" }), 403, "Posts from another site are refused: Origin http://evil.example is not this server."],
      [put(url, 999999, { text: "hi" }, ADA), 404, `There is no message 999999 in the room (it may be deleted, or older than the last 100 events).`],
      [request(`${url}/room/messages/${message.id}`, { method: "POST" }), 405, `/room/messages/${message.id} answers GET and PUT and DELETE only.`],
      [request(`${url}/room/messages/abc`), 400, "The message id must be a whole number from 0 to 1000000000000."],
    ];
    for (const [answer, status, sentence] of cases) {
      const { status: got, body } = await answer;
      assert.equal([got, body], [status, `${sentence}\n`]);
    }
    assert.is(JSON.parse((await request(`${url}/room/messages/${message.id}`)).body).text, "to be badly edited");
  });

  test("the polled list carries each event's type, so a polling page applies changes too", async () => {
    const message = await post(url, "polled");
    await put(url, message.id, { text: "polled, changed" }, ADA);
    const list = JSON.parse((await request(`${url}/room/messages?after=${message.id - 1}`)).body);
    assert.equal(list.map((item: { type: string }) => item.type), ["message", "message_updated"]);
  });
});

// ─── Leaving, the ping, stopping ─────────────────────────────────────────────

lesson("ws: leaving, the ping, Ctrl-C", (test) => {
  let server: CountdownServer | undefined;
  let lines: string[] = [];
  let url = "";
  const children: Child[] = [];
  test.before(async () => {
    ({ server, lines, url } = await startServer());
  });
  test.after(async () => {
    for (const child of children) child.kill();
    await stopServer(server);
  });

  test("300 connect-subscribe-close cycles leave no group member, timer or socket behind", async () => {
    await until("the last suite's server and sockets to close", () => activeResources().TCPServerWrap === 1 && !activeResources().TCPSocketWrap);
    const before = activeResources();
    const message = await post(url, "followed");
    for (let round = 0; round < 30; round++) {
      const batch = await Promise.all(Array.from({ length: 10 }, () => WsClient.open(url)));
      await Promise.all(batch.map((client) => client.ask({ object_type: "room", id: "lobby" })));
      await Promise.all(batch.map((client) => client.ask({ object_type: "message", id: message.id })));
      for (const client of batch) client.close();
    }
    await until("every socket to close on the server", () => server!.notifications.size === 0 && server!.hub.subscribers(ROOM_TOPIC) === 0);
    await untilResourcesReturn(before);
    assert.is(server!.notifications.subscriptions, 0);
    assert.is(lines.filter((line) => /^websocket closed for .* after \d+ events: code 1006 \(\d+ open\)$/.test(line)).length, 300);
  });

  test("a socket that stops answering pings is dropped; one that answers stays", async () => {
    // Short enough for a test, long enough that a busy machine still answers in time.
    const pinging = await startServer({ pingInterval: 300 });
    try {
      const silent = await WsClient.open(pinging.url, { autoPong: false });
      const answering = await WsClient.open(pinging.url);
      let pings = 0;
      answering.socket.on("ping", () => pings++);
      await silent.ask({ object_type: "room", id: "lobby" });
      assert.is(await within("the silent socket to be dropped", silent.closed), 1006);
      await until("the server to forget it", () => pinging.server.notifications.size === 1 && pinging.server.hub.subscribers(ROOM_TOPIC) === 0);
      await until("three pings", () => pings >= 3);
      assert.is(answering.socket.readyState, WebSocket.OPEN);
      answering.close();
      await until("no socket left", () => pinging.server.notifications.size === 0);
    } finally {
      await stopServer(pinging.server);
    }
  });

  test(`a socket that stops reading is cut once it holds ${WS_UNSENT_LIMIT_BYTES} bytes unsent; the others get everything`, async () => {
    const slowServer = await startServer({ quiet: true });
    try {
      const [slow, reader] = [await WsClient.open(slowServer.url), await WsClient.open(slowServer.url)];
      await slow.ask({ object_type: "room", id: "lobby" });
      await reader.ask({ object_type: "room", id: "lobby" });
      (slow.socket as unknown as { _socket: import("node:net").Socket })._socket.pause(); // stops reading: the kernel's buffers fill, then the server's
      const text = "x".repeat(TEXT_MAX);
      let published = 0;
      // Bounded: the kernel's socket buffers take a few megabytes before anything waits.
      while (slowServer.server.notifications.size === 2 && published < 100_000) {
        for (let k = 0; k < 500; k++) await slowServer.server.hub.publish(ROOM_TOPIC, "message", { name: "Ada", text, poster: null });
        published += 500;
        await new Promise((resolve) => setImmediate(resolve));
      }
      await until("the slow socket to be cut", () => slowServer.server.notifications.size === 1);
      assert.is(slowServer.server.hub.subscribers(ROOM_TOPIC), 1);
      await until("the reader to get every message", () => reader.received.filter((m) => m.type === "MESSAGE_CREATED").length === published, BOOT_DEADLINE_MS);
      reader.close();
      slow.close();
    } finally {
      await stopServer(slowServer.server);
    }
  });

  test("Ctrl-C closes every socket with 1001", async () => {
    const child = new Child("server.ts", ["--port", "0", "--host", "127.0.0.1"]);
    children.push(child);
    const [, childUrl = ""] = await child.waitFor(/listening at (http:\/\/127\.0\.0\.1:\d+)\//, BOOT_DEADLINE_MS);
    const clients = await Promise.all([WsClient.open(childUrl), WsClient.open(childUrl)]);
    await Promise.all(clients.map((client) => client.ask({ object_type: "room", id: "lobby" })));
    child.process.kill("SIGINT");
    assert.equal(await within("both sockets to close", Promise.all(clients.map((client) => client.closed))), [1001, 1001]);
    assert.is(await within("the server to exit", child.exited), 0);
    assert.match(child.output, /SIGINT: ending 0 open streams and 2 WebSockets/);
  });

  test("without the ws package an upgrade gets 501 with one sentence, and everything else still works", async () => {
    const bare = bareCopy();
    try {
      const { child, url: bareUrl } = await startBare(bare, children);
      assert.equal(await refusedUpgrade(bareUrl), { status: 501, body: `${WS_MISSING}\n` });
      const plain = await request(`${bareUrl}/ws/notifications`);
      assert.equal([plain.status, plain.body], [501, `${WS_MISSING}\n`]);
      assert.is((await post(bareUrl, "still here")).text, "still here");
      assert.is((await request(`${bareUrl}/room/`)).status, 200);
      assert.is(await child.stop(), 0);
    } finally {
      rmSync(bare, { recursive: true, force: true });
    }
  });
});

lesson("ws on the blocking server: not there, and it says why", (test) => {
  const children: Child[] = [];
  test.after(() => stopBlocking(children));

  test("/ws/notifications and the message routes answer 404 with one sentence", async () => {
    const { url } = await startBlocking(children, []);
    const answer = await request(`${url}/ws/notifications`);
    assert.equal([answer.status, answer.body], [404, "WebSockets are served by server.ts only: each one would hold a blocking worker for as long as it stays open (see lesson 4 in the README).\n"]);
    assert.is((await request(`${url}/room/messages/1`, { method: "PUT" })).status, 404);
  });
});

// ─── Across processes, through PostgreSQL ────────────────────────────────────

databaseLesson("database: WebSocket subscribers and REST edits through PostgreSQL", (test, database) => {
  const servers: CountdownServer[] = [];
  const clients: WsClient[] = [];
  test.after(async () => {
    for (const client of clients) client.close();
    for (const server of servers) {
      await stopServer(server);
      await server.hub.close();
    }
  });

  test("a change PUT through one server reaches a WebSocket on another server with its own hub, once; the same text again reaches nobody", async () => {
    const databaseUrl = await database();
    /** One server with a PostgresHub of its own, as each process of --workers has. */
    const serve = async () => {
      const hub = await within("PostgreSQL to open", PostgresHub.open(databaseUrl, () => {}), BOOT_DEADLINE_MS);
      const running = await startServer({ hub, quiet: true });
      servers.push(running.server);
      return running;
    };
    const [reading, writing] = [await serve(), await serve()];
    const socket = await WsClient.open(reading.url);
    clients.push(socket);
    await socket.ask({ object_type: "room", id: "lobby" });
    const message = await post(writing.url, "through the other one");
    await until("the message on the other server's socket", () => socket.types().includes("MESSAGE_CREATED"));
    assert.is((await put(writing.url, message.id, { text: "through the other one" }, ADA)).status, 200);
    assert.is((await put(writing.url, message.id, { text: "changed over there" }, ADA)).status, 200);
    assert.is((await socket.next("MESSAGE_UPDATED")).payload.text, "changed over there");
    assert.equal(socket.types().filter((type) => type.startsWith("MESSAGE_")), ["MESSAGE_CREATED", "MESSAGE_UPDATED"]);
    assert.is(JSON.parse((await request(`${reading.url}/room/messages/${message.id}`)).body).text, "changed over there");
  });
});

// ─── The room over a WebSocket, in a real browser ────────────────────────────

browserLesson("browser: the room over a WebSocket", (test, browser) => {
  let running: LoopbackServer | undefined;
  let profile: Profile | undefined;
  const roomUrl = (query = "") => `http://localhost:${running!.port}/room/${query}`;
  const shownIds = (tab: { page: import("playwright-core").Page }) => tab.page.locator("#messages li[data-id]").evaluateAll((lines) => lines.map((line) => Number((line as HTMLElement).dataset.id)));

  test.before(async () => {
    running = await startLoopbackServer();
  });
  test.before.each(async () => {
    profile = await Profile.open(browser());
  });
  test.after.each(async () => {
    await profile?.close();
    await until("the room's sockets and streams to close", () => running!.server.notifications.size === 0 && running!.server.room.size === 0);
  });
  test.after(() => stopLoopbackServer(running));

  test("with ?transport=ws a message posted from another tab shows, and no EventSource is opened", async () => {
    const [reader, poster] = [await profile!.open(roomUrl("?transport=ws")), await profile!.open(roomUrl())];
    await reader.page.locator("#state", { hasText: "streaming" }).waitFor();
    await poster.page.locator("#state", { hasText: "streaming" }).waitFor();
    await until("the WebSocket to subscribe", () => running!.server.notifications.subscriptions === 1);
    await poster.page.fill("#name", "Ada");
    await poster.page.fill("#text", "from the SSE tab");
    await poster.page.click("button");
    await reader.page.locator("#messages li .text", { hasText: "from the SSE tab" }).waitFor();
    assert.is(await reader.openEventSources(), 0);
    assert.is(await reader.page.textContent("#transport"), "use SSE instead");
  });

  test("a change and a deletion made over REST show in a WebSocket tab", async () => {
    const tab = await profile!.open(roomUrl("?transport=ws"));
    await tab.page.locator("#state", { hasText: "streaming" }).waitFor();
    await until("the WebSocket to subscribe", () => running!.server.notifications.subscriptions === 1);
    const base = `http://127.0.0.1:${running!.port}`;
    const [kept, gone] = [await post(base, "before the change"), await post(base, "to be deleted")];
    await tab.page.locator("#messages li .text", { hasText: "to be deleted" }).waitFor();
    assert.is((await put(base, kept.id, { text: "after the change" }, ADA)).status, 200);
    assert.is((await remove(base, gone.id, ADA)).status, 204);
    await tab.page.locator("#messages li .text", { hasText: "after the change" }).waitFor();
    await tab.page.locator("#messages li .text", { hasText: "to be deleted" }).waitFor({ state: "detached" });
  });

  test("after a server restart it re-subscribes with the last id: no duplicate, no gap", async () => {
    const tab = await profile!.open(roomUrl("?transport=ws"));
    await tab.page.locator("#state", { hasText: "streaming" }).waitFor();
    await until("the WebSocket to subscribe", () => running!.server.notifications.subscriptions === 1);
    const base = () => `http://127.0.0.1:${running!.port}`;
    const before = await post(base(), "before the restart");
    await tab.page.locator("#messages li .text", { hasText: "before the restart" }).waitFor();
    const shownBefore = await shownIds(tab);

    // The hub outlives the process, as PostgreSQL's does with --database: ids go on where they were.
    const { hub } = running!.server;
    running = await restartLoopbackServer(running!, hub);
    const whileAway = await hub.publish(ROOM_TOPIC, "message", { name: "Bo", text: "while it was away", poster: null });
    await until("the page to reconnect and subscribe", () => running!.server.notifications.subscriptions === 1, BOOT_DEADLINE_MS);
    const after = await post(base(), "after the restart");
    await tab.page.locator("#messages li .text", { hasText: "after the restart" }).waitFor();
    assert.equal(await shownIds(tab), [...shownBefore, whileAway.id, after.id]);
    assert.ok(before.id < whileAway.id);
    assert.is(await tab.page.locator("#messages li.gap").count(), 0);
    assert.ok(running!.lines.some((line) => line.endsWith(` follows room lobby after ${before.id}`)), "it asked for what came after the last id it saw");
    assert.match((await tab.page.textContent("#requests")) ?? "", /requests for news: [2-9]$/, "one WebSocket per connection, counted");
  });

  test("without the ws package the page says so and falls back to SSE", async () => {
    const bare = bareCopy();
    const children: Child[] = [];
    try {
      const { child, url } = await startBare(bare, children);
      const tab = await profile!.open(`${url}/room/?transport=ws`);
      await tab.page.locator("#error", { hasText: `${WS_MISSING} Using SSE instead.` }).waitFor();
      await tab.page.locator("#state", { hasText: "streaming" }).waitFor();
      await post(url, "over SSE after all");
      await tab.page.locator("#messages li .text", { hasText: "over SSE after all" }).waitFor();
      assert.is(await tab.openEventSources(), 1);
      await profile!.close();
      profile = undefined;
      assert.is(await child.stop(), 0);
    } finally {
      for (const child of children) child.kill();
      rmSync(bare, { recursive: true, force: true });
    }
  });
});
