// The task stream: a canvas timeline with one row per worker and one bar per task
// execution, coloured by function (like Dask's). Hovering a bar names the task.

import { h, colourFor, fmtDuration } from "./lib.js";

const ROW_HEIGHT = 18;
const LABEL_WIDTH = 150;

export class TaskStream {
  constructor() {
    this.canvas = h("canvas", { class: "stream", "data-testid": "task-stream-canvas" });
    this.tip = h("div", { class: "tip hidden" });
    this.element = h("div", { class: "stream-box" }, this.canvas, this.tip);
    this.data = { workers: [], tasks: [], window: 60 };
    this.now = Date.now() / 1000;
    this.bars = [];
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => this.tip.classList.add("hidden"));
  }

  update(data) {
    this.data = data;
    this.draw();
  }

  draw() {
    // The clock is the browser's, so the stream scrolls between polls that found nothing new.
    const now = this.now = Date.now() / 1000;
    const { workers, tasks, window: windowS } = this.data;
    const ratio = window.devicePixelRatio || 1;
    const width = this.canvas.clientWidth || 800;
    const height = Math.max(60, workers.length * ROW_HEIGHT + 26);
    this.canvas.style.height = height + "px";
    this.canvas.width = Math.round(width * ratio);
    this.canvas.height = Math.round(height * ratio);
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "11px system-ui, sans-serif";
    const plotW = width - LABEL_WIDTH - 8;
    const t0 = now - windowS;
    const x = (t) => LABEL_WIDTH + Math.max(0, Math.min(1, (t - t0) / windowS)) * plotW;
    workers.forEach((w, row) => {
      const y = row * ROW_HEIGHT;
      ctx.fillStyle = row % 2 ? "#f9fafb" : "#ffffff";
      ctx.fillRect(0, y, width, ROW_HEIGHT);
      ctx.fillStyle = "#374151";
      ctx.textBaseline = "middle";
      ctx.textAlign = "left";
      ctx.fillText(w.label, 4, y + ROW_HEIGHT / 2);
    });
    this.bars = [];
    for (const [row, name, start, end, state] of tasks) {
      const x0 = x(start), x1 = x(end === null ? now : end);
      const y = row * ROW_HEIGHT + 2;
      const w = Math.max(1, x1 - x0);
      ctx.fillStyle = state === "FAILED" ? "#dc2626" : colourFor(name);
      ctx.fillRect(x0, y, w, ROW_HEIGHT - 4);
      if (end === null) {  // still running: an open right edge
        ctx.fillStyle = "rgba(255,255,255,0.5)";
        ctx.fillRect(x1 - 2, y, 2, ROW_HEIGHT - 4);
      }
      this.bars.push({ x0, x1: x0 + w, y, name, start, end, state, worker: workers[row] });
    }
    const axisY = workers.length * ROW_HEIGHT + 4;
    ctx.fillStyle = "#6b7280";
    ctx.textBaseline = "top";
    ctx.textAlign = "center";
    for (let i = 0; i <= 6; i++) {
      const t = t0 + (windowS * i) / 6;
      const ago = Math.round(now - t);
      ctx.fillText(ago === 0 ? "now" : `-${ago}s`, x(t), axisY);
    }
    if (!workers.length) {
      ctx.textAlign = "center";
      ctx.fillText("No task ran in this window.", LABEL_WIDTH + plotW / 2, 20);
    }
  }

  hover(event) {
    const rect = this.canvas.getBoundingClientRect();
    const px = event.clientX - rect.left, py = event.clientY - rect.top;
    const bar = this.bars.find((b) => px >= b.x0 && px <= b.x1 && py >= b.y && py <= b.y + ROW_HEIGHT);
    if (!bar) { this.tip.classList.add("hidden"); return; }
    const duration = (bar.end === null ? this.now : bar.end) - bar.start;
    this.tip.textContent = `${bar.name} — ${bar.state}, ${fmtDuration(duration)} on ${bar.worker.label}`;
    this.tip.style.left = px + 12 + "px";
    this.tip.style.top = py + 12 + "px";
    this.tip.classList.remove("hidden");
  }
}

// Legend of the functions present in the data, coloured like their bars.
export function streamLegend(functions) {
  return h("div", { class: "legend" }, functions.map((name) =>
    h("span", {}, h("i", { style: `background:${colourFor(name)}` }), name)));
}
