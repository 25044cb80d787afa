/**
 * lessons/index.ts: the later lessons, in reading order. server.ts installs
 * them one by one when this folder is beside it; each file opens with what it
 * shows, which post it ports, and what to try.
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
  fanOut, // lesson 2: ten calls awaited at once, one after another, or blocking the loop
  room, // lesson 3: push, don't poll: a room through the hub (lessons/hub.ts)
  toasts, // lesson 3: toasts that stay until acknowledged, on every page
  processes, // lesson 3: several processes on one port (--workers)
  database, // lesson 3: one hub for every process, through PostgreSQL (--database)
  edits, // lesson 4: REST edits of the room's messages that notify only on change
  webSocket, // lesson 4: two-way, the same room over a WebSocket with subscriptions
  wall, // for a workshop projector: both servers side by side
];
