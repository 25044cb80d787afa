/**
 * lessons/wall.ts: the wall, both servers side by side, for a workshop projector.
 *
 * Eight tiles count down on this server in the left column, the same eight on
 * blocking-server.ts in the right one. No seed post: it sets lesson 1's two
 * servers beside each other, so a room sees at a glance what one process
 * holds against what a worker per stream holds. The page is pages/wall.html.
 *
 * Run both:  npx -y tsx server.ts     and, in another terminal,   npx -y tsx blocking-server.ts
 *            (the blocking server listens on 8001, where the wall looks for it)
 * Then try:
 *   - open http://localhost:8000/wall/: eight tiles count on the left; on the right
 *     one counts and seven wait for the only worker. After about 30 s (the
 *     blocking server's --timeout, as gunicorn's) the arbiter kills the busy
 *     worker (WORKER TIMEOUT), that tile is cut at 70, and a waiting tile takes over;
 *   - press "Block the loop for 3 s" under the left column: every tile there stops,
 *     and the column says its one thread kept them waiting about 3,000 ms; then
 *     "The same on a thread": the very same sleep on lesson 2's thread pool, and
 *     the tiles keep counting;
 *   - npm run crowd -- --streams 5000 adds 5,000 streams here: the left keeps
 *     counting, and its server line says how many streams the one process holds;
 *   - /wall/?from=10&interval=200 gives every tile a short, fast countdown: on the
 *     right each ends long before the kill, and the tiles take turns uncut;
 *   - ?tiles=4 shows four tiles a column; ?blocking=PORT and ?server=PORT find
 *     servers started with --port. The wall fills any screen from 1024x768 up.
 */

import { servePageFile } from "./http.ts";
import type { Lesson } from "../server.ts";

// ─── The page ────────────────────────────────────────────────────────────────
//
// Its markup and script would crowd this file, so it lives in pages/wall.html,
// served as is: the page's own script reads its query, so nothing from a
// request is ever put into it. Each tile's stream comes from a host name of its
// own, which is why lesson 1's stream allows every origin.

const serveWall = servePageFile("wall.html");

// ─── The routes ──────────────────────────────────────────────────────────────

export const wall: Lesson = {
  banner: (url) => [`  Both servers side by side: ${url}wall/ (start blocking-server.ts too)`],
  install(app) {
    Object.assign(app.routes, {
      // At /wall/, as the room is at /room/: /wall redirects there (308), as every known path does.
      "/wall/": { GET: serveWall, HEAD: serveWall },
    });
  },
};
