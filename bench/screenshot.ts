/**
 * bench/screenshot.ts: a picture of the countdown page mid-countdown, for the README.
 *
 * Starts server.ts in this process, every lesson installed as `npm start` has
 * them, opens its page in Chromium, waits until a few numbers have gone by,
 * and saves a PNG. The picture is taken of the page itself, so running this
 * again after a change to the page keeps it true.
 *
 * Run:  npx tsx bench/screenshot.ts                  (bench/results/countdown.png, to look at)
 *       npx tsx bench/screenshot.ts --update-docs    (docs/countdown.png, the README's)
 *       npx tsx bench/screenshot.ts out.png          (anywhere else)
 *       CHROMIUM_PATH=/path/to/chrome npx tsx bench/screenshot.ts
 */

import { mkdirSync } from "node:fs";
import { dirname, relative } from "node:path";
import type net from "node:net";
import type { Browser } from "playwright-core";
import { chromiumMissing, launchChromium } from "./chromium.ts";
import { messageOf, picturePath } from "./common.ts";
import { createApp, exitWith, install, listen } from "../server.ts";
import { LESSONS } from "../lessons/index.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

const USAGE = `Usage: npx tsx bench/screenshot.ts [--update-docs | out.png]

Saves bench/results/countdown.png; with --update-docs, docs/countdown.png.`;
const OUTPUT = picturePath("countdown.png", USAGE);

/** A laptop-sized window. */
const VIEWPORT = { width: 1000, height: 700 };

/** A fast countdown, so the picture is taken a few ticks in without a long wait. */
const COUNT_FROM = 100;
const INTERVAL_MS = 100;
const TICKS_BEFORE_PICTURE = 12;

/** How long the page gets to load and count that far before the script gives up. */
const PATIENCE_MS = 10_000;

// ─── Taking the picture ──────────────────────────────────────────────────────

const missing = chromiumMissing();
if (missing) exitWith(1, `Cannot take the picture: ${missing}.`);

const app = await install(createApp({ quiet: true }), LESSONS);
const listeners = await listen(app.server, "localhost", 0);
const { port } = app.server.address() as net.AddressInfo;
let browser: Browser | undefined;
try {
  browser = await launchChromium(PATIENCE_MS);
  const page = await browser.newPage({ viewport: VIEWPORT });
  page.setDefaultTimeout(PATIENCE_MS);
  await page.goto(`http://localhost:${port}/?from=${COUNT_FROM}&interval=${INTERVAL_MS}`);
  // Mid-countdown: streaming, a few numbers gone by, and the server line filled in.
  await page.waitForFunction(
    (shownAt) =>
      document.getElementById("state")?.dataset.state === "streaming" &&
      Number(document.getElementById("countdown")?.textContent) <= shownAt &&
      document.getElementById("server")?.textContent?.startsWith("served by") === true,
    COUNT_FROM - TICKS_BEFORE_PICTURE,
  );
  mkdirSync(dirname(OUTPUT), { recursive: true });
  await page.screenshot({ path: OUTPUT });
  const size = `${VIEWPORT.width}x${VIEWPORT.height}`;
  console.log(`Saved ${relative(process.cwd(), OUTPUT)}: the page at ${size}, mid-countdown.`);
} catch (error) {
  process.exitCode = 1;
  // Playwright's messages go on with a call log; the first line says what failed.
  console.error(`No screenshot: ${messageOf(error).split("\n")[0]}`);
} finally {
  // Whatever happened, leave no browser and no listening socket behind.
  await browser?.close();
  app.server.closeAllConnections();
  app.endStreams();
  for (const listener of listeners) listener.close();
}
