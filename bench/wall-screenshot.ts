/**
 * bench/wall-screenshot.ts: a picture of the wall just after the first kill, for the README.
 *
 * Starts server.ts and blocking-server.ts (two workers) as processes of their
 * own, as a presenter would, plus a crowd of streams against server.ts; opens
 * /wall in Chromium at a projector's size; waits for the arbiter's first
 * WORKER TIMEOUT and for a waiting tile to take over; saves a PNG; and stops
 * everything it started.
 *
 * Run:  npx tsx bench/wall-screenshot.ts [out.png]      (default docs/wall.png)
 */

import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import type { Browser } from "playwright-core";
import { chromiumMissing, launchChromium } from "./chromium.ts";
import { exitWith } from "../server.ts";
import { BOOT_DEADLINE_MS, Child, stopBlocking } from "../test/helpers.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

const OUTPUT = process.argv[2] ?? "docs/wall.png";

/** A projector's 720p. */
const VIEWPORT = { width: 1280, height: 720 };
const WORKERS = "2";
/** Short enough to wait for, long enough that the strip shows some seconds before the kill. */
const TIMEOUT_S = 12;
const CROWD_STREAMS = 1000;

/** How long each step (a server to start, the kill, a tile to take over) gets before the script gives up. */
const PATIENCE_MS = TIMEOUT_S * 1000 + BOOT_DEADLINE_MS;

// ─── Taking the picture ──────────────────────────────────────────────────────

const missing = chromiumMissing();
if (missing) exitWith(1, `Cannot take the picture: ${missing}.`);

const server = new Child("server.ts", ["--port", "0", "--quiet"]);
const blocking = new Child("blocking-server.ts", ["--port", "0", "--workers", WORKERS, "--timeout", String(TIMEOUT_S)]);
let crowd: Child | undefined;
let browser: Browser | undefined;
try {
  const [, port] = await server.waitFor(/listening at http:\/\/localhost:(\d+)\//, PATIENCE_MS);
  const [, blockingPort] = await blocking.waitFor(/Listening at: http:\/\/localhost:(\d+) /, PATIENCE_MS);
  crowd = new Child("bench/crowd.ts", ["--port", port!, "--streams", String(CROWD_STREAMS)]);
  await crowd.waitFor(new RegExp(`\\] ${CROWD_STREAMS.toLocaleString("en-US")} streams open`), PATIENCE_MS);

  browser = await launchChromium(PATIENCE_MS);
  const page = await browser.newPage({ viewport: VIEWPORT });
  page.setDefaultTimeout(PATIENCE_MS);
  await page.goto(`http://localhost:${port}/wall?blocking=${blockingPort}`);
  await blocking.waitFor(/WORKER TIMEOUT/, PATIENCE_MS);
  // Just after the kill: the cut tiles still say "cut", a tile that waited counts on a new worker, and the strip shows the gap.
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
  console.log(`Saved ${OUTPUT}: the wall at ${VIEWPORT.width}x${VIEWPORT.height}, just after the first WORKER TIMEOUT, with ${CROWD_STREAMS} streams of a crowd on server.ts.`);
} catch (error) {
  process.exitCode = 1;
  console.error(`No screenshot: ${error instanceof Error ? error.message.split("\n")[0] : String(error)}`);
} finally {
  // Whatever happened, leave no browser and no process behind.
  await browser?.close();
  await crowd?.stop("SIGINT").catch(() => crowd?.kill());
  await server.stop("SIGINT").catch(() => server.kill());
  await stopBlocking([blocking]);
}
