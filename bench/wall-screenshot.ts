/**
 * bench/wall-screenshot.ts: a picture of the wall just after the first kill, for the README.
 *
 * Starts server.ts and blocking-server.ts (two workers) as processes of their
 * own, as a presenter would, plus a crowd of streams against server.ts; opens
 * /wall in Chromium at a projector's size; waits for the arbiter's first
 * WORKER TIMEOUT and for a waiting tile to take over; saves a PNG; and stops
 * everything it started.
 *
 * Run:  npx tsx bench/wall-screenshot.ts                  (bench/results/wall.png, to look at)
 *       npx tsx bench/wall-screenshot.ts --update-docs    (docs/wall.png, the README's)
 *       npx tsx bench/wall-screenshot.ts out.png          (anywhere else)
 */

import { mkdirSync } from "node:fs";
import { dirname, relative } from "node:path";
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
  await page.goto(`http://localhost:${port}/wall?blocking=${new URL(blockingUrl).port}`);
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
