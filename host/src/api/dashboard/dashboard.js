// easel's operator dashboard: follows GET /api/admin/stream (server-sent events read with
// fetch, so the token travels in the Authorization header, never in a URL) and renders each
// state it sends. No library, no build step.
"use strict";

const KEY = "easel-dashboard-token";
const $ = (id) => document.getElementById(id);
let controller = null;

function authHeader(token) {
  // A JWT goes as a bearer token; the superuser token is sent raw (Navigator's rule).
  return token.split(".").length === 3 ? "Bearer " + token : token;
}

function setStatus(text, cls) {
  const el = $("status");
  el.textContent = text;
  el.className = "status " + (cls || "");
}

function showLogin(message) {
  $("login").hidden = false;
  $("board").hidden = true;
  $("logout").hidden = true;
  $("login-error").textContent = message || "";
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
}

function age(ms) {
  const s = Math.max(0, ms / 1000);
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

async function act(path, what) {
  $("action-error").textContent = "";
  const token = sessionStorage.getItem(KEY);
  try {
    const answer = await fetch(path, { method: "POST", headers: { Authorization: authHeader(token) } });
    if (!answer.ok) {
      const body = await answer.json().catch(() => ({}));
      $("action-error").textContent = what + ": " + (body.error || body.message || answer.status);
    }
  } catch (err) {
    $("action-error").textContent = what + ": " + err;
  }
}

function sparkline(id, values) {
  const svg = $(id);
  const max = Math.max(1e-9, ...values);
  const step = 120 / Math.max(1, values.length - 1);
  const points = values.map((v, i) => (i * step).toFixed(1) + "," + (29 - (v / max) * 28).toFixed(1)).join(" ");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
  title.textContent = "latest " + (values[values.length - 1] ?? 0) + ", max " + (max < 1e-6 ? 0 : +max.toFixed(2));
  svg.replaceChildren(line, title);
}

function render(state) {
  const now = state.now;
  const queue = state.queue?.jobs || [];
  const running = queue.filter((j) => j.state === "running").length;
  $("t-queued").textContent = state.queue?.queued ?? 0;
  $("t-running").textContent = running;

  fill("queue", queue.map((j) => el("tr", { "data-job": j.id, "data-state": j.state },
    el("td", {}, j.position ? String(j.position) : "—"),
    el("td", { class: "mono" }, j.id),
    el("td", { class: j.state === "running" ? "up" : "" }, j.state),
    el("td", { class: "mono" }, j.owner_id),
    el("td", {}, j.front_end),
    el("td", {}, j.model || "(default)"),
    el("td", {}, j.width + "×" + j.height),
    el("td", {}, age(now - j.created_at)),
    el("td", {}, j.backend ? (j.host ? j.backend + " @ " + j.host : j.backend) : ""),
    el("td", {}, String(j.attempts)),
    el("td", {}, el("button", { type: "button", class: "cancel", onclick: () => act("/api/admin/jobs/" + j.id + "/cancel", "cancel " + j.id) }, "Cancel")),
  )));

  const b = state.backends || {};
  $("host").textContent = b.host ? "host " + b.host : "";
  const drained = new Set(b.drained || []);
  fill("backends", (b.backends || []).map((name) => el("tr", { "data-backend": name },
    el("td", {}, name),
    el("td", { class: drained.has(name) ? "warn" : "up" }, drained.has(name) ? "drained" : "claiming"),
    el("td", {}, drained.has(name)
      ? el("button", { type: "button", class: "resume", onclick: () => act("/api/admin/backends/" + encodeURIComponent(name) + "/resume", "resume " + name) }, "Resume")
      : el("button", { type: "button", class: "drain", onclick: () => act("/api/admin/backends/" + encodeURIComponent(name) + "/drain", "drain " + name) }, "Drain")),
  )));

  const workers = b.worker_list || [];
  $("t-workers").textContent = workers.filter((w) => w.up).length;
  fill("workers", workers.map((w) => el("tr", { "data-worker": w.identity },
    el("td", {}, w.hostname),
    el("td", {}, w.kind),
    el("td", { class: w.up ? "up" : "down" }, w.up ? (w.job ? "busy" : "idle") : "down: " + w.left[0] + " (" + age(now - w.left[1]) + " ago)"),
    el("td", { class: "mono" }, w.job || ""),
    el("td", {}, w.job_since_ms ? age(now - w.job_since_ms) : ""),
    el("td", {}, String(w.done)),
    el("td", { class: w.faults ? "warn" : "" }, String(w.faults)),
    el("td", {}, (w.models || []).join(", ") || "any"),
  )));

  fill("forge", (b.forge || []).map((m) => el("tr", { "data-machine": m.name },
    el("td", {}, m.name + " "), el("td", { class: m.up ? "up" : "down" }, m.up ? (m.current_job ? "busy" : "idle") : "down"),
    el("td", {}, m.loaded_model || ""), el("td", { class: "mono" }, m.current_job || ""),
    el("td", {}, String(m.jobs_done)), el("td", {}, String(m.faults)), el("td", { class: "error" }, m.last_error || ""),
  )));

  const plugins = state.plugins?.plugins || [];
  $("t-plugins").textContent = plugins.filter((p) => p.status !== "ok").length;
  fill("plugins", plugins.map((p) => el("tr", { "data-plugin": p.name, "data-status": p.status },
    el("td", {}, p.name),
    el("td", {}, (p.roles || []).join(", ")),
    el("td", { class: "mono" }, p.file),
    el("td", {}, p.wit_version || ""),
    el("td", { class: "mono", title: p.sha256 || "" }, (p.sha256 || "").slice(0, 12)),
    el("td", { class: p.status === "ok" ? "up" : "down" }, p.status),
    el("td", { class: "reloads" }, String(p.reloads)),
    el("td", {}, String(p.failed_loads)),
    el("td", { class: "error" }, p.last_error || ""),
  )));

  fill("failures", (state.failures || []).map((f) => el("tr", { "data-job": f.id },
    el("td", { class: "mono" }, f.id),
    el("td", { class: "mono" }, f.owner_id),
    el("td", {}, f.prompt),
    el("td", { class: "error" }, f.error || ""),
    el("td", {}, String(f.faults)),
    el("td", {}, f.finished_at ? age(now - f.finished_at) + " ago" : ""),
    el("td", {}, el("button", { type: "button", class: "requeue", onclick: () => act("/api/admin/jobs/" + f.id + "/requeue", "requeue " + f.id) }, "Requeue")),
  )));

  const gallery = $("gallery");
  const shown = [...gallery.children].map((f) => f.dataset.job).join();
  const images = state.images || [];
  if (shown !== images.map((i) => i.id).join()) {
    gallery.replaceChildren(...images.map((i) => el("figure", { "data-job": i.id },
      el("img", { src: "/api/images/" + i.id, alt: i.prompt, loading: "lazy" }),
      el("figcaption", {}, i.prompt + " — " + (i.model || "default") + ", " + i.front_end),
    )));
  }

  const lines = state.sparklines || {};
  document.querySelectorAll(".bucket").forEach((n) => { n.textContent = lines.bucket_s ?? 10; });
  sparkline("s-finished", lines.finished || []);
  sparkline("s-wait", lines.wait_s || []);
}

async function follow(token) {
  if (controller) controller.abort();
  controller = new AbortController();
  setStatus("connecting…");
  let answer;
  try {
    answer = await fetch("/api/admin/stream", {
      headers: { Authorization: authHeader(token), Accept: "text/event-stream" },
      signal: controller.signal,
    });
  } catch (err) {
    setStatus("not connected", "down");
    setTimeout(() => follow(token), 2000);
    return;
  }
  if (answer.status === 401 || answer.status === 403) {
    const body = await answer.json().catch(() => ({}));
    sessionStorage.removeItem(KEY);
    setStatus(answer.status === 401 ? "401 Unauthorized" : "403 Forbidden", "down");
    showLogin(answer.status + ": " + (body.error || body.message || "refused"));
    return;
  }
  if (!answer.ok) {
    setStatus("error " + answer.status, "down");
    setTimeout(() => follow(token), 2000);
    return;
  }
  $("login").hidden = true;
  $("board").hidden = false;
  $("logout").hidden = false;
  setStatus("live", "live");
  const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (/^event: ?state$/m.test(block) && data) render(JSON.parse(data));
      }
    }
  } catch (err) {
    if (err.name === "AbortError") return;
  }
  // The stream ended (server restart, credentials re-checked): connect again.
  setStatus("reconnecting…", "down");
  setTimeout(() => follow(token), 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(KEY, token);
    $("token").value = "";
    follow(token);
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    if (controller) controller.abort();
    setStatus("not connected");
    showLogin();
  });
  const token = sessionStorage.getItem(KEY);
  if (token) follow(token);
  else showLogin();
});
