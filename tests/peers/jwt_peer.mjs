// npm's jsonwebtoken (the library Navigator signs with) as a test peer for easel's tokens.
//
// Usage (jsonwebtoken is loaded with require() from $NODE_PATH):
//   node jwt_peer.mjs verify SECRET TOKEN   -> prints the verified payload as JSON
//   node jwt_peer.mjs mint SECRET PAYLOAD [EXPIRES_IN]
//                                          -> prints a token signed as Navigator signs them
//                                             (jwt.sign(payload, secret[, {expiresIn}]))
// A token jsonwebtoken refuses prints {"error": "<name>: <message>"} and exits 1.
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH || ".", "noop.js"));
const jwt = require("jsonwebtoken");

const [command, secret, arg, expiresIn] = process.argv.slice(2);
if (command === "verify") {
  try {
    console.log(JSON.stringify(jwt.verify(arg, secret, { algorithms: ["HS256"] })));
  } catch (err) {
    console.log(JSON.stringify({ error: `${err.name}: ${err.message}` }));
    process.exit(1);
  }
} else if (command === "mint") {
  const options = expiresIn ? { expiresIn } : undefined;
  console.log(jwt.sign(JSON.parse(arg), secret, options));
} else {
  console.error(`unknown command ${command}`);
  process.exit(2);
}
