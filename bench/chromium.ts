/**
 * bench/chromium.ts: how the browser suite (test.ts) and bench/screenshot.ts
 * start Chromium. Debian's, or the one CHROMIUM_PATH names: never a download.
 */

import { existsSync } from "node:fs";
import { chromium, type Browser } from "playwright-core";

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || "/usr/bin/chromium";

/**
 * Headless, without the sandbox (which refuses to run as root in a container),
 * and without the background calls to Google's services, which a closed
 * network leaves hanging.
 */
export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Why Chromium cannot be used here, in one sentence, or undefined when it can. */
export function chromiumMissing(): string | undefined {
  if (existsSync(CHROMIUM_PATH)) return undefined;
  return `no Chromium at ${CHROMIUM_PATH} (install it with apt-get install chromium, or set CHROMIUM_PATH)`;
}

export function launchChromium(timeout: number): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS, timeout });
}
