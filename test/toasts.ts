/**
 * test/toasts.ts: lesson 3, toasts that stay until acknowledged (lessons/toasts.ts).
 * The visitor cookie and the middleware, the stream and the owner-only read over
 * HTTP, the hub they live in and their share of stopping, the demo's background
 * task, the bounds, the server's terminal (a child process with piped stdin),
 * the toasts in a real browser, and their survival of a restart with --database.
 */

import * as assert from "uvu/assert";
import { createApp, install, type App } from "../server.ts";
import { chooseHub, HUB_KEEP, hubOf, MemoryHub } from "../lessons/hub.ts";
import { POSTS_PER_SENDER, publicVisitorId, signedVisitor } from "../lessons/http.ts";
import {
  COUNTDOWN_TABS_PER_NAME,
  EVERYONE,
  TOAST_MESSAGE_MAX,
  toastTopic,
  TOASTS_UNREAD_MAX,
  toasts,
  toastsOf,
  type Toast,
} from "../lessons/toasts.ts";
import { VISITORS_MAX } from "../lessons/toast-marks.ts";
import {
  BOOT_DEADLINE_MS,
  browserLesson,
  DEADLINE_MS,
  RECONNECT_DELAY_MS,
  Child,
  databaseLesson,
  lesson,
  Profile,
  request,
  SseClient,
  startLoopbackServer,
  startServer,
  stopLoopbackServer,
  stopServer,
  until,
  within,
  type LoopbackServer,
} from "./helpers.ts";

// ─── Visitors, from outside ──────────────────────────────────────────────────

/** A visitor as a test sees it: the Cookie header its browser would send, and its public id. */
interface Visitor {
  cookie: string;
  id: string;
}

/** Loads the countdown page with no cookie, as a new browser does, and keeps the cookie it sets. */
async function newVisitor(url: string): Promise<Visitor> {
  const page = await request(`${url}/`);
  const setCookie = page.headers["set-cookie"]?.[0] ?? "";
  const [, value, secret] = /^visitor=(([0-9a-f]{32})\.[0-9a-f]{64});/.exec(setCookie) ?? [];
  if (!value || !secret) throw new Error(`the page set no visitor cookie: ${setCookie}`);
  return { cookie: `visitor=${value}`, id: publicVisitorId(secret) };
}

const toastsIn = (client: SseClient) => client.messages.filter((m) => m.event === "toast").map((m) => JSON.parse(m.data) as Toast);
const messagesOf = (client: SseClient) => toastsIn(client).map((toast) => toast.message);
const readsOf = (client: SseClient) => client.messages.filter((m) => m.event === "read").map((m) => (JSON.parse(m.data) as { id: string }).id);

function readToast(url: string, id: string, cookie?: string, method = "POST") {
  return request(`${url}/toasts/${id}/read`, { method, headers: cookie ? { Cookie: cookie } : {} });
}

function startDemo(url: string, cookie: string | undefined, body: string, type = "application/x-www-form-urlencoded") {
  const headers: Record<string, string> = { "Content-Type": type };
  if (cookie) headers.Cookie = cookie;
  return request(`${url}/toasts/demo`, { method: "POST", headers }, body);
}

lesson("toasts: the visitor cookie and the middleware", (test) => {
  let app: App | undefined;
  let url = "";
  test.before(async () => {
    ({ app, url } = await startServer());
  });
  test.after(() => stopServer(app));

  test("the first page sets a visitor cookie of 128 random bits and their signature, HttpOnly, SameSite=Strict, Path=/; a known one is not set again", async () => {
    const first = await request(`${url}/`);
    const [cookie = ""] = first.headers["set-cookie"] ?? [];
    assert.match(cookie, /^visitor=[0-9a-f]{32}\.[0-9a-f]{64}; HttpOnly; SameSite=Strict; Path=\/$/);
    const second = await request(`${url}/`);
    assert.is.not(second.headers["set-cookie"]?.[0], cookie, "every new browser gets a new value");
    const again = await request(`${url}/room/`, { headers: { Cookie: cookie.split(";")[0]! } });
    assert.is(again.headers["set-cookie"], undefined, "a browser that has one keeps it");
  });

  test("every HTML page gets the toasts once, before </body> or else before </html>, with a Content-Length that fits", async () => {
    for (const path of ["/", "/room/", "/toasts/"]) {
      const page = await request(`${url}${path}`);
      assert.is(Number(page.headers["content-length"]), Buffer.byteLength(page.body), `${path}: Content-Length`);
      assert.is(page.body.split('stack.id = "toasts"').length, 2, `${path}: the script once`);
      assert.ok(page.body.includes("#toasts .toast"), `${path}: the style`);
    }
    const countdown = (await request(`${url}/`)).body;
    assert.ok(countdown.indexOf("</script>\n</html>") > countdown.indexOf('stack.id = "toasts"'), "the countdown's before </html>");
    const room = (await request(`${url}/room/`)).body;
    assert.ok(room.trimEnd().endsWith("</script>\n</body>\n</html>"), "the room's before </body>");
    const head = await request(`${url}/`, { method: "HEAD" });
    assert.is(head.headers["content-length"], String(Buffer.byteLength(countdown)), "HEAD says the same length");
  });

  test("what is not HTML passes untouched: the room's JSON, an error, the shared worker's script", async () => {
    const list = await request(`${url}/room/messages`);
    assert.is(list.body, "[]\n");
    assert.is(list.headers["set-cookie"], undefined);
    const missing = await request(`${url}/nowhere`);
    assert.is(missing.body, "Nothing here at /nowhere; the countdown is at /.\n");
    const worker = await request(`${url}/toasts/worker.js`);
    assert.is(worker.headers["content-type"], "text/javascript; charset=utf-8");
    assert.ok(worker.body.includes('new EventSource("/toasts/stream")'));
  });

  test("a cookie this server did not sign is no visitor: the stream answers 401, and a page sets a new cookie", async () => {
    const made = "0123456789abcdef0123456789abcdef";
    const signed = signedVisitor(made);
    const changed = `${signed.slice(0, -1)}${signed.endsWith("0") ? "1" : "0"}`; // its last digit changed
    const forged = [`visitor=${made}`, `visitor=${made}.${"0".repeat(64)}`, `visitor=${changed}`];
    for (const cookie of forged) {
      const refused = await request(`${url}/toasts/stream`, { headers: { Cookie: cookie } });
      assert.is(refused.status, 401, cookie);
      const page = await request(`${url}/`, { headers: { Cookie: cookie } });
      assert.match(page.headers["set-cookie"]?.[0] ?? "", /^visitor=[0-9a-f]{32}\./, "a stranger's cookie is replaced");
      // The stream's 401 brings a new cookie too, for a page's worker that tries again.
      const fresh = /^(visitor=[^;]+);/.exec(refused.headers["set-cookie"]?.[0] ?? "")?.[1];
      assert.ok(fresh, "the 401 sets a new cookie");
      const stream = new SseClient(`${url}/toasts/stream`, { Cookie: fresh! });
      await stream.opened();
      assert.is(stream.status, 200, "under which the stream opens");
      stream.close();
    }
    assert.is((await request(`${url}/toasts/stream`)).headers["set-cookie"], undefined, "no cookie at all (curl): just the 401");
  });

  test("the public id is the same for the same cookie, differs between cookies, and never shows the secret", () => {
    const secret = "0123456789abcdef0123456789abcdef";
    assert.is(publicVisitorId(secret), publicVisitorId(secret));
    assert.is.not(publicVisitorId(secret), publicVisitorId("fedcba9876543210fedcba9876543210"));
    assert.match(publicVisitorId(secret), /^[0-9a-f]{16}$/);
    assert.not.ok(secret.includes(publicVisitorId(secret)));
  });
});

lesson("toasts: the stream and the owner's acknowledgement over HTTP", (test) => {
  let app: App | undefined;
  let lines: string[] = [];
  let url = "";
  const clients: SseClient[] = [];
  const open = (visitor: Visitor) => {
    const client = new SseClient(`${url}/toasts/stream`, { Cookie: visitor.cookie });
    clients.push(client);
    return client;
  };
  /** Opens a stream and waits until it follows both of its topics, so nothing published next is missed. */
  const follow = async (visitor: Visitor) => {
    const client = open(visitor);
    await until("the stream to subscribe", () => hubOf(app!).subscribers(toastTopic(visitor.id)) > 0);
    return client;
  };
  test.before(async () => {
    ({ app, lines, url } = await startServer());
  });
  test.after.each(async () => {
    for (const client of clients.splice(0)) client.close();
    await until("every toast stream to close", () => toastsOf(app!).streams.size === 0 && hubOf(app!).subscribers(toastTopic(EVERYONE)) === 0);
  });
  test.after(() => stopServer(app));

  test("a stream sends each toast as event: toast, with the toast's id and its JSON", async () => {
    const visitor = await newVisitor(url);
    const stream = await follow(visitor);
    assert.is(stream.headers["content-type"], "text/event-stream; charset=utf-8");
    const created = toastsOf(app!).createToast("hello you", { visitor: visitor.id, level: "warning" });
    const message = await stream.next("toast");
    assert.is(message.id, created.id);
    assert.equal(JSON.parse(message.data), created);
    assert.equal(Object.keys(created), ["id", "message", "level", "at"]);
    assert.ok(lines.some((line) => line === `toast stream opened for visitor ${visitor.id} (1 open)`), "the log names the public id");
  });

  test("the owner's acknowledgement gives 200 with the toast, tells its other tabs, and a reconnect does not replay it", async () => {
    const visitor = await newVisitor(url);
    const [tab1, tab2] = [await follow(visitor), await follow(visitor)];
    const kept = await toastsOf(app!).createToastAsync("keep me", { visitor: visitor.id });
    const gone = await toastsOf(app!).createToastAsync("close me", { visitor: visitor.id });
    for (const tab of [tab1, tab2]) await tab.next("toast"), await tab.next("toast");
    const answer = await readToast(url, gone.id, visitor.cookie);
    assert.is(answer.status, 200);
    assert.equal(JSON.parse(answer.body), gone);
    for (const tab of [tab1, tab2]) assert.equal(JSON.parse((await tab.next("read")).data), { id: gone.id });
    const again = await readToast(url, gone.id, visitor.cookie);
    assert.is(again.status, 200, "acknowledging twice is no error");
    const reconnected = open(visitor);
    assert.is((await reconnected.next("toast")).id, kept.id);
    await until("the reconnected stream to subscribe", () => hubOf(app!).subscribers(toastTopic(visitor.id)) === 3);
    assert.equal(messagesOf(reconnected), ["keep me"], "the read toast does not come back");
    assert.equal(readsOf(tab1), [gone.id], "one read mark, not two");
  });

  test("another visitor's toast gets 403, an unknown id 404, no cookie 401, another method 405: each one sentence", async () => {
    const [owner, other] = [await newVisitor(url), await newVisitor(url)];
    const toast = await toastsOf(app!).createToastAsync("mine", { visitor: owner.id });
    const cases: [Promise<{ status?: number; body: string }>, number, string][] = [
      [readToast(url, toast.id, other.cookie), 403, "That toast is another visitor's: only its owner may mark it read.\n"],
      [readToast(url, `${owner.id}-0000000000000000`, owner.cookie), 404, "There is no toast with that id.\n"],
      [readToast(url, "not-an-id", owner.cookie), 404, "There is no toast with that id.\n"],
      [readToast(url, "%E0%A4%A", owner.cookie), 404, "There is no toast with that id.\n"],
      [readToast(url, toast.id), 401, "No visitor cookie: open a page of this server first, then send the visitor cookie it set.\n"],
      [readToast(url, toast.id, "visitor=not-hex"), 401, "No visitor cookie: open a page of this server first, then send the visitor cookie it set.\n"],
      [readToast(url, toast.id, owner.cookie, "GET"), 405, `/toasts/${toast.id}/read answers POST only.\n`],
      [request(`${url}/toasts/stream`), 401, "No visitor cookie: open a page of this server first, then send the visitor cookie it set.\n"],
    ];
    for (const [answer, status, sentence] of cases) {
      const { status: got, body } = await answer;
      assert.equal([got, body], [status, sentence]);
    }
    const stream = open(owner);
    assert.is((await stream.next("toast")).id, toast.id, "the 403 did not mark it read for its owner");
  });

  test("a broadcast acknowledged by one visitor still reaches another, and comes back only for that other", async () => {
    const [reader, other] = [await newVisitor(url), await newVisitor(url)];
    const [readerTab, otherTab] = [await follow(reader), await follow(other)];
    const broadcast = toastsOf(app!).createToast("for everyone");
    for (const tab of [readerTab, otherTab]) assert.is((await tab.next("toast")).id, broadcast.id);
    assert.is((await readToast(url, broadcast.id, reader.cookie)).status, 200);
    await readerTab.next("read");
    const [readerAgain, otherAgain] = [await follow(reader), await follow(other)];
    assert.is((await otherAgain.next("toast")).id, broadcast.id, "the other visitor still has it");
    await until("the reader's new stream to subscribe", () => hubOf(app!).subscribers(toastTopic(reader.id)) === 2);
    assert.equal(toastsIn(readerAgain), [], "the reader does not get it again");
    assert.equal(readsOf(otherTab), [], "the other visitor's tabs are not told of the reader's mark");
  });

  test("a toast for one visitor reaches none of another visitor's streams", async () => {
    const [one, other] = [await newVisitor(url), await newVisitor(url)];
    const [oneTab, otherTab] = [await follow(one), await follow(other)];
    const own = toastsOf(app!).createToast("only for one", { visitor: one.id });
    const broadcast = toastsOf(app!).createToast("for everyone, after it");
    const has = (tab: SseClient, toast: Toast) => toastsIn(tab).some((received) => received.id === toast.id);
    await until("the first visitor to get both", () => has(oneTab, own) && has(oneTab, broadcast));
    await until("the other visitor to get the broadcast", () => has(otherTab, broadcast));
    assert.not.ok(has(otherTab, own), "the other visitor never gets the first one's toast");
  });

  test("createToast stores the toast before it returns; createToastAsync resolves once it is stored; bad ones throw a sentence", async () => {
    const visitor = await newVisitor(url);
    const toast = toastsOf(app!).createToast("from sync code", { visitor: visitor.id });
    assert.equal((await hubOf(app!).history(toastTopic(visitor.id))).map((event) => event.data), [toast]);
    const awaited = await toastsOf(app!).createToastAsync("from async code", { visitor: visitor.id, level: "error" });
    assert.is((await hubOf(app!).history(toastTopic(visitor.id))).at(-1)!.data, awaited);
    assert.throws(() => toastsOf(app!).createToast("x".repeat(TOAST_MESSAGE_MAX + 1)), /message is too long: at most 200 characters\./);
    assert.throws(() => toastsOf(app!).createToast("   "), /message is missing/);
    assert.throws(() => toastsOf(app!).createToast("hi", { level: "loud" as never }), /level must be one of info, success, warning, error\./);
  });

  test("300 open-then-abort cycles leave no subscriber, stream or heartbeat timer behind", async () => {
    const visitor = await newVisitor(url);
    for (let k = 0; k < 300; k++) {
      const stream = open(visitor);
      await stream.opened();
      stream.close();
    }
    clients.splice(0);
    await until("every stream to close", () => toastsOf(app!).streams.size === 0);
    assert.is(hubOf(app!).subscribers(toastTopic(visitor.id)), 0);
    assert.is(hubOf(app!).subscribers(toastTopic(EVERYONE)), 0);
  });
});

lesson("toasts: their share of the app", (test) => {
  const apps: App[] = [];
  test.after(async () => {
    for (const app of apps) await stopServer(app);
  });

  test("the toasts live in the hub the app chose, even one chosen after they were installed", async () => {
    const app = createApp({ log: () => {} });
    apps.push(app);
    await install(app, [toasts]);
    const hub = new MemoryHub();
    chooseHub(app, hub); // as the PostgreSQL lesson does, installed after this one
    const toast = toastsOf(app).createToast("in the chosen hub");
    assert.equal((await hub.history(toastTopic(EVERYONE))).map((event) => event.data), [toast]);
  });

  test("stopping ends the toast streams cleanly and names them; with none open it names nothing", async () => {
    const unused = (await startServer()).app;
    apps.push(unused);
    assert.equal(unused.endStreams(), ["0 open streams"], "toasts never used: nothing to name");
    // A server of its own each time: a stopped app's hub is closed, and takes no new stream.
    for (const [count, phrase] of [[2, "2 toast streams"], [1, "1 toast stream"]] as const) {
      const { app, url } = await startServer();
      apps.push(app);
      const visitor = await newVisitor(url);
      const streams = Array.from({ length: count }, () => new SseClient(`${url}/toasts/stream`, { Cookie: visitor.cookie }));
      await until("the streams to subscribe", () => hubOf(app).subscribers(toastTopic(visitor.id)) === count);
      assert.equal(app.endStreams(), ["0 open streams", phrase]);
      for (const stream of streams) assert.is(await within("the stream to end", stream.ended), true, "ended, not cut");
      assert.equal(app.endStreams(), ["0 open streams"]);
    }
  });
});

lesson("toasts: the demo's background task", (test) => {
  let app: App | undefined;
  let url = "";
  const clients: SseClient[] = [];
  test.before(async () => {
    ({ app, url } = await startServer());
  });
  test.after(async () => {
    for (const client of clients.splice(0)) client.close();
    await stopServer(app);
  });

  test("the demo answers 303 before its second toast, and both reach only that visitor, in order", async () => {
    const [visitor, other] = [await newVisitor(url), await newVisitor(url)];
    const [mine, theirs] = [visitor, other].map((who) => new SseClient(`${url}/toasts/stream`, { Cookie: who.cookie }));
    clients.push(mine!, theirs!);
    await until("both streams to subscribe", () => hubOf(app!).subscribers(toastTopic(EVERYONE)) === 2);
    const answer = await startDemo(url, visitor.cookie, "message=Woke+up&seconds=1");
    assert.equal([answer.status, answer.headers.location], [303, "/toasts/"]);
    assert.ok(toastsIn(mine!).length <= 1, "the answer came before the second toast");
    assert.is(JSON.parse((await mine!.next("toast")).data).message, "Sleep running for at least 1 second(s)...");
    assert.is(JSON.parse((await mine!.next("toast")).data).message, "Woke up");
    assert.equal(messagesOf(theirs!), [], "the other visitor got neither");
  });

  test("bad demo forms get a 4xx with one sentence, and start nothing", async () => {
    const visitor = await newVisitor(url);
    const cases: [string | undefined, string, string, number, string][] = [
      [undefined, "message=hi&seconds=1", "application/x-www-form-urlencoded", 401, "No visitor cookie: open a page of this server first, then send the visitor cookie it set.\n"],
      [visitor.cookie, "message=hi&seconds=61", "application/x-www-form-urlencoded", 400, "seconds must be a whole number from 0 to 60.\n"],
      [visitor.cookie, "message=hi", "application/x-www-form-urlencoded", 400, "seconds must be a whole number from 0 to 60.\n"],
      [visitor.cookie, "message=&seconds=1", "application/x-www-form-urlencoded", 400, "message is missing: it takes 1 to 200 characters.\n"],
      [visitor.cookie, `message=${"x".repeat(TOAST_MESSAGE_MAX + 1)}&seconds=1`, "application/x-www-form-urlencoded", 400, "message is too long: at most 200 characters.\n"],
      [visitor.cookie, '{"message": "hi", "seconds": 1}', "application/json", 415, "Send the demo as a form (application/x-www-form-urlencoded).\n"],
    ];
    for (const [cookie, body, type, status, sentence] of cases) {
      const answer = await startDemo(url, cookie, body, type);
      assert.equal([answer.status, answer.body], [status, sentence], body);
    }
    assert.equal(await hubOf(app!).history(toastTopic(visitor.id)), []);
  });
});

lesson("toasts: the bounds", (test) => {
  let app: App | undefined;
  let lines: string[] = [];
  let url = "";
  const clients: SseClient[] = [];
  test.before(async () => {
    ({ app, lines, url } = await startServer());
  });
  test.after(async () => {
    for (const client of clients.splice(0)) client.close();
    await stopServer(app);
  });

  test(`past ${TOASTS_UNREAD_MAX} unread toasts the oldest go, in every tab, and that is logged once`, async () => {
    const visitor = await newVisitor(url);
    const tab = new SseClient(`${url}/toasts/stream`, { Cookie: visitor.cookie });
    clients.push(tab);
    await until("the stream to subscribe", () => hubOf(app!).subscribers(toastTopic(visitor.id)) === 1);
    const extra = 5;
    const created: Toast[] = [];
    for (let k = 0; k < TOASTS_UNREAD_MAX + extra; k++) created.push(await toastsOf(app!).createToastAsync(`toast ${k}`, { visitor: visitor.id }));
    await until(`${extra} read marks on the open tab`, () => readsOf(tab).length === extra);
    assert.equal(readsOf(tab), created.slice(0, extra).map((toast) => toast.id), "the oldest went, oldest first");
    const reconnected = new SseClient(`${url}/toasts/stream`, { Cookie: visitor.cookie });
    clients.push(reconnected);
    await until(`${TOASTS_UNREAD_MAX} toasts replayed`, () => toastsIn(reconnected).length === TOASTS_UNREAD_MAX);
    assert.equal(toastsIn(reconnected), created.slice(extra));
    assert.equal(lines.filter((line) => line.includes(`a visitor has ${TOASTS_UNREAD_MAX} unread toasts`)).length, 1);
  });

  test(`a read broadcast stays read however many toasts come after it, though the hub keeps only ${HUB_KEEP} per topic`, async () => {
    const visitor = await newVisitor(url);
    const broadcast = toastsOf(app!).createToast("read me once");
    assert.is((await readToast(url, broadcast.id, visitor.cookie)).status, 200);
    for (let k = 0; k < HUB_KEEP * 2; k++) await toastsOf(app!).createToastAsync(`own ${k}`, { visitor: visitor.id });
    const ownTopic = await hubOf(app!).history(toastTopic(visitor.id));
    assert.not.ok(ownTopic.some((event) => event.type === "read" && (event.data as { id: string }).id === broadcast.id), "the first read mark left the window");
    const stream = new SseClient(`${url}/toasts/stream`, { Cookie: visitor.cookie });
    clients.push(stream);
    await until(`${TOASTS_UNREAD_MAX} toasts replayed`, () => toastsIn(stream).length === TOASTS_UNREAD_MAX);
    assert.not.ok(toastsIn(stream).some((toast) => toast.id === broadcast.id), "the broadcast does not come back");
  });

  test(`past ${VISITORS_MAX} visitors the least recently seen idle one is forgotten with its toasts, a followed one never; logged once`, async () => {
    await stopServer(app); // a server of its own: the visitors of the tests above count too
    ({ app, lines, url } = await startServer());
    const visitors = toastsOf(app!).visitors;
    const followed = await newVisitor(url);
    const tab = new SseClient(`${url}/toasts/stream`, { Cookie: followed.cookie });
    clients.push(tab);
    await until("the stream to subscribe", () => hubOf(app!).subscribers(toastTopic(followed.id)) === 1);
    const stays = await toastsOf(app!).createToastAsync("stays: a tab follows me", { visitor: followed.id });
    const first = "f".repeat(16);
    const second = "e".repeat(16);
    toastsOf(app!).createToast("to be forgotten", { visitor: first });
    toastsOf(app!).createToast("to be kept", { visitor: second });
    visitors.seen(second); // seen again: now the most recent
    for (let k = 0; k < VISITORS_MAX - 2; k++) visitors.seen(k.toString(16).padStart(16, "0"));
    await until("the first visitor's toasts to go", () => (hubOf(app!) as MemoryHub).lastId(toastTopic(first)) === 0);
    assert.is((await hubOf(app!).history(toastTopic(second))).length, 1, "the visitor seen again is kept");
    visitors.seen("d".repeat(16));
    assert.equal((await hubOf(app!).history(toastTopic(followed.id))).map((event) => event.data), [stays], "the followed visitor, seen longest ago, is kept");
    assert.equal(lines.filter((line) => line.includes(`${VISITORS_MAX} visitors remembered`)).length, 1);
  });

  test(`an id that names no toast records no visitor; when all ${VISITORS_MAX} are followed, a newcomer gets 503 with a sentence`, async () => {
    const { app: full, url: fullUrl, lines: fullLines } = await startServer();
    try {
      const visitors = toastsOf(full).visitors;
      for (let k = 0; k < VISITORS_MAX; k++) visitors.follows(k.toString(16).padStart(16, "0"));
      const newcomer = await newVisitor(fullUrl);
      assert.is((await readToast(fullUrl, `${newcomer.id}-0000000000000000`, newcomer.cookie)).status, 404);
      assert.is((await request(`${fullUrl}/nowhere`, { headers: { Cookie: newcomer.cookie } })).status, 404);
      assert.not.ok(fullLines.some((line) => line.includes("visitors remembered")), "neither 404 recorded the newcomer");
      const refused = await request(`${fullUrl}/toasts/stream`, { headers: { Cookie: newcomer.cookie } });
      assert.equal([refused.status, refused.body], [503, `This server follows ${VISITORS_MAX} visitors' open pages already; try again later.\n`]);
      visitors.left("0".repeat(16)); // one tab closes: its visitor is idle, and may be forgotten
      const stream = new SseClient(`${fullUrl}/toasts/stream`, { Cookie: newcomer.cookie });
      clients.push(stream);
      await until("the newcomer's stream to subscribe", () => hubOf(full).subscribers(toastTopic(newcomer.id)) === 1);
    } finally {
      for (const client of clients.splice(0)) client.close();
      await stopServer(full);
    }
  });

  test("starting the demo faster than its rate gets 429 with Retry-After and a sentence", async () => {
    const visitor = await newVisitor(url);
    for (let k = 0; k < POSTS_PER_SENDER.burst; k++) assert.is((await startDemo(url, visitor.cookie, `message=n${k}&seconds=0`)).status, 303);
    const refused = await startDemo(url, visitor.cookie, "message=again&seconds=0");
    assert.is(refused.status, 429);
    assert.match(refused.body, /^Too many toast demos at once: try again in \d+ s\.\n$/);
    assert.ok(Number(refused.headers["retry-after"]) >= 1);
  });
});

// ─── The server's terminal ───────────────────────────────────────────────────

lesson("toasts: a line typed into the server's terminal", (test) => {
  const children: Child[] = [];
  const clients: SseClient[] = [];
  test.after(() => {
    for (const client of clients) client.close();
    for (const child of children) child.kill();
  });
  const run = (args: string[], stdin: "pipe" | "ignore") => {
    const child = new Child("server.ts", ["--port", "0", "--host", "127.0.0.1", ...args], {}, { stdin });
    children.push(child);
    return child;
  };
  const started = async (child: Child) => (await child.waitFor(/listening at (http:\/\/127\.0\.0\.1:\d+)\//, BOOT_DEADLINE_MS))[1]!;

  test("reaches every connected visitor's stream; when stdin ends the server goes on serving", async () => {
    const child = run([], "pipe");
    const url = await started(child);
    await child.waitFor(/Toasts: type a line here and press Enter: every open page shows it\./);
    const visitors = [await newVisitor(url), await newVisitor(url)];
    const streams = visitors.map((visitor) => new SseClient(`${url}/toasts/stream`, { Cookie: visitor.cookie }));
    clients.push(...streams);
    await child.waitFor(/toast stream opened for visitor \w+ \(2 open\)/);
    child.process.stdin!.write("Coffee break: back at 11\n\n");
    for (const stream of streams) assert.is(JSON.parse((await stream.next("toast")).data).message, "Coffee break: back at 11");
    await child.waitFor(/toast everyone-[0-9a-f]{16} for everyone, from the presenter/);
    child.process.stdin!.end(`${"y".repeat(TOAST_MESSAGE_MAX + 20)}\n`);
    for (const stream of streams) assert.is(JSON.parse((await stream.next("toast")).data).message, "y".repeat(TOAST_MESSAGE_MAX));
    await child.waitFor(/standard input closed: no more toasts from this terminal; still serving/);
    assert.is((await request(`${url}/`)).status, 200);
    assert.equal(messagesOf(streams[0]!).length, 2, "the empty line made no toast");
    assert.is(await child.stop("SIGINT"), 0);
  });

  test("with --workers 2, lines typed before any worker serves wait for one, and none is lost", async () => {
    const child = run(["--workers", "2"], "pipe");
    child.process.stdin!.write("first\nsecond\nthird\n");
    await started(child);
    await until("three toasts from the presenter", () => (child.output.match(/for everyone, from the presenter/g) ?? []).length === 3, BOOT_DEADLINE_MS);
    assert.not.match(child.output, /no worker is serving/);
    assert.is(await child.stop("SIGINT"), 0, "the primary stops its workers");
  });

  test("with --workers 2, a visitor cookie one worker signed is known to the other", async () => {
    const child = run(["--workers", "2"], "ignore");
    const url = await started(child);
    await until("both workers to serve", () => (child.output.match(/primary: worker \d+ is serving/g) ?? []).length === 2, BOOT_DEADLINE_MS);
    const visitor = await newVisitor(url);
    const pids = () => new Set([...child.output.matchAll(/\[(\d+)\] toast stream opened/g)].map((match) => match[1]));
    // Each stream on a connection of its own, one at a time, until both workers served one.
    for (let opened = 1; opened <= 20 && pids().size < 2; opened++) {
      const stream = new SseClient(`${url}/toasts/stream`, { Cookie: visitor.cookie });
      clients.push(stream);
      await stream.opened();
      assert.is(stream.status, 200, "no worker takes the cookie for a stranger's");
      await until(`stream ${opened} in the log`, () => (child.output.match(/toast stream opened/g) ?? []).length === opened);
    }
    assert.is(pids().size, 2, "streams on both workers");
    assert.is(await child.stop("SIGINT"), 0);
  });

  test("--help says what standard input does", async () => {
    const child = run(["--help"], "ignore");
    assert.is(await within("help to print", child.exited), 0);
    assert.match(child.output, /Each line on standard input becomes a toast for everyone/);
  });

  test("with stdin on /dev/null the server serves as usual", async () => {
    const child = run([], "ignore");
    const url = await started(child);
    await child.waitFor(/standard input closed/);
    assert.is((await request(`${url}/toasts/`)).status, 200);
  });

  test("Ctrl-C cancels a demo task still sleeping: exit code 0, one line, no error", async () => {
    const child = run([], "ignore");
    const url = await started(child);
    const visitor = await newVisitor(url);
    assert.is((await startDemo(url, visitor.cookie, "message=never&seconds=60")).status, 303);
    child.process.kill("SIGINT");
    await child.waitFor(/cancelled 1 toast demo task still sleeping/);
    assert.is(await within("the server to exit", child.exited), 0);
    assert.not.match(child.output, /error|Error/);
  });
});

// ─── In a real browser ───────────────────────────────────────────────────────

browserLesson("browser: toasts on every page", (test, browser) => {
  let running: LoopbackServer | undefined;
  let profile: Profile | undefined;
  const at = (path: string) => `http://localhost:${running!.port}${path}`;
  const toastTexts = (tab: { page: import("playwright-core").Page }) => tab.page.locator("#toasts .toast p").allTextContents();

  // A server of its own for each test: the broadcasts of one test are not the next one's.
  test.before.each(async () => {
    running = await startLoopbackServer();
    profile = await Profile.open(browser());
  });
  test.after.each(async () => {
    await profile?.close();
    await until("the toast streams to close", () => toastsOf(running!.app).streams.size === 0);
    await stopLoopbackServer(running);
  });

  test("a toast for everyone shows on the countdown page and on the room page", async () => {
    const countdown = await profile!.open(at("/?interval=60000"));
    const room = await profile!.open(at("/room/"));
    await until("the shared stream to open", () => toastsOf(running!.app).streams.size === 1);
    toastsOf(running!.app).createToast("Hello from the presenter");
    for (const tab of [countdown, room]) await tab.page.locator("#toasts .toast", { hasText: "Hello from the presenter" }).waitFor();
    assert.is(toastsOf(running!.app).streams.size, 1, "both tabs share one stream");
  });

  test("closing a toast in one tab removes it from the visitor's second tab, and a reload does not bring it back", async () => {
    const first = await profile!.open(at("/?interval=60000"));
    const second = await profile!.open(at("/toasts/"));
    await until("the shared stream to open", () => toastsOf(running!.app).streams.size === 1);
    toastsOf(running!.app).createToast("first");
    toastsOf(running!.app).createToast("second");
    for (const tab of [first, second]) await tab.page.locator("#toasts .toast", { hasText: "second" }).waitFor();
    await first.page.locator("#toasts .toast", { hasText: "first" }).locator("button").click();
    await second.page.locator("#toasts .toast", { hasText: "first" }).waitFor({ state: "detached" });
    assert.equal(await toastTexts(second), ["second"]);
    await second.page.reload();
    await second.page.locator("#toasts .toast", { hasText: "second" }).waitFor();
    assert.equal(await toastTexts(second), ["second"]);
  });

  test(`with the ${COUNTDOWN_TABS_PER_NAME} countdown tabs the banner promises per host name, reloading the last one counts again at once`, async () => {
    const tabs = [];
    for (let k = 0; k < COUNTDOWN_TABS_PER_NAME; k++) tabs.push(await profile!.open(at("/")));
    await until("the shared stream to open", () => toastsOf(running!.app).streams.size === 1);
    await until(`${COUNTDOWN_TABS_PER_NAME} countdown streams`, () => running!.app.streams.size === COUNTDOWN_TABS_PER_NAME);
    for (const tab of tabs) await tab.page.locator("#state", { hasText: "streaming" }).waitFor();
    const last = tabs.at(-1)!;
    // Chromium keeps the old page's stream open until the new page arrives: one connection more.
    await last.page.reload({ waitUntil: "commit" });
    await last.page.locator("#state", { hasText: "streaming" }).waitFor();
    // Counting: two numbers in turn, each one less than the one before.
    const number = () => last.page.waitForFunction(() => /^\d+$/.test(document.getElementById("countdown")!.textContent ?? "") && Number(document.getElementById("countdown")!.textContent));
    const first = Number(await (await number()).jsonValue());
    await last.page.waitForFunction((before) => Number(document.getElementById("countdown")!.textContent) === before - 1, first);
  });

  test("when the toasts' stream is refused (every visitor followed: 503), the worker tries again, and the page gets its toasts", async () => {
    const visitors = toastsOf(running!.app).visitors;
    for (let k = 0; k < VISITORS_MAX; k++) visitors.follows(k.toString(16).padStart(16, "0"));
    const tab = await profile!.open(at("/?interval=60000"));
    await until("the refusal", () => running!.lines.some((line) => line.startsWith(`This server follows ${VISITORS_MAX} visitors`)));
    visitors.left("0".repeat(16)); // one visitor's tab closes
    await until("the worker's new stream", () => toastsOf(running!.app).streams.size === 1, RECONNECT_DELAY_MS + DEADLINE_MS);
    toastsOf(running!.app).createToast("after the refusal");
    await tab.page.locator("#toasts .toast", { hasText: "after the refusal" }).waitFor();
  });

  test("a toast's HTML shows as text and creates no element", async () => {
    const tab = await profile!.open(at("/room/"));
    await until("the stream to open", () => toastsOf(running!.app).streams.size === 1);
    const html = '<img src=x onerror="document.title=\'pwned\'"><b>bold</b>';
    toastsOf(running!.app).createToast(html, { level: "error" });
    const toast = tab.page.locator("#toasts .toast p");
    await toast.waitFor();
    assert.is(await toast.textContent(), html);
    assert.is(await tab.page.locator("#toasts img, #toasts b").count(), 0);
    assert.is.not(await tab.page.title(), "pwned");
  });

  test("the demo form: 303 back to the page, then both toasts, in order; toasts never cover the countdown's number", async () => {
    const page = await profile!.context.newPage();
    await page.setViewportSize({ width: 400, height: 800 });
    const tab = profile!.tab(page);
    await page.goto(at("/?interval=60000"));
    const demo = await profile!.open(at("/toasts/"));
    await demo.page.fill("#message", "Demo done");
    await demo.page.fill("#seconds", "1");
    await demo.page.click("button");
    await demo.page.waitForURL(at("/toasts/"));
    for (const text of ["Sleep running for at least 1 second(s)...", "Demo done"]) await tab.page.locator("#toasts .toast", { hasText: text }).waitFor();
    assert.equal(await toastTexts(tab), ["Sleep running for at least 1 second(s)...", "Demo done"]);
    for (let k = 0; k < 6; k++) toastsOf(running!.app).createToast(`A longer announcement, number ${k}, to fill the corner of a narrow screen`);
    await until("eight toasts", () => toastsOf(running!.app).streams.size === 1);
    await tab.page.locator("#toasts .toast").nth(7).waitFor();
    const number = (await tab.page.locator("#countdown").boundingBox())!;
    const stack = (await tab.page.locator("#toasts").boundingBox())!;
    const overlap = number.x < stack.x + stack.width && stack.x < number.x + number.width && number.y < stack.y + stack.height && stack.y < number.y + number.height;
    assert.not.ok(overlap, `the stack ${JSON.stringify(stack)} covers the number ${JSON.stringify(number)}`);
  });
});

// ─── With PostgreSQL ─────────────────────────────────────────────────────────

databaseLesson("database: toasts through PostgreSQL", (test, database) => {
  const children: Child[] = [];
  const clients: SseClient[] = [];
  test.after(() => {
    for (const client of clients) client.close();
    for (const child of children) child.kill();
  });
  const run = (args: string[], stdin: "pipe" | "ignore" = "ignore") => {
    const child = new Child("server.ts", ["--port", "0", "--host", "127.0.0.1", ...args], {}, { stdin });
    children.push(child);
    return child;
  };
  const started = async (child: Child) => (await child.waitFor(/listening at (http:\/\/127\.0\.0\.1:\d+)\//, BOOT_DEADLINE_MS))[1]!;

  test("toasts and their read marks survive a restart", async () => {
    const databaseUrl = await database();
    const first = run(["--database", databaseUrl]);
    let url = await started(first);
    const visitor = await newVisitor(url);
    const stream = new SseClient(`${url}/toasts/stream`, { Cookie: visitor.cookie });
    clients.push(stream);
    assert.is((await startDemo(url, visitor.cookie, "message=stays&seconds=0")).status, 303);
    const sleeping = JSON.parse((await stream.next("toast")).data) as Toast;
    const stays = JSON.parse((await stream.next("toast")).data) as Toast;
    assert.is(stays.message, "stays");
    assert.is((await readToast(url, sleeping.id, visitor.cookie)).status, 200);
    await stream.next("read");
    assert.is(await first.stop("SIGINT"), 0);

    const second = run(["--database", databaseUrl]);
    url = await started(second);
    const replay = new SseClient(`${url}/toasts/stream`, { Cookie: visitor.cookie });
    clients.push(replay);
    assert.equal(JSON.parse((await replay.next("toast")).data), stays);
    assert.is((await readToast(url, stays.id, visitor.cookie)).status, 200, "the restarted server knows the toast");
    await replay.next("read");
    const third = new SseClient(`${url}/toasts/stream`, { Cookie: visitor.cookie });
    clients.push(third);
    await third.opened();
    await second.waitFor(/toast stream opened for visitor \w+ \(2 open\)/);
    assert.equal(toastsIn(third), [], "both read toasts stay read after the restart");
  });

  test("with --workers 2, a line typed at the primary reaches the tabs of both workers", async () => {
    const databaseUrl = await database();
    const child = run(["--workers", "2", "--database", databaseUrl], "pipe");
    const url = await started(child);
    await until("both workers to serve", () => (child.output.match(/primary: worker \d+ is serving/g) ?? []).length === 2, BOOT_DEADLINE_MS);
    const visitor = await newVisitor(url);
    // Connections are handed to the workers in turn: enough streams that both have some.
    const streams = Array.from({ length: 4 }, () => new SseClient(`${url}/toasts/stream`, { Cookie: visitor.cookie }));
    clients.push(...streams);
    await until("streams on two workers", () => new Set([...child.output.matchAll(/\[(\d+)\] toast stream opened/g)].map((match) => match[1])).size === 2, BOOT_DEADLINE_MS);
    await until("four streams", () => (child.output.match(/toast stream opened/g) ?? []).length === 4, BOOT_DEADLINE_MS);
    child.process.stdin!.write("To every worker\n");
    for (const stream of streams) assert.is(JSON.parse((await stream.next("toast")).data).message, "To every worker");
    assert.is(await child.stop("SIGINT"), 0, "the primary stops its workers");
  });
});
