/**
 * lessons/index.ts: the later lessons, in reading order. server.ts (lesson 1)
 * installs the ones below, one by one, when this folder is beside it; each
 * file opens with what it shows, which post it ports, and what to try.
 *
 *   lesson 1   server.ts              the countdown: one async process, every tab at once
 *   lesson 2   lessons/fanout.ts      fan-out: ten slow calls awaited at once
 *   lesson 3   push, don't poll, in five parts:
 *     part 1   lessons/hub.ts         the hub, publish and subscribe (a shared piece, below)
 *     part 2   lessons/room.ts        a room where a posted message reaches every tab
 *     part 3   lessons/toasts.ts      toasts that stay until acknowledged, on every page
 *     part 4   lessons/processes.ts   several processes on one port (--workers)
 *     part 5   lessons/postgres.ts    one hub for every process, through PostgreSQL (--database)
 *   lesson 4   two-way, in two files:
 *              lessons/edits.ts       REST edits of the room's messages, notifying only on change
 *              lessons/ws.ts          the same room, a message or toasts over a WebSocket
 *   for the workshop, after the lessons:
 *              lessons/wall.ts        both servers side by side on one projector
 *
 * Shared pieces, not lessons: they add no route and are not installed, the
 * lessons import them. lessons/http.ts: JSON answers, bodies, the Origin
 * check and the visitor cookie. lessons/hub.ts: the hub every lesson from the
 * room on talks to. lessons/toast-marks.ts: the toasts' read-mark bookkeeping.
 * lessons/ws-frames.ts: what a WebSocket client may send, read and checked.
 */

import type { Lesson } from "../server.ts";
import { fanOut } from "./fanout.ts";
import { room } from "./room.ts";
import { toasts } from "./toasts.ts";
import { processes } from "./processes.ts";
import { database } from "./postgres.ts";
import { edits } from "./edits.ts";
import { webSocket } from "./ws.ts";
import { wall } from "./wall.ts";

export const LESSONS: readonly Lesson[] = [
  fanOut, // lesson 2
  room, // lesson 3, part 2 (part 1, the hub, has nothing to install)
  toasts, // lesson 3, part 3
  processes, // lesson 3, part 4
  database, // lesson 3, part 5
  edits, // lesson 4, the REST edits
  webSocket, // lesson 4, the WebSocket
  wall, // for the workshop
];
