/**
 * test.ts: the lessons, as tests, in the order a reader meets them. Each
 * lesson's suites live in test/<lesson>.ts; this file imports them in order.
 * Real clients only: HTTP requests over loopback, child processes, and (when
 * Chromium is present) a real browser.
 *
 * Run:  npm test                     (every suite)
 *       SUITES=stream npm test       (only the suites whose name starts with "stream")
 *
 * Every wait has a deadline and says what it waited for, and every server,
 * child process and connection a test opens is closed in `after`, even when an
 * assertion fails: an open SSE request would otherwise keep the run alive.
 */

// Lesson 1: the countdown. One process serves every tab; a blocking worker serves one.
import "./test/countdown.ts";

// Lesson 2: fan-out. Awaiting ten calls at once, one after another, or blocking; a lone sync worker deadlocks on itself.
import "./test/fanout.ts";

// Lesson 3: push, don't poll. A posted message reaches every open tab through the hub; polling is kept beside it.
import "./test/room.ts";

// Lesson 3: toasts that stay until acknowledged. A per-visitor stream on the same hub, owner-only reads, the toasts on every page.
import "./test/toasts.ts";

// Lesson 3: several processes. --workers N on one port, one room through PostgreSQL.
import "./test/processes.ts";

// Lesson 4: two-way. The same room over a WebSocket, with subscriptions, permissions, and REST edits that notify only on change.
import "./test/ws.ts";

// The wall: both servers on one screen for a workshop.
import "./test/wall.ts";
