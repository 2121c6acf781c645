// The real socket.io-client 4.8 (from npm) as a test peer for easel's socket.io v4 API.
//
// Usage: node socketio_client.mjs '<json>' with
//   {"url": "http://127.0.0.1:PORT", "transports": ["polling"] | ["websocket"] | [...],
//    "token": "...", "authorization": "...", "headers": {"x-forwarded-for": "..."},
//    "upgrade": bool, "reconnection": bool (default false), "path": "/socket.io"}
// (all but "url" optional; absent ones keep the client's defaults). `token` becomes the
// handshake `auth: {token}`; `authorization` and `headers` become `extraHeaders`, which in
// Node go on every polling request and on the websocket handshake alike (except that the
// polling XHR drops browser-forbidden names such as cookie, origin, host, with a warning on
// stderr).
//
// socket.io-client is loaded with require() from $SIOCLIENT_DIR (a folder holding
// node_modules/socket.io-client, or that node_modules folder itself); without it, from this
// script's folder and $NODE_PATH (ES `import` ignores NODE_PATH, require() honours it).
//
// Prints one JSON line per happening on stdout:
//   {"event":"connect","transport":T}   {"event":"upgrade","transport":T}
//   {"event":"disconnect","reason":R}   {"event":"connect_error","message":M}
//   {"event":NAME,"data":FIRST_ARG,"transport":T} for every event the server emits.
// Reads stdin lines: "close" closes the socket (the server sees a client disconnect) and
// exits 0 once the last request is out (1 s at most); stdin EOF does the same.

import { createRequire } from "node:module";
import { createInterface } from "node:readline";

const args = JSON.parse(process.argv[2] ?? "{}");
if (typeof args.url !== "string") {
  process.stderr.write("socketio_client.mjs: missing \"url\" in the JSON argument\n");
  process.exit(2);
}

const base = process.env.SIOCLIENT_DIR
  ? process.env.SIOCLIENT_DIR.replace(/\/*$/, "/")
  : import.meta.url;
let io;
try {
  ({ io } = createRequire(base)("socket.io-client"));
} catch (err) {
  process.stderr.write(
    `socketio_client.mjs: cannot load socket.io-client from ${base} ` +
      `(SIOCLIENT_DIR=${process.env.SIOCLIENT_DIR ?? ""}, NODE_PATH=${process.env.NODE_PATH ?? ""}): ${err.message}\n`,
  );
  process.exit(2);
}

// Pipes are written synchronously on Linux, so a line is out before any later exit. When
// the reader has gone away (EPIPE) there is nobody left to tell: just stop.
process.stdout.on("error", () => process.exit(0));
function emit(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

const extraHeaders = { ...(args.headers ?? {}) };
if (typeof args.authorization === "string") {
  extraHeaders.authorization = args.authorization;
}

const opts = { reconnection: args.reconnection ?? false };
if (Array.isArray(args.transports)) opts.transports = args.transports;
if (typeof args.token === "string") opts.auth = { token: args.token };
if (Object.keys(extraHeaders).length > 0) opts.extraHeaders = extraHeaders;
if (typeof args.upgrade === "boolean") opts.upgrade = args.upgrade;
if (typeof args.path === "string") opts.path = args.path;

const socket = io(args.url, opts);
const transport = () => socket.io.engine?.transport?.name ?? null;

// The manager makes a new engine per (re)connection attempt; hook each one when it opens.
socket.io.on("open", () => {
  socket.io.engine.on("upgrade", (t) => emit({ event: "upgrade", transport: t.name }));
});
socket.on("connect", () => emit({ event: "connect", transport: transport() }));
socket.on("disconnect", (reason) => emit({ event: "disconnect", reason }));
socket.on("connect_error", (err) => emit({ event: "connect_error", message: err.message }));
socket.onAny((event, ...rest) => {
  emit({ event, data: rest.length > 0 ? rest[0] : null, transport: transport() });
});

// socket.close() only queues the DISCONNECT packet (over polling it goes out in a POST
// still in flight when close() returns), so exiting at once would show the server a
// transport error instead of a client disconnect. Let the event loop drain instead: with
// the engine closed and stdin released, node exits when the last request is done (1 s at
// most).
let finishing = false;
function finish() {
  if (finishing) return;
  finishing = true;
  socket.close();
  stdin.close();
  process.stdin.destroy();
  setTimeout(() => process.exit(0), 1000).unref();
}

const stdin = createInterface({ input: process.stdin });
stdin.on("line", (line) => {
  if (line.trim() === "close") finish();
});
stdin.on("close", finish);
