// A small time-series line chart drawn on a canvas (no library): the x axis is
// time (seconds since the epoch), each series an array aligned with it.

import { h } from "./lib.js";

function sizeCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 400;
  const height = canvas.clientHeight || 160;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return { ctx, width, height };
}

function niceMax(value) {
  if (value <= 0) return 1;
  const exp = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * exp) return step * exp;
  }
  return 10 * exp;
}

export class LineChart {
  // series: [{label, colour, values?}], options: {yMax, format(v) -> string}
  constructor(title, series, options = {}) {
    this.series = series;
    this.options = options;
    this.canvas = h("canvas", { class: "chart" });
    this.legend = h("div", { class: "legend" }, series.map((s) =>
      h("span", {}, h("i", { style: `background:${s.colour}` }), s.label)));
    this.element = h("figure", { class: "chart-box" }, h("figcaption", {}, title), this.canvas, this.legend);
    this.times = [];
  }

  update(times, valuesBySeries) {
    this.times = times;
    this.values = valuesBySeries;
    this.draw();
  }

  draw() {
    const { ctx, width, height } = sizeCanvas(this.canvas);
    const pad = { left: 46, right: 8, top: 8, bottom: 20 };
    const plotW = width - pad.left - pad.right, plotH = height - pad.top - pad.bottom;
    ctx.clearRect(0, 0, width, height);
    const times = this.times;
    const fmt = this.options.format || ((v) => String(Math.round(v * 100) / 100));
    let maxValue = this.options.yMax || 0;
    if (!this.options.yMax) {
      for (const values of this.values || []) for (const v of values) if (v > maxValue) maxValue = v;
      maxValue = niceMax(maxValue);
    }
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#6b7280";
    ctx.strokeStyle = "#e5e7eb";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = pad.top + plotH - (plotH * i) / 4;
      ctx.beginPath(); ctx.moveTo(pad.left, y + 0.5); ctx.lineTo(pad.left + plotW, y + 0.5); ctx.stroke();
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      ctx.fillText(fmt((maxValue * i) / 4), pad.left - 6, y);
    }
    if (times.length < 2) {
      ctx.textAlign = "center";
      ctx.fillText("collecting…", pad.left + plotW / 2, pad.top + plotH / 2);
      return;
    }
    const t0 = times[0], t1 = times[times.length - 1];
    const span = Math.max(1, t1 - t0);
    const x = (t) => pad.left + ((t - t0) / span) * plotW;
    const y = (v) => pad.top + plotH - (Math.min(v, maxValue) / maxValue) * plotH;
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (let i = 0; i <= 4; i++) {
      const t = t0 + (span * i) / 4;
      const ago = Math.round(t1 - t);
      ctx.fillText(ago === 0 ? "now" : `-${ago}s`, x(t), pad.top + plotH + 5);
    }
    this.series.forEach((s, index) => {
      const values = (this.values || [])[index] || [];
      ctx.strokeStyle = s.colour;
      ctx.lineWidth = 1.8;
      ctx.beginPath();
      values.forEach((v, i) => {
        if (i === 0) ctx.moveTo(x(times[i]), y(v)); else ctx.lineTo(x(times[i]), y(v));
      });
      ctx.stroke();
    });
  }
}
