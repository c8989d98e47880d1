// Logs: every node's log files, one file's text with search, and following a file
// live (each poll asks only for the bytes after the last offset it has).

import { h, clear, fill, card, link, table, fmtBytes, fmtNumber, shortId, getJSON, Poller, errorBox } from "../lib.js";

const MAX_SHOWN_CHARS = 1 << 20;

// The line a worker writes before each task's output (":ember_task:<job>:<function>")
// shown as a separator naming the task.
const MARKER = /^:ember_(\w+):([^:\n]*):(.*)$/gm;

export function readable(text) {
  return text.replace(MARKER, (_m, kind, job, name) => `── ${kind} ${name} (job ${job}) ──`);
}

export class LogFollower {
  constructor(nodeId, file, options = {}) {
    this.nodeId = nodeId;
    this.file = file;
    this.offset = null;
    this.stopped = false;
    this.follow = h("input", { type: "checkbox", checked: true });
    this.follow.addEventListener("change", () => { if (this.follow.checked) this.poll(); });
    this.pre = h("pre", { class: "log", "data-testid": "log-text" });
    this.info = h("span", { class: "note" });
    this.element = h("div", { class: "log-box" },
      h("div", { class: "log-bar" },
        h("label", {}, this.follow, " follow"), this.info,
        h("a", { href: this.rawUrl(), target: "_blank" }, "raw")),
      this.pre);
    this.intervalMs = options.intervalMs || 1000;
    this.poll();
  }

  rawUrl() {
    return `/api/ui/log?node_id=${encodeURIComponent(this.nodeId)}&file=${encodeURIComponent(this.file)}&raw=1`;
  }

  async poll() {
    if (this.stopped || this.busy) return;
    this.busy = true;
    clearTimeout(this.timer);
    try {
      const where = this.offset === null ? "tail=65536" : `offset=${this.offset}`;
      const { data } = await getJSON(
        `/api/ui/log?node_id=${encodeURIComponent(this.nodeId)}&file=${encodeURIComponent(this.file)}&${where}`);
      if (this.stopped) return;
      if (data.offset < (this.offset || 0)) this.pre.textContent = "";  // file was truncated
      const atBottom = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 4;
      if (data.text) {
        this.pre.append(readable(data.text));
        if (this.pre.textContent.length > MAX_SHOWN_CHARS) {
          this.pre.textContent = this.pre.textContent.slice(-MAX_SHOWN_CHARS);
        }
        if (atBottom) this.pre.scrollTop = this.pre.scrollHeight;
      }
      this.offset = data.offset + data.length;
      this.info.textContent = `${fmtBytes(data.size)}`;
    } catch (err) {
      this.info.textContent = "error: " + err.message;
    } finally {
      this.busy = false;
    }
    if (!this.stopped && this.follow.checked && !document.hidden) {
      this.timer = setTimeout(() => this.poll(), this.intervalMs);
    } else if (!this.stopped && this.follow.checked) {
      this.timer = setTimeout(() => this.poll(), this.intervalMs * 5);
    }
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}

function searchBox(nodeId, file) {
  const input = h("input", { type: "search", placeholder: "search this file", "data-testid": "log-search" });
  const results = h("div", { class: "search-results" });
  const run = async () => {
    const q = input.value;
    if (!q) { clear(results); return; }
    try {
      const { data } = await getJSON(`/api/ui/log?node_id=${encodeURIComponent(nodeId)}&file=${encodeURIComponent(file)}&search=${encodeURIComponent(q)}`);
      fill(results, 
        h("p", { class: "note" }, `${fmtNumber(data.total)} matching line(s)` +
          (data.total > data.matches.length ? `, showing the last ${data.matches.length}` : "")),
        h("pre", { class: "log matches" }, data.matches.map(([n, line]) =>
          h("div", {}, h("span", { class: "lineno" }, String(n).padStart(6) + "  "), line))));
    } catch (err) {
      fill(results, errorBox(err));
    }
  };
  input.addEventListener("keydown", (e) => { if (e.key === "Enter") run(); });
  return h("div", { class: "search" }, input, h("button", { onclick: run }, "Search"), results);
}

export function render(root, params) {
  const [nodeId, file] = params;
  const list = h("div");
  const viewer = h("div");
  const filter = h("input", { type: "search", placeholder: "filter files" });
  root.append(h("h1", {}, "Logs"), h("div", { class: "row logs" },
    h("section", { class: "card files" }, h("h2", {}, "Files"), filter, list),
    h("section", { class: "card viewer" }, viewer)));
  let follower = null;
  if (nodeId && file) {
    follower = new LogFollower(nodeId, file);
    viewer.append(h("h2", {}, file, h("span", { class: "note" }, ` on node ${shortId(nodeId)}`)),
      searchBox(nodeId, file), follower.element);
  } else {
    viewer.append(h("p", { class: "empty" }, "Choose a file."));
  }
  let last = null;
  const draw = () => {
    if (!last) return;
    const q = filter.value.toLowerCase();
    fill(list, ...last.nodes.map((node) => h("div", { class: "file-group" },
      h("h3", {}, link(`#/cluster/${node.node_id}`, `${node.is_head ? "head " : ""}${node.ip} ${shortId(node.node_id)}`)),
      h("ul", {}, node.files.filter((f) => !q || f.name.toLowerCase().includes(q)).map((f) =>
        h("li", { class: f.name === file && node.node_id === nodeId ? "current" : "" },
          link(`#/logs/${node.node_id}/${encodeURIComponent(f.name)}`, f.name),
          h("span", { class: "note" }, " " + fmtBytes(f.size))))))));
  };
  filter.addEventListener("input", draw);
  const poller = new Poller("/api/ui/logs", 5000, (data) => { last = data; draw(); },
    (err) => fill(list, errorBox(err)));
  return () => { poller.stop(); if (follower) follower.stop(); };
}

export function nodeLogTable(node) {
  return table([
    { title: "File", get: (f) => link(`#/logs/${node.node_id}/${encodeURIComponent(f.name)}`, f.name), class: "wide" },
    { title: "Size", get: (f) => fmtBytes(f.size), class: "num" },
  ], node.logs || [], "No log files.");
}
