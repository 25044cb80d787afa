/**
 * test/blocking.ts: blocking-server.ts under clients that are not browsers.
 * A connection that sends nothing, a client that leaves while it waits in the
 * arbiter's queue, more clients than the queue holds. Lesson 1's blocking
 * suites (a stream holds the only worker, WORKER TIMEOUT, the second tab) are
 * in test/countdown.ts; these share its helpers.
 */

import net from "node:net";
import { once } from "node:events";
import * as assert from "uvu/assert";
import {
  BOOT_DEADLINE_MS,
  Child,
  lesson,
  RawRequest,
  refusesBadFlags,
  runner,
  startBlocking,
  stopBlocking,
  SYNC_TICK_MS,
  until,
  within,
  workerPids,
  type BadFlags,
} from "./helpers.ts";

/** A connection that sends nothing at all: what a stuck client, or an attacker, looks like. */
async function silentConnection(url: string, sockets: net.Socket[]): Promise<net.Socket> {
  const { hostname, port } = new URL(url);
  const socket = net.connect(Number(port), hostname);
  sockets.push(socket);
  socket.on("error", () => {});
  await within("the silent connection to be accepted", once(socket, "connect"));
  return socket;
}

/** The body after the head of a raw answer. */
const bodyOf = (raw: RawRequest) => raw.text.slice(raw.text.indexOf("\r\n\r\n") + 4);

lesson("blocking clients: silent, departed and too many connections are bounded", (test) => {
  const children: Child[] = [];
  const sockets: net.Socket[] = [];
  const raws: RawRequest[] = [];
  test.after(async () => {
    for (const socket of sockets) socket.destroy();
    for (const raw of raws) raw.close();
    await stopBlocking(children);
  });
  const raw = (url: string, path: string) => {
    const request = new RawRequest(url, path);
    raws.push(request);
    return request;
  };

  test("a connection that sends nothing is killed at --timeout, as a stuck request is, and the log says why", async () => {
    const { child, url } = await startBlocking(children, ["--timeout", "1"]);
    const [first] = workerPids(child);
    const silent = await silentConnection(url, sockets);
    const { localPort } = silent;
    const cut = once(silent, "close"); // listened for now: it may close before the log is read
    const behind = raw(url, "/");
    await behind.connected;
    const timeout = new RegExp(`\\[CRITICAL\\] WORKER TIMEOUT \\(pid:${first}\\)\\n`);
    await child.waitFor(timeout, BOOT_DEADLINE_MS);
    const why = `Worker ${first} waited [\\d.]+ s for the head of a request from ` +
      `127\\.0\\.0\\.1:${localPort}, which never came`;
    await child.waitFor(new RegExp(why));
    await within("the silent connection to be cut", cut);
    // The request queued behind it is served by the worker booted in its place.
    await within("the queued request to be answered", behind.ended, BOOT_DEADLINE_MS);
    assert.match(behind.text, /^HTTP\/1\.1 200 OK\r\n/);
  });

  test("a request whose client left while it waited is not served", async () => {
    const { child, url } = await startBlocking(children, ["--timeout", "0"]);
    // The only worker streams a short countdown; meanwhile a call to /api/ waits, and leaves.
    const stream = raw(url, `/sse/?from=3&interval=${SYNC_TICK_MS}`);
    await child.waitFor(/\[INFO\] Booting worker/);
    await stream.connected;
    await until("the stream to start", () => stream.text.includes("event: i"));
    const leaver = raw(url, "/api/?delay=0&task_id=7");
    await leaver.connected;
    await child.waitFor(new RegExp(`waits \\(1 waiting\\)`));
    leaver.close();
    await within("the countdown to end", stream.ended, BOOT_DEADLINE_MS);
    const skipped = new RegExp(`Not serving GET /api/\\?delay=0&task_id=7 from ` +
      `127\\.0\\.0\\.1:${leaver.localPort}: the client left while it waited; this worker is free`);
    await child.waitFor(skipped);
    assert.not.match(child.output, /task_id=7: sleeping/, "the view never ran");
    // And the worker serves the next request as usual.
    const next = raw(url, "/");
    await within("the next request to be answered", next.ended);
    assert.match(next.text, /^HTTP\/1\.1 200 OK\r\n/);
  });

  test("past --backlog, a connection gets 503 with a sentence; the full queue is logged once", async () => {
    const { child, url } = await startBlocking(children, ["--timeout", "0", "--backlog", "1"]);
    const stream = raw(url, `/sse/?from=5&interval=${SYNC_TICK_MS}`);
    await stream.connected;
    await until("the stream to start", () => stream.text.includes("event: i"));
    const waiter = raw(url, "/");
    await child.waitFor(/waits \(1 waiting\)/);
    const refused = [raw(url, "/"), raw(url, "/")];
    for (const request of refused) {
      await within("the refusal", request.ended);
      assert.match(request.text, /^HTTP\/1\.1 503 Service Unavailable\r\n/);
      const sentence = "Every worker is busy, with 1 connection waiting already; try again in a moment.\n";
      assert.is(bodyOf(request), sentence);
    }
    await within("the waiting request to be answered", waiter.ended, BOOT_DEADLINE_MS);
    assert.match(waiter.text, /^HTTP\/1\.1 200 OK\r\n/, "the one that waited is served");
    await child.waitFor(/Backlog has room again; 2 connections got 503 meanwhile/);
    const full = child.output.match(/Backlog full: 1 connection waiting for a worker/g) ?? [];
    assert.is(full.length, 1, "one line for the full queue, not one per refusal");
  });

  const run = runner("blocking-server.ts", children);
  const badFlags: BadFlags = [
    [["--backlog", "0"], {}, "--backlog must be a whole number from 1 to 1000."],
  ];
  refusesBadFlags(test, run, badFlags);
});
