// The operator dashboard in Debian's headless Chromium, driven by npm's puppeteer-core, as an
// operator uses it: a refused token, log in, jobs appearing and finishing without a reload,
// cancel a queued job, drain and resume a backend, a plugin reload.
//
// Usage: node dashboard_browser.mjs BASE_URL TOKEN PLUGIN_FILE SCREENSHOT_DIR
// (puppeteer-core is loaded with require() from $NODE_PATH). Jobs are queued over the HTTP
// API, the plugin file is rewritten in place; prints "ok" when every step passed, else
// throws (exit code 1).
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH || ".", "noop.js"));
const puppeteer = require("puppeteer-core");
const [base, token, pluginFile, shots] = process.argv.slice(2);
fs.mkdirSync(shots, { recursive: true });
const shot = (page, name) => page.screenshot({ path: path.join(shots, name), fullPage: true });

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 1100 });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));

  // Without a token: the login form; a wrong token is refused with the 401 shown.
  await page.goto(base + "/dashboard");
  await page.waitForSelector("#login:not([hidden])");
  await page.type("#token", "wrong-token");
  await page.click("#login-form button");
  await page.waitForFunction(() => document.querySelector("#login-error").textContent.startsWith("401"));
  if (!(await page.$eval("#board", (b) => b.hidden))) throw new Error("the board shows without a valid token");
  await shot(page, "01-refused.png");

  await page.type("#token", token);
  await page.click("#login-form button");
  await page.waitForSelector("#board:not([hidden])");
  await page.waitForFunction(() => document.querySelector("#status").textContent === "live");
  await page.waitForFunction(() => document.querySelector("#host").textContent.startsWith("host "));

  const queue = async (prompt) => {
    const answer = await fetch(base + "/api/queue/user/txt2img", {
      method: "POST",
      headers: { Authorization: token, "Content-Type": "application/json" },
      body: JSON.stringify({ model_name: "m", prompt, steps: 4 }),
    });
    if (!answer.ok) throw new Error("queueing failed: " + answer.status);
    return (await answer.json()).job_id;
  };

  // Drained: jobs queue up and show in line, without a reload.
  await page.click('#backends tr[data-backend="simulated"] button.drain');
  await page.waitForSelector('#backends tr[data-backend="simulated"] button.resume');
  const fox = await queue("a red fox");
  const owl = await queue("a green owl");
  await page.waitForSelector(`#queue tr[data-job="${owl}"]`);
  const states = await page.$$eval("#queue tbody tr", (rows) => rows.map((r) => r.dataset.state));
  if (states.join() !== "queued,queued") throw new Error("queue shows " + states);
  await shot(page, "02-queued.png");

  // Cancel the owl; resume; the fox finishes and appears in the gallery.
  await page.click(`#queue tr[data-job="${owl}"] button.cancel`);
  await page.waitForFunction((id) => !document.querySelector(`#queue tr[data-job="${id}"]`), {}, owl);
  await page.click('#backends tr[data-backend="simulated"] button.resume');
  await page.waitForSelector(`#gallery figure[data-job="${fox}"]`, { timeout: 30000 });
  await page.waitForFunction(() => document.querySelectorAll("#queue tbody tr").length === 0);
  const caption = await page.$eval(`#gallery figure[data-job="${fox}"] figcaption`, (c) => c.textContent);
  if (!caption.includes("a red fox")) throw new Error("gallery caption " + caption);
  await page.waitForFunction((id) => {
    const img = document.querySelector(`#gallery figure[data-job="${id}"] img`);
    return img && img.complete && img.naturalWidth > 0;
  }, {}, fox);
  await shot(page, "03-finished.png");

  // A plugin reload shows, then a failed one with its error.
  const wasm = fs.readFileSync(pluginFile);
  fs.writeFileSync(pluginFile, Buffer.concat([wasm, Buffer.from([0, 6, 5, 0x65, 0x61, 0x73, 0x65, 0x6c])]));
  await page.waitForFunction(() => document.querySelector('#plugins tr[data-plugin="access"] .reloads')?.textContent === "1", { timeout: 20000 });
  fs.writeFileSync(pluginFile, "not a wasm component");
  await page.waitForSelector('#plugins tr[data-plugin="access"][data-status="stale"]', { timeout: 20000 });
  const failing = await page.$eval("#t-plugins", (t) => t.textContent);
  if (failing !== "1") throw new Error("plugins failing tile shows " + failing);
  await shot(page, "04-plugin-failed.png");

  if (errors.length) throw new Error("page errors: " + errors.join("; "));
  console.log("ok");
} finally {
  await browser.close();
}
