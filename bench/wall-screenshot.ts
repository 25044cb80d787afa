/**
 * bench/wall-screenshot.ts: a picture of the wall just after the first kill, for the README,
 * and the pictures to look at before a workshop: the wall on three screens, and just after
 * "Block the loop for 3 s".
 *
 * Starts server.ts and blocking-server.ts (two workers) as processes of their
 * own, as a presenter would, plus a crowd of streams against server.ts; opens
 * /wall/ in Chromium at a projector's size; waits for the arbiter's first
 * WORKER TIMEOUT and for a waiting tile to take over; saves a PNG. Then the
 * same page at each of SCREENS (wall-1920x1080.png, ...), and once the loop
 * button's sleep is over and the left column says so (wall-blocked.png), beside
 * the first picture; and it stops everything it started.
 *
 * Run:  npx tsx bench/wall-screenshot.ts                  (bench/results/wall*.png, to look at)
 *       npx tsx bench/wall-screenshot.ts --update-docs    (docs/wall.png, the README's, and the rest)
 *       npx tsx bench/wall-screenshot.ts out.png          (anywhere else: out.png, out-1920x1080.png, ...)
 */

import { mkdirSync } from "node:fs";
import { dirname, join, parse, relative } from "node:path";
import type { Browser } from "playwright-core";
import { chromiumMissing, launchChromium } from "./chromium.ts";
import {
  messageOf,
  picturePath,
  START_DEADLINE_MS,
  startFile,
  stop,
  waitForLines,
  waitForUrl,
  type Started,
} from "./common.ts";
import { exitWith } from "../server.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

const USAGE = `Usage: npx tsx bench/wall-screenshot.ts [--update-docs | out.png]

Saves bench/results/wall.png; with --update-docs, docs/wall.png.`;
const OUTPUT = picturePath("wall.png", USAGE);

/** A projector's 720p. */
const VIEWPORT = { width: 1280, height: 720 };
/** The screens a wall must fill: a 1080p projector, a 720p one, and an old 4:3 one. */
const SCREENS = [{ width: 1920, height: 1080 }, { width: 1280, height: 720 }, { width: 1024, height: 768 }];
/** The left column's delay once the loop button's 3 s sleep is over: at least this much. */
const BLOCKED_DELAY_MS = 2000;
/** How long the strip may take to draw the second the loop was blocked in. */
const STRIP_SECOND_MS = 1500;
const WORKERS = "2";
/** Short enough to wait for, long enough that the strip shows some seconds before the kill. */
const TIMEOUT_S = 12;
const CROWD_STREAMS = 1000;

/** How long each step (a server to start, the kill, a tile to take over) gets before giving up. */
const PATIENCE_MS = TIMEOUT_S * 1000 + START_DEADLINE_MS;

// ─── Taking the picture ──────────────────────────────────────────────────────

const missing = chromiumMissing();
if (missing) exitWith(1, `Cannot take the picture: ${missing}.`);

// Each in a process group of its own: stopping the arbiter's group stops its workers too.
const server = startFile("server.ts", ["--port", "0", "--quiet"], { ownGroup: true });
const blockingArgs = ["--port", "0", "--workers", WORKERS, "--timeout", String(TIMEOUT_S)];
const blocking = startFile("blocking-server.ts", blockingArgs, { ownGroup: true });
let crowd: Started | undefined;
let browser: Browser | undefined;
try {
  const url = await waitForUrl(server, "server.ts", PATIENCE_MS);
  const blockingUrl = await waitForUrl(blocking, "blocking-server.ts", PATIENCE_MS);
  const port = new URL(url).port;
  crowd = startFile("bench/crowd.ts", ["--port", port, "--streams", String(CROWD_STREAMS)]);
  const open = new RegExp(`\\] ${CROWD_STREAMS.toLocaleString("en-US")} streams open`);
  await waitForLines(crowd, open, "the crowd", 1, PATIENCE_MS);

  browser = await launchChromium(PATIENCE_MS);
  const page = await browser.newPage({ viewport: VIEWPORT });
  page.setDefaultTimeout(PATIENCE_MS);
  await page.goto(`http://localhost:${port}/wall/?blocking=${new URL(blockingUrl).port}`);
  await waitForLines(blocking, /WORKER TIMEOUT/, "the first WORKER TIMEOUT", 1, PATIENCE_MS);
  // Just after the kill: the cut tiles still say "cut", a tile that waited counts on a
  // new worker, and the strip shows the gap.
  await page.waitForFunction(() => {
    const tiles = Array.from(document.querySelectorAll("#blocking .tile")).map((tile) => ({
      state: (tile as HTMLElement).dataset.state,
      number: Number(tile.querySelector(".number")?.textContent),
    }));
    const tookOver = tiles.some((tile) => tile.state === "streaming" && tile.number <= 99);
    return tiles.some((tile) => tile.state === "cut") && tookOver;
  });
  mkdirSync(dirname(OUTPUT), { recursive: true });
  await page.screenshot({ path: OUTPUT });
  const size = `${VIEWPORT.width}x${VIEWPORT.height}`;
  console.log(
    `Saved ${relative(process.cwd(), OUTPUT)}: the wall at ${size}, just after the first ` +
      `WORKER TIMEOUT, with ${CROWD_STREAMS} streams of a crowd on server.ts.`,
  );
  const { dir, name, ext } = parse(OUTPUT);
  const beside = (suffix: string) => join(dir, `${name}-${suffix}${ext}`);
  for (const screen of SCREENS) {
    await page.setViewportSize(screen);
    await page.waitForTimeout(500); // the tiles' layout follows the next frame's size
    const file = beside(`${screen.width}x${screen.height}`);
    await page.screenshot({ path: file });
    console.log(`Saved ${relative(process.cwd(), file)}: the wall at ${screen.width}x${screen.height}.`);
  }
  await page.setViewportSize(VIEWPORT);
  await page.click("#block-loop");
  // Once the header says the delay, and then the strip's last second shows it beside the gap.
  // (A string, not a function: tsx would wrap a function's inner helpers in its own __name.)
  const delayIn = (selector: string, words: string) =>
    `Number((/${words} ([\\d,]+) ms/.exec(document.querySelector("${selector}")?.textContent ?? "") ` +
    `?? [])[1]?.replace(/,/g, ""))`;
  await page.waitForFunction(
    `document.getElementById("action-result")?.textContent?.startsWith("On the loop") && ` +
      `${delayIn("#async .loop", "at most")} >= ${BLOCKED_DELAY_MS}`,
  );
  // The strip draws once a second: its last second too, if it comes before the header moves on.
  const strip = `${delayIn("#async figcaption", "loop delay")} >= ${BLOCKED_DELAY_MS}`;
  await page.waitForFunction(strip, undefined, { timeout: STRIP_SECOND_MS }).catch(() => {});
  const blocked = beside("blocked");
  await page.screenshot({ path: blocked });
  console.log(`Saved ${relative(process.cwd(), blocked)}: just after "Block the loop for 3 s".`);
} catch (error) {
  process.exitCode = 1;
  // Playwright's messages go on with a call log; the first line says what failed.
  console.error(`No screenshot: ${messageOf(error).split("\n")[0]}`);
} finally {
  // Whatever happened, leave no browser and no process behind.
  await browser?.close();
  if (crowd) await stop(crowd, "SIGINT");
  await stop(server, "SIGINT");
  await stop(blocking, "SIGINT");
}
