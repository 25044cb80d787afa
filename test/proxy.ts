/**
 * test/proxy.ts: lesson 5, behind a proxy (lessons/proxy.ts). A real nginx,
 * run by the lesson's own script, in front of lesson 1's countdown started in
 * this process. Each stream is read with the time of every read, so a test can
 * say which events came together, and in what order, beside a direct stream.
 * Without nginx the suites that need it are left out with one counted line
 * (a failure under NGINX_REQUIRED=1, as in CI).
 */

import http from "node:http";
import net from "node:net";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { once } from "node:events";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { createGunzip } from "node:zlib";
import * as assert from "uvu/assert";
import { chromium, type Browser, type Page } from "playwright-core";
import { CHROMIUM_ARGS, CHROMIUM_PATH, chromiumMissing } from "../bench/chromium.ts";
import { PID_FILE } from "../lessons/proxy.ts";
import {
  Child, CONNECTIONS_PER_HOST, DEADLINE_MS, isAlive, leftOut, lesson, Profile, RECONNECT_DELAY_MS,
  refusesBadFlags, runner, selected, SseClient, startServer, STILL_WAITING_MS, stopServer, until,
  within, type BadFlags, type Tab,
} from "./helpers.ts";
import type { App } from "../server.ts";

// ─── Helpers ─────────────────────────────────────────────────────────────────

const SCRIPT = "lessons/proxy.ts";
/** Lesson 1 alone upstream: the countdown is what nginx stands in front of. */
const LESSON_ONE = { lessons: [], quiet: true };
/** The script is a new Node process with its TypeScript loader, then nginx starts. */
const PROXY_START_MS = 15_000;

/** Why nginx cannot run here, or undefined: the lesson looks on PATH and in these folders. */
function nginxMissing(): string | undefined {
  const folders = [...(process.env.PATH ?? "").split(delimiter), "/usr/sbin", "/usr/local/sbin"];
  if (folders.some((folder) => folder && existsSync(join(folder, "nginx")))) return undefined;
  return "no nginx on PATH or in /usr/sbin";
}

/** A suite that runs the real nginx: left out with one counted line when there is none. */
function proxyLesson(name: string, build: Parameters<typeof lesson>[1]) {
  if (!selected(name)) return;
  const why = nginxMissing();
  if (why && leftOut("nginx", name, why)) return;
  lesson(name, build);
}

/** A loopback port nobody holds now: nginx cannot listen on 0 and say which port it got. */
async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, "127.0.0.1");
  await within("a free port", once(server, "listening"));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** A running proxy: the script, nginx's pid, its URL and its temporary folder. */
interface Proxy {
  child: Child;
  url: string;
  pid: number;
  folder: string;
}

/** Runs the lesson's script in front of `upstream` and waits until nginx listens. */
async function startProxy(children: Child[], upstream: string, args: string[] = []) {
  const port = String(await freePort());
  const child = new Child(SCRIPT, ["--port", port, "--upstream", upstream, ...args]);
  children.push(child);
  const [, pid = "", url = ""] =
    await child.waitFor(/nginx \(pid (\d+)\) listening at (\S+),/, PROXY_START_MS);
  const [, folder = ""] = await child.waitFor(/^─── (\S+)\/nginx\.conf ───$/m);
  return { child, url, pid: Number(pid), folder } satisfies Proxy;
}

/** For `after`: Ctrl-C to every script, which stops its nginx; SIGKILL if that fails. */
async function stopProxies(children: Child[]) {
  for (const child of children.splice(0)) await child.stop("SIGINT").catch(() => child.kill());
}

/** The pids whose parent is `pid` (Linux's /proc; elsewhere none are found). */
function childrenOf(pid: number): number[] {
  if (!existsSync("/proc")) return [];
  const parentOf = (entry: string) => {
    try {
      return Number(readFileSync(`/proc/${entry}/stat`, "utf8").split(") ")[1]?.split(" ")[1]);
    } catch {
      return 0; // the process ended while we looked
    }
  };
  return readdirSync("/proc").filter((entry) => /^\d+$/.test(entry))
    .filter((entry) => parentOf(entry) === pid).map(Number);
}

/**
 * One stream, read with the moment of every read: each countdown event is kept
 * with the read it came in, so a test can tell "one by one" from "all at once".
 * A gzip response is decompressed; its reads are the compressed ones.
 */
class TimedStream {
  readonly startedAt = performance.now();
  headers: http.IncomingHttpHeaders = {};
  reads: number[] = [];
  events: { id: number; at: number; read: number }[] = [];
  /** "ended" when the response ended cleanly, "cut" when nginx or the server cut it. */
  done: Promise<"ended" | "cut">;

  constructor(url: string, headers: http.OutgoingHttpHeaders = {}) {
    const req = http.get(url, { agent: false, headers });
    this.done = new Promise((resolve) => {
      req.on("error", () => resolve("cut"));
      req.on("response", (res) => {
        this.headers = res.headers;
        res.on("data", () => this.reads.push(performance.now() - this.startedAt));
        res.on("aborted", () => resolve("cut")).on("error", () => resolve("cut"));
        const body = res.headers["content-encoding"] === "gzip" ? res.pipe(createGunzip()) : res;
        let text = "";
        body.setEncoding("utf8").on("data", (chunk: string) => {
          text += chunk;
          const end = text.lastIndexOf("\n\n"); // events are whole up to here
          if (end === -1) return;
          for (const [, id] of text.slice(0, end).matchAll(/^id: (\d+)$/gm)) {
            this.events.push({ id: Number(id), at: performance.now() - this.startedAt,
              read: this.reads.length });
          }
          text = text.slice(end + 2);
        });
        body.on("end", () => resolve("ended")).on("error", () => resolve("cut"));
      });
    });
  }

  get ids(): number[] {
    return this.events.map((event) => event.id);
  }

  /** How many different reads the events came in. */
  get readsWithEvents(): number {
    return new Set(this.events.map((event) => event.read)).size;
  }

  within(what: string, ms = DEADLINE_MS) {
    return within(what, this.done, ms);
  }
}

// ─── The default configuration streams right ─────────────────────────────────

proxyLesson("proxy: nginx in front of the countdown, configured to stream", (test) => {
  const children: Child[] = [];
  let upstream: { app: App; url: string } | undefined;
  let proxy: Proxy;
  const interval = 300;
  const query = `sse/?from=4&interval=${interval}`;

  test.before(async () => {
    upstream = await startServer(LESSON_ONE);
    proxy = await startProxy(children, upstream.url);
  });
  test.after(async () => {
    await stopProxies(children);
    await stopServer(upstream?.app);
  });

  test("the script prints the nginx command and the configuration it wrote", () => {
    const { output } = proxy.child;
    assert.match(output, `-p ${proxy.folder}/ -c ${proxy.folder}/nginx.conf -g 'daemon off;'`);
    assert.match(output, `proxy_pass ${upstream!.url};`);
    assert.match(output, "proxy_http_version 1.1;");
    assert.match(output, "What to expect with the default configuration:");
  });

  test("every event arrives within a tick of the direct stream, each in a read of its own",
    async () => {
      const direct = new TimedStream(`${upstream!.url}/${query}`);
      const proxied = new TimedStream(`${proxy.url}${query}`);
      assert.is(await proxied.within("the stream through nginx to end"), "ended");
      assert.is(await direct.within("the direct stream to end"), "ended");
      assert.equal(proxied.ids, [4, 3, 2, 1, 0]);
      assert.equal(direct.ids, proxied.ids);
      assert.is(proxied.readsWithEvents, 5, "nginx passed each event on as it came");
      proxied.events.forEach(({ id, at }, k) => {
        const late = Math.abs(at - direct.events[k]!.at);
        assert.ok(late < interval, `event ${id} came ${late.toFixed(0)} ms off the direct one`);
      });
    });

  test("the stream keeps server.ts's type and Cache-Control through nginx", async () => {
    const proxied = new TimedStream(`${proxy.url}sse/?from=0`);
    await proxied.within("the one-event stream");
    assert.is(proxied.headers["content-type"], "text/event-stream; charset=utf-8");
    assert.is(proxied.headers["cache-control"], "no-cache, no-transform");
    assert.match(String(proxied.headers.server), /^nginx/);
  });

  test("Ctrl-C stops nginx and its worker, and leaves neither pid file nor folder", async () => {
    const own: Child[] = [];
    const { child, pid, folder } = await startProxy(own, upstream!.url);
    const workers = childrenOf(pid);
    assert.ok(existsSync(join(folder, PID_FILE)), "nginx wrote its pid file in the folder");
    assert.is(readFileSync(join(folder, PID_FILE), "utf8").trim(), String(pid));
    assert.is(await child.stop("SIGINT"), 0);
    assert.match(child.output, `SIGINT: stopping nginx (pid ${pid})`);
    assert.match(child.output, `nginx stopped; removed ${folder}`);
    await until("nginx and its workers to be gone", () => ![pid, ...workers].some(isAlive));
    assert.not.ok(existsSync(folder), "the temporary folder is gone");
  });
});

// ─── --buffering: the first configuration people write ──────────────────────

proxyLesson("proxy: --buffering holds the events back", (test) => {
  const children: Child[] = [];
  let upstream: { app: App; url: string } | undefined;
  let proxy: Proxy;

  test.before(async () => {
    upstream = await startServer(LESSON_ONE);
    proxy = await startProxy(children, upstream.url, ["--buffering"]);
  });
  test.after(async () => {
    await stopProxies(children);
    await stopServer(upstream?.app);
  });

  test("the config shows nginx's defaults and ignores X-Accel-Buffering", () => {
    assert.match(proxy.child.output, "proxy_http_version 1.0;");
    assert.match(proxy.child.output, "proxy_ignore_headers X-Accel-Buffering;");
  });

  test("every event comes in one read after the stream ended; direct, each in its own",
    async () => {
      const query = "sse/?from=4&interval=200";
      const direct = new TimedStream(`${upstream!.url}/${query}`);
      const proxied = new TimedStream(`${proxy.url}${query}`);
      assert.is(await proxied.within("the stream through nginx to end"), "ended");
      assert.is(await direct.within("the direct stream to end"), "ended");
      assert.equal(proxied.ids, [4, 3, 2, 1, 0], "none lost, none out of order");
      assert.is(direct.readsWithEvents, 5, "direct: five events, five reads");
      // Event 0 is sent four ticks after event 4: arriving together means 4 waited for it.
      assert.is(proxied.readsWithEvents, 1, "through nginx: the first event waited for the last");
      assert.is(proxied.reads.length, 1, "not even the headers came earlier");
    });

  test("a longer stream comes in bursts of many events, in order", async () => {
    const proxied = new TimedStream(`${proxy.url}sse/?from=300&interval=10`);
    assert.is(await proxied.within("the long stream to end"), "ended");
    assert.equal(proxied.ids, Array.from({ length: 301 }, (_, k) => 300 - k));
    const perRead = new Map<number, number>();
    for (const { read } of proxied.events) perRead.set(read, (perRead.get(read) ?? 0) + 1);
    assert.ok(perRead.size > 1, "some events came before the end: a full buffer goes out");
    const [fewest, most] = [Math.min(...perRead.values()), Math.max(...perRead.values())];
    assert.ok(fewest > 10, `reads of ${fewest} to ${most} events`);
  });
});

// ─── --gzip: compression in spite of no-transform ────────────────────────────

proxyLesson("proxy: --gzip compresses the stream", (test) => {
  const children: Child[] = [];
  let upstream: { app: App; url: string } | undefined;
  let proxy: Proxy;

  test.before(async () => {
    upstream = await startServer(LESSON_ONE);
    proxy = await startProxy(children, upstream.url, ["--gzip"]);
  });
  test.after(async () => {
    await stopProxies(children);
    await stopServer(upstream?.app);
  });

  test("nginx compresses although the stream says no-transform; events still come one by one",
    async () => {
      const query = "sse/?from=4&interval=200";
      const proxied = new TimedStream(`${proxy.url}${query}`, { "Accept-Encoding": "gzip" });
      assert.is(await proxied.within("the compressed stream to end"), "ended");
      assert.is(proxied.headers["content-encoding"], "gzip");
      assert.is(proxied.headers["cache-control"], "no-cache, no-transform");
      assert.equal(proxied.ids, [4, 3, 2, 1, 0]);
      assert.is(proxied.readsWithEvents, 5, "X-Accel-Buffering: no flushed the compressor");
    });

  test("a client that does not ask for gzip (curl -N) gets the stream plain", async () => {
    const plain = new TimedStream(`${proxy.url}sse/?from=1&interval=100`);
    assert.is(await plain.within("the plain stream to end"), "ended");
    assert.is(plain.headers["content-encoding"], undefined);
    assert.equal(plain.ids, [1, 0]);
  });
});

// ─── --read-timeout: a silent stream is cut, a heartbeat keeps it ────────────

proxyLesson("proxy: --read-timeout cuts a silent stream", (test) => {
  const children: Child[] = [];
  let silent: { app: App; url: string } | undefined;
  let beating: { app: App; url: string } | undefined;
  let cutting: Proxy;
  let keeping: Proxy;
  // Ticks 1.5 s apart behind a 1 s timeout; the heartbeat comes every 300 ms, or never.
  const query = "sse/?from=2&interval=1500";

  test.before(async () => {
    silent = await startServer({ ...LESSON_ONE, heartbeat: 0 });
    beating = await startServer({ ...LESSON_ONE, heartbeat: 300 });
    cutting = await startProxy(children, silent.url, ["--read-timeout", "1"]);
    keeping = await startProxy(children, beating.url, ["--read-timeout", "1"]);
  });
  test.after(async () => {
    await stopProxies(children);
    await stopServer(silent?.app);
    await stopServer(beating?.app);
  });

  test("a stream silent for longer than the timeout is cut after its first event", async () => {
    const stream = new SseClient(`${cutting.url}${query}`);
    assert.is((await stream.next()).id, "2");
    assert.is(await within("nginx to cut the stream", stream.ended), false, "cut, not ended");
    assert.equal(stream.numbers, [2]);
    await cutting.child.waitFor(/upstream timed out .* while reading upstream/);
  });

  test("a heartbeat shorter than the timeout keeps the same stream to the end", async () => {
    const stream = new SseClient(`${keeping.url}${query}`);
    assert.is(await within("the stream to end", stream.ended), true);
    assert.equal(stream.numbers, [2, 1, 0]);
    assert.match(stream.raw, ": still counting\n\n");
  });

  test("a reconnect with Last-Event-ID through nginx resumes at the next number", async () => {
    const stream = new SseClient(`${cutting.url}${query}`, { "Last-Event-ID": "2" });
    assert.is((await stream.next()).id, "1");
    stream.close();
  });
});

// ─── In the browser: the reconnect, and HTTP/2 ───────────────────────────────

/** The browser suites need both; a self-signed certificate is only for --http2's test. */
function proxyBrowserLesson(name: string, build: (test: Parameters<Parameters<typeof lesson>[1]>[0],
  browser: () => Browser) => void) {
  if (!selected(name)) return;
  const why = nginxMissing();
  if (why && leftOut("nginx", name, why)) return;
  const noBrowser = chromiumMissing();
  if (noBrowser && leftOut("Chromium", name, noBrowser)) return;
  lesson(name, (test) => {
    let browser: Browser | undefined;
    test.before(async () => {
      browser = await chromium.launch({ executablePath: CHROMIUM_PATH, timeout: DEADLINE_MS,
        args: [...CHROMIUM_ARGS, "--ignore-certificate-errors"] });
    });
    build(test, () => browser!);
    test.after(async () => {
      await within("Chromium to close", browser?.close() ?? Promise.resolve()).catch(() => {});
    });
  });
}

proxyBrowserLesson("proxy browser: tabs through nginx", (test, browser) => {
  const children: Child[] = [];
  let silent: { app: App; url: string } | undefined;
  let counting: { app: App; url: string } | undefined;
  const profiles: Profile[] = [];

  test.before(async () => {
    silent = await startServer({ ...LESSON_ONE, heartbeat: 0 });
    counting = await startServer(LESSON_ONE);
  });
  test.after(async () => {
    for (const profile of profiles.splice(0)) await profile.close().catch(() => {});
    await stopProxies(children);
    await stopServer(silent?.app);
    await stopServer(counting?.app);
  });

  test("a tab cut by the read timeout reconnects through nginx and resumes", async () => {
    const proxy = await startProxy(children, silent!.url, ["--read-timeout", "1"]);
    const profile = await Profile.open(browser());
    profiles.push(profile);
    const tab = await profile.open(`${proxy.url}?from=2&interval=1500`);
    // Each tick is cut 1 s after it came; the browser waits, then asks for the next one.
    const ticks = 3;
    await until("the tab to reach Blastoff", () => tab.shown.includes("Blastoff!"),
      ticks * (RECONNECT_DELAY_MS + DEADLINE_MS));
    assert.equal(tab.shown, ["2", "1", "Blastoff!"], "no number twice, none skipped");
    assert.ok(tab.texts("state").includes("reconnecting"), "the page said it reconnected");
  });

  /** Opens `count` tabs of `url` at once, without waiting for pages that may never load. */
  async function openTabs(profile: Profile, url: string, count: number): Promise<Tab[]> {
    const pages: Page[] = [];
    for (let k = 0; k < count; k++) pages.push(await profile.context.newPage());
    for (const page of pages) page.goto(url).catch(() => {}); // some wait on purpose
    return pages.map((page) => profile.tab(page));
  }

  test("over HTTP/1.1 the seventh tab waits; over HTTP/2 (--http2) all eight count",
    async () => {
      const tabs = CONNECTIONS_PER_HOST + 2;
      const page = "?from=100&interval=200";
      const counting1 = (list: Tab[]) => list.filter((tab) => tab.numbers.length > 1).length;
      const plain = await startProxy(children, counting!.url);
      const profile1 = await Profile.open(browser());
      profiles.push(profile1);
      const overHttp1 = await openTabs(profile1, `${plain.url}${page}`, tabs);
      await until("six tabs to count", () => counting1(overHttp1) >= CONNECTIONS_PER_HOST);
      await new Promise((resolve) => setTimeout(resolve, STILL_WAITING_MS));
      assert.is(counting1(overHttp1), CONNECTIONS_PER_HOST, "the browser's limit per host name");
      await profile1.close();

      const secure = await startProxy(children, counting!.url, ["--http2"]);
      assert.match(secure.url, /^https:/);
      const profile2 = await Profile.open(browser());
      profiles.push(profile2);
      const overHttp2 = await openTabs(profile2, `${secure.url}${page}`, tabs);
      await until("all eight tabs to count", () => counting1(overHttp2) === tabs);
      const protocol = await overHttp2[0]!.page.evaluate(() =>
        (performance.getEntriesByType("navigation")[0] as PerformanceResourceTiming)
          .nextHopProtocol);
      assert.is(protocol, "h2");
    });
});

// ─── The command line ────────────────────────────────────────────────────────

lesson("proxy command line: lessons/proxy.ts", (test) => {
  const children: Child[] = [];
  const run = runner(SCRIPT, children);
  const empty = mkdtempSync(join(tmpdir(), "no-nginx-"));
  test.after(() => {
    for (const child of children) child.kill();
    rmSync(empty, { recursive: true, force: true });
  });

  test("a missing nginx is one sentence with the install command, and exit code 1",
    async () => {
      const child = run(["--nginx", join(empty, "nginx")]);
      assert.is(await within("the script to give up", child.exited), 1);
      assert.is(child.output.trim(), `No ${join(empty, "nginx")}: install nginx with ` +
        `"sudo apt-get install nginx" (Debian, Ubuntu) or "brew install nginx" (macOS), ` +
        "or name it with --nginx FILE.");
    });

  test("a busy port is one sentence and exit code 1, before nginx starts", async () => {
    const blocker = net.createServer().listen(0, "127.0.0.1");
    await within("the blocker to listen", once(blocker, "listening"));
    try {
      const { port } = blocker.address() as net.AddressInfo;
      const child = run(["--port", String(port)]);
      assert.is(await within("the script to give up", child.exited), 1);
      assert.is(child.output.trim(), `port ${port} is in use; try --port ${port + 2}`);
    } finally {
      blocker.close();
    }
  });

  const badFlags: BadFlags = [
    [["--port", "0"], {}, "--port must be a whole number from 1 to 65535."],
    [["--upstream", "ftp://127.0.0.1:8000"], {},
      "--upstream must be an http:// address such as http://127.0.0.1:8000."],
    [["--upstream", "http://127.0.0.1:8000/sse/"], {},
      "--upstream must be an http:// address such as http://127.0.0.1:8000."],
    [["--read-timeout", "0"], {}, "--read-timeout must be a whole number from 1 to 3600."],
    [["--bufering"], {}, "Unknown option '--bufering'. Try --help."],
  ];
  refusesBadFlags(test, run, badFlags);

  test("--help names every mode", async () => {
    const child = run(["--help"]);
    assert.is(await within("the help", child.exited), 0);
    for (const flag of ["--buffering", "--gzip", "--read-timeout S", "--http2", "--upstream URL"]) {
      assert.match(child.output, flag);
    }
  });
});
