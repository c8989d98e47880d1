// Overview: nodes alive/dead, cluster resource use, recent jobs, and live charts
// of tasks by state and of resource use over the last minutes.

import { h, clear, fill, card, stat, meter, fmtBytes, fmtNumber, Poller, errorBox } from "../lib.js";
import { LineChart } from "../charts.js";
import { jobsTable } from "./jobs.js";

export function render(root) {
  const stats = h("div", { class: "stats" });
  const resources = h("div", { class: "meters" });
  const jobs = h("div");
  const taskChart = new LineChart("Tasks by state", [
    { label: "running", colour: "#2563eb" },
    { label: "pending", colour: "#d97706" },
    { label: "finished / s", colour: "#16a34a" },
    { label: "failed / s", colour: "#dc2626" },
  ]);
  const useChart = new LineChart("Resource use (%)", [
    { label: "CPU", colour: "#2563eb" },
    { label: "memory", colour: "#9333ea" },
    { label: "object store", colour: "#0d9488" },
  ], { yMax: 100, format: (v) => v.toFixed(0) + "%" });
  root.append(
    h("h1", {}, "Overview"),
    stats,
    h("div", { class: "row" },
      card("Cluster resources", resources),
      h("section", { class: "card charts" }, h("h2", {}, "Last minutes"), taskChart.element, useChart.element)),
    card("Recent jobs", jobs));

  const poller = new Poller("/api/ui/overview", 2000, (data) => {
    fill(stats, 
      stat("nodes alive", fmtNumber(data.nodes.alive), "ok"),
      stat("nodes dead", fmtNumber(data.nodes.dead), data.nodes.dead ? "bad" : ""),
      stat("tasks running", fmtNumber(data.tasks.RUNNING || 0)),
      stat("tasks pending", fmtNumber(data.tasks.PENDING || 0)),
      stat("tasks finished", fmtNumber(data.tasks.FINISHED || 0)),
      stat("tasks failed", fmtNumber(data.tasks.FAILED || 0), data.tasks.FAILED ? "bad" : ""),
      stat("actors alive", fmtNumber(data.actors_alive || 0)));
    fill(resources, ...Object.entries(data.resources).map(([name, r]) => {
      const bytes = name === "memory" || name === "object_store_memory";
      const text = bytes ? `${fmtBytes(r.used)} / ${fmtBytes(r.total)}` : `${fmtNumber(r.used)} / ${fmtNumber(r.total)}`;
      return h("div", { class: "meter-row" }, h("span", { class: "meter-name" }, name), meter(r.used, r.total, text));
    }),
    h("div", { class: "meter-row" }, h("span", { class: "meter-name" }, "object store used"),
      meter(data.object_store.used, data.object_store.capacity,
        `${fmtBytes(data.object_store.used)} / ${fmtBytes(data.object_store.capacity)}` +
        (data.object_store.spilled ? `, ${fmtBytes(data.object_store.spilled)} spilled` : ""))),
    h("div", { class: "meter-row" }, h("span", { class: "meter-name" }, "host memory"),
      meter(data.host_memory.used, data.host_memory.total,
        `${fmtBytes(data.host_memory.used)} / ${fmtBytes(data.host_memory.total)}`)));
    fill(jobs, jobsTable(data.jobs));
    const hist = data.history;
    taskChart.update(hist.t, [hist.running, hist.pending, hist.finished_rate, hist.failed_rate]);
    useChart.update(hist.t, [hist.cpu_pct, hist.mem_pct, hist.store_pct]);
  }, (err) => fill(stats, errorBox(err)));
  const redraw = () => { taskChart.draw(); useChart.draw(); };
  window.addEventListener("resize", redraw);
  return () => { poller.stop(); window.removeEventListener("resize", redraw); };
}
