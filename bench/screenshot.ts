/**
 * bench/screenshot.ts: two pictures of the countdown page mid-countdown: alone, for the
 * README, and with three toasts stacked, for docs/toasts.md.
 *
 * Starts server.ts as `npx tsx server.ts` does, in a process of its own (so the
 * page shows the memory of a server alone, not of one that also drives Chromium),
 * opens its page in Chromium, waits until a few numbers have gone by and the
 * loop's delay is shown, and saves a PNG; then sends the toasts (a line typed on
 * the server's standard input, as a presenter does, and the demo form's two, one
 * of them HTML shown as text) and saves the second. The pictures are taken of the
 * page itself, so running this again after a change to the page keeps them true.
 *
 * Run:  npx tsx bench/screenshot.ts                  (bench/results/countdown.png, toasts.png)
 *       npx tsx bench/screenshot.ts --update-docs    (docs/countdown.png, docs/toasts.png)
 *       npx tsx bench/screenshot.ts out.png          (out.png and out-toasts.png)
 *       CHROMIUM_PATH=/path/to/chrome npx tsx bench/screenshot.ts
 */

import { mkdirSync } from "node:fs";
import { basename, dirname, extname, join, relative } from "node:path";
import { spawn } from "node:child_process";
import type { Browser } from "playwright-core";
import { chromiumMissing, launchChromium } from "./chromium.ts";
import {
  messageOf, picturePath, ROOT, stop, track, TSX, waitForUrl, type Started,
} from "./common.ts";
import { exitWith } from "../server.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

const USAGE = `Usage: npx tsx bench/screenshot.ts [--update-docs | out.png]

Saves bench/results/countdown.png and toasts.png; with --update-docs, the two in docs/;
given out.png, out.png and out-toasts.png.`;
const OUTPUT = picturePath("countdown.png", USAGE);
/** The toasts' picture: beside the countdown's, toasts.png, or out-toasts.png for out.png. */
const TOASTS_OUTPUT = basename(OUTPUT) === "countdown.png"
  ? join(dirname(OUTPUT), "toasts.png")
  : OUTPUT.slice(0, OUTPUT.length - extname(OUTPUT).length) + "-toasts.png";

/** A laptop-sized window. */
const VIEWPORT = { width: 1000, height: 700 };
/**
 * The toasts' picture, wider and taller: at VIEWPORT the stack (pages/toasts.css: 22rem wide,
 * bottom right) covers the end of the page's last lines, and the picture shows the toasts.
 */
const TOASTS_VIEWPORT = { width: 1440, height: 900 };

/** A fast countdown, so the picture is taken a few ticks in without a long wait. */
const COUNT_FROM = 100;
const INTERVAL_MS = 100;
const TICKS_BEFORE_PICTURE = 12;

/** How long the page gets to load and count that far before the script gives up. */
const PATIENCE_MS = 10_000;

/** The toasts of docs/toasts.md's picture: the presenter's line, and the demo form's. */
const PRESENTER_LINE = "Slides are at http://example.test/slides, 20 minutes for the exercise";
const DEMO_MESSAGE = "<b>Your</b> report is ready";
const DEMO_SECONDS = 1;
/** The demo's "Sleep running..." toast and its message, after the presenter's. */
const TOASTS_SHOWN = 3;

// ─── Taking the picture ──────────────────────────────────────────────────────

const missing = chromiumMissing();
if (missing) exitWith(1, `Cannot take the picture: ${missing}.`);

// bench/common.ts's start() leaves standard input out; the presenter's line needs it.
const args = [...TSX, join(ROOT, "server.ts"), "--port", "0"];
const child = spawn(process.execPath, args, { cwd: ROOT, stdio: ["pipe", "pipe", "pipe"] });
track(child);
let output = "";
child.stdout.setEncoding("utf8").on("data", (text: string) => (output += text));
child.stderr.setEncoding("utf8").on("data", (text: string) => (output += text));
const server: Started = {
  child,
  output: () => output,
  exited: new Promise((resolve) => child.once("exit", () => resolve())),
  closed: new Promise((resolve) => child.once("close", () => resolve())),
  ownGroup: false,
};
let browser: Browser | undefined;
try {
  const url = new URL(await waitForUrl(server, "server.ts"));
  browser = await launchChromium(PATIENCE_MS);
  const page = await browser.newPage({ viewport: VIEWPORT });
  page.setDefaultTimeout(PATIENCE_MS);
  await page.goto(`${url.origin}/?from=${COUNT_FROM}&interval=${INTERVAL_MS}`);
  // Mid-countdown: streaming, a few numbers gone by, and the server line filled in.
  await page.waitForFunction(
    (shownAt) =>
      document.getElementById("state")?.dataset.state === "streaming" &&
      Number(document.getElementById("countdown")?.textContent) <= shownAt &&
      document.getElementById("server")?.textContent?.startsWith("served by") === true &&
      document.getElementById("loop")?.textContent !== "",
    COUNT_FROM - TICKS_BEFORE_PICTURE,
  );
  mkdirSync(dirname(OUTPUT), { recursive: true });
  await page.screenshot({ path: OUTPUT });
  const size = `${VIEWPORT.width}x${VIEWPORT.height}`;
  console.log(`Saved ${relative(process.cwd(), OUTPUT)}: the page at ${size}, mid-countdown.`);

  // The toasts: the presenter's line for everyone, then the demo form, posted from the page
  // (its visitor cookie), which sends "Sleep running..." now and the message a second later.
  await page.setViewportSize(TOASTS_VIEWPORT);
  child.stdin.write(`${PRESENTER_LINE}\n`);
  await page.waitForFunction(() => document.querySelectorAll("#toasts .toast").length === 1);
  const demo = await page.evaluate(async ({ message, seconds }) => {
    const body = new URLSearchParams({ message, seconds: String(seconds) });
    const answer = await fetch("/toasts/demo", { method: "POST", body, redirect: "manual" });
    // Its 303 back to the demo page, not followed: an "opaqueredirect" with no status to read.
    return answer.type === "opaqueredirect" ? "" : `${answer.status} ${await answer.text()}`;
  }, { message: DEMO_MESSAGE, seconds: DEMO_SECONDS });
  if (demo) throw new Error(`the demo form answered ${demo}`);
  await page.waitForFunction(
    (shown) =>
      document.querySelectorAll("#toasts .toast").length === shown &&
      document.getElementById("state")?.dataset.state === "streaming",
    TOASTS_SHOWN,
  );
  mkdirSync(dirname(TOASTS_OUTPUT), { recursive: true });
  await page.screenshot({ path: TOASTS_OUTPUT });
  const where = relative(process.cwd(), TOASTS_OUTPUT);
  const toastsSize = `${TOASTS_VIEWPORT.width}x${TOASTS_VIEWPORT.height}`;
  console.log(`Saved ${where}: the page at ${toastsSize}, with ${TOASTS_SHOWN} toasts.`);
} catch (error) {
  process.exitCode = 1;
  // Playwright's messages go on with a call log; the first line says what failed.
  console.error(`No screenshot: ${messageOf(error).split("\n")[0]}`);
} finally {
  // Whatever happened, leave no browser and no server behind.
  await browser?.close();
  await stop(server);
}
