/**
 * test/processes.ts: lesson 3, several processes (lessons/processes.ts).
 * `server.ts --workers N` runs N copies of the server on one port; each holds
 * its own streams, and its own room. The room through PostgreSQL, for all of
 * them at once, is test/postgres.ts.
 */

import { readdirSync, readlinkSync } from "node:fs";
import http from "node:http";
import { setTimeout as delay } from "node:timers/promises";
import * as assert from "uvu/assert";
import {
  BOOT_DEADLINE_MS,
  Child,
  isAlive,
  lesson,
  refusesBadFlags,
  refusesBusyPort,
  request,
  runner,
  SseClient,
  STILL_WAITING_MS,
  until,
  within,
  type BadFlags,
} from "./helpers.ts";

/** The pids of the workers that began serving so far, in order. */
function startedWorkers(child: Child): number[] {
  const lines = child.output.matchAll(/primary: worker (\d+) is serving/g);
  return [...lines].map((match) => Number(match[1]));
}

/** For `after`: no primary and no worker of theirs stays behind. */
function killAll(children: Child[], clients: SseClient[]) {
  for (const client of clients) client.close();
  for (const child of children) {
    for (const pid of startedWorkers(child)) if (isAlive(pid)) process.kill(pid, "SIGKILL");
    child.kill();
  }
}

/** Starts two workers on an ephemeral port and waits for both, and for the banner's URL. */
async function startTwo(run: (args: string[]) => Child): Promise<{ child: Child; url: string }> {
  const child = run(["--workers", "2", "--port", "0", "--host", "127.0.0.1"]);
  const listening = /listening at (http:\/\/127\.0\.0\.1:\d+\/)/;
  const [, url = ""] = await child.waitFor(listening, BOOT_DEADLINE_MS);
  await until("both workers to serve", () => startedWorkers(child).length === 2, BOOT_DEADLINE_MS);
  return { child, url };
}

/** Countdown streams, opened until `count` different pids serve one; keyed by that pid. */
async function streamsOnEveryWorker(url: string, count: number, clients: SseClient[]) {
  const byPid = new Map<number, SseClient>();
  // The primary hands connections round-robin, but a worker that is still starting can miss a turn.
  for (let attempt = 0; attempt < 10 * count && byPid.size < count; attempt++) {
    const stream = new SseClient(`${url}sse/?interval=60000`);
    clients.push(stream);
    const { pid } = JSON.parse((await stream.next("server")).data) as { pid: number };
    if (byPid.has(pid)) stream.close();
    else byPid.set(pid, stream);
  }
  return byPid;
}

/** For the kill test: clients at once, kills, and how long they hammer around each kill. */
const HAMMERS = 8;
const KILLS = 3;
const HAMMER_MS = 700;
/** A request neither answered nor refused by then is one a dead worker left hanging. */
const ANSWER_DEADLINE_MS = 8000;

/** One GET on a new connection: "answered", "failed" (the connection closed), or "neither". */
function answeredOrFailed(url: string): Promise<"answered" | "failed" | "neither"> {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false }, (res) => {
      res.resume().once("end", () => resolve("answered")).once("error", () => resolve("failed"));
    });
    req.once("error", () => resolve("failed"));
    req.setTimeout(ANSWER_DEADLINE_MS, () => {
      resolve("neither");
      req.destroy();
    });
  });
}

/** How many sockets a process holds open (listening, connected, its IPC channels), from /proc. */
function socketsHeld(pid: number): number {
  let count = 0;
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      if (/^socket:\[\d+\]$/.test(readlinkSync(`/proc/${pid}/fd/${fd}`))) count++;
    } catch {
      // closed between the listing and the read
    }
  }
  return count;
}

lesson("workers: server.ts --workers 2 runs two processes on one port", (test) => {
  const children: Child[] = [];
  const clients: SseClient[] = [];
  test.after(() => killAll(children, clients));
  const run = runner("server.ts", children);

  test("streams opened one after another are served by both workers, in turn", async () => {
    const { child, url } = await startTwo(run);
    const served = await streamsOnEveryWorker(url, 2, clients);
    const workers = startedWorkers(child);
    assert.equal([...served.keys()].sort(), [...workers].sort(), "both worker pids served a stream");
    assert.not.ok(served.has(child.process.pid!), "the primary serves nothing itself");
    const headline = /Countdown server \(async, 2 worker processes, primary pid \d+\) listening at/;
    assert.match(child.output, headline);
    await child.waitFor(/Here 2 worker processes share the port, each serving many tabs\./);
  });

  test("a worker that dies is replaced, with a log line", async () => {
    const { child, url } = await startTwo(run);
    const [victim, survivor] = startedWorkers(child) as [number, number];
    process.kill(victim, "SIGKILL");
    await child.waitFor(new RegExp(`primary: worker ${victim} exited \\(SIGKILL\\); starting another`));
    await until("a third worker to serve", () => startedWorkers(child).length === 3, BOOT_DEADLINE_MS);
    const replacement = startedWorkers(child)[2]!;
    const served = await streamsOnEveryWorker(url, 2, clients);
    const pids = [...served.keys()].sort();
    assert.equal(pids, [survivor, replacement].sort(), "the survivor and the replacement serve");
  });

  test("Ctrl-C ends every worker's streams and leaves no process behind", async () => {
    const { child, url } = await startTwo(run);
    const served = await streamsOnEveryWorker(url, 2, clients);
    assert.is(served.size, 2, "both workers hold a stream");
    assert.is(await child.stop("SIGINT"), 0);
    for (const stream of served.values()) {
      assert.is(await within("a stream to end", stream.ended), true, "every stream ended cleanly");
    }
    for (const pid of startedWorkers(child)) assert.not.ok(isAlive(pid), `worker ${pid} is gone`);
    assert.match(child.output, /primary: SIGINT: stopping 2 workers/);
  });

  test("when the primary dies, each worker stops as on SIGTERM: its streams end cleanly", async () => {
    const { child, url } = await startTwo(run);
    const served = await streamsOnEveryWorker(url, 2, clients);
    assert.is(served.size, 2, "both workers hold a stream");
    child.kill(); // SIGKILL: the primary cannot tell its workers anything
    for (const [pid, stream] of served) {
      assert.is(await within(`pid ${pid}'s stream to end`, stream.ended), true, "ended, not cut");
      await child.waitFor(new RegExp(`\\[${pid}\\] SIGTERM: ending 1 open stream `));
    }
    for (const pid of served.keys()) {
      await until(`worker ${pid} to exit`, () => !isAlive(pid), BOOT_DEADLINE_MS);
    }
  });

  test("a worker killed under load leaves no client unanswered, and no socket open in the primary", async () => {
    const { child, url } = await startTwo(run);
    const primary = child.process.pid!;
    // Its listeners and one channel to each worker: what it holds with no connection on the way.
    const idle = socketsHeld(primary);
    const unanswered: string[] = [];
    let hammering = true;
    // Clients that each open a new connection per request, so that connections are always on
    // their way from the primary to a worker when one is killed.
    const hammer = async () => {
      while (hammering) {
        const outcome = await answeredOrFailed(`${url}?from=3`);
        if (outcome === "neither") unanswered.push(url);
      }
    };
    const clientsDone = Promise.all(Array.from({ length: HAMMERS }, hammer));
    try {
      for (let kill = 1; kill <= KILLS; kill++) {
        await delay(HAMMER_MS);
        const victim = startedWorkers(child).filter(isAlive)[0]!;
        process.kill(victim, "SIGKILL");
        await child.waitFor(new RegExp(`worker ${victim} exited \\(SIGKILL\\)`));
        const serving = () => startedWorkers(child).length === 2 + kill;
        await until("the replacement to serve", serving, BOOT_DEADLINE_MS);
      }
      await delay(HAMMER_MS);
    } finally {
      hammering = false; // a failed wait above must not leave the clients running
      await clientsDone;
    }
    assert.equal(unanswered, [], "every request got an answer or a closed connection");
    // Every connection it handed, or answered 503 itself, is closed in the primary.
    await until(`the primary to hold ${idle} sockets again`, () => socketsHeld(primary) === idle);
  });

  refusesBusyPort(test, (args) => run(["--workers", "2", ...args]));

  const badFlags: BadFlags = [
    [["--workers", "0"], {}, "--workers must be a whole number from 1 to 64."],
    [["--workers", "two"], {}, "--workers must be a whole number from 1 to 64."],
    [[], { WEB_CONCURRENCY: "65" }, "WEB_CONCURRENCY must be a whole number from 1 to 64."],
  ];
  refusesBadFlags(test, run, badFlags);
});

// ─── Each process has a room of its own ──────────────────────────────────────

lesson("workers without a database: each process has a room of its own", (test) => {
  const children: Child[] = [];
  const clients: SseClient[] = [];
  test.after(() => killAll(children, clients));
  const run = runner("server.ts", children);

  test("a message posted to one worker reaches that worker's tabs, never the other's", async () => {
    const { child, url } = await startTwo(run);
    // The banner's lines come over a pipe, not always in one piece: wait for this one.
    await child.waitFor(/The room and the toasts stay within each process/);
    const byPid = new Map<number, SseClient>();
    for (let attempt = 0; attempt < 20 && byPid.size < 2; attempt++) {
      const stream = new SseClient(`${url}room/stream`);
      clients.push(stream);
      const { pid } = JSON.parse((await stream.next("presence")).data) as { pid: number };
      if (byPid.has(pid)) stream.close();
      else byPid.set(pid, stream);
    }
    assert.is(byPid.size, 2, "a room stream on each worker");
    const headers = { "Content-Type": "application/json" };
    const body = JSON.stringify({ name: "ada", text: "who hears this?" });
    const posted = await request(`${url}room/messages`, { method: "POST", headers }, body);
    assert.is(posted.status, 201, posted.body);
    const heard = (stream: SseClient) => stream.messages.filter((m) => m.event === "message").length;
    await until("one worker's tab to show the message", () => [...byPid.values()].some(heard));
    await delay(STILL_WAITING_MS);
    assert.equal([...byPid.values()].map(heard).sort(), [0, 1], "exactly one worker's tab got it");
  });
});
