// Small helpers shared by every view: DOM building, formatting, and the poller
// that keeps a view live (conditional GETs with ETag, paused while the tab is hidden).

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// Replace an element's children (null / false children are left out).
export function fill(el, ...children) {
  clear(el);
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child);
  }
  return el;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(v >= 100 ? 0 : 1)) + " " + units[i];
}

export function fmtNumber(n) {
  if (n === null || n === undefined) return "–";
  if (Number.isInteger(n)) return n.toLocaleString("en-US");
  return Number(n).toFixed(2).replace(/\.?0+$/, "");
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  if (seconds < 1) return (seconds * 1000).toFixed(0) + " ms";
  if (seconds < 60) return seconds.toFixed(1) + " s";
  const m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
  if (m < 60) return `${m}m ${s}s`;
  const hr = Math.floor(m / 60);
  return `${hr}h ${m % 60}m`;
}

export function fmtTime(epochSeconds) {
  if (!epochSeconds) return "–";
  const d = new Date(epochSeconds * 1000);
  const pad = (x) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "–";
}

const STATE_CLASS = {
  ALIVE: "ok", RUNNING: "run", FINISHED: "ok", SUCCEEDED: "ok",
  DEAD: "bad", FAILED: "bad", STOPPED: "warn", RESTARTING: "warn",
  PENDING: "wait", PENDING_CREATION: "wait", DEPENDENCIES_UNREADY: "wait",
  PENDING_ARGS_AVAIL: "wait", PENDING_NODE_ASSIGNMENT: "wait",
  SUBMITTED_TO_WORKER: "wait", IDLE: "idle", LEASED: "run", STARTING: "wait",
};

export function badge(state) {
  return h("span", { class: "badge " + (STATE_CLASS[state] || "idle"), text: state || "–" });
}

export function link(href, text) {
  return h("a", { href }, text);
}

// A table from column specs [{title, get(row) -> Node|string, class}] and rows.
export function table(columns, rows, empty = "Nothing yet.") {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h("table", { class: "grid" },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.class }, c.title)))),
    h("tbody", {}, rows.map((row) =>
      h("tr", {}, columns.map((c) => h("td", { class: c.class }, c.get(row)))))));
}

// A horizontal bar of used / total with a label.
export function meter(used, total, label) {
  const frac = total > 0 ? Math.min(1, used / total) : 0;
  const level = frac > 0.9 ? "bad" : frac > 0.7 ? "warn" : "ok";
  return h("div", { class: "meter", title: label },
    h("div", { class: "meter-fill " + level, style: `width:${(frac * 100).toFixed(1)}%` }),
    h("span", { class: "meter-label" }, label));
}

export function card(title, ...body) {
  return h("section", { class: "card" }, h("h2", {}, title), ...body);
}

export function stat(label, value, cls) {
  return h("div", { class: "stat " + (cls || "") },
    h("div", { class: "stat-value" }, value), h("div", { class: "stat-label" }, label));
}

// Colour of a function name: stable across pages and reloads.
export function colourFor(name) {
  let hash = 2166136261;
  for (let i = 0; i < name.length; i++) {
    hash ^= name.charCodeAt(i);
    hash = Math.imul(hash, 16777619);
  }
  const hue = ((hash >>> 0) % 360);
  return `hsl(${hue}, 62%, 52%)`;
}

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// GET a JSON document. A 401 sends the browser to the login page.
export async function getJSON(url, etag) {
  const headers = etag ? { "If-None-Match": etag } : {};
  const response = await fetch(url, { headers, credentials: "same-origin" });
  if (response.status === 304) return { notModified: true, etag };
  if (response.status === 401) {
    location.href = "/login.html?next=" + encodeURIComponent(location.pathname + location.hash);
    throw new HttpError(401, "not logged in");
  }
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).msg || message; } catch (_) { /* not JSON */ }
    throw new HttpError(response.status, message);
  }
  return { data: await response.json(), etag: response.headers.get("ETag") };
}

// Polls `url` every `intervalMs` and calls `onData(data)` only when the document
// changed (the server answers 304 to an unchanged ETag, so an idle page costs one
// tiny request per interval). Paused while the tab is hidden; `stop()` ends it.
export class Poller {
  constructor(url, intervalMs, onData, onError) {
    this.url = url;
    this.intervalMs = intervalMs;
    this.onData = onData;
    this.onError = onError || (() => {});
    this.etag = null;
    this.timer = null;
    this.stopped = false;
    this.visibility = () => { if (!document.hidden) this.kick(); };
    document.addEventListener("visibilitychange", this.visibility);
    this.kick();
  }

  setUrl(url) {
    if (url === this.url) return;
    this.url = url;
    this.etag = null;
    this.kick();
  }

  kick() {
    clearTimeout(this.timer);
    this.timer = null;
    this.tick();
  }

  async tick() {
    if (this.stopped || this.inFlight) return;
    if (document.hidden) return;
    this.inFlight = true;
    let delay = this.intervalMs;
    try {
      const url = this.url;
      const result = await getJSON(url, this.etag);
      if (!this.stopped && url === this.url && !result.notModified) {
        this.etag = result.etag;
        this.onData(result.data);
        // How many documents this view has shown (benchmarks wait for the first one).
        document.documentElement.dataset.shown = String(Number(document.documentElement.dataset.shown || 0) + 1);
      }
      setLive(true);
    } catch (err) {
      delay = Math.min(this.intervalMs * 5, 10000);
      setLive(false, err.message);
      if (!this.stopped) this.onError(err);
    } finally {
      this.inFlight = false;
    }
    if (!this.stopped) this.timer = setTimeout(() => this.tick(), delay);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    document.removeEventListener("visibilitychange", this.visibility);
  }
}

function setLive(ok, message) {
  const el = document.getElementById("live");
  if (!el) return;
  el.className = ok ? "live ok" : "live bad";
  el.title = ok ? "live: updating" : "not updating: " + message;
  el.textContent = ok ? "● live" : "● offline";
}

export function errorBox(err) {
  return h("div", { class: "error" }, String(err.message || err));
}
