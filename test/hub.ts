/**
 * test/hub.ts: the hub on its own (lessons/hub.ts): order, replay, the gap,
 * cleanup, the slow subscriber, and one hub per app. The room's suites, which
 * reach the hub over HTTP, are in test/room.ts.
 */

import { getEventListeners, once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import * as assert from "uvu/assert";
import { RequestError } from "../server.ts";
import {
  chooseHub,
  HUB_KEEP,
  hubOf,
  MemoryHub,
  OpenStreams,
  SlowSubscriberError,
  type HubEvent,
  type HubGap,
} from "../lessons/hub.ts";
import { activeResources, createTestApp, lesson, until, within } from "./helpers.ts";

/** Reads `count` items from a subscription, each within the deadline. */
async function take(subscription: AsyncGenerator<HubEvent | HubGap>, count: number): Promise<(HubEvent | HubGap)[]> {
  const items: (HubEvent | HubGap)[] = [];
  while (items.length < count) {
    const next = await within(`item ${items.length + 1} of ${count}`, subscription.next());
    if (next.done) throw new Error(`the subscription ended after ${items.length} of ${count} items`);
    items.push(next.value);
  }
  return items;
}

const ids = (items: (HubEvent | HubGap)[]) => items.map((item) => (item.type === "gap" ? "gap" : (item as HubEvent).id));

async function publishMany(hub: MemoryHub, topic: string, count: number) {
  for (let k = 0; k < count; k++) await hub.publish(topic, "message", { k });
}

lesson("hub: publish and subscribe", (test) => {
  test("ids count up from 1 per topic, and a live subscriber gets every event in order", async () => {
    const hub = new MemoryHub();
    const leave = new AbortController();
    const subscription = hub.subscribe("room:a", { signal: leave.signal });
    const first = subscription.next(); // the generator registers at its first next()
    await until("the subscriber to register", () => hub.subscribers("room:a") === 1);
    const published = [await hub.publish("room:a", "message", { n: 1 }), await hub.publish("room:b", "message", { n: 2 }), await hub.publish("room:a", "toast", { n: 3 })];
    assert.equal(published.map((event) => [event.topic, event.id]), [["room:a", 1], ["room:b", 1], ["room:a", 2]]);
    assert.ok(!Number.isNaN(Date.parse(published[0]!.at)) && published[0]!.at.endsWith("Z"), "at is ISO 8601");
    const received = [(await within("the first event", first)).value as HubEvent, ...((await take(subscription, 1)) as HubEvent[])];
    assert.equal(received.map((event) => [event.id, event.type, event.data]), [[1, "message", { n: 1 }], [2, "toast", { n: 3 }]]);
    leave.abort();
    assert.is((await within("the subscription to end", subscription.next())).done, true);
  });

  test("publish stores the event before it returns, so code that does not await it can rely on it", async () => {
    const hub = new MemoryHub();
    void hub.publish("room:a", "message", "not awaited");
    assert.equal((await hub.history("room:a")).map((event) => event.data), ["not awaited"]);
  });

  test("history gives what is kept after an id, oldest first, at most the newest `limit`", async () => {
    const hub = new MemoryHub();
    await publishMany(hub, "room:a", 5);
    assert.equal(ids(await hub.history("room:a")), [1, 2, 3, 4, 5]);
    assert.equal(ids(await hub.history("room:a", { after: 2 })), [3, 4, 5]);
    assert.equal(ids(await hub.history("room:a", { after: 1, limit: 2 })), [4, 5]);
    assert.equal(await hub.history("room:nobody"), []);
  });

  test(`it keeps the last ${HUB_KEEP} events of a topic`, async () => {
    const hub = new MemoryHub();
    await publishMany(hub, "room:a", HUB_KEEP + 50);
    const kept = await hub.history("room:a");
    assert.is(kept.length, HUB_KEEP);
    assert.is(kept[0]!.id, 51);
  });

  test("subscribing after an id replays exactly what came after it, then goes on live", async () => {
    const hub = new MemoryHub();
    await publishMany(hub, "room:a", 5);
    const leave = new AbortController();
    const subscription = hub.subscribe("room:a", { after: 2, signal: leave.signal });
    assert.equal(ids(await take(subscription, 3)), [3, 4, 5]);
    await hub.publish("room:a", "message", { k: 6 });
    assert.equal(ids(await take(subscription, 1)), [6]);
    leave.abort();
  });

  test("events published while the replay is being read come once each, in order: no gap, no duplicate", async () => {
    const hub = new MemoryHub();
    await publishMany(hub, "room:a", 3);
    const leave = new AbortController();
    const subscription = hub.subscribe("room:a", { after: 0, signal: leave.signal });
    const seen = await take(subscription, 1);
    await publishMany(hub, "room:a", 2); // 4 and 5, while 2 and 3 are still to be replayed
    seen.push(...(await take(subscription, 4)));
    await hub.publish("room:a", "message", { k: 6 });
    seen.push(...(await take(subscription, 1)));
    assert.equal(ids(seen), [1, 2, 3, 4, 5, 6]);
    leave.abort();
  });

  test("an id older than what is kept, or one never issued, gets a gap first, then everything kept", async () => {
    const hub = new MemoryHub({ keep: 3 });
    await publishMany(hub, "room:a", 6); // keeps 4, 5, 6
    const leave = new AbortController();
    const tooOld = await take(hub.subscribe("room:a", { after: 2, signal: leave.signal }), 4);
    assert.equal(tooOld[0], { type: "gap", topic: "room:a", after: 2 });
    assert.equal(ids(tooOld), ["gap", 4, 5, 6]);
    const neverIssued = await take(hub.subscribe("room:a", { after: 57, signal: leave.signal }), 4);
    assert.equal(ids(neverIssued), ["gap", 4, 5, 6]);
    const justBeforeKept = await take(hub.subscribe("room:a", { after: 3, signal: leave.signal }), 3);
    assert.equal(ids(justBeforeKept), [4, 5, 6], "the oldest kept is the next one: exact, no gap");
    leave.abort();
  });

  test("events published while the gap is being read come once each, after what is kept", async () => {
    const hub = new MemoryHub({ keep: 3 });
    await publishMany(hub, "room:a", 6); // keeps 4, 5, 6
    const leave = new AbortController();
    const subscription = hub.subscribe("room:a", { after: 57, signal: leave.signal });
    const seen = await take(subscription, 1);
    await publishMany(hub, "room:a", 1); // 7, while the replay is still to be read
    seen.push(...(await take(subscription, 4)));
    assert.equal(ids(seen), ["gap", 4, 5, 6, 7]);
    await hub.publish("room:a", "message", { k: 8 });
    assert.equal(ids(await take(subscription, 1)), [8], "and 7 is not read twice");
    leave.abort();
  });

  test("after a gap on an empty topic (a restarted hub), live events come from id 1", async () => {
    const hub = new MemoryHub();
    const leave = new AbortController();
    const subscription = hub.subscribe("room:a", { after: 57, signal: leave.signal });
    assert.equal(await take(subscription, 1), [{ type: "gap", topic: "room:a", after: 57 }]);
    await hub.publish("room:a", "message", { k: 1 });
    assert.equal(ids(await take(subscription, 1)), [1]);
    leave.abort();
  });

  test("without `after` there is no replay, only live events", async () => {
    const hub = new MemoryHub();
    await publishMany(hub, "room:a", 3);
    const leave = new AbortController();
    const subscription = hub.subscribe("room:a", { signal: leave.signal });
    const first = subscription.next();
    await until("the subscriber to register", () => hub.subscribers("room:a") === 1);
    await hub.publish("room:a", "message", { k: 4 });
    assert.is(((await within("the live event", first)).value as HubEvent).id, 4);
    leave.abort();
  });
});

lesson("hub: subscribers that leave, and one that stops reading", (test) => {
  test("300 subscribe-then-abort cycles leave no subscriber, listener or timer behind", async () => {
    const hub = new MemoryHub();
    const before = activeResources();
    for (let round = 0; round < 300; round++) {
      const leave = new AbortController();
      const subscription = hub.subscribe("room:a", { after: 0, signal: leave.signal });
      const waiting = subscription.next();
      if (round === 0) await hub.publish("room:a", "message", {});
      await within("the first event", waiting);
      const parked = subscription.next(); // waits for a live event that never comes
      assert.is(hub.subscribers("room:a"), 1);
      leave.abort();
      assert.is((await within("the parked read to end", parked)).done, true);
      assert.is(hub.subscribers("room:a"), 0);
      assert.is(getEventListeners(leave.signal, "abort").length, 0, "the abort listener is removed");
    }
    assert.equal(activeResources().Timeout ?? 0, before.Timeout ?? 0);
  });

  test("breaking out of for await (return()) removes the subscriber at once", async () => {
    const hub = new MemoryHub();
    await publishMany(hub, "room:a", 2);
    const signal = new AbortController().signal; // never aborted
    for await (const event of hub.subscribe("room:a", { after: 0, signal })) {
      assert.is(hub.subscribers("room:a"), 1);
      if ((event as HubEvent).id === 2) break;
    }
    assert.is(hub.subscribers("room:a"), 0);
    assert.is(getEventListeners(signal, "abort").length, 0);
  });

  test("a subscriber that stops reading is dropped once its queue is full, with one log line, and others go on", async () => {
    const lines: string[] = [];
    const limit = 5;
    const hub = new MemoryHub({ queueLimit: limit, log: (line) => lines.push(line) });
    const leave = new AbortController();
    const slow = hub.subscribe("room:a", { signal: leave.signal });
    const reader = hub.subscribe("room:a", { signal: leave.signal });
    const slowFirst = slow.next();
    const readerFirst = reader.next();
    await until("both to register", () => hub.subscribers("room:a") === 2);
    await hub.publish("room:a", "message", { k: 1 });
    await within("the slow one's first event", slowFirst);
    await within("the reader's first event", readerFirst);
    const read: number[] = [];
    for (let k = 2; k <= limit + 2; k++) {
      await hub.publish("room:a", "message", { k });
      read.push(((await take(reader, 1))[0] as HubEvent).id);
    }
    assert.is(hub.subscribers("room:a"), 1, "the slow one is gone as soon as its queue overflowed");
    assert.equal(lines, [`hub: dropped a subscriber of room:a: ${limit} events unread`]);
    await within("the slow one to learn why", slow.next()).then(
      () => assert.unreachable("the slow subscription should throw"),
      (error) => assert.instance(error, SlowSubscriberError),
    );
    assert.equal(read, [2, 3, 4, 5, 6, 7]);
    leave.abort();
  });

  test("close() ends every subscription", async () => {
    const hub = new MemoryHub();
    const subscription = hub.subscribe("room:a", { signal: new AbortController().signal });
    const waiting = subscription.next();
    await until("the subscriber to register", () => hub.subscribers("room:a") === 1);
    await hub.close();
    assert.is((await within("the subscription to end", waiting)).done, true);
    assert.is(hub.subscribers("room:a"), 0);
  });
});

lesson("hub: one hub per app", (test) => {
  test("hubOf makes the app's hub at the first call and gives that one ever after", async () => {
    const [app, other] = [await createTestApp({ lessons: [] }), await createTestApp({ lessons: [] })];
    const hub = hubOf(app);
    assert.instance(hub, MemoryHub);
    assert.is(hubOf(app), hub);
    assert.is.not(hubOf(other), hub, "each app has a hub of its own");
  });

  test("a hub chosen before serving is the app's hub; choosing once it is in use throws", async () => {
    const app = await createTestApp({ lessons: [] });
    const chosen = new MemoryHub();
    chooseHub(app, chosen);
    assert.is(hubOf(app), chosen);
    assert.throws(() => chooseHub(app, new MemoryHub()), /chosen already/);
    const served = await createTestApp({ lessons: [] });
    hubOf(served);
    assert.throws(() => chooseHub(served, chosen), /chosen already/);
  });

  test("stopping the app closes the hub it made, and not a hub it was given", async () => {
    const app = await createTestApp({ lessons: [] });
    const made = hubOf(app);
    app.endStreams();
    await made.publish("room:a", "message", {}).then(
      () => assert.unreachable("a closed hub refuses to publish"),
      (error: RequestError) => assert.equal([error.status, error.message], [503, "This server is stopping; try again in a moment."]),
    );
    const given = new MemoryHub();
    await createTestApp({ lessons: [], hub: given }).then((kept) => kept.endStreams());
    assert.is((await given.publish("room:a", "message", {})).id, 1, "whoever made it closes it");
  });
});

lesson("hub: the streams' one heartbeat timer", (test) => {
  const HEARTBEAT_MS = 300;
  let server: http.Server | undefined;
  const responses: http.IncomingMessage[] = [];
  test.after(async () => {
    for (const response of responses) response.destroy();
    server?.closeAllConnections();
    if (server) await new Promise((resolve) => server!.close(resolve));
  });

  test("a new stream that was just written to still gets its first heartbeat within one interval", async () => {
    const streams = new OpenStreams(HEARTBEAT_MS);
    // /quiet sends nothing of its own; /busy sends one event at once, as the room's presence does.
    server = http.createServer((req, res) => {
      res.writeHead(200, { "Content-Type": "text/event-stream" });
      void streams.pump(res, async function* (signal) {
        if (req.url === "/busy") yield "data: hello\n\n";
        await once(signal, "abort").catch(() => {});
      }, () => {});
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const { port } = server.address() as AddressInfo;
    const beats: string[] = []; // "quiet" or "busy", in the order their heartbeats arrived
    const open = (path: string) => http.get({ host: "127.0.0.1", port, path }, (response) => {
      responses.push(response);
      response.on("data", (chunk: Buffer) => {
        const count = chunk.toString().split(": still here").length - 1;
        for (let k = 0; k < count; k++) beats.push(path.slice(1));
      });
    });
    open("/quiet");
    await until("the quiet stream's first heartbeat", () => beats.length === 1);
    open("/busy"); // between two beats of the one timer, which the quiet stream started
    await until("two more heartbeats of the quiet stream", () => beats.filter((who) => who === "quiet").length === 3);
    // The quiet stream's third beat is the second tick after the busy stream opened.
    const quietThird = beats.lastIndexOf("quiet");
    const busyFirst = beats.indexOf("busy");
    assert.ok(busyFirst !== -1 && busyFirst < quietThird, `the busy stream beat at the timer's next tick: ${beats.join(", ")}`);
  });
});
