/**
 * lessons/proxy.ts: lesson 5, behind a proxy. A real nginx between server.ts and
 * the browser, the settings that silently break a stream, and the headers and
 * heartbeat that keep it.
 *
 * It is a script beside server.ts, not a part of it. It writes an nginx
 * configuration to a temporary folder, runs this machine's own nginx on it as
 * its child (`nginx -p DIR -c FILE -g 'daemon off;'`), prints both, and on
 * Ctrl-C stops nginx and removes the folder: no process, pid file or temporary
 * file stays behind, and nothing is written to /var/log, /var/lib or /run. Each
 * mode is one or two real nginx directives; nothing here imitates nginx. None of the
 * posts the other lessons port covers this: it is where SSE meets production. It needs
 * nginx: `sudo apt-get install nginx` (Debian, Ubuntu), `brew install nginx` (macOS).
 *
 * Run it:    npx -y tsx server.ts       (one terminal: the upstream, on port 8000)
 *            npm run proxy              (another: nginx in front of it, on port 8080)
 * Then try:
 *   - curl -N "http://127.0.0.1:8080/sse/?from=5" beside the same on port 8000: the same
 *     events at the same moments; http://127.0.0.1:8080/ counts down as usual;
 *   - npm run proxy -- --buffering: curl shows nothing, not even the headers, until the
 *     countdown ends, then every event at once; ?from=1000&interval=20 arrives in bursts
 *     of about 115 events, and the page's number jumps by as many;
 *   - npm run proxy -- --gzip: curl -sNv --compressed shows "Content-Encoding: gzip"
 *     although server.ts said no-transform; the events still come one by one, on time;
 *   - server.ts --heartbeat 0 behind npm run proxy -- --read-timeout 2, and
 *     curl -N "http://127.0.0.1:8080/sse/?interval=3000": cut after 2 s of silence
 *     (curl exit 18; nginx says "upstream timed out"), and the page reconnects and resumes
 *     at the next number. server.ts --heartbeat 1 keeps the same stream alive;
 *   - npm run proxy -- --http2, and https://127.0.0.1:8080/ in ten tabs: the browser
 *     warns first (a certificate made at start, signed by nobody); then all ten count,
 *     where over HTTP/1.1 the sixth tab waits (five countdowns and the toasts' stream
 *     fill the browser's six connections to one host name).
 *
 * What each mode breaks, and what keeps the stream (see "The configuration"):
 *   --buffering       holds the events in nginx's buffers. Either of proxy_http_version 1.1
 *                     or the upstream's `X-Accel-Buffering: no` (server.ts's SSE_HEADERS,
 *                     which this mode has nginx ignore) lets each event through at once.
 *   --gzip            compresses the stream; nginx does not read no-transform (a header that
 *                     asks a proxy to leave the body as it is). Harmless while X-Accel-
 *                     Buffering: no makes nginx flush at every event; once that header is
 *                     ignored (as --buffering does), gzip holds everything even over HTTP/1.1.
 *   --read-timeout S  cuts a stream silent for S seconds: server.ts's heartbeat, a comment
 *                     line sent after HEARTBEAT_MS of silence, must come sooner than S.
 *   --http2           breaks nothing: the browser's 6 connections per host name become one
 *                     connection for every tab (nginx still opens one to server.ts per stream).
 *
 * blocking-server.ts behind the same nginx (--upstream http://127.0.0.1:8001): nginx
 * reads each request whole before it calls a worker, so a client that sends half a
 * request no longer holds the only worker; but a stream holds its worker from first
 * event to last, and a second stream through nginx waits just as it does direct.
 */

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { accessSync, chmodSync, constants, mkdtempSync, rmSync, statSync, writeFileSync }
  from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import {
  exitWith, flagNumber, HEARTBEAT_MS, INTERVAL_RANGE, isMain, logLine, readFlags,
} from "../server.ts";

// ─── Settings ────────────────────────────────────────────────────────────────

/** nginx listens here, on loopback only: a lesson's proxy is nobody else's. */
const PROXY_HOST = "127.0.0.1";
const DEFAULT_PORT = 8080;
const PORT_RANGE = { min: 1, max: 65_535 };
/** server.ts with its defaults (`npx -y tsx server.ts`). */
const DEFAULT_UPSTREAM = "http://127.0.0.1:8000";
/** nginx's own default proxy_read_timeout: four of server.ts's heartbeats fit in it. */
const STREAMING_READ_TIMEOUT_S = 60;
const READ_TIMEOUT_RANGE_S = { min: 1, max: 3600 };
/** Where a package manager puts nginx, which a user's PATH often leaves out (Debian's). */
const SYSTEM_FOLDERS = ["/usr/sbin", "/usr/local/sbin", "/opt/homebrew/bin"];
/** How long nginx gets to start listening, and to stop after Ctrl-C, before we give up. */
const NGINX_START_MS = 5000;
const NGINX_STOP_MS = 5000;
const POLL_MS = 50;

/** The files of one run, in its temporary folder. The test checks the pid file's fate. */
export const PID_FILE = "nginx.pid";
const CONFIG_FILE = "nginx.conf";
const CERTIFICATE_FILE = "localhost.crt";
const KEY_FILE = "localhost.key";

/** What the flags ask for: the default, or any of the modes (they combine). */
interface Modes {
  buffering: boolean;
  gzip: boolean;
  readTimeoutS: number;
  http2: boolean;
}

// ─── The configuration ───────────────────────────────────────────────────────
//
// The lesson itself: the file nginx runs on, with a comment on every line that
// matters. It is printed at start, so what you read here is what nginx reads.

/** The `location` lines of each mode: the directives that break a stream, or keep it. */
function proxyLines(modes: Modes): string[] {
  const lines = modes.buffering ? [
    "# The first configuration people write: proxy_pass and nginx's defaults, which are",
    "proxy_http_version 1.0;   # measured on 1.22: every event held until a buffer fills",
    "proxy_buffering on;       # (4 KB here, about 115 events) or the stream ends;",
    "# and an upstream that does not say X-Accel-Buffering: no, as most frameworks do not.",
    "proxy_ignore_headers X-Accel-Buffering;  # as if the upstream never sent it",
  ] : [
    "# HTTP/1.1 to server.ts: each event is one chunk (Transfer-Encoding: chunked), and nginx",
    "# passes each chunk on as it reads it. HTTP/1.0 has no chunks: the body runs until the",
    "# connection closes, and nginx keeps what it read in its buffers meanwhile.",
    "proxy_http_version 1.1;",
    "# Buffering stays on for pages; a stream's `X-Accel-Buffering: no` turns it off for",
    "# that response alone, and nginx then sends every event the moment it reads it.",
    "proxy_buffering on;",
  ];
  if (modes.gzip) {
    lines.push(
      "# Compression for the stream too (gzip_types is text/html alone by default).",
      "# nginx compresses in spite of the stream's Cache-Control: no-transform.",
      "gzip on;",
      "gzip_types text/event-stream;",
    );
  }
  const heartbeatS = HEARTBEAT_MS / 1000;
  const why = modes.readTimeoutS > heartbeatS
    ? `longer than server.ts's heartbeat (${heartbeatS} s), so a quiet stream lives.`
    : "a stream silent this long is cut, unless server.ts --heartbeat is shorter.";
  lines.push("# How long nginx waits for the next byte from server.ts:", `# ${why}`,
    `proxy_read_timeout ${modes.readTimeoutS}s;`);
  return lines;
}

/** The whole file. Every path is inside `folder`, so nginx needs no root and leaves nothing. */
function nginxConfig(folder: string, port: number, upstream: string, modes: Modes): string {
  const at = (file: string) => join(folder, file);
  const listen = modes.http2 ? [
    "# HTTPS, which browsers require for HTTP/2, with a certificate made for this run.",
    `listen ${PROXY_HOST}:${port} ssl http2;`,
    `ssl_certificate ${at(CERTIFICATE_FILE)};`,
    `ssl_certificate_key ${at(KEY_FILE)};`,
  ] : [`listen ${PROXY_HOST}:${port};`];
  const indent = (spaces: number, lines: string[]) =>
    lines.map((line) => `${" ".repeat(spaces)}${line}`).join("\n");
  return `# Written by lessons/proxy.ts for one run; removed with its folder on Ctrl-C.
worker_processes 1;
pid ${at(PID_FILE)};
# The whole log stays in the folder; warnings and errors also come to this terminal.
error_log ${at("error.log")} info;
error_log stderr warn;
# At most 1024 connections per nginx worker; each stream takes two: the browser's, and
# nginx's own to server.ts. So about 500 streams here.
events { worker_connections 1024; }

http {
  access_log off;
  # Temporary files too: the compiled-in defaults are in /var/lib/nginx, root's. nginx makes
  # each of these folders at start, for the modules this lesson never uses as well.
  client_body_temp_path ${at("client_body")};
  proxy_temp_path ${at("proxy")};
  fastcgi_temp_path ${at("fastcgi")};
  uwsgi_temp_path ${at("uwsgi")};
  scgi_temp_path ${at("scgi")};

  server {
${indent(4, listen)}
    # Every path, forwarded to server.ts as it came.
    location / {
      proxy_pass ${upstream};
${indent(6, proxyLines(modes))}
    }
  }
}
`;
}

/** One line per mode, which a reader can check with curl or on the page: what nginx will do. */
function expectations(url: string, modes: Modes): string[] {
  const seen: string[] = [];
  const short = `curl -N "${url}sse/?from=5&interval=500"`;
  if (modes.buffering) {
    seen.push(`--buffering: ${short} shows nothing, not even the headers, until the end, ` +
      `then every event at once; on ${url}?from=1000&interval=20 the number jumps by ~115.`);
  }
  if (modes.gzip) {
    seen.push(`--gzip: curl -sNv --compressed "${url}sse/?from=5" says Content-Encoding: gzip ` +
      "in spite of no-transform; " + (modes.buffering ? "and nothing comes until the end."
      : "the events still come one by one (X-Accel-Buffering: no flushes each)."));
  }
  const { readTimeoutS: timeout } = modes;
  const silence = (timeout + 1) * 1000;
  if (timeout !== STREAMING_READ_TIMEOUT_S && silence <= INTERVAL_RANGE.max) {
    seen.push(`--read-timeout ${timeout}: with server.ts --heartbeat 0, curl -N ` +
      `"${url}sse/?interval=${silence}" is cut after ${timeout} s (curl exit 18) and the ` +
      "page resumes at the next number; a --heartbeat shorter than that keeps the stream.");
  } else if (timeout !== STREAMING_READ_TIMEOUT_S) {
    seen.push(`--read-timeout ${timeout}: longer than any tick (?interval= goes up to ` +
      `${INTERVAL_RANGE.max} ms), so no countdown is cut.`);
  }
  if (modes.http2) {
    seen.push("--http2: the browser warns about the certificate first (it is this run's own: " +
      `proceed); then ten tabs of ${url} all count, on one connection (DevTools: h2).`);
  }
  if (seen.length === 0) {
    seen.push(`the default configuration: ${short} shows the same events at the same ` +
      "moments as on server.ts's own port, and the page counts down as usual.");
  }
  return seen.map((line) => `  What to expect with ${line}`);
}

// ─── Finding the programs ────────────────────────────────────────────────────

const isProgram = (file: string) => {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
};

/** The first `name` on PATH, or in the folders package managers use. */
function findProgram(name: string): string | undefined {
  const path = (process.env.PATH ?? "").split(delimiter).filter(Boolean);
  return [...path, ...SYSTEM_FOLDERS].map((folder) => join(folder, name)).find(isProgram);
}

/** The nginx to run: --nginx FILE, or the one installed; missing is one sentence and exit 1. */
function findNginx(named: string | undefined): string {
  const found = named === undefined ? findProgram("nginx") : isProgram(named) ? named : undefined;
  if (found) return found;
  const where = named ?? `nginx on PATH or in ${SYSTEM_FOLDERS.join(", ")}`;
  exitWith(1, `No ${where}: install nginx with "sudo apt-get install nginx" (Debian, Ubuntu) ` +
    `or "brew install nginx" (macOS), or name it with --nginx FILE.`);
}

/**
 * A self-signed certificate for localhost and 127.0.0.1, valid one day, made now:
 * no browser trusts it, which is why the browser warns before the page.
 */
function makeCertificate(folder: string) {
  const openssl = findProgram("openssl");
  if (!openssl) exitWith(1, "--http2 needs openssl to make its certificate, and none is here.");
  const made = spawnSync(openssl, ["req", "-x509", "-nodes", "-days", "1",
    "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-subj", "/CN=localhost",
    "-addext", `subjectAltName=DNS:localhost,IP:${PROXY_HOST}`,
    "-keyout", join(folder, KEY_FILE), "-out", join(folder, CERTIFICATE_FILE)],
  { encoding: "utf8", stdio: ["ignore", "ignore", "pipe"] });
  const why = made.stderr?.trim().split("\n").at(-1) ?? made.error?.message;
  if (made.status !== 0) exitWith(1, `openssl could not make a certificate: ${why}`);
}

// ─── Running nginx ───────────────────────────────────────────────────────────

/** Resolves true when something accepts connections at host:port. */
function accepts(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, host);
    socket.once("connect", () => resolve(true)).once("error", () => resolve(false));
    socket.once("connect", () => socket.destroy());
  });
}

/** Exits with one sentence when another program holds the port: nginx would retry for 2 s. */
async function checkPortFree(port: number) {
  const probe = net.createServer();
  await new Promise<void>((resolve) => {
    probe.once("error", ({ code }: NodeJS.ErrnoException) => {
      if (code === "EADDRINUSE") exitWith(1, `port ${port} is in use; try --port ${port + 2}`);
      exitWith(1, `port ${port} is not for this user (${code}); try --port ${DEFAULT_PORT}`);
    });
    probe.listen(port, PROXY_HOST, () => probe.close(() => resolve()));
  });
}

/** Ctrl-C before nginx runs: exit at once (the exit hook in main() removes the folder). */
const exitEarly = () => process.exit(1);

/** True until the process has exited. */
const running = (child: ChildProcess) => child.exitCode === null && child.signalCode === null;

/** Where nginx listens, what it stands in front of, and what a reader should expect. */
interface Proxy {
  folder: string;
  port: number;
  url: string;
  upstream: string;
  expect: string[];
}

/**
 * Starts nginx in the foreground as our child, waits until it listens, and
 * stops it on Ctrl-C. Resolves when nginx has exited, with the code to exit with.
 */
async function runNginx(nginx: string, { folder, port, url, upstream, expect }: Proxy) {
  // -p: the folder that relative paths start from (its trailing "/" nginx needs); -c: our
  // configuration; -g: one more directive, "daemon off;", so that nginx stays our child in the
  // foreground instead of detaching, and Ctrl-C reaches it through us.
  const args = ["-p", `${folder}/`, "-c", join(folder, CONFIG_FILE), "-g", "daemon off;"];
  logLine(`starting ${nginx} ${args.map((arg) => (arg.includes(" ") ? `'${arg}'` : arg))
    .join(" ")}`);
  // Its stderr is ours: nginx's warnings ("upstream timed out") show in this terminal.
  const child = spawn(nginx, args, { stdio: ["ignore", "inherit", "inherit"] });
  const exited = new Promise<number>((resolve) => child.once("exit", (code, signal) =>
    resolve(code ?? (signal ? 1 : 0))));
  child.once("error", (error) => exitWith(1, `nginx did not start: ${error.message}`));
  // However this script ends, nginx ends with it.
  process.once("exit", () => running(child) && child.kill("SIGTERM"));

  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    // nginx takes SIGINT and SIGTERM alike as "fast shutdown": open streams are cut,
    // and browsers reconnect when it (or another proxy) is back.
    logLine(`${signal}: stopping nginx (pid ${child.pid})`);
    child.kill(signal);
    // unref(): this timer alone does not keep the script running once nginx is gone.
    setTimeout(() => running(child) && child.kill("SIGKILL"), NGINX_STOP_MS).unref();
  };
  // From here on Ctrl-C means "stop nginx", no longer "exit now".
  process.off("SIGINT", exitEarly).off("SIGTERM", exitEarly);
  process.on("SIGINT", () => stop("SIGINT"));
  process.on("SIGTERM", () => stop("SIGTERM"));

  const deadline = Date.now() + NGINX_START_MS;
  while (running(child) && !(await accepts(PROXY_HOST, port))) {
    if (Date.now() > deadline) {
      logLine(`nginx (pid ${child.pid}) is not listening after ${NGINX_START_MS} ms; stopping it`);
      child.kill("SIGTERM");
      await exited;
      return 1;
    }
    await delay(POLL_MS);
  }
  if (running(child) && !stopping) {
    logLine(`nginx (pid ${child.pid}) listening at ${url}, in front of ${upstream}`);
    console.log(expect.join("\n"));
  }
  const code = await exited;
  if (!stopping) logLine(`nginx (pid ${child.pid}) exited with code ${code}; its lines say why`);
  return stopping && code === 0 ? 0 : 1;
}

// ─── Start-up ────────────────────────────────────────────────────────────────

const FLAGS = {
  port: { type: "string" },
  upstream: { type: "string" },
  buffering: { type: "boolean", default: false },
  gzip: { type: "boolean", default: false },
  "read-timeout": { type: "string" },
  http2: { type: "boolean", default: false },
  nginx: { type: "string" },
  help: { type: "boolean", default: false },
} as const;

const HELP = `Usage: npm run proxy -- [--port N] [--upstream URL] [modes] [--nginx FILE]

Runs this machine's nginx in front of server.ts, on a configuration it writes and prints.
With no mode, the configuration streams right. The modes combine.

  --port N           nginx listens on ${PROXY_HOST} at this port (default ${DEFAULT_PORT}).
  --upstream URL     Passes every request to this server (default ${DEFAULT_UPSTREAM}).
  --buffering        The first configuration most people write: nginx holds the events back.
  --gzip             Compresses the stream too, in spite of its Cache-Control: no-transform.
  --read-timeout S   Cuts a stream silent for S seconds (default ${STREAMING_READ_TIMEOUT_S}, \
longer than the heartbeat).
  --http2            HTTPS and HTTP/2 with a certificate made at start: one connection, all tabs.
  --nginx FILE       The nginx to run (default: nginx on PATH, or in ${SYSTEM_FOLDERS[0]}, ...).
  --help             Shows this help.`;

/** The upstream as nginx's proxy_pass takes it: http, a host and a port, nothing more. */
function readUpstream(text: string): string {
  const url = URL.canParse(text) ? new URL(text) : undefined;
  if (url?.protocol === "http:" && url.pathname === "/" && !url.search) return url.origin;
  exitWith(2, `--upstream must be an http:// address such as ${DEFAULT_UPSTREAM}.`);
}

async function main() {
  const flags = readFlags(FLAGS, HELP);
  const port = flagNumber("port", flags.port, "", DEFAULT_PORT, PORT_RANGE);
  const upstream = readUpstream(flags.upstream ?? DEFAULT_UPSTREAM);
  const readTimeoutS = flagNumber("read-timeout", flags["read-timeout"], "",
    STREAMING_READ_TIMEOUT_S, READ_TIMEOUT_RANGE_S);
  const modes: Modes = { buffering: flags.buffering, gzip: flags.gzip, readTimeoutS,
    http2: flags.http2 };
  const nginx = findNginx(flags.nginx);
  await checkPortFree(port);

  process.once("SIGINT", exitEarly).once("SIGTERM", exitEarly);
  const folder = mkdtempSync(join(tmpdir(), "countdown-proxy-"));
  process.once("exit", () => rmSync(folder, { recursive: true, force: true }));
  // nginx started by root runs its workers as `nobody`, who must reach the temporary
  // paths nginx makes for them in here, but need not list the folder: 711, not 755.
  chmodSync(folder, 0o711);
  if (modes.http2) makeCertificate(folder);
  const config = nginxConfig(folder, port, upstream, modes);
  writeFileSync(join(folder, CONFIG_FILE), config);
  console.log(`─── ${join(folder, CONFIG_FILE)} ───\n${config}───`);

  const { hostname, port: upstreamPort } = new URL(upstream);
  if (!(await accepts(hostname.replace(/^\[|\]$/g, ""), Number(upstreamPort || 80)))) {
    logLine(`nothing answers at ${upstream} yet: start npx -y tsx server.ts ` +
      "(until then nginx answers 502 Bad Gateway)");
  }
  const url = `${modes.http2 ? "https" : "http"}://${PROXY_HOST}:${port}/`;
  const expect = expectations(url, modes);
  const code = await runNginx(nginx, { folder, port, url, upstream, expect });
  rmSync(folder, { recursive: true, force: true });
  if (code === 0) logLine(`nginx stopped; removed ${folder}`);
  process.exit(code);
}

if (isMain(import.meta.url)) main().catch((error: Error) => exitWith(1, error.message));
