/**
 * test/edits.ts: lesson 4, REST on the room's messages (lessons/edits.ts).
 * GET, PUT and DELETE one message; an edit with the same text publishes
 * nothing, a real one reaches an SSE stream and a WebSocket alike with an id
 * of its own; a message's own subscription; only its poster may change it;
 * every bad edit gets one sentence.
 */

import * as assert from "uvu/assert";
import type { App } from "../server.ts";
import { HUB_KEEP, hubOf, type Hub } from "../lessons/hub.ts";
import { MESSAGES_KEPT } from "../lessons/edits.ts";
import { PostgresHub } from "../lessons/postgres.ts";
import { ROOM_TOPIC, TEXT_MAX } from "../lessons/room.ts";
import { BOOT_DEADLINE_MS, databaseLesson, lesson, request, SseClient, startServer, stopServer, until, within } from "./helpers.ts";
import { ADA, BO, cookie, post, put, remove, socketsOpen, WsClient } from "./ws-client.ts";

/** The room's message_updated events after `after`, as the hub (or its table) keeps them. */
async function changesAfter(hub: Hub, after: number) {
  return (await hub.history(ROOM_TOPIC, { after })).filter((event) => event.type === "message_updated");
}

/** `count` of the same request at once. */
const atOnce = <T>(count: number, send: () => Promise<T>) => Promise.all(Array.from({ length: count }, send));

lesson("ws: REST edits notify SSE and WebSocket subscribers, only on change", (test) => {
  let app: App | undefined;
  let lines: string[] = [];
  let url = "";
  const clients: (WsClient | SseClient)[] = [];
  const kept = async () => (await hubOf(app!).history(ROOM_TOPIC)).length;
  test.before(async () => {
    ({ app, lines, url } = await startServer());
  });
  test.after.each(async () => {
    for (const client of clients.splice(0)) client.close();
    await until("every socket and stream to close", () => socketsOpen(lines) === 0 && hubOf(app!).subscribers(ROOM_TOPIC) === 0);
  });
  test.after(() => stopServer(app));

  /** A WebSocket subscribed to the room and an SSE stream of it, both live. */
  async function subscribers() {
    const socket = await WsClient.open(url);
    const stream = new SseClient(`${url}/room/stream`);
    clients.push(socket, stream);
    await socket.ask({ object_type: "room", id: "lobby" });
    await stream.next("presence");
    await until("both to subscribe", () => hubOf(app!).subscribers(ROOM_TOPIC) === 2);
    return { socket, stream };
  }

  test("GET answers the message as it stands; PUT with the same text changes nothing and notifies nobody; a new text notifies both", async () => {
    const { socket, stream } = await subscribers();
    const message = await post(url, "first words");
    const before = await kept();
    const same = await put(url, message.id, { text: "  first words " }, ADA);
    assert.equal([same.status, JSON.parse(same.body)], [200, message]);
    assert.is(await kept(), before, "nothing was published");
    const changed = await put(url, message.id, { text: "second thoughts" }, ADA);
    assert.equal([changed.status, JSON.parse(changed.body)], [200, { ...message, text: "second thoughts" }]);
    const got = JSON.parse((await request(`${url}/room/messages/${message.id}`)).body);
    assert.equal(got, { ...message, text: "second thoughts" });
    assert.ok(lines.some((line) => /^message \d+ changed \(event \d+\)$/.test(line)), "the change is logged");

    // Each subscriber saw the message, then exactly one change: the same-text PUT sent nothing in between.
    const update = await socket.next("MESSAGE_UPDATED");
    assert.equal(socket.received.filter((m) => m.type.startsWith("MESSAGE_")).map((m) => m.type), ["MESSAGE_CREATED", "MESSAGE_UPDATED"]);
    assert.equal([update.payload.id, update.payload.text], [message.id, "second thoughts"], "payload.id is the message's id");
    const sse = await stream.next("message_updated");
    const { id: eventId, message: about, ...change } = JSON.parse(sse.data);
    assert.equal([about, change], [update.payload.id, { text: update.payload.text, at: update.payload.at }], "the same change over both transports");
    assert.is(sse.id, String(update.event_id), "with an id of its own, so replay stays exact");
    assert.is(eventId, update.event_id);
    assert.equal(stream.messages.filter((m) => m.event.startsWith("message")).map((m) => m.event), ["message", "message_updated"]);
  });

  test("a form PUT changes the text as JSON does", async () => {
    const message = await post(url, "by form");
    const headers = { "Content-Type": "application/x-www-form-urlencoded", Cookie: cookie(ADA) };
    const changed = await request(`${url}/room/messages/${message.id}`, { method: "PUT", headers }, "text=by+form%2C+changed");
    assert.equal([changed.status, JSON.parse(changed.body).text], [200, "by form, changed"]);
  });

  test("DELETE by its poster answers 204, notifies both, and the message is gone", async () => {
    const { socket, stream } = await subscribers();
    const message = await post(url, "soon gone");
    const answer = await remove(url, message.id, ADA);
    assert.is(answer.status, 204);
    assert.is((await socket.next("MESSAGE_DELETED")).payload.id, message.id);
    assert.is(JSON.parse((await stream.next("message_deleted")).data).message, message.id);
    const gone = await request(`${url}/room/messages/${message.id}`);
    assert.is(gone.status, 404);
    assert.is((await remove(url, message.id, ADA)).status, 404);
    assert.ok(lines.includes(`message ${message.id} deleted (event ${message.id + 1})`), "the deletion is logged");
  });

  test("a subscriber of one message gets its changes and its deletion, nothing about others", async () => {
    const [mine, other] = [await post(url, "mine"), await post(url, "other")];
    const socket = await WsClient.open(url);
    clients.push(socket);
    assert.equal(await socket.ask({ object_type: "message", id: mine.id }), { type: "SUBSCRIBED", payload: { object_type: "message", id: mine.id } });
    await until("the subscription to reach the hub", () => hubOf(app!).subscribers(ROOM_TOPIC) === 1);
    await put(url, other.id, { text: "other, changed" }, ADA);
    await put(url, mine.id, { text: "mine, changed" }, ADA);
    await remove(url, mine.id, ADA);
    await socket.next("MESSAGE_DELETED");
    assert.equal(socket.received.slice(1).map((m) => [m.type, m.payload.id]), [["MESSAGE_UPDATED", mine.id], ["MESSAGE_DELETED", mine.id]]);
    // The deletion ends the subscription, while the socket stays open.
    await until("the finished subscription to leave the hub", () => hubOf(app!).subscribers(ROOM_TOPIC) === 0);
    assert.is(socketsOpen(lines), 1);
  });

  test("PUT and DELETE by another visitor, or by none, get 403 and publish nothing", async () => {
    const message = await post(url, "Ada's");
    const before = await kept();
    for (const secret of [BO, undefined]) {
      const changed = await put(url, message.id, { text: "not yours" }, secret);
      assert.equal([changed.status, changed.body], [403, `Only the visitor who posted message ${message.id} may change it.\n`]);
      const deleted = await remove(url, message.id, secret);
      assert.equal([deleted.status, deleted.body], [403, `Only the visitor who posted message ${message.id} may delete it.\n`]);
    }
    assert.is(await kept(), before);
  });

  test("bad edits get 400, 404, 405, 413, 415 or 403 with one sentence, as posting does", async () => {
    const message = await post(url, "to be badly edited");
    const path = `${url}/room/messages/${message.id}`;
    const cases: [Promise<{ status?: number; body: string }>, number, string][] = [
      [put(url, message.id, {}, ADA), 400, `text is missing: it takes 1 to ${TEXT_MAX} characters.`],
      [put(url, message.id, "{text:", ADA), 400, 'The body is not JSON; send {"text": "..."}.'],
      [put(url, message.id, "[1]", ADA), 400, 'The body must be one JSON object: {"text": "..."}.'],
      [put(url, message.id, { text: "x".repeat(5000) }, ADA), 413, "The body is over 4096 bytes."],
      [request(path, { method: "PUT", headers: { "Content-Type": "text/plain", Cookie: cookie(ADA) } }, "hi"), 415, "Send the message as application/json or as a form (application/x-www-form-urlencoded)."],
      [put(url, message.id, { text: "hi" }, ADA, { Origin: "http://evil.example" }), 403, "Posts from another site are refused: Origin http://evil.example is not this server."],
      [remove(url, message.id, ADA, { Origin: "http://evil.example" }), 403, "Posts from another site are refused: Origin http://evil.example is not this server."],
      [put(url, 999999, { text: "hi" }, ADA), 404, `There is no message 999999 in the room (it may be deleted, or older than the last ${MESSAGES_KEPT} messages).`],
      [request(path, { method: "POST" }), 405, `/room/messages/${message.id} answers GET and PUT and DELETE only.`],
      [request(`${url}/room/messages/abc`), 400, "The message id must be a whole number from 0 to 1000000000000."],
    ];
    for (const [answer, status, sentence] of cases) {
      const { status: got, body } = await answer;
      assert.equal([got, body], [status, `${sentence}\n`]);
    }
    assert.is(JSON.parse((await request(path)).body).text, "to be badly edited");
  });

  test("a body that is not JSON is refused before the message is looked up or its poster checked", async () => {
    const message = await post(url, "Ada's, again");
    const answer = await put(url, message.id, "{text:", BO);
    assert.equal([answer.status, answer.body], [400, 'The body is not JSON; send {"text": "..."}.\n']);
  });

  test("the polled list carries each event's type, so a polling page applies changes too", async () => {
    const message = await post(url, "polled");
    await put(url, message.id, { text: "polled, changed" }, ADA);
    const list = JSON.parse((await request(`${url}/room/messages?after=${message.id - 1}`)).body);
    assert.equal(list.map((item: { type: string }) => item.type), ["message", "message_updated"]);
  });

  test("20 identical PUTs at once publish one message_updated; 20 DELETEs at once answer one 204, the rest 404", async () => {
    const message = await post(url, "raced");
    const puts = await atOnce(20, () => put(url, message.id, { text: "raced, changed" }, ADA));
    assert.equal([...new Set(puts.map((answer) => answer.status))], [200]);
    assert.is((await changesAfter(hubOf(app!), message.id)).length, 1);
    const deletes = await atOnce(20, () => remove(url, message.id, ADA));
    assert.equal(deletes.map((answer) => answer.status).sort(), [204, ...Array(19).fill(404)]);
  });

  // Last: it fills the room past what is kept.
  test(`a message stays readable and editable after ${HUB_KEEP} newer room events, until ${MESSAGES_KEPT} newer messages`, async () => {
    const hub = hubOf(app!);
    const [old, busy] = [await post(url, "old, still shown"), await post(url, "edited a lot")];
    for (let k = 0; k <= HUB_KEEP; k++) await hub.publish(ROOM_TOPIC, "message_updated", { message: busy.id, text: `edit ${k}` });
    assert.not.ok((await hub.history(ROOM_TOPIC)).some((event) => event.id === old.id), "the message left the hub's window");
    assert.is(JSON.parse((await request(`${url}/room/messages/${old.id}`)).body).text, "old, still shown");
    assert.is(JSON.parse((await put(url, old.id, { text: "still editable" }, ADA)).body).text, "still editable");
    assert.is(JSON.parse((await request(`${url}/room/messages/${busy.id}`)).body).text, `edit ${HUB_KEEP}`);
    for (let k = 0; k < MESSAGES_KEPT; k++) await hub.publish(ROOM_TOPIC, "message", { name: "Bo", text: `newer ${k}`, poster: null });
    const gone = await request(`${url}/room/messages/${old.id}`);
    assert.equal([gone.status, gone.body], [404, `There is no message ${old.id} in the room (it may be deleted, or older than the last ${MESSAGES_KEPT} messages).\n`]);
    assert.is(lines.filter((line) => line.startsWith(`edits: ${MESSAGES_KEPT} messages kept;`)).length, 1, "the bound is said once");
  });
});

// ─── Across processes, through PostgreSQL ────────────────────────────────────

databaseLesson("database: REST edits through PostgreSQL, one at a time per message", (test, database) => {
  const apps: App[] = [];
  const hubs: PostgresHub[] = [];
  test.after(async () => {
    for (const app of apps) await stopServer(app);
    for (const hub of hubs) await hub.close();
  });
  /** One server with a PostgresHub of its own, as each process of --workers has. */
  const serve = async (databaseUrl: string) => {
    const hub = await within("PostgreSQL to open", PostgresHub.open(databaseUrl, () => {}), BOOT_DEADLINE_MS);
    hubs.push(hub);
    const running = await startServer({ hub, quiet: true });
    apps.push(running.app);
    return { ...running, hub };
  };

  test("20 identical PUTs at once, half through each of two servers, publish one message_updated; 20 DELETEs, one 204", async () => {
    const databaseUrl = await database();
    const [first, second] = [await serve(databaseUrl), await serve(databaseUrl)];
    const message = await post(first.url, "raced across processes");
    const both = <T>(send: (url: string) => Promise<T>) => Promise.all([atOnce(10, () => send(first.url)), atOnce(10, () => send(second.url))]);
    const puts = (await both((url) => put(url, message.id, { text: "changed once" }, ADA))).flat();
    assert.equal([...new Set(puts.map((answer) => answer.status))], [200]);
    assert.is((await changesAfter(first.hub, message.id)).length, 1, "one change in the table");
    const deletes = (await both((url) => remove(url, message.id, ADA))).flat();
    assert.equal(deletes.map((answer) => answer.status).sort(), [204, ...Array(19).fill(404)]);
  });

  test(`a server started after ${HUB_KEEP} newer events reads an older message from the table`, async () => {
    const databaseUrl = await database();
    const first = await serve(databaseUrl);
    const old = await post(first.url, "from before");
    for (let k = 0; k <= HUB_KEEP; k++) await first.hub.publish(ROOM_TOPIC, "message", { name: "Bo", text: `newer ${k}`, poster: null });
    const later = await serve(databaseUrl);
    assert.is(JSON.parse((await request(`${later.url}/room/messages/${old.id}`)).body).text, "from before");
    assert.is((await put(later.url, old.id, { text: "changed from the later one" }, ADA)).status, 200);
    assert.is(JSON.parse((await request(`${first.url}/room/messages/${old.id}`)).body).text, "changed from the later one");
  });
});
