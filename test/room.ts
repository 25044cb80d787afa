/**
 * test/room.ts: lesson 3, push, don't poll (lessons/room.ts). The room over
 * HTTP (posting, every bad input, streams, reconnects, polling), from the
 * command line, on the blocking server (not there), and in a real browser
 * (two tabs, a message that looks like HTML, a restart, the polling page).
 * The hub on its own is in test/hub.ts.
 */

import http from "node:http";
import net from "node:net";
import { setTimeout as delay } from "node:timers/promises";
import * as assert from "uvu/assert";
import { listen, type App } from "../server.ts";
import { hubOf, MemoryHub } from "../lessons/hub.ts";
import { NAME_MAX, ROOM_REPLAY, ROOM_TOPIC, TEXT_MAX } from "../lessons/room.ts";
import { POSTS_PER_SENDER, POSTS_PER_SERVER } from "../lessons/http.ts";
import {
  activeResources,
  browserLesson,
  closeListener,
  DEADLINE_MS,
  lesson,
  Profile,
  RECONNECT_DELAY_MS,
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
  untilResourcesReturn,
  within,
  Child,
  databaseLesson,
  type LoopbackServer,
  type SseMessage,
} from "./helpers.ts";

// ─── The room over HTTP ──────────────────────────────────────────────────────

/** Events this big, this many, are far more than loopback's socket buffers hold. */
const BIG_EVENT_BYTES = 256 * 1024;
const FILL_EVENTS = 400;

/** POSTs to the room as JSON (or with other headers and a raw body). */
function post(url: string, body: unknown, headers: Record<string, string> = { "Content-Type": "application/json" }) {
  const text = typeof body === "string" ? body : JSON.stringify(body);
  return request(`${url}/room/messages`, { method: "POST", headers }, text);
}

const messageOf = (message: SseMessage) => JSON.parse(message.data) as { id: number; name: string; text: string; at: string };
const messageIds = (client: SseClient) => client.messages.filter((m) => m.event === "message").map((m) => Number(m.id));

/**
 * How many room streams the server's log says are open: each "opened" line not
 * yet matched by a "closed" one. A stream's closing line comes in the same turn
 * as its leaving the hub, so this and the hub's count settle together.
 */
function roomStreamsOpen(lines: string[]): number {
  const count = (start: string) => lines.filter((line) => line.startsWith(start)).length;
  return count("room stream opened") - count("room stream closed");
}

lesson("room: posting and streaming over HTTP", (test) => {
  let app: App | undefined;
  let lines: string[] = [];
  let url = "";
  const clients: SseClient[] = [];
  const open = (headers: Record<string, string> = {}) => {
    const client = new SseClient(`${url}/room/stream`, headers);
    clients.push(client);
    return client;
  };
  test.before(async () => {
    ({ app, lines, url } = await startServer());
  });
  test.after.each(async () => {
    for (const client of clients.splice(0)) client.close();
    await until("every room stream to close", () => roomStreamsOpen(lines) === 0 && hubOf(app!).subscribers(ROOM_TOPIC) === 0);
  });
  test.after(() => stopServer(app));

  test("two open streams both receive one POST, as the stored message the 201 answered", async () => {
    const [first, second] = [open(), open()];
    await until("both streams to subscribe", () => hubOf(app!).subscribers(ROOM_TOPIC) === 2);
    const answer = await post(url, { name: "  Ada ", text: " hello room " });
    assert.is(answer.status, 201);
    assert.is(answer.headers["content-type"], "application/json; charset=utf-8");
    const stored = JSON.parse(answer.body);
    assert.equal(Object.keys(stored), ["id", "name", "text", "poster", "at"]);
    assert.equal([stored.name, stored.text], ["Ada", "hello room"], "surrounding whitespace is trimmed");
    for (const client of [first, second]) {
      const message = await client.next("message");
      assert.is(message.id, String(stored.id));
      assert.equal(messageOf(message), stored);
    }
    assert.ok(answer.body.endsWith("}\n"), "a JSON answer ends with a newline, so a shell prompt does not stick to it");
    const data = answer.body.slice(0, -1);
    assert.ok(first.raw.includes(`event: message\nid: ${stored.id}\ndata: ${data}\n\n`), "the wire format, byte for byte");
  });

  test("a form post works too", async () => {
    const answer = await post(url, "name=Bo&text=from+a+form", { "Content-Type": "application/x-www-form-urlencoded" });
    assert.is(answer.status, 201);
    assert.equal([JSON.parse(answer.body).name, JSON.parse(answer.body).text], ["Bo", "from a form"]);
  });

  const json = { "Content-Type": "application/json" };
  const badInputs: [string, unknown, Record<string, string>, number, string][] = [
    ["a missing name", { text: "hi" }, json, 400, `name is missing: it takes 1 to ${NAME_MAX} characters.`],
    ["an empty text", { name: "Ada", text: "   " }, json, 400, `text is missing: it takes 1 to ${TEXT_MAX} characters.`],
    ["a name that is not text", { name: 7, text: "hi" }, json, 400, `name is missing: it takes 1 to ${NAME_MAX} characters.`],
    ["a name too long", { name: "n".repeat(NAME_MAX + 1), text: "hi" }, json, 400, `name is too long: at most ${NAME_MAX} characters.`],
    ["a text too long", { name: "Ada", text: "t".repeat(TEXT_MAX + 1) }, json, 400, `text is too long: at most ${TEXT_MAX} characters.`],
    ["a control character", { name: "Ada", text: "two\nlines" }, json, 400, "text must not contain control characters such as line breaks."],
    ["a lone surrogate", '{"name": "Ada", "text": "half \\ud800"}', json, 400, "text must be well-formed Unicode: it holds half a character."],
    ["a body that is not JSON", "{name:", json, 400, 'The body is not JSON; send {"name": "...", "text": "..."}.'],
    ["a JSON list", "[1]", json, 400, 'The body must be one JSON object: {"name": "...", "text": "..."}.'],
    ["a body over 4 KB", { name: "Ada", text: "x".repeat(5000) }, json, 413, "The body is over 4096 bytes."],
    ["text/plain", "hi", { "Content-Type": "text/plain" }, 415, "Send the message as application/json or as a form (application/x-www-form-urlencoded)."],
    ["no content type", "hi", {}, 415, "Send the message as application/json or as a form (application/x-www-form-urlencoded)."],
    ["a post from another site", { name: "Ada", text: "hi" }, { ...json, Origin: "http://evil.example" }, 403, "Posts from another site are refused: Origin http://evil.example is not this server."],
    ["a post from an opaque origin", { name: "Ada", text: "hi" }, { ...json, Origin: "null" }, 403, "Posts from another site are refused: Origin null is not this server."],
  ];
  for (const [what, body, headers, status, sentence] of badInputs) {
    test(`${what} gets ${status} with one sentence, and nothing is published`, async () => {
      const before = (await hubOf(app!).history(ROOM_TOPIC)).length;
      const answer = await post(url, body, headers);
      assert.is(answer.status, status);
      assert.is(answer.body, `${sentence}\n`);
      assert.is((await hubOf(app!).history(ROOM_TOPIC)).length, before);
    });
  }

  test("a chunked body that passes 4 KB mid-way (no Content-Length) gets 413, and the connection closes", async () => {
    const before = (await hubOf(app!).history(ROOM_TOPIC)).length;
    const { port } = new URL(url);
    const socket = net.connect(Number(port), "127.0.0.1");
    let answer = "";
    socket.setEncoding("utf8").on("data", (chunk: string) => (answer += chunk));
    const closed = new Promise((resolve) => socket.on("close", resolve));
    const chunk = "x".repeat(5000);
    socket.write("POST /room/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" +
      `Transfer-Encoding: chunked\r\n\r\n${chunk.length.toString(16)}\r\n${chunk}\r\n`); // and never the last chunk
    await within("the server to answer and hang up", closed).finally(() => socket.destroy());
    assert.match(answer, /^HTTP\/1\.1 413 /);
    assert.match(answer, /\r\nConnection: close\r\n/i);
    assert.ok(answer.endsWith("The body is over 4096 bytes.\n\r\n0\r\n\r\n"), "one sentence, then the end");
    assert.is((await hubOf(app!).history(ROOM_TOPIC)).length, before);
  });

  test("a post whose Origin is this server's own address is accepted", async () => {
    const { host } = new URL(url);
    const answer = await post(url, { name: "Ada", text: "same site" }, { ...json, Origin: `http://${host}` });
    assert.is(answer.status, 201);
  });

  test("the log says which message was posted and how long the name was, never its text", async () => {
    const answer = await post(url, { name: "Ünal", text: "a secret" });
    const { id } = JSON.parse(answer.body);
    assert.ok(lines.includes(`message ${id} posted (a name of 4 characters)`));
    assert.not.ok(lines.some((line) => line.includes("a secret") || line.includes("Ünal")));
  });

  test(`a new stream replays the last ${ROOM_REPLAY} messages, then goes on live`, async () => {
    for (let k = 0; k < ROOM_REPLAY + 5; k++) await hubOf(app!).publish(ROOM_TOPIC, "message", { name: "Ada", text: `number ${k}`, poster: null });
    const newest = (await hubOf(app!).history(ROOM_TOPIC, { limit: 1 }))[0]!.id;
    const client = open();
    await until(`${ROOM_REPLAY} replayed messages`, () => messageIds(client).length === ROOM_REPLAY);
    assert.equal(messageIds(client), Array.from({ length: ROOM_REPLAY }, (_, k) => newest - ROOM_REPLAY + 1 + k));
    await until("the stream to subscribe", () => hubOf(app!).subscribers(ROOM_TOPIC) === 1);
    await post(url, { name: "Ada", text: "live" });
    await until("the live message", () => messageIds(client).at(-1) === newest + 1);
  });

  test("a reconnect with Last-Event-ID gets exactly what it missed: no duplicate, nothing lost", async () => {
    const first = open();
    await until("the first stream to subscribe", () => hubOf(app!).subscribers(ROOM_TOPIC) === 1);
    const seen = JSON.parse((await post(url, { name: "Ada", text: "seen" })).body).id;
    await until("the first stream to see it", () => messageIds(first).at(-1) === seen);
    first.close();
    await until("the first stream to close", () => roomStreamsOpen(lines) === 0);
    const missed = [await post(url, { name: "Ada", text: "missed 1" }), await post(url, { name: "Ada", text: "missed 2" })].map((answer) => JSON.parse(answer.body).id);
    const again = open({ "Last-Event-ID": String(seen) });
    await until("the missed messages", () => messageIds(again).length === 2);
    await until("the stream to subscribe", () => hubOf(app!).subscribers(ROOM_TOPIC) === 1);
    const live = JSON.parse((await post(url, { name: "Ada", text: "live" })).body).id;
    await until("the live message", () => messageIds(again).length === 3);
    assert.equal(messageIds(again), [...missed, live]);
    assert.is(again.messages.filter((m) => m.event === "gap").length, 0);
  });

  test("a Last-Event-ID this hub never issued gets an event: gap first, then what is kept", async () => {
    const kept = (await hubOf(app!).history(ROOM_TOPIC)).map((event) => event.id);
    const client = open({ "Last-Event-ID": "999999" });
    const gap = await client.next("gap");
    assert.equal(JSON.parse(gap.data), { after: 999999 });
    assert.is(gap.id, undefined, "a gap carries no id, so the browser keeps the last one it saw");
    await until("what is kept", () => messageIds(client).length === kept.length);
    assert.equal(messageIds(client), kept);
    assert.ok(client.messages.findIndex((m) => m.event === "gap") < client.messages.findIndex((m) => m.event === "message"));
  });

  test("a malformed Last-Event-ID gets 400 with one sentence", async () => {
    const answer = await request(`${url}/room/stream`, { headers: { "Last-Event-ID": "abc" } });
    assert.is(answer.status, 400);
    assert.is(answer.body, "Last-Event-ID must be a whole number from 0 to 1000000000000.\n");
  });

  test("every stream is told how many tabs are in the room when that changes", async () => {
    const first = open();
    await until("one tab", () => first.messages.some((m) => m.event === "presence" && JSON.parse(m.data).tabs === 1));
    const second = open();
    await until("both to hear of two tabs", () => [first, second].every((c) => c.messages.at(-1)?.event === "presence" && JSON.parse(c.messages.at(-1)!.data).tabs === 2));
    second.close();
    await until("the first to hear of one tab again", () => JSON.parse(first.messages.filter((m) => m.event === "presence").at(-1)!.data).tabs === 1);
    assert.ok(lines.some((line) => /^room stream closed after \d+ events?: the client left \(1 in the room\)$/.test(line)));
  });

  test("the polling version answers the JSON list after an id; a bad id gets 400", async () => {
    const kept = await hubOf(app!).history(ROOM_TOPIC);
    const after = kept.at(-3)!.id;
    const answer = await request(`${url}/room/messages?after=${after}`);
    assert.is(answer.status, 200);
    assert.is(answer.headers["content-type"], "application/json; charset=utf-8");
    assert.equal(JSON.parse(answer.body).map((m: { id: number }) => m.id), kept.slice(-2).map((event) => event.id));
    assert.equal(JSON.parse((await request(`${url}/room/messages?after=${kept.at(-1)!.id}`)).body), []);
    assert.is(JSON.parse((await request(`${url}/room/messages`)).body).length, ROOM_REPLAY, "without ?after= the last few");
    assert.is(JSON.parse((await request(`${url}/room/messages?after=999999`)).body).length, kept.length, "an id never issued gets everything kept");
    const bad = await request(`${url}/room/messages?after=-1`);
    assert.is(bad.status, 400);
    assert.is(bad.body, "after must be a whole number from 0 to 1000000000000.\n");
  });

  test("the page is served, ?poll= is checked, and the other methods get 405", async () => {
    const page = await request(`${url}/room/`);
    assert.is(page.status, 200);
    assert.is(page.headers["content-type"], "text/html; charset=utf-8");
    assert.match(page.body, /<form/);
    assert.is((await request(`${url}/room/?poll=5`)).status, 200);
    const badPoll = await request(`${url}/room/?poll=0`);
    assert.equal([badPoll.status, badPoll.body], [400, "poll must be a whole number from 1 to 60.\n"]);
    const wrongMethod = await request(`${url}/room/stream`, { method: "POST" });
    assert.is(wrongMethod.status, 405);
    assert.is(wrongMethod.headers.allow, "GET");
  });
});

lesson("room: how often one may post", (test) => {
  let app: App | undefined;
  let lines: string[] = [];
  let url = "";
  test.before(async () => {
    ({ app, lines, url } = await startServer());
  });
  test.after(() => stopServer(app));

  test("past its burst a sender gets 429 with Retry-After and a sentence; others still post, until the server's own rate is spent", async () => {
    const from = (address: string, text: string) => request(`${url}/room/messages`, { method: "POST", localAddress: address, headers: { "Content-Type": "application/json" } }, JSON.stringify({ name: "Ada", text }));
    for (let k = 0; k < POSTS_PER_SENDER.burst; k++) assert.is((await from("127.0.0.1", `n${k}`)).status, 201);
    const refused = await from("127.0.0.1", "one too many");
    assert.is(refused.status, 429);
    assert.match(refused.body, /^Too many room messages at once: try again in \d+ s\.\n$/);
    assert.ok(Number(refused.headers["retry-after"]) >= 1, `Retry-After: ${refused.headers["retry-after"]}`);
    assert.is((await from("127.0.0.2", "another sender")).status, 201, "the limit is per sender");
    // Senders of their own until the server's bucket is empty: then everyone waits.
    let posted = POSTS_PER_SENDER.burst + 1;
    let sender = 3;
    let last = 201;
    while (last === 201 && posted <= POSTS_PER_SERVER.burst + POSTS_PER_SENDER.burst) {
      for (let k = 0; k < POSTS_PER_SENDER.burst && last === 201; k++, posted++) last = (await from(`127.0.0.${sender}`, `m${k}`)).status ?? 0;
      sender++;
    }
    assert.is(last, 429, "the server's rate ran out");
    assert.ok(posted <= POSTS_PER_SERVER.burst + POSTS_PER_SENDER.burst, `refused after ${posted} posts`);
    assert.equal(lines.filter((line) => line.includes("posts came faster than allowed")).length, 1, "logged once");
    assert.ok((await hubOf(app!).history(ROOM_TOPIC)).length < POSTS_PER_SERVER.burst + 5);
  });
});

lesson("room streams: leaving, stopping, heartbeat, quiet", (test) => {
  let app: App | undefined;
  let lines: string[] = [];
  let url = "";
  test.before(async () => {
    ({ app, lines, url } = await startServer({ heartbeat: 50 }));
  });
  test.after(() => stopServer(app));

  test("300 open-then-abort cycles leave no subscriber, timer or socket behind", async () => {
    await until("the last suite's server and sockets to close", () => activeResources().TCPServerWrap === 1 && !activeResources().TCPSocketWrap);
    const before = activeResources();
    for (let round = 0; round < 30; round++) {
      const batch = Array.from({ length: 10 }, () => new SseClient(`${url}/room/stream`));
      await Promise.all(batch.map((client) => client.next("presence")));
      for (const client of batch) client.close();
    }
    await until("every stream to close on the server", () => roomStreamsOpen(lines) === 0 && hubOf(app!).subscribers(ROOM_TOPIC) === 0);
    await untilResourcesReturn(before);
    assert.is(lines.filter((line) => line.startsWith("room stream closed") && line.includes("the client left")).length, 300);
  });

  test("a silent stream gets the heartbeat comment", async () => {
    const client = new SseClient(`${url}/room/stream`);
    try {
      await until("a heartbeat comment", () => client.raw.includes("\n\n: still here\n\n"));
    } finally {
      client.close();
    }
  });

  test("stopping the server ends room streams cleanly, so browsers reconnect", async () => {
    const clients = [new SseClient(`${url}/room/stream`), new SseClient(`${url}/room/stream`)];
    await until("both to subscribe", () => hubOf(app!).subscribers(ROOM_TOPIC) === 2);
    assert.ok(app!.endStreams().includes("2 room streams"), "the Ctrl-C line counts them");
    assert.equal(await within("both streams to end", Promise.all(clients.map((client) => client.ended))), [true, true]);
    await until("the server to close them", () => roomStreamsOpen(lines) === 0 && hubOf(app!).subscribers(ROOM_TOPIC) === 0);
    assert.ok(lines.some((line) => line.includes("the server is stopping")));
  });

  test("a tab that stops reading is dropped by the hub once its queue is full, while its socket is still open", async () => {
    const queueLimit = 5;
    const hub = new MemoryHub({ queueLimit, log: (line) => slow.lines.push(line) });
    const slow = await startServer({ hub });
    const { port } = new URL(slow.url);
    // A reader that sends its request and then never reads a byte.
    const socket = net.connect(Number(port), "127.0.0.1");
    socket.on("error", () => {});
    socket.pause();
    socket.write("GET /room/stream HTTP/1.1\r\nHost: localhost\r\n\r\n");
    try {
      await until("the stream to subscribe", () => hubOf(slow.app).subscribers(ROOM_TOPIC) === 1);
      // Big events (the hub does not check sizes; the POST handler does) fill the socket, then the queue.
      const big = "x".repeat(BIG_EVENT_BYTES);
      for (let k = 0; k < FILL_EVENTS && hubOf(slow.app).subscribers(ROOM_TOPIC) > 0; k++) {
        await hubOf(slow.app).publish(ROOM_TOPIC, "message", { name: "flood", text: big });
        await delay(1);
      }
      assert.is(hubOf(slow.app).subscribers(ROOM_TOPIC), 0, "dropped while its socket is still open");
      assert.ok(slow.lines.includes(`hub: dropped a subscriber of ${ROOM_TOPIC}: ${queueLimit} events unread`));
      socket.destroy();
      await until("the stream to close", () => roomStreamsOpen(slow.lines) === 0);
      await until("its closing line", () => slow.lines.some((line) => /^room stream closed after \d+ events?: too slow to read, cut \(0 in the room\)$/.test(line)));
    } finally {
      socket.destroy();
      await stopServer(slow.app);
      await hub.close(); // given, not made by the app: whoever made it closes it
    }
  });

  test("--quiet leaves out the lines per message and per stream", async () => {
    const quiet = await startServer({ quiet: true });
    try {
      const client = new SseClient(`${quiet.url}/room/stream`);
      await post(quiet.url, { name: "Ada", text: "hush" });
      await client.next("message");
      client.close();
      // Its leaving the hub and its closing line come in one turn, so nothing is logged after this.
      await until("the stream to close", () => hubOf(quiet.app).subscribers(ROOM_TOPIC) === 0);
      assert.equal(quiet.lines, []);
    } finally {
      await stopServer(quiet.app);
    }
  });
});

lesson("room command line: the README's two terminals", (test) => {
  const children: Child[] = [];
  const clients: SseClient[] = [];
  test.after(() => {
    for (const client of clients) client.close();
    for (const child of children) child.kill();
  });

  test("curl -N on the stream shows a message posted as a form from another terminal; the log names it; Ctrl-C ends the stream", async () => {
    const child = new Child("server.ts", ["--port", "0", "--host", "127.0.0.1"]);
    children.push(child);
    const [, url] = await child.waitFor(/listening at (http:\/\/127\.0\.0\.1:\d+)\//);
    await child.waitFor(new RegExp(`Lesson 3, the room: ${url}/room/ in two tabs \\(its stream: curl -N ${url}/room/stream\\)`));
    const stream = new SseClient(`${url}/room/stream`);
    clients.push(stream);
    await child.waitFor(/room stream opened for 127\.0\.0\.1:\d+, with the last 20 messages \(1 in the room\)/);
    // What `curl -d name=Ada -d text=hello .../room/messages` sends.
    const answer = await post(url!, "name=Ada&text=hello", { "Content-Type": "application/x-www-form-urlencoded" });
    assert.is(answer.status, 201);
    assert.equal(messageOf(await stream.next("message")), JSON.parse(answer.body));
    await child.waitFor(/message 1 posted \(a name of 3 characters\)/);
    assert.is(await child.stop("SIGINT"), 0);
    assert.is(await within("the stream to end", stream.ended), true, "ended cleanly, so a browser reconnects");
    // Lesson 1's countdowns, then each lesson's share: here the room's one stream.
    assert.match(child.output, /SIGINT: ending 0 open streams and 1 room stream \(their browsers will reconnect and resume\)\n/);
    assert.match(child.output, /room stream closed after \d+ events?: the server is stopping \(0 in the room\)/);
  });
});

lesson("room on the blocking server: not there, and it says why", (test) => {
  const children: Child[] = [];
  test.after(() => stopBlocking(children));

  test("/room/ answers 404 with one sentence pointing to the README", async () => {
    const { url } = await startBlocking(children, []);
    const answer = await request(`${url}/room/`);
    assert.is(answer.status, 404);
    assert.is(answer.body, "The room is served by server.ts only: a blocking worker cannot push (see docs/room.md).\n");
  });
});

// ─── The room in a real browser ──────────────────────────────────────────────

browserLesson("browser: the room pushes to every tab", (test, browser) => {
  let running: LoopbackServer | undefined;
  let profile: Profile | undefined;
  const roomUrl = (query = "") => `http://localhost:${running!.port}/room/${query}`;
  const texts = (tab: { page: import("playwright-core").Page }) => tab.page.locator("#messages li .text").allTextContents();

  test.before(async () => {
    running = await startLoopbackServer();
  });
  test.before.each(async () => {
    profile = await Profile.open(browser());
  });
  test.after.each(async () => {
    await profile?.close();
    await until("the room's streams to close", () => roomStreamsOpen(running!.lines) === 0);
  });
  test.after(() => stopLoopbackServer(running));

  test("two tabs: one posts, the other shows it at once, and only the poster marks it as its own", async () => {
    const [poster, reader] = [await profile!.open(roomUrl()), await profile!.open(roomUrl())];
    for (const tab of [poster, reader]) {
      await tab.page.locator("#state", { hasText: "streaming" }).waitFor();
      await tab.page.locator("#tabs", { hasText: "tabs in the room: 2" }).waitFor();
    }
    await poster.page.fill("#name", "Ada");
    await poster.page.fill("#text", "hello from the first tab");
    await poster.page.click("button");
    await reader.page.locator("#messages li", { hasText: "hello from the first tab" }).waitFor();
    await poster.page.locator("#messages li.own", { hasText: "hello from the first tab" }).waitFor();
    assert.is(await reader.page.locator("#messages li.own").count(), 0, "the other tab does not mark it as its own");
    assert.is(await poster.page.inputValue("#text"), "", "the text field is cleared for the next message");
    assert.match(await reader.page.textContent("#requests") ?? "", /requests for news: 1$/);
    assert.match(await reader.page.textContent("#delay") ?? "", /^last message shown \d+ ms after it was posted$/);
  });

  test("a message that looks like HTML shows as text and creates no element", async () => {
    const attack = "<img src=x onerror=alert(1)>";
    const tab = await profile!.open(roomUrl());
    let dialogs = 0;
    tab.page.on("dialog", (dialog) => {
      dialogs++;
      void dialog.dismiss();
    });
    await tab.page.locator("#state", { hasText: "streaming" }).waitFor();
    await until("the tab to subscribe", () => hubOf(running!.app).subscribers(ROOM_TOPIC) === 1);
    const answer = await request(`http://127.0.0.1:${running!.port}/room/messages`, { method: "POST", headers: { "Content-Type": "application/json" } }, JSON.stringify({ name: attack, text: attack }));
    assert.is(answer.status, 201);
    await tab.page.locator("#messages li .text", { hasText: attack }).waitFor();
    assert.is(await tab.page.locator("#messages img").count(), 0);
    assert.is(await tab.page.locator("#messages li .name", { hasText: attack }).count(), 1);
    assert.is(dialogs, 0);
  });

  test("after a server restart (ids count from 1 again) the tab shows the gap line, then the new messages", async () => {
    const tab = await profile!.open(roomUrl());
    await tab.page.locator("#state", { hasText: "streaming" }).waitFor();
    await until("the tab to subscribe", () => hubOf(running!.app).subscribers(ROOM_TOPIC) === 1);
    const postTo = (text: string) =>
      request(`http://127.0.0.1:${running!.port}/room/messages`, { method: "POST", headers: { "Content-Type": "application/json" } }, JSON.stringify({ name: "Ada", text }));
    await postTo("before the restart");
    await tab.page.locator("#messages li .text", { hasText: "before the restart" }).waitFor();
    running = await restartLoopbackServer(running!);
    await tab.page.locator("#messages li.gap", { hasText: "some messages were missed" }).waitFor({ timeout: RECONNECT_DELAY_MS + DEADLINE_MS });
    await until("the tab to subscribe again", () => hubOf(running!.app).subscribers(ROOM_TOPIC) === 1);
    assert.is(JSON.parse((await postTo("after the restart")).body).id, 1, "the new hub counts from 1");
    await tab.page.locator("#messages li .text", { hasText: "after the restart" }).waitFor();
    const shown = await texts(tab);
    assert.equal(shown.slice(-2), ["before the restart", "after the restart"]);
    assert.is(await tab.page.locator("#messages li").last().textContent(), "Adaafter the restart", "the new message comes after the gap line");
    assert.is(await tab.page.locator("#messages li.gap").count(), 1);
  });

  test("a stream answered with a 502 (as a proxy answers) says it is cut off, and the page tries again until it streams", async () => {
    const tab = await profile!.open(roomUrl());
    await tab.page.locator("#state", { hasText: "streaming" }).waitFor();
    const { port } = running!;
    // The server goes, as on Ctrl-C; a stand-in answers 502 to everything on its port.
    const closed = Promise.all(running!.listeners.map(closeListener));
    running!.app.endStreams();
    running!.app.server.closeAllConnections();
    await within("the server to close", closed);
    let refused = 0;
    const standIn = http.createServer((_req, res) => {
      refused++;
      res.writeHead(502, { "Content-Type": "text/plain" }).end("Bad gateway\n");
    });
    const standInListeners = await listen(standIn, "localhost", port);
    try {
      await tab.page.locator("#state[data-state=cut]", { hasText: /^cut off: trying again in [\d.]+ s$/ }).waitFor({ timeout: RECONNECT_DELAY_MS + DEADLINE_MS });
      await until("the page to try again on its own", () => refused >= 2, RECONNECT_DELAY_MS + DEADLINE_MS);
    } finally {
      standIn.closeAllConnections();
      await Promise.all(standInListeners.map(closeListener));
    }
    running = await startLoopbackServer(port, running!.options);
    await tab.page.locator("#state", { hasText: "streaming" }).waitFor({ timeout: 10_000 + DEADLINE_MS });
    await until("the tab to subscribe again", () => hubOf(running!.app).subscribers(ROOM_TOPIC) === 1);
  });

  test("with ?poll=2 the page asks every 2 seconds and shows a message by the next request after it was posted", async () => {
    const tab = await profile!.open(roomUrl("?poll=2"));
    await tab.page.locator("#state", { hasText: "polling" }).waitFor();
    assert.is(hubOf(running!.app).subscribers(ROOM_TOPIC), 0, "no stream is open in polling mode");
    assert.is(roomStreamsOpen(running!.lines), 0, "and none was opened");
    const answer = await request(`http://127.0.0.1:${running!.port}/room/messages`, { method: "POST", headers: { "Content-Type": "application/json" } }, JSON.stringify({ name: "Bo", text: "polled" }));
    assert.is(answer.status, 201);
    const requestsAtPost = Number((await tab.page.textContent("#requests"))!.match(/\d+$/)![0]);
    await tab.page.locator("#messages li .text", { hasText: "polled" }).waitFor();
    const requestsAtShow = Number((await tab.page.textContent("#requests"))!.match(/\d+$/)![0]);
    assert.ok(requestsAtShow <= requestsAtPost + 1, `shown by request ${requestsAtShow}, posted after request ${requestsAtPost}`);
    assert.ok((await texts(tab)).includes("polled"));
  });
});

databaseLesson("database: the room refuses what PostgreSQL cannot store", (test, database) => {
  let running: { app: App; url: string } | undefined;
  test.after(() => stopServer(running?.app));

  test("a lone surrogate in a message gets 400 with a sentence, not a 500", async () => {
    const { app, url } = await startServer({ flags: { database: await database() } });
    running = { app, url };
    const answer = await post(url, '{"name": "Ada", "text": "half \\ud800"}');
    assert.equal([answer.status, answer.body], [400, "text must be well-formed Unicode: it holds half a character.\n"]);
    assert.is((await post(url, { name: "Ada", text: "whole \u{1F600}" })).status, 201, "a whole pair is a character like any other");
  });
});
