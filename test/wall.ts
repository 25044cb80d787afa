/**
 * test/wall.ts: the wall, both servers side by side for a workshop projector
 * (/wall/, lessons/wall.ts and pages/wall.html), the one header that lets its
 * tiles stream from other origins, and the crowd (bench/crowd.ts) that loads
 * server.ts with thousands of streams while the wall keeps counting.
 */

import { readFileSync } from "node:fs";
import net from "node:net";
import { once } from "node:events";
import { setTimeout as delay } from "node:timers/promises";
import * as assert from "uvu/assert";
import type { Page } from "playwright-core";
import type { App } from "../server.ts";
import { withToasts } from "../lessons/toasts.ts";
import {
  BOOT_DEADLINE_MS,
  browserLesson,
  Child,
  DEADLINE_MS,
  lesson,
  Profile,
  RECONNECT_DELAY_MS,
  refusesBadFlags,
  request,
  responseHeaders,
  runner,
  startBlocking,
  startLoopbackServer,
  startServer,
  stopBlocking,
  stopLoopbackServer,
  stopServer,
  until,
  within,
  workerPids,
  type BadFlags,
  type LoopbackServer,
} from "./helpers.ts";

const WALL_FILE = new URL("../pages/wall.html", import.meta.url);
const WALL_PAGE = readFileSync(WALL_FILE, "utf8");
const ALLOW_ORIGIN = "access-control-allow-origin";

/** A loopback port that nothing listens on: borrowed from the kernel, then given back. */
async function closedPort(): Promise<number> {
  const borrowed = net.createServer().listen(0, "127.0.0.1");
  await within("a port to borrow", once(borrowed, "listening"));
  const { port } = borrowed.address() as net.AddressInfo;
  await new Promise((resolve) => borrowed.close(resolve));
  return port;
}

// ─── Over HTTP: the page, and who may read the stream ────────────────────────

lesson("wall http: the page, and the stream's CORS header on both servers", (test) => {
  let app: App | undefined;
  let url = "";
  const children: Child[] = [];
  let blockingUrl = "";
  test.before(async () => {
    ({ app, url } = await startServer());
    ({ url: blockingUrl } = await startBlocking(children, ["--timeout", "0"]));
  });
  test.after(async () => {
    await stopServer(app);
    await stopBlocking(children);
  });

  const asIs = "GET /wall/ is pages/wall.html as it is (with the toasts, as every page)";
  test(`${asIs}, whatever the query says; HEAD gets its length`, async () => {
    for (const query of ["", "?tiles=3&blocking=8101", "?tiles=<script>alert(1)</script>"]) {
      const page = await request(`${url}/wall/${query}`);
      assert.is(page.status, 200);
      assert.is(page.headers["content-type"], "text/html; charset=utf-8");
      assert.is(page.body, withToasts(WALL_PAGE), `the same bytes for /wall/${query}`);
    }
    const head = await request(`${url}/wall/`, { method: "HEAD" });
    const length = Buffer.byteLength(withToasts(WALL_PAGE));
    assert.is(head.headers["content-length"], String(length));
    assert.is(head.body, "");
  });

  test("/wall redirects to /wall/ (308), query kept, as /room and /toasts do", async () => {
    const res = await request(`${url}/wall?tiles=4&interval=200`);
    assert.is(res.status, 308);
    assert.is(res.headers.location, "/wall/?tiles=4&interval=200");
  });

  test("server.ts's stream allows every origin, and so do its 204 and its 400", async () => {
    const stream = await request(`${url}/sse/?from=1&interval=10`);
    assert.is(stream.status, 200);
    assert.is(stream.headers[ALLOW_ORIGIN], "*");
    const finished = await request(`${url}/sse/`, { headers: { "Last-Event-ID": "0" } });
    assert.is(finished.status, 204);
    assert.is(finished.headers[ALLOW_ORIGIN], "*");
    const bad = await request(`${url}/sse/?from=x`);
    assert.is(bad.status, 400);
    assert.is(bad.headers[ALLOW_ORIGIN], "*");
  });

  test("no other route says so, for any method, nor a 404, nor a POST to the stream", async () => {
    const asked: string[] = [];
    for (const [path, methods] of Object.entries(app!.routes)) {
      if (path === "/sse/") continue;
      for (const method of Object.keys(methods)) {
        // Headers are enough: some routes stream for as long as the client stays;
        // ?delay=0 keeps the fan-out short.
        const headers = await responseHeaders(`${url}${path}?delay=0`, method);
        assert.is(headers[ALLOW_ORIGIN], undefined, `${method} ${path}`);
        asked.push(`${method} ${path}`);
      }
    }
    const every = asked.includes("GET /") && asked.includes("GET /wall/");
    assert.ok(every, `every route was asked: ${asked}`);
    assert.is((await request(`${url}/nope`)).headers[ALLOW_ORIGIN], undefined);
    const post = await request(`${url}/sse/`, { method: "POST" });
    assert.is(post.status, 405);
    assert.is(post.headers[ALLOW_ORIGIN], undefined);
  });

  test("blocking-server.ts's worker allows every origin on the stream only", async () => {
    const stream = await request(`${blockingUrl}/sse/?from=1&interval=10`);
    assert.is(stream.status, 200);
    assert.is(stream.headers[ALLOW_ORIGIN], "*");
    const others = [["GET", "/"], ["HEAD", "/"], ["GET", "/nope"], ["POST", "/sse/"]] as const;
    for (const [method, path] of others) {
      const res = await request(`${blockingUrl}${path}`, { method });
      assert.is(res.headers[ALLOW_ORIGIN], undefined, `${method} ${path}`);
    }
  });
});

// ─── The crowd ───────────────────────────────────────────────────────────────

/** A small crowd, fast ticks: enough to see every stream open and every one closed. */
const CROWD_STREAMS = 200;
const CROWD_TICK_MS = 200;

lesson("wall crowd: npm run crowd opens its streams and closes every one", (test) => {
  let app: App | undefined;
  let port = "";
  const children: Child[] = [];
  test.before(async () => {
    let url: string;
    ({ app, url } = await startServer());
    port = new URL(url).port;
  });
  test.after(async () => {
    for (const child of children) child.kill();
    await stopServer(app);
  });
  const run = runner("bench/crowd.ts", children);

  const reported = `${CROWD_STREAMS} streams for 3 seconds: reported open, then all closed`;
  test(`${reported}, and the server holds none`, async () => {
    const streams = String(CROWD_STREAMS);
    const tick = String(CROWD_TICK_MS);
    const child = run(["--port", port, "--streams", streams, "--seconds", "3", "--interval", tick]);
    const open = `${CROWD_STREAMS} streams open · [\\d,]+ events in the last second`;
    await child.waitFor(new RegExp(`^\\[\\d\\d:\\d\\d:\\d\\d\\] ${open} · 0 lost so far$`, "m"));
    const holds = "the server holds every stream the crowd says is open";
    assert.is(app!.streams.size, CROWD_STREAMS, holds);
    const stopped = "the crowd to stop after its seconds";
    const exited = await within(stopped, child.exited, 3000 + DEADLINE_MS);
    assert.is(exited, 0);
    const closed =
      `Closed all ${CROWD_STREAMS} streams after [\\d.]+ s: ${CROWD_STREAMS} were open at once, ` +
      `[\\d,]+ events received; sockets left open: 0\\.\\n$`;
    assert.match(child.output, new RegExp(closed));
    await until("the server's open streams to return to 0", () => app!.streams.size === 0);
  });

  test("Ctrl-C closes every stream, and the crowd exits 0", async () => {
    const child = run(["--port", port, "--streams", "50"]);
    await child.waitFor(/\] 50 streams open/);
    assert.is(await child.stop("SIGINT"), 0);
    assert.match(child.output, /SIGINT: closing every stream\n/);
    assert.match(child.output, /sockets left open: 0\.\n$/);
    await until("the server's open streams to return to 0", () => app!.streams.size === 0);
  });

  test("with no server there, it says so in one sentence and exits 1", async () => {
    const nobody = await closedPort();
    const child = run(["--port", String(nobody), "--streams", "3", "--seconds", "5"]);
    assert.is(await within("the crowd to give up", child.exited), 1);
    const sentence =
      `No stream opened at http://127\\.0\\.0\\.1:${nobody}/sse/ \\(ECONNREFUSED\\); ` +
      `is the server running\\? Start it with: npx -y tsx server\\.ts --port ${nobody}\\n$`;
    assert.match(child.output, new RegExp(sentence));
  });

  const notHere =
    "--host must be this machine (127.0.0.1, another 127.x.x.x, ::1 or localhost): " +
    "a crowd only loads a server of your own.";
  const badFlags: BadFlags = [
    [["--host", "10.0.0.1"], {}, notHere],
    [["--host", "example.com"], {}, notHere],
    [["--host", "0.0.0.0"], {}, notHere],
    [["--streams", "19001"], {}, "--streams must be a whole number from 1 to 19000."],
    [["--streams", "0"], {}, "--streams must be a whole number from 1 to 19000."],
    [["--seconds", "soon"], {}, "--seconds must be a whole number from 1 to 86400."],
    [["--interval", "5"], {}, "--interval must be a whole number from 10 to 60000."],
    [["--url", "http://10.0.0.1/"], {}, "Unknown option '--url'. Try --help."],
  ];
  refusesBadFlags(test, run, badFlags);
});

// ─── The wall in a real browser ──────────────────────────────────────────────

/** The blocking server's settings here: two workers, killed after this many seconds of silence. */
const WALL_WORKERS = 2;
const WALL_TIMEOUT_S = 2;
const WALL_TILES = 4;
const WALL_TICK_MS = 200;

/** What one tile shows. */
interface TileView {
  tile: string;
  state: string;
  number: string;
  pid: string;
}

function tilesOf(page: Page, column: "async" | "blocking"): Promise<TileView[]> {
  return page.$$eval(`#${column} .tile`, (tiles) =>
    tiles.map((tile) => ({
      tile: (tile as HTMLElement).dataset.tile ?? "",
      state: (tile as HTMLElement).dataset.state ?? "",
      number: tile.querySelector(".number")?.textContent ?? "",
      pid: tile.querySelector(".pid")?.textContent ?? "",
    })),
  );
}

const textOf = (page: Page, selector: string) =>
  page.$eval(selector, (element) => element.textContent ?? "");

const isHidden = (page: Page, selector: string) =>
  page.$eval(selector, (element) => (element as HTMLElement).hidden);

/** A tile that streams and shows a number. */
const counts = (tile: TileView) => tile.state === "streaming" && /^\d+$/.test(tile.number);

/** Polls an asynchronous condition until it holds, or fails at the deadline with what it saw. */
async function eventually<T>(
  what: string,
  read: () => Promise<T>,
  holds: (value: T) => boolean,
  ms = DEADLINE_MS,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await read();
    if (holds(value)) return value;
    if (Date.now() > deadline) {
      const saw = JSON.stringify(value);
      throw new Error(`gave up after ${ms} ms waiting for ${what}; last saw ${saw}`);
    }
    await delay(20);
  }
}

browserLesson("browser: the wall shows both servers side by side", (test, browser) => {
  let running: LoopbackServer | undefined;
  const children: Child[] = [];
  let blockingPort = "";
  let profile: Profile | undefined;
  let wall: Page | undefined;
  let countingOnBlocking: TileView[] = [];

  test.before(async () => {
    running = await startLoopbackServer();
    const args = ["--host", "localhost", "--timeout", String(WALL_TIMEOUT_S)];
    const { url } = await startBlocking(children, args, WALL_WORKERS);
    blockingPort = new URL(url).port;
  });
  test.before.each(async () => {
    profile ??= await Profile.open(browser());
  });
  test.after(async () => {
    await profile?.close();
    await stopLoopbackServer(running);
    await stopBlocking(children);
  });

  const exactly = `on blocking-server.ts exactly ${WALL_WORKERS} count and the others wait`;
  test(`every server.ts tile counts; ${exactly}`, async () => {
    const query = `?tiles=${WALL_TILES}&blocking=${blockingPort}&interval=${WALL_TICK_MS}`;
    wall = (await profile!.open(`http://localhost:${running!.port}/wall/${query}`)).page;
    // The blocking side first: its first kill comes WALL_TIMEOUT_S after its streams began.
    const blocking = await eventually(
      "two blocking tiles to count",
      () => tilesOf(wall!, "blocking"),
      (tiles) => tiles.filter(counts).length === WALL_WORKERS,
    );
    countingOnBlocking = blocking.filter((tile) => tile.state === "streaming");
    const waiting = blocking.filter((tile) => tile.state !== "streaming");
    assert.is(waiting.length, WALL_TILES - WALL_WORKERS);
    for (const tile of waiting) {
      const shown = [tile.state, tile.number, tile.pid];
      assert.equal(shown, ["waiting", "…", ""], `tab${tile.tile} waits`);
    }
    const workers = workerPids(children[0]!);
    for (const tile of countingOnBlocking) {
      const pid = Number(tile.pid.replace("pid ", ""));
      assert.ok(workers.includes(pid), `a worker serves tab${tile.tile}`);
    }
    const [first, second] = countingOnBlocking;
    assert.is.not(first!.pid, second!.pid, "each counting tile has a worker of its own");
    const header = `${WALL_WORKERS} of ${WALL_TILES} counting, ${waiting.length} waiting`;
    const counting = () => textOf(wall!, "#blocking .counting");
    await eventually("the blocking header", counting, (text) => text === header);

    // server.ts: every tile advances, all served by this process, which says how much it holds.
    await eventually(
      "every server.ts tile to count down from 100 past 97",
      () => tilesOf(wall!, "async"),
      (tiles) => tiles.every((tile) => tile.state === "streaming" && Number(tile.number) <= 97),
    );
    for (const tile of await tilesOf(wall, "async")) assert.is(tile.pid, `pid ${process.pid}`);
    assert.is(await textOf(wall, "#async .counting"), `${WALL_TILES} of ${WALL_TILES} counting`);
    const holds = new RegExp(`^pid ${process.pid} holds ${WALL_TILES} streams in \\d+ MB$`);
    assert.match(await textOf(wall, "#async .servers .holds"), holds);
    assert.is(running!.app.streams.size, WALL_TILES);
    assert.ok(await isHidden(wall, "#async .notice"), "no notice: server.ts answers");
  });

  const afterKill = "after a kill the cut tiles say cut or reconnecting";
  test(`${afterKill}, and a waiting tile takes over`, async () => {
    await children[0]!.waitFor(/WORKER TIMEOUT \(pid:\d+\)/, WALL_TIMEOUT_S * 1000 + DEADLINE_MS);
    const cut = countingOnBlocking.map((tile) => tile.tile);
    const wasCut = (tile: TileView) => cut.includes(tile.tile);
    const after = await eventually(
      "the cut tiles to say so and a waiting tile to count",
      () => tilesOf(wall!, "blocking"),
      (tiles) =>
        tiles.filter(wasCut).some((tile) => ["cut", "reconnecting"].includes(tile.state)) &&
        tiles.some((tile) => !wasCut(tile) && counts(tile)),
      BOOT_DEADLINE_MS,
    );
    const took = after.filter((tile) => !wasCut(tile) && tile.state === "streaming");
    const oldPids = countingOnBlocking.map((tile) => tile.pid);
    const newWorker = took.every((tile) => !oldPids.includes(tile.pid));
    assert.ok(newWorker, "a new worker serves the tile that took over");
    for (const tile of after.filter((tile) => wasCut(tile) && tile.state !== "streaming")) {
      assert.ok(["cut", "reconnecting"].includes(tile.state), `tab${tile.tile} says ${tile.state}`);
      assert.match(tile.number, /^\d+$/, `tab${tile.tile} keeps the number it stopped at`);
    }
    await eventually(
      "the blocking strip to mark the cuts",
      () => textOf(wall!, "#blocking figcaption"),
      (text) => / [1-9]\d* streams? cut \(red\)/.test(text),
      2000,
    );
    assert.match(await textOf(wall!, "#async figcaption"), / 0 streams cut \(red\)/);
    // Meanwhile the async side never stopped.
    const asyncTiles = await tilesOf(wall!, "async");
    const streaming = asyncTiles.every((tile) => tile.state === "streaming");
    assert.ok(streaming, JSON.stringify(asyncTiles));
  });

  const without = "without the blocking server its column shows the command that starts it";
  test(`${without}, and server.ts's side still counts`, async () => {
    const nobody = await closedPort();
    const query = `?tiles=2&blocking=${nobody}&interval=${WALL_TICK_MS}`;
    const page = (await profile!.open(`http://localhost:${running!.port}/wall/${query}`)).page;
    const notice = await eventually(
      "the blocking column's notice",
      () => textOf(page, "#blocking .notice"),
      (text) => text !== "",
    );
    const command = `npx tsx blocking-server.ts --port ${nobody}`;
    const sentence = `blocking-server.ts is not answering on port ${nobody}. Start it with:`;
    assert.is(notice, `${sentence}${command}`);
    assert.not.ok(await isHidden(page, "#blocking .notice"));
    assert.is(await textOf(page, "#blocking .counting"), "0 of 2 counting, 2 waiting");
    const tiles = () => tilesOf(page, "async");
    await eventually("server.ts's tiles to count", tiles, (shown) => shown.every(counts));
    // The browser keeps trying, quietly: the notice stays until the server answers.
    await delay(RECONNECT_DELAY_MS);
    assert.not.ok(await isHidden(page, "#blocking .notice"));
    await page.close();
  });

  const savedFile = "opened as a saved file, it streams from server.ts on ?server=";
  test(`${savedFile}, and names the command when nothing answers there`, async () => {
    const ports = `?server=${running!.port}&blocking=${await closedPort()}`;
    const query = `${ports}&tiles=2&interval=${WALL_TICK_MS}`;
    const page = (await profile!.open(`${WALL_FILE.href}${query}`)).page;
    const tiles = () => tilesOf(page, "async");
    await eventually("server.ts's tiles to count from a file", tiles, (all) => all.every(counts));
    await page.close();
    const nobody = await closedPort();
    const nothing = `?server=${nobody}&blocking=${nobody}&tiles=2`;
    const lost = (await profile!.open(`${WALL_FILE.href}${nothing}`)).page;
    const asyncNotice = () => textOf(lost, "#async .notice");
    const notice = await eventually("server.ts's notice", asyncNotice, (text) => text !== "");
    const sentence = `server.ts is not answering on port ${nobody}. Start it with:`;
    assert.is(notice, `${sentence}npx tsx server.ts --port ${nobody}`);
    await lost.close();
  });

  const bad = "a bad ?tiles= or ?blocking= is one sentence on the page";
  test(`${bad}, and no stream is opened`, async () => {
    for (const [query, sentence] of [
      ["?tiles=25", "tiles must be a whole number from 1 to 24."],
      ["?tiles=<b>x</b>", "tiles must be a whole number from 1 to 24."],
      ["?blocking=0", "blocking must be a whole number from 1 to 65535."],
      ["?server=65536", "server must be a whole number from 1 to 65535."],
      ["?interval=5", "interval must be a whole number from 10 to 60000."],
    ]) {
      const tab = await profile!.open(`http://localhost:${running!.port}/wall/${query}`);
      assert.is(await textOf(tab.page, "#problem"), sentence);
      assert.is(await tab.openEventSources(), 0);
      await tab.page.close();
    }
  });
});

// ─── The wall on a projector, and the presenter's buttons ───────────────────

/** The screens the wall must fill: a 1080p projector, a 720p one, and an old 4:3 one. */
const SCREENS = [
  { width: 1920, height: 1080 },
  { width: 1280, height: 720 },
  { width: 1024, height: 768 },
];
/** The tiles' tick in the button tests: many ticks fall due during the buttons' 3 s sleep. */
const BUTTON_TICK_MS = 200;
/** The left column's delay after "Block the loop for 3 s": at least this. */
const BLOCKED_DELAY_MS = 2000;

/** What a screen shows of the wall: scrolling, tile sizes, the tile grid, and text that spills. */
function layoutOf(page: Page) {
  return page.evaluate(() => {
    const scroller = document.scrollingElement!;
    const tiles = Array.from(document.querySelectorAll<HTMLElement>(".tile"));
    const sizes = new Set(tiles.map((tile) => {
      const { width, height } = tile.getBoundingClientRect();
      return `${Math.round(width)}x${Math.round(height)}`;
    }));
    const grids = Array.from(document.querySelectorAll<HTMLElement>(".tiles")).map((list) =>
      getComputedStyle(list).gridTemplateColumns.split(" ").length);
    const spills: string[] = [];
    for (const element of Array.from(document.querySelectorAll<HTMLElement>("body *"))) {
      if (element.children.length > 0 || !element.textContent?.trim() || element.closest("[hidden]")) continue;
      const inner = element.scrollWidth > element.clientWidth + 1 || element.scrollHeight > element.clientHeight + 1;
      const box = element.closest(".tile, section, body")!.getBoundingClientRect();
      const own = element.getBoundingClientRect();
      const outside = own.right > box.right + 1 || own.bottom > box.bottom + 1;
      if (inner || outside) spills.push(`${element.className || element.tagName}: ${element.textContent.slice(0, 30)}`);
    }
    return {
      scrolls: scroller.scrollHeight > innerHeight || scroller.scrollWidth > innerWidth,
      sizes: [...sizes],
      tiles: tiles.length,
      grids,
      spills,
    };
  });
}

/**
 * Records, in the page, every number a server.ts tile shows and every answer of the buttons, in
 * the order they came: which ticks arrived between pressing a button and its answer.
 */
const RECORD_THE_WALL = () => {
  const record: { what: string; text: string; at: number }[] = [];
  (window as unknown as { wallRecord: typeof record }).wallRecord = record;
  new MutationObserver((mutations) => {
    for (const { target } of mutations) {
      const element = target instanceof HTMLElement ? target : target.parentElement;
      const at = performance.now();
      if (element?.matches("#async .tile .number")) record.push({ what: element.closest<HTMLElement>(".tile")!.dataset.tile!, text: element.textContent ?? "", at });
      if (element?.id === "action-result") record.push({ what: "answer", text: element.textContent ?? "", at });
    }
  }).observe(document.querySelector("main")!.parentElement!, { childList: true, subtree: true, characterData: true });
};

/**
 * Presses a button, waits for its answer, and counts each server.ts tile's ticks in between;
 * `longestGap` is each tile's longest wait for a tick from the press to the answer, in ms.
 */
async function press(page: Page, button: string, answered: string) {
  const [from, pressedAt] = await page.evaluate((id) => {
    const record = (window as unknown as { wallRecord: unknown[] }).wallRecord;
    document.getElementById(id)!.click();
    return [record.length, performance.now()];
  }, button);
  await page.waitForFunction((text) => document.getElementById("action-result")!.textContent!.startsWith(text), answered, { timeout: 3000 + DEADLINE_MS });
  const record = await page.evaluate(() => (window as unknown as { wallRecord: { what: string; text: string; at: number }[] }).wallRecord);
  const during = record.slice(from);
  const end = during.findIndex((entry) => entry.what === "answer" && entry.text.startsWith(answered));
  const ticks = new Map<string, number>();
  const longestGap = new Map<string, number>();
  const lastAt = new Map<string, number>();
  for (const entry of during.slice(0, end)) {
    if (entry.what === "answer") continue;
    ticks.set(entry.what, (ticks.get(entry.what) ?? 0) + 1);
    const gap = entry.at - (lastAt.get(entry.what) ?? pressedAt!);
    longestGap.set(entry.what, Math.max(longestGap.get(entry.what) ?? 0, gap));
    lastAt.set(entry.what, entry.at);
  }
  // And the wait from each tile's last tick to the answer: the answer may arrive before the
  // burst of late ticks, so a tile that got none while the loop slept waited all that time.
  const answerAt = during[end]?.at ?? 0; // the page's clock, as every `at`
  for (const tile of new Set(record.map((entry) => entry.what).filter((what) => what !== "answer"))) {
    const gap = Math.max(0, answerAt - (lastAt.get(tile) ?? pressedAt!));
    longestGap.set(tile, Math.max(longestGap.get(tile) ?? 0, gap));
  }
  return { ticks, longestGap };
}

/** The left column's delay, as its header says it in words. */
async function shownDelay(page: Page): Promise<number> {
  const text = await textOf(page, "#async .loop");
  const match = /^the loop waited at most ([\d,]+) ms in the last second$/.exec(text);
  return match ? Number(match[1]!.replace(/,/g, "")) : NaN;
}

browserLesson("browser: the wall on a projector, and the presenter's buttons", (test, browser) => {
  let running: LoopbackServer | undefined;
  let profile: Profile | undefined;
  test.before(async () => {
    running = await startLoopbackServer();
    profile = await Profile.open(browser());
  });
  test.after(async () => {
    await profile?.close();
    await stopLoopbackServer(running);
  });

  const sizes = SCREENS.map(({ width, height }) => `${width}x${height}`).join(", ");
  test(`at ${sizes}: no scrolling, every tile the same size in full rows, no text outside its box`, async () => {
    const query = `?blocking=${await closedPort()}&interval=${WALL_TICK_MS}`;
    const { page } = await profile!.open(`http://localhost:${running!.port}/wall/${query}`);
    await eventually("the blocking column's notice", () => textOf(page, "#blocking .notice"), (text) => text !== "");
    for (const screen of SCREENS) {
      await page.setViewportSize(screen);
      const size = `${screen.width}x${screen.height}`;
      const laid = await eventually(`the wall laid out at ${size}`, () => layoutOf(page), (layout) => layout.sizes.length === 1);
      assert.not.ok(laid.scrolls, `${size}: the page scrolls`);
      assert.is(laid.tiles, 16, size);
      assert.ok(laid.grids.every((across) => 8 % across === 0 && across === laid.grids[0]), `${size}: rows full, the same in both columns: ${laid.grids}`);
      assert.equal(laid.spills, [], `${size}: text outside its box`);
    }
    await page.close();
  });

  test("the loop button stops every server.ts tile and the header says the delay; the thread button does not", async () => {
    const query = `?tiles=4&blocking=${await closedPort()}&interval=${BUTTON_TICK_MS}`;
    const { page } = await profile!.open(`http://localhost:${running!.port}/wall/${query}`);
    assert.is(await textOf(page, "#block-loop"), "Block the loop for 3 s");
    assert.is(await textOf(page, "#block-thread"), "The same on a thread");
    const tiles = () => tilesOf(page, "async");
    await eventually("the server.ts tiles to count", tiles, (shown) => shown.every(counts));
    await page.evaluate(RECORD_THE_WALL);

    const onLoop = await press(page, "block-loop", "On the loop: answered 200");
    for (const tile of ["1", "2", "3", "4"]) {
      // Missed ticks: a wait of many intervals (the late ones come in a burst once it wakes).
      const gap = onLoop.longestGap.get(tile) ?? Infinity;
      assert.ok(gap >= BLOCKED_DELAY_MS, `tab${tile} waited at most ${gap} ms for a tick while the loop slept`);
    }
    await eventually("the header's delay", () => shownDelay(page), (delay) => delay >= BLOCKED_DELAY_MS);

    await eventually("the delay to fall again", () => shownDelay(page), (delay) => delay < BLOCKED_DELAY_MS);
    const onThread = await press(page, "block-thread", "On a thread: answered 200");
    for (const tile of ["1", "2", "3", "4"]) {
      const ticks = onThread.ticks.get(tile) ?? 0;
      assert.ok(ticks >= 2, `tab${tile} got ${ticks} ticks while the thread slept`);
      assert.ok((onThread.longestGap.get(tile) ?? 0) < BLOCKED_DELAY_MS, `tab${tile} kept counting`);
    }
    assert.ok(await shownDelay(page) < BLOCKED_DELAY_MS, "no stall after the thread's sleep");
    assert.ok((await tiles()).every(counts));
    await page.close();
  });
});
