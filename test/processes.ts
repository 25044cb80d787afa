/**
 * test/processes.ts: lesson 3, several processes. `server.ts --workers N` runs
 * N copies of the server on one port; each holds its own streams.
 */

import * as assert from "uvu/assert";
import {
  BOOT_DEADLINE_MS,
  Child,
  isAlive,
  lesson,
  refusesBadFlags,
  refusesBusyPort,
  SseClient,
  until,
  within,
  type BadFlags,
} from "./helpers.ts";

/** The pids of the workers that began serving so far, in order. */
function startedWorkers(child: Child): number[] {
  return [...child.output.matchAll(/primary: worker (\d+) is serving/g)].map((match) => Number(match[1]));
}

/** The pid that serves a new stream, from the stream's first `server` event. */
async function servingPid(url: string, clients: SseClient[]): Promise<number> {
  const stream = new SseClient(`${url}sse/?interval=60000`);
  clients.push(stream);
  const { pid } = JSON.parse((await stream.next("server")).data) as { pid: number };
  return pid;
}

lesson("workers: server.ts --workers 2 runs two processes on one port", (test) => {
  const children: Child[] = [];
  const clients: SseClient[] = [];
  test.after(() => {
    for (const client of clients) client.close();
    for (const child of children) {
      for (const pid of startedWorkers(child)) if (isAlive(pid)) process.kill(pid, "SIGKILL");
      child.kill();
    }
  });
  const run = (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const child = new Child("server.ts", args, env);
    children.push(child);
    return child;
  };

  /** Starts two workers on an ephemeral port and waits for both, and for the banner's URL. */
  async function startTwo(): Promise<{ child: Child; url: string }> {
    const child = run(["--workers", "2", "--port", "0", "--host", "127.0.0.1"]);
    const [, url = ""] = await child.waitFor(/listening at (http:\/\/127\.0\.0\.1:\d+\/)/, BOOT_DEADLINE_MS);
    await until("both workers to serve", () => startedWorkers(child).length === 2, BOOT_DEADLINE_MS);
    return { child, url };
  }

  test("streams opened one after another are served by both workers, in turn", async () => {
    const { child, url } = await startTwo();
    const workers = startedWorkers(child);
    const served = new Set<number>();
    // The primary hands connections round-robin, but a worker that is still starting can miss a turn.
    for (let attempt = 0; attempt < 10 && served.size < 2; attempt++) served.add(await servingPid(url, clients));
    assert.equal([...served].sort(), [...workers].sort(), "both worker pids served a stream");
    assert.not.ok(served.has(child.process.pid!), "the primary serves nothing itself");
    assert.match(child.output, /Countdown server \(async, 2 worker processes, primary pid \d+\) listening at/);
  });

  test("a worker that dies is replaced, with a log line", async () => {
    const { child, url } = await startTwo();
    const [victim, survivor] = startedWorkers(child) as [number, number];
    process.kill(victim, "SIGKILL");
    await child.waitFor(new RegExp(`primary: worker ${victim} exited \\(SIGKILL\\); starting another`));
    await until("a third worker to serve", () => startedWorkers(child).length === 3, BOOT_DEADLINE_MS);
    const replacement = startedWorkers(child)[2]!;
    const served = new Set<number>();
    for (let attempt = 0; attempt < 10 && served.size < 2; attempt++) served.add(await servingPid(url, clients));
    assert.equal([...served].sort(), [survivor, replacement].sort(), "the survivor and the replacement serve");
  });

  test("Ctrl-C ends every worker's streams and leaves no process behind", async () => {
    const { child, url } = await startTwo();
    const streams: SseClient[] = [];
    const served = new Set<number>();
    for (let attempt = 0; attempt < 10 && served.size < 2; attempt++) {
      served.add(await servingPid(url, clients));
      streams.push(clients.at(-1)!);
    }
    assert.is(served.size, 2, "both workers hold a stream");
    assert.is(await child.stop("SIGINT"), 0);
    for (const stream of streams) assert.is(await within("a stream to end", stream.ended), true, "every stream ended cleanly");
    for (const pid of startedWorkers(child)) assert.not.ok(isAlive(pid), `worker ${pid} is gone`);
    assert.match(child.output, /primary: SIGINT: stopping 2 workers/);
  });

  refusesBusyPort(test, (args) => run(["--workers", "2", ...args]));

  const badFlags: BadFlags = [
    [["--workers", "0"], {}, "--workers must be a whole number from 1 to 64."],
    [["--workers", "two"], {}, "--workers must be a whole number from 1 to 64."],
    [[], { WEB_CONCURRENCY: "65" }, "WEB_CONCURRENCY must be a whole number from 1 to 64."],
  ];
  refusesBadFlags(test, run, badFlags);
});
