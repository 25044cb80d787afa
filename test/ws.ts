/**
 * test/ws.ts: lesson 4, two-way (lessons/ws.ts). The WebSocket endpoint
 * through a real WebSocket client (the ws package's own): subscriptions to
 * the room, a message and toasts, with their permissions; every bad frame;
 * cleanup, the ping, Ctrl-C; the endpoint without the ws package; across two
 * servers through PostgreSQL; and the room page over a WebSocket in a real
 * browser, across a server restart. The REST edits are in test/edits.ts.
 */

import type { IncomingMessage } from "node:http";
import type net from "node:net";
import { once } from "node:events";
import { randomBytes } from "node:crypto";
import { cpSync, mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import * as assert from "uvu/assert";
import WebSocket from "ws";
import type { Page } from "playwright-core";
import type { App } from "../server.ts";
import { hubOf, MemoryHub } from "../lessons/hub.ts";
import { PostgresHub } from "../lessons/postgres.ts";
import { ROOM_TOPIC, TEXT_MAX } from "../lessons/room.ts";
import { toastsOf } from "../lessons/toasts.ts";
import { toastTopic } from "../lessons/toasts.ts";
import { VISITORS_MAX } from "../lessons/toast-marks.ts";
import { TOO_FAST, WS_FRAME_LIMIT_BYTES, WS_FRAMES_PER_SECOND, WS_MISSING, WS_SUBSCRIPTIONS_MAX, WS_UNSENT_LIMIT_BYTES } from "../lessons/ws.ts";
import {
  activeResources,
  BOOT_DEADLINE_MS,
  browserLesson,
  Child,
  databaseLesson,
  lesson,
  Profile,
  request,
  restartLoopbackServer,
  startBlocking,
  startLoopbackServer,
  startServer,
  stopBlocking,
  stopLoopbackServer,
  stopServer,
  until,
  untilResourcesReturn,
  within,
  type LoopbackServer,
} from "./helpers.ts";
import { ADA, BO, cookie, follows, post, publicId, put, remove, socketsOpen, WsClient } from "./ws-client.ts";

/** Sends every frame in one write, so that the server reads them in one go, as a burst. */
function inOnePacket(client: WsClient, frames: unknown[]) {
  const raw = (client.socket as unknown as { _socket: net.Socket })._socket;
  raw.cork();
  for (const frame of frames) client.send(frame);
  raw.uncork();
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

/**
 * server.ts, its lessons and its pages, alone in a temporary folder with no
 * node_modules above it: a fresh clone before `npm ci`, where `import("ws")` fails.
 */
function bareCopy(): string {
  const bare = mkdtempSync(path.join(os.tmpdir(), "countdown-no-ws-"));
  for (const file of ["server.ts", "package.json", "lessons", "pages"]) cpSync(file, path.join(bare, file), { recursive: true });
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
  let app: App | undefined;
  let lines: string[] = [];
  let url = "";
  const clients: WsClient[] = [];
  const open = async (secret?: string) => {
    const client = await WsClient.open(url, secret ? { headers: { Cookie: cookie(secret) } } : {});
    clients.push(client);
    return client;
  };
  test.before(async () => {
    ({ app, lines, url } = await startServer());
  });
  test.after.each(async () => {
    for (const client of clients.splice(0)) client.close();
    await until("every socket to close on the server", () => socketsOpen(lines) === 0 && hubOf(app!).subscribers(ROOM_TOPIC) === 0);
  });
  test.after(() => stopServer(app));

  test("a subscriber of the room receives a POSTed message as MESSAGE_CREATED, the stored message the 201 answered", async () => {
    const client = await open();
    assert.ok(lines.at(-1)?.match(/^websocket opened for 127\.0\.0\.1:\d+ \(1 open\)$/), "the opening is logged");
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
    assert.ok(lines.some((line) => line.endsWith(` follows room lobby after ${seen.id}`)), "the log says where it resumed");
    const live = await post(url, "live");
    await until("three messages", () => client.types().filter((type) => type === "MESSAGE_CREATED").length === 3);
    assert.equal(client.received.filter((m) => m.type === "MESSAGE_CREATED").map((m) => m.payload.id), [...missed, live].map((m) => m.id));
  });

  test("a subscription to another visitor's toasts gets ERROR and receives nothing; to its own, its unread toasts, then every toast and read mark", async () => {
    const toasts = toastsOf(app!);
    const waiting = await toasts.createToastAsync("waiting for Ada", { visitor: publicId(ADA) });
    const client = await open(ADA);
    const refused = await client.ask({ object_type: "toasts", id: publicId(BO) });
    assert.equal(refused, { type: "ERROR", payload: "Only the visitor itself may follow its toasts." });
    assert.equal(await client.ask({ object_type: "toasts", id: publicId(ADA) }), { type: "SUBSCRIBED", payload: { object_type: "toasts", id: publicId(ADA) } });
    await client.ask({ object_type: "room", id: "lobby" });
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
    await until("the subscription to register", () => hubOf(app!).subscribers(ROOM_TOPIC) === 1);
    assert.equal(await client.ask({ unsubscribe: { object_type: "room", id: "lobby" } }), { type: "UNSUBSCRIBED", payload: { object_type: "room", id: "lobby" } });
    await until("the hub to forget it", () => hubOf(app!).subscribers(ROOM_TOPIC) === 0);
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
    const hub = hubOf(app!);
    const ids: number[] = [];
    for (let k = 0; k < WS_SUBSCRIPTIONS_MAX; k++) ids.push((await hub.publish(ROOM_TOPIC, "message", { name: "Ada", text: `n${k}`, poster: null })).id);
    const client = await open();
    assert.is((await client.ask({ object_type: "room", id: "lobby" })).type, "SUBSCRIBED");
    for (const id of ids.slice(1)) assert.is((await client.ask({ object_type: "message", id })).type, "SUBSCRIBED");
    assert.equal(await client.ask({ object_type: "message", id: ids[0] }), {
      type: "ERROR",
      payload: `At most ${WS_SUBSCRIPTIONS_MAX} subscriptions per connection: unsubscribe from one first.`,
    });
    // The room and the messages are all on the room's topic: one hub subscriber each, no more.
    await until(`${WS_SUBSCRIPTIONS_MAX} subscribers`, () => hub.subscribers(ROOM_TOPIC) === WS_SUBSCRIPTIONS_MAX);
    assert.is(follows(lines, "message"), WS_SUBSCRIPTIONS_MAX - 1);
  });

  test("a frame's request_id comes back in its reply: SUBSCRIBED, UNSUBSCRIBED and ERROR; a bad one gets an ERROR", async () => {
    const client = await open();
    const room = { object_type: "room", id: "lobby" };
    assert.equal(await client.ask({ ...room, request_id: "r1" }), { type: "SUBSCRIBED", request_id: "r1", payload: room });
    assert.equal(await client.ask({ ...room, request_id: 2 }), { type: "ERROR", request_id: 2, payload: "Already subscribed to room lobby." });
    assert.equal(await client.ask({ unsubscribe: room, request_id: "r3" }), { type: "UNSUBSCRIBED", request_id: "r3", payload: room });
    assert.equal(await client.ask({ object_type: "user", id: 1, request_id: "r4" }), { type: "ERROR", request_id: "r4", payload: "object_type must be room, message or toasts." });
    for (const bad of ["x".repeat(101), { r: 5 }, null]) {
      assert.equal(await client.ask({ ...room, request_id: bad }), { type: "ERROR", payload: "request_id must be a string of at most 100 characters, or a number." });
    }
  });

  test("MESSAGE_CREATED, MESSAGE_UPDATED and MESSAGE_DELETED carry the message's id in payload.id, each event's own in event_id", async () => {
    const client = await open(ADA);
    await client.ask({ object_type: "room", id: "lobby" });
    const message = await post(url, "to be changed, then deleted");
    assert.is((await put(url, message.id, { text: "changed" }, ADA)).status, 200);
    assert.is((await remove(url, message.id, ADA)).status, 204);
    await client.next("MESSAGE_DELETED");
    const events = client.received.filter((m) => m.type.startsWith("MESSAGE_") && m.event_id! >= message.id);
    assert.equal(events.map((m) => [m.type, m.payload.id, m.event_id]), [
      ["MESSAGE_CREATED", message.id, message.id],
      ["MESSAGE_UPDATED", message.id, message.id + 1],
      ["MESSAGE_DELETED", message.id, message.id + 2],
    ]);
    assert.is(events[1]!.payload.text, "changed");
  });

  test(`a burst of ${WS_SUBSCRIPTIONS_MAX + 1} subscriptions in one packet gets ${WS_SUBSCRIPTIONS_MAX} SUBSCRIBED and one ERROR`, async () => {
    const hub = hubOf(app!);
    const ids: number[] = [];
    for (let k = 0; k <= WS_SUBSCRIPTIONS_MAX; k++) ids.push((await hub.publish(ROOM_TOPIC, "message", { name: "Ada", text: `b${k}`, poster: null })).id);
    const client = await open();
    inOnePacket(client, ids.map((id) => ({ object_type: "message", id })));
    const replies = () => client.received.filter((m) => ["SUBSCRIBED", "ERROR"].includes(m.type));
    await until("a reply to every frame", () => replies().length === ids.length);
    assert.is(replies().filter((m) => m.type === "SUBSCRIBED").length, WS_SUBSCRIPTIONS_MAX);
    assert.equal(replies().filter((m) => m.type === "ERROR").map((m) => m.payload), [`At most ${WS_SUBSCRIPTIONS_MAX} subscriptions per connection: unsubscribe from one first.`]);
  });

  test("after UNSUBSCRIBED nothing more arrives, even when the subscription and its end came in one packet", async () => {
    const message = await post(url, "replayed, or not");
    await put(url, message.id, { text: "changed before" }, ADA);
    const client = await open();
    const room = { object_type: "room", id: "lobby" };
    /** What arrived after the last UNSUBSCRIBED, up to the reply to a frame sent now. */
    const sinceUnsubscribed = async () => {
      await client.ask("not JSON"); // its ERROR comes after anything the unsubscribed one still sent
      return client.types().slice(client.types().lastIndexOf("UNSUBSCRIBED") + 1, -1);
    };
    for (const subscription of [{ ...room, after: 0 }, room]) {
      inOnePacket(client, [subscription, { unsubscribe: room }]);
      await until("UNSUBSCRIBED", () => client.types().filter((type) => type === "UNSUBSCRIBED").length > 0);
      await put(url, message.id, { text: `changed after ${JSON.stringify(subscription)}` }, ADA);
      assert.equal(await sinceUnsubscribed(), [], `after ${JSON.stringify(subscription)}`);
      client.received.length = 0;
    }
  });

  test(`more than ${WS_FRAMES_PER_SECOND} frames in a second close the socket with 1008 and a sentence: no more replies than that queue`, async () => {
    const client = await open();
    const raw = (client.socket as unknown as { _socket: net.Socket })._socket;
    const closing = once(client.socket, "close");
    raw.pause(); // reads nothing, as the attacker's client did
    inOnePacket(client, Array.from({ length: 20 * WS_FRAMES_PER_SECOND }, () => "x"));
    await until("the server to say so", () => lines.some((line) => line.startsWith(`websocket: a socket that sent over ${WS_FRAMES_PER_SECOND} frames`)));
    raw.resume();
    const [code, reason] = (await within("the close", closing)) as [number, Buffer];
    assert.equal([code, String(reason)], [1008, TOO_FAST]);
    assert.is(client.types().filter((type) => type === "ERROR").length, WS_FRAMES_PER_SECOND);
  });

  test("toasts followed over a WebSocket by fresh visitors leave no hub topic behind once the sockets close", async () => {
    const hub = hubOf(app!) as MemoryHub;
    const secrets = Array.from({ length: 50 }, () => randomBytes(16).toString("hex"));
    const sockets = await Promise.all(secrets.map((secret) => open(secret)));
    await Promise.all(sockets.map((socket, k) => socket.ask({ object_type: "toasts", id: publicId(secrets[k]!) })));
    assert.ok(secrets.every((secret) => hub.holds(toastTopic(publicId(secret)))), "each followed topic is there while followed");
    for (const socket of sockets) socket.close();
    await until("every topic to go", () => secrets.every((secret) => !hub.holds(toastTopic(publicId(secret)))));
  });

  test("a WebSocket toast subscription counts against the toasts' visitor bound: past it, an ERROR with the 503 sentence", async () => {
    const full = await startServer();
    try {
      const { visitors } = toastsOf(full.app);
      const others = Array.from({ length: VISITORS_MAX }, (_, k) => `other-${k}`);
      for (const other of others) visitors.follows(other);
      const client = await WsClient.open(full.url, { headers: { Cookie: cookie(ADA) } });
      clients.push(client);
      assert.equal(await client.ask({ object_type: "toasts", id: publicId(ADA) }), { type: "ERROR", payload: `This server follows ${VISITORS_MAX} visitors' open pages already; try again later.` });
      assert.is(hubOf(full.app).subscribers(toastTopic(publicId(ADA))), 0);
      for (const other of others) visitors.left(other);
      assert.is((await client.ask({ object_type: "toasts", id: publicId(ADA) })).type, "SUBSCRIBED", "with room again, it may");
    } finally {
      for (const client of clients.splice(0)) client.close();
      await stopServer(full.app);
    }
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

// ─── Leaving, the ping, stopping ─────────────────────────────────────────────

lesson("ws: leaving, the ping, Ctrl-C", (test) => {
  let app: App | undefined;
  let lines: string[] = [];
  let url = "";
  const children: Child[] = [];
  test.before(async () => {
    ({ app, lines, url } = await startServer());
  });
  test.after(async () => {
    for (const child of children) child.kill();
    await stopServer(app);
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
    await until("every socket to close on the server", () => socketsOpen(lines) === 0 && hubOf(app!).subscribers(ROOM_TOPIC) === 0);
    await untilResourcesReturn(before);
    assert.is(lines.filter((line) => /^websocket closed for .* after \d+ events?: code 1006 \(\d+ open\)$/.test(line)).length, 300);
  });

  test("a socket that stops answering pings is dropped; one that answers stays", async () => {
    // The ping comes every few heartbeats: short enough for a test, long enough that a busy machine still answers in time.
    const pinging = await startServer({ heartbeat: 150 });
    try {
      const silent = await WsClient.open(pinging.url, { autoPong: false });
      const answering = await WsClient.open(pinging.url);
      let pings = 0;
      answering.socket.on("ping", () => pings++);
      await silent.ask({ object_type: "room", id: "lobby" });
      assert.is(await within("the silent socket to be dropped", silent.closed), 1006);
      await until("the server to forget it", () => socketsOpen(pinging.lines) === 1 && hubOf(pinging.app).subscribers(ROOM_TOPIC) === 0);
      await until("three pings", () => pings >= 3);
      assert.is(answering.socket.readyState, WebSocket.OPEN);
      answering.close();
      await until("no socket left", () => socketsOpen(pinging.lines) === 0);
    } finally {
      await stopServer(pinging.app);
    }
  });

  test(`a socket that stops reading is cut once it holds ${WS_UNSENT_LIMIT_BYTES} bytes unsent; the others get everything`, async () => {
    const slowServer = await startServer();
    const hub = hubOf(slowServer.app);
    try {
      const [slow, reader] = [await WsClient.open(slowServer.url), await WsClient.open(slowServer.url)];
      await slow.ask({ object_type: "room", id: "lobby" });
      await reader.ask({ object_type: "room", id: "lobby" });
      (slow.socket as unknown as { _socket: net.Socket })._socket.pause(); // stops reading: the kernel's buffers fill, then the server's
      const text = "x".repeat(TEXT_MAX);
      let published = 0;
      // Bounded: the kernel's socket buffers take a few megabytes before anything waits.
      while (socketsOpen(slowServer.lines) === 2 && published < 100_000) {
        for (let k = 0; k < 500; k++) await hub.publish(ROOM_TOPIC, "message", { name: "Ada", text, poster: null });
        published += 500;
        await new Promise((resolve) => setImmediate(resolve));
      }
      await until("the slow socket to be cut", () => socketsOpen(slowServer.lines) === 1);
      assert.is(hub.subscribers(ROOM_TOPIC), 1);
      await until("the reader to get every message", () => reader.received.filter((m) => m.type === "MESSAGE_CREATED").length === published, BOOT_DEADLINE_MS);
      reader.close();
      slow.close();
    } finally {
      await stopServer(slowServer.app);
    }
  });

  test(`replies alone are bounded too: a socket that sends frames that each earn a reply and reads none is cut past ${WS_UNSENT_LIMIT_BYTES} bytes unsent, with one line; the others go on`, async () => {
    const replying = await startServer();
    const opened: WsClient[] = [];
    try {
      const other = await WsClient.open(replying.url);
      opened.push(other);
      await other.ask({ object_type: "room", id: "lobby" });
      const silent = await WsClient.open(replying.url);
      opened.push(silent);
      (silent.socket as unknown as { _socket: net.Socket })._socket.pause(); // reads nothing from now on
      // Every frame earns a reply and nothing else: an ERROR of about 4 KB that names the long id it
      // could not unsubscribe from, and SUBSCRIBED, UNSUBSCRIBED for the (empty) room.
      const room = { object_type: "room", id: "lobby" };
      const notFollowed = { unsubscribe: { object_type: "toasts", id: "x".repeat(WS_FRAME_LIMIT_BYTES - 100) } };
      const burst = [...Array.from({ length: 10 }, () => [room, { unsubscribe: room }]).flat(), ...Array(130).fill(notFollowed)];
      assert.ok(burst.length < WS_FRAMES_PER_SECOND, "under the frame rate: the bound on unsent bytes must cut it, not the rate");
      // Bounded: the kernel's socket buffers take a few megabytes before anything waits in the server.
      const MOST_FRAMES = 4000;
      let sent = 0;
      while (socketsOpen(replying.lines) === 2 && sent < MOST_FRAMES) {
        inOnePacket(silent, burst);
        sent += burst.length;
        await delay(1200); // each burst in a second of its own
      }
      await until(`the silent socket to be cut (after ${sent} frames)`, () => socketsOpen(replying.lines) === 1);
      const said = replying.lines.filter((line) => line.startsWith("websocket: "));
      assert.equal(said, [`websocket: a socket that left over ${WS_UNSENT_LIMIT_BYTES} bytes unsent was cut; from now on, others without a word (said once)`]);
      assert.match(replying.lines.at(-1)!, /^websocket closed for 127\.0\.0\.1:\d+ after 0 events: code 1006 \(1 open\)$/);
      // The other socket still gets its replies and the room's news.
      const message = await post(replying.url, "after the cut");
      assert.equal((await other.next("MESSAGE_CREATED")).payload.id, message.id);
      assert.is((await other.ask({ object_type: "message", id: message.id })).type, "SUBSCRIBED");
    } finally {
      for (const client of opened) client.close();
      await stopServer(replying.app);
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
    assert.match(child.output, /SIGINT: ending 0 open streams and 2 WebSockets \(their browsers will reconnect and resume\)\n/);
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
    assert.equal([answer.status, answer.body], [404, "WebSockets are served by server.ts only: each one would hold a blocking worker for as long as it stays open (see docs/ws.md).\n"]);
    assert.is((await request(`${url}/room/messages/1`, { method: "PUT" })).status, 404);
  });
});

// ─── Across processes, through PostgreSQL ────────────────────────────────────

databaseLesson("database: WebSocket subscribers and REST edits through PostgreSQL", (test, database) => {
  const apps: App[] = [];
  const hubs: PostgresHub[] = [];
  const clients: WsClient[] = [];
  test.after(async () => {
    for (const client of clients) client.close();
    for (const app of apps) await stopServer(app);
    for (const hub of hubs) await hub.close();
  });

  test("a change PUT through one server reaches a WebSocket on another server with its own hub, once; the same text again reaches nobody", async () => {
    const databaseUrl = await database();
    /** One server with a PostgresHub of its own, as each process of --workers has. */
    const serve = async () => {
      const hub = await within("PostgreSQL to open", PostgresHub.open(databaseUrl, () => {}), BOOT_DEADLINE_MS);
      hubs.push(hub);
      const running = await startServer({ hub, quiet: true });
      apps.push(running.app);
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
  // The test's own hub, so that it outlives a restart, as PostgreSQL's does with --database.
  const hub = new MemoryHub();
  const roomUrl = (query = "") => `http://localhost:${running!.port}/room/${query}`;
  const shownIds = (tab: { page: Page }) => tab.page.locator("#messages li[data-id]").evaluateAll((lines) => lines.map((line) => Number((line as HTMLElement).dataset.id)));
  /** Opens a room tab over a WebSocket and waits for it to stream and to follow the room. */
  const openWsTab = async () => {
    const subscribed = follows(running!.lines);
    const tab = await profile!.open(roomUrl("?transport=ws"));
    await tab.page.locator("#state", { hasText: "streaming" }).waitFor();
    await until("the WebSocket to subscribe", () => follows(running!.lines) === subscribed + 1);
    return tab;
  };

  test.before(async () => {
    running = await startLoopbackServer(0, { hub });
  });
  test.before.each(async () => {
    profile = await Profile.open(browser());
  });
  test.after.each(async () => {
    await profile?.close();
    await until("the room's sockets and streams to close", () => socketsOpen(running!.lines) === 0 && hub.subscribers(ROOM_TOPIC) === 0);
  });
  test.after(async () => {
    await stopLoopbackServer(running);
    await hub.close();
  });

  test("with ?transport=ws a message posted from another tab shows, and no EventSource is opened", async () => {
    const reader = await openWsTab();
    const poster = await profile!.open(roomUrl());
    await poster.page.locator("#state", { hasText: "streaming" }).waitFor();
    await poster.page.fill("#name", "Ada");
    await poster.page.fill("#text", "from the SSE tab");
    await poster.page.click("button");
    await reader.page.locator("#messages li .text", { hasText: "from the SSE tab" }).waitFor();
    assert.is(await reader.openEventSources(), 0);
    assert.is(await reader.page.textContent("#transport"), "use SSE instead");
  });

  test("a change and a deletion made over REST show in a WebSocket tab", async () => {
    const tab = await openWsTab();
    const base = `http://127.0.0.1:${running!.port}`;
    const [kept, gone] = [await post(base, "before the change"), await post(base, "to be deleted")];
    await tab.page.locator("#messages li .text", { hasText: "to be deleted" }).waitFor();
    assert.is((await put(base, kept.id, { text: "after the change" }, ADA)).status, 200);
    assert.is((await remove(base, gone.id, ADA)).status, 204);
    await tab.page.locator("#messages li .text", { hasText: "after the change" }).waitFor();
    await tab.page.locator("#messages li .text", { hasText: "to be deleted" }).waitFor({ state: "detached" });
  });

  test("after a server restart it re-subscribes with the last id: no duplicate, no gap", async () => {
    const tab = await openWsTab();
    const base = () => `http://127.0.0.1:${running!.port}`;
    const before = await post(base(), "before the restart");
    await tab.page.locator("#messages li .text", { hasText: "before the restart" }).waitFor();
    const shownBefore = await shownIds(tab);

    // The hub outlives the process, as PostgreSQL's does with --database: ids go on where they were.
    running = await restartLoopbackServer(running!);
    const whileAway = await hub.publish(ROOM_TOPIC, "message", { name: "Bo", text: "while it was away", poster: null });
    await until("the page to reconnect and subscribe", () => follows(running!.lines) === 1, BOOT_DEADLINE_MS);
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
