/**
 * lessons/wall.ts: the wall, both servers side by side, for a workshop projector.
 *
 * Eight tiles count down on this server in the left column, the same eight on
 * blocking-server.ts in the right one. No seed post: it sets lesson 1's two
 * servers beside each other, so a room sees at a glance what one process
 * holds against what a worker per stream holds. The page is pages/wall.html.
 *
 * Run both:  npx tsx server.ts     and, in another terminal,   npx tsx blocking-server.ts
 * Then try:
 *   - open http://localhost:8000/wall: eight tiles count on the left; on the right
 *     one counts and seven wait for a free worker, until the arbiter kills the busy
 *     one (WORKER TIMEOUT) and a waiting tile takes over;
 *   - npm run crowd -- --streams 5000 adds 5,000 streams here: the left keeps
 *     counting, and its server line says how many streams the one process holds;
 *   - ?tiles=4, ?blocking=PORT, ?server=PORT, ?from= and ?interval= change the wall.
 */

import { servePageFile } from "./http.ts";
import type { Lesson, Routes } from "../server.ts";

// ─── The page ────────────────────────────────────────────────────────────────
//
// Its markup and script would crowd this file, so it lives in pages/wall.html,
// served as is: the page's own script reads its query, so nothing from a
// request is ever put into it. Each tile's stream comes from a host name of its
// own, which is why lesson 1's stream allows every origin.

const serveWall = servePageFile("wall.html");

// ─── The lesson ──────────────────────────────────────────────────────────────

const ROUTES: Routes = {
  "/wall": { GET: serveWall, HEAD: serveWall },
};

export const wall: Lesson = {
  banner: (url) => [`  Both servers side by side: ${url}wall (start blocking-server.ts too)`],
  install(app) {
    Object.assign(app.routes, ROUTES);
  },
};
