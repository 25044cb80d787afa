/**
 * bench/common.ts: what every benchmark shares, so that each of them reads as
 * its own measurement and nothing else.
 *
 *   - servers (and bench scripts) started as child processes: the URL they
 *     print once they listen, the lines they print, stopping them, and no
 *     process left behind whatever happens;
 *   - a process's memory and CPU time, from /proc;
 *   - where a screenshot goes: bench/results/, or docs/ when asked;
 *   - medians and percentiles, and how figures are written in the reports;
 *   - one reader of the SSE wire format, strict about what our servers send.
 *
 * Not a benchmark: bench/run.ts and the files it runs import it. It imports
 * nothing from test/: the suites and the benchmarks each have their own helpers.
 */

import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { setTimeout as delay } from "node:timers/promises";
import { exitWith } from "../server.ts";

// ─── Where things are ────────────────────────────────────────────────────────

export const BENCH = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.dirname(BENCH);
/** Reports and pictures of a run that is not meant for docs/ (.gitignore leaves them out). */
export const SCRATCH = path.join(BENCH, "results");

/** The flags that make Node run TypeScript with tsx, as `npx tsx file.ts` does. */
export const TSX = process.execArgv.some((flag) => flag.includes("tsx"))
  ? process.execArgv
  : ["--import", "tsx"];

// ─── Child processes ─────────────────────────────────────────────────────────
//
// A process started here stays in this process's group, so whoever stops the
// group (a Ctrl-C, or bench/run.ts stopping a bench script) stops it too; with
// `ownGroup` it gets a group of its own, and stopping it stops everything it
// started (the blocking server's workers). Whatever happens to this process,
// every one of them is killed when it exits.

/** How long a server may take to say it listens before the run gives up. */
export const START_DEADLINE_MS = 30_000;
/** How long a process gets to stop after its signal, before SIGKILL. */
const STOP_GRACE_MS = 5000;

/**
 * What every server prints once it listens, in its own words: "listening at
 * http://127.0.0.1:PORT/" (server.ts, the floors), "Listening at:
 * http://127.0.0.1:PORT (pid)" (blocking-server.ts).
 */
const LISTENING = /listening at:? (http:\/\/(?:127\.0\.0\.1|localhost):\d+)/i;

export interface Started {
  child: ChildProcess;
  /** Everything it printed so far, stdout and stderr together. */
  output(): string;
  /** Settles when the process has exited. */
  exited: Promise<void>;
  /** Settles once it has exited and all its output is read. */
  closed: Promise<void>;
  ownGroup: boolean;
}

interface Tracked {
  child: ChildProcess;
  ownGroup: boolean;
}
const running = new Set<Tracked>();

function send({ child, ownGroup }: Tracked, signal: NodeJS.Signals) {
  try {
    if (ownGroup) process.kill(-child.pid!, signal);
    else child.kill(signal);
  } catch {
    // gone already
  }
}

/** SIGKILL to every process started here that may still run. */
export function killEverything(): void {
  for (const started of running) send(started, "SIGKILL");
}

/** Kills `child` when this process exits, if it has not ended by then. */
export function track(child: ChildProcess, ownGroup = false): void {
  if (!process.listeners("exit").includes(killEverything)) process.on("exit", killEverything);
  const entry = { child, ownGroup };
  running.add(entry);
  // "close", not "exit": a group's workers hold its output open for as long as they live.
  child.once("close", () => running.delete(entry));
}

/** Starts `command`, its output kept. */
export function start(command: string, args: string[], { ownGroup = false } = {}): Started {
  const options = { cwd: ROOT, detached: ownGroup };
  const child = spawn(command, args, { ...options, stdio: ["ignore", "pipe", "pipe"] });
  track(child, ownGroup);
  let output = "";
  child.stdout!.setEncoding("utf8").on("data", (text: string) => (output += text));
  child.stderr!.setEncoding("utf8").on("data", (text: string) => (output += text));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const closed = new Promise<void>((resolve) => child.once("close", () => resolve()));
  return { child, output: () => output, exited, closed, ownGroup };
}

/** Starts a file of this project (server.ts, bench/client.ts, ...) under tsx. */
export function startFile(file: string, args: string[], options: { ownGroup?: boolean } = {}) {
  return start(process.execPath, [...TSX, path.join(ROOT, file), ...args], options);
}

const hasEnded = ({ child }: Started) => child.exitCode !== null || child.signalCode !== null;

/** How many lines of its output match `pattern`. */
export function linesMatching(started: Started, pattern: RegExp): number {
  return started.output().split("\n").filter((line) => pattern.test(line)).length;
}

/** Waits until `times` lines of its output match `pattern`; `what` names it in the error. */
export async function waitForLines(
  started: Started,
  pattern: RegExp,
  what: string,
  times = 1,
  ms = START_DEADLINE_MS,
): Promise<void> {
  const deadline = Date.now() + ms;
  while (linesMatching(started, pattern) < times) {
    if (hasEnded(started)) {
      throw new Error(`${what} exited before it was ready:\n${started.output()}`);
    }
    if (Date.now() > deadline) {
      throw new Error(`${what} was not ready after ${ms / 1000} s:\n${started.output()}`);
    }
    await delay(50);
  }
}

/** The address it printed once it listens: http://127.0.0.1:PORT, no trailing slash. */
export async function waitForUrl(started: Started, what: string, ms = START_DEADLINE_MS) {
  await waitForLines(started, LISTENING, what, 1, ms);
  return LISTENING.exec(started.output())![1]!;
}

export interface Server extends Started {
  url: string;
}

/**
 * A server file of this project on loopback, on the port the system picks
 * (port 0: the server prints the one it got), ready once it says it listens.
 */
export async function startServer(
  file: string,
  args: string[] = [],
  options: { ownGroup?: boolean } = {},
): Promise<Server> {
  const server = startFile(file, ["--port", "0", "--host", "127.0.0.1", ...args], options);
  return Object.assign(server, { url: await waitForUrl(server, file) });
}

/**
 * `signal` (both servers stop on SIGTERM, the arbiter taking its workers along),
 * SIGKILL if it is still there after `graceMs`; then, for a group of its own,
 * SIGKILL to whatever of the group outlived it.
 */
export async function stop(
  started: Started,
  signal: NodeJS.Signals = "SIGTERM",
  graceMs = STOP_GRACE_MS,
): Promise<void> {
  if (!hasEnded(started)) {
    send(started, signal);
    const timer = setTimeout(() => send(started, "SIGKILL"), graceMs);
    await started.exited;
    clearTimeout(timer);
  }
  if (started.ownGroup) send(started, "SIGKILL");
}

/** The one line of JSON a bench script or the load client printed with --json. */
export function jsonLine<Report>(started: Started, what: string): Report {
  const line = started.output().split("\n").find((text) => text.startsWith("{"));
  if (!line) throw new Error(`${what} failed:\n${started.output()}`);
  return JSON.parse(line) as Report;
}

/**
 * Runs a bench script with --json to its end, in a group of its own so that
 * stopping it stops every server it started, and reads its report.
 */
export async function runJson<Report>(
  what: string,
  file: string,
  args: string[],
  nodeFlags: string[] = [],
): Promise<Report> {
  const command = [...nodeFlags, ...TSX, path.join(ROOT, file), ...args, "--json"];
  const script = start(process.execPath, command, { ownGroup: true });
  await script.closed;
  return jsonLine<Report>(script, what);
}

// ─── Waits, addresses and errors ─────────────────────────────────────────────

/** Polls `condition` every 20 ms until it holds, or fails after `ms`. */
export async function waitUntil(what: string, condition: () => boolean, ms: number) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await delay(20);
  }
}

/**
 * A source address on 127.0.0.0/8 for the k-th connection: spread over 253
 * addresses, ten thousand streams never run out of ephemeral ports, and a run
 * after another never waits for the last one's TIME_WAIT to clear.
 */
export const sourceAddress = (k: number) => `127.0.0.${2 + (k % 253)}`;

/** What went wrong, in the words of the error (a thrown non-Error as text). */
export const messageOf = (error: unknown) =>
  error instanceof Error ? error.message : String(error);

// ─── Pictures ────────────────────────────────────────────────────────────────

/**
 * Where a screenshot goes: bench/results/NAME, so a trial run leaves docs/ as
 * it is; docs/NAME with --update-docs, for the README; or the path given.
 * `usage` is its --help.
 */
export function picturePath(name: string, usage: string): string {
  let values: { "update-docs"?: boolean; help?: boolean };
  let positionals: string[];
  try {
    const options = { "update-docs": { type: "boolean" }, help: { type: "boolean" } } as const;
    ({ values, positionals } = parseArgs({ options, allowPositionals: true }));
  } catch (error) {
    exitWith(2, `${(error as Error).message.split(/\.\s/)[0]?.replace(/\.$/, "")}. Try --help.`);
  }
  if (values.help) {
    console.log(usage);
    process.exit(0);
  }
  if (positionals.length > 1) exitWith(2, "Give at most one path for the picture. Try --help.");
  const [given] = positionals;
  if (given !== undefined) return path.resolve(given);
  return path.join(values["update-docs"] ? path.join(ROOT, "docs") : SCRATCH, name);
}

// ─── /proc ───────────────────────────────────────────────────────────────────

let clockTicks: number | undefined;
/** How many clock ticks /proc counts in a second (CPU times are in ticks), asked once. */
function ticksPerSecond(): number {
  clockTicks ??= Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  return clockTicks;
}

/** Resident memory of a process in KB, from /proc/PID/status (0 once it is gone). */
export function rssKB(pid: number): number {
  try {
    return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

/** Parent pid and CPU seconds (user + system) of a process, from /proc/PID/stat. */
function readStat(pid: number): { ppid: number; cpuSeconds: number } | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // The command name, in parentheses, may hold spaces: count fields after it.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticks = Number(fields[11]) + Number(fields[12]);
  return { ppid: Number(fields[1]), cpuSeconds: ticks / ticksPerSecond() };
}

/** CPU seconds a process has used so far (0 once it is gone). */
export const cpuSeconds = (pid: number) => readStat(pid)?.cpuSeconds ?? 0;

/** A process and all its descendants: the blocking server's arbiter and its workers. */
export function processTree(root: number): number[] {
  const childrenOf = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readStat(Number(entry));
    if (stat) childrenOf.set(stat.ppid, [...(childrenOf.get(stat.ppid) ?? []), Number(entry)]);
  }
  const tree = [root];
  for (let i = 0; i < tree.length; i++) tree.push(...(childrenOf.get(tree[i]!) ?? []));
  return tree;
}

// ─── Statistics ──────────────────────────────────────────────────────────────

export interface Percentiles {
  p50: number;
  p99: number;
  max: number;
}

/** Milliseconds to 0.1 ms, as every report shows them. */
export const toTenths = (value: number) => Math.round(value * 10) / 10;

/** Nearest-rank percentiles, in milliseconds to 0.1 ms; NaN for no values. */
export function percentiles(values: number[]): Percentiles {
  if (!values.length) return { p50: NaN, p99: NaN, max: NaN };
  const sorted = Float64Array.from(values).sort();
  const rank = (p: number) => Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1);
  const at = (p: number) => toTenths(sorted[rank(p)]!);
  return { p50: at(50), p99: at(99), max: toTenths(sorted.at(-1)!) };
}

/** The middle of the finite values (the mean of the middle two for an even count); NaN if none. */
export function median(values: number[]): number {
  const finite = values.filter((value) => Number.isFinite(value)).sort((a, b) => a - b);
  if (!finite.length) return NaN;
  const middle = finite.length >> 1;
  return finite.length % 2 ? finite[middle]! : (finite[middle - 1]! + finite[middle]!) / 2;
}

export const sum = (values: number[]) => values.reduce((total, value) => total + value, 0);
export const mean = (values: number[]) => sum(values) / Math.max(1, values.length);

// ─── How figures are written ─────────────────────────────────────────────────

export const fixed = (value: number, digits = 1) =>
  Number.isFinite(value) ? value.toFixed(digits) : "n/a";
/** 0.1 ms below 100 ms, whole milliseconds above. */
export const ms = (value: number) =>
  Number.isFinite(value) ? `${fixed(value, value < 100 ? 1 : 0)} ms` : "n/a";
export const kb = (value: number) => `${fixed(value)} KB`;
export const mbFromKB = (kbValue: number) => `${fixed(kbValue / 1024)} MB`;
export const count = (value: number) => value.toLocaleString("en");
/** "1 run", "3 runs". */
export const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? "" : "s"}`;

/** One row of a Markdown table. */
export const tableRow = (...cells: (string | number)[]) => `| ${cells.join(" | ")} |`;

/** A Markdown table's header: its titles, then the line under them. */
export const tableHead = (...titles: string[]) => [
  tableRow(...titles),
  `|${"---|".repeat(titles.length)}`,
];

// ─── The SSE wire format, read strictly ──────────────────────────────────────

/** One message as read: its fields, and `broken` when it held a field our servers never send. */
export interface SseMessage {
  event?: string;
  id?: string;
  data?: string;
  broken: boolean;
}

/**
 * Reads one stream chunk by chunk, line by line, as EventSource does: a blank
 * line ends a message, a line starting with ":" is a comment (a heartbeat).
 * Stricter than EventSource, so a benchmark notices what a browser would
 * forgive: an unknown field, or a field given twice, marks the message broken.
 */
export class SseReader {
  /** Comment lines read so far: the servers' heartbeats. */
  comments = 0;
  private partialLine = "";
  private message: SseMessage = { broken: false };

  /** The messages this chunk completed, in order. */
  read(text: string): SseMessage[] {
    const messages: SseMessage[] = [];
    const lines = (this.partialLine + text).split("\n");
    this.partialLine = lines.pop()!;
    for (let line of lines) {
      if (line.endsWith("\r")) line = line.slice(0, -1);
      const message = this.message;
      if (line === "") {
        if (this.inMessage() || message.broken) messages.push(message);
        this.message = { broken: false };
      } else if (line.startsWith(":")) {
        this.comments++;
      } else {
        const colon = line.indexOf(":");
        const field = colon === -1 ? line : line.slice(0, colon);
        // One space after the colon is part of the syntax, not of the value.
        const from = line[colon + 1] === " " ? colon + 2 : colon + 1;
        const value = colon === -1 ? "" : line.slice(from);
        const known = field === "event" || field === "id" || field === "data";
        if (known && message[field] === undefined) message[field] = value;
        else message.broken = true;
      }
    }
    return messages;
  }

  /** True when the stream stopped inside a message: part of a line, or fields not yet ended. */
  get unfinished(): boolean {
    return this.partialLine !== "" || this.inMessage();
  }

  private inMessage(): boolean {
    const { event, id, data } = this.message;
    return event !== undefined || id !== undefined || data !== undefined;
  }
}
