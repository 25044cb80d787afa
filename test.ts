/**
 * test.ts: the lessons, as tests, in the order a reader meets them. Each
 * lesson's suites live in test/<lesson>.ts, beside lessons/<lesson>.ts; this
 * file imports them in order. Real clients only: HTTP requests over loopback,
 * child processes, WebSockets, a real PostgreSQL and (when present) Chromium.
 *
 * Run:  npm test                     (every suite)
 *       SUITES=stream npm test       (only the suites whose name starts with "stream")
 *
 * Every wait has a deadline and says what it waited for, and every server,
 * child process and connection a test opens is closed in `after`, even when an
 * assertion fails: an open SSE request would otherwise keep the run alive.
 */

// Lesson 1 (server.ts): the countdown. One process serves every tab; a blocking worker one.
import "./test/countdown.ts";

// Lesson 1's blocking twin (blocking-server.ts): silent, departed and too many clients.
import "./test/blocking.ts";

// Lesson 2 (lessons/fanout.ts): ten calls awaited at once, one after another, or blocking.
import "./test/fanout.ts";

// Lesson 3 (lessons/hub.ts): publish and subscribe, the one interface every later lesson uses.
import "./test/hub.ts";

// Lesson 3 (lessons/room.ts): push, don't poll. A posted message reaches every open tab.
import "./test/room.ts";

// Lesson 3 (lessons/toasts.ts): toasts on every page until acknowledged, owner-only reads.
import "./test/toasts.ts";

// Lesson 3 (lessons/processes.ts): --workers N on one port.
import "./test/processes.ts";

// Lesson 3 (lessons/postgres.ts): one room across processes through PostgreSQL.
import "./test/postgres.ts";

// Lesson 4 (lessons/edits.ts): REST edits of the room's messages that notify only on change.
import "./test/edits.ts";

// Lesson 4 (lessons/ws.ts): the same room over a WebSocket, with subscriptions and permissions.
import "./test/ws.ts";

// The wall (lessons/wall.ts): both servers on one screen for a workshop.
import "./test/wall.ts";

// Lesson 5 (lessons/proxy.ts): a real nginx in front, the settings that break a stream.
import "./test/proxy.ts";
