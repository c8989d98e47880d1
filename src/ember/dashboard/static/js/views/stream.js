// Task stream view: the live timeline, a window selector and the Chrome trace download.

import { h, clear, fill, card, fmtNumber, Poller, errorBox } from "../lib.js";
import { TaskStream, streamLegend } from "../taskstream.js";

export function render(root) {
  const stream = new TaskStream();
  const legend = h("div");
  const info = h("span", { class: "note" });
  const windowSelect = h("select", {},
    [15, 60, 300, 900].map((s) => h("option", { value: s, selected: s === 60 }, s < 60 ? `${s} s` : `${s / 60} min`)));
  const download = h("a", { class: "button", href: "/api/ui/timeline", download: "timeline.json" }, "Download Chrome trace");
  root.append(h("h1", {}, "Task stream"),
    card("One row per worker, one bar per task",
      h("div", { class: "toolbar" }, h("label", {}, "window ", windowSelect), info, download),
      stream.element, legend));
  const url = () => `/api/ui/taskstream?window=${windowSelect.value}`;
  const poller = new Poller(url(), 1000, (data) => {
    stream.update(data);
    fill(legend, streamLegend(data.functions));
    info.textContent = `${fmtNumber(data.tasks.length)} task(s) on ${fmtNumber(data.workers.length)} worker(s)` +
      (data.dropped ? `, ${fmtNumber(data.dropped)} not shown (older than retention)` : "");
  }, (err) => fill(legend, errorBox(err)));
  windowSelect.addEventListener("change", () => poller.setUrl(url()));
  const redraw = () => stream.draw();
  window.addEventListener("resize", redraw);
  const ticker = setInterval(() => { if (!document.hidden) redraw(); }, 1000);
  return () => { poller.stop(); clearInterval(ticker); window.removeEventListener("resize", redraw); };
}
