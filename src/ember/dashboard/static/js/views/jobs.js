// Jobs: every job (submitted or a driver that connected), its status, entrypoint,
// start, end and duration; a job's page has exact per-function progress bars,
// its failed tasks with their errors and its driver's log, followed live.

import { h, clear, fill, card, badge, link, table, fmtTime, fmtDuration, fmtNumber, shortId, Poller, errorBox, colourFor } from "../lib.js";
import { LogFollower } from "./logs.js";

export function jobsTable(jobs) {
  return table([
    { title: "Job", get: (j) => link(`#/jobs/${encodeURIComponent(j.id)}`, j.submission_id || j.job_id || j.id) },
    { title: "Kind", get: (j) => j.kind },
    { title: "Status", get: (j) => badge(j.status) },
    { title: "Entrypoint", get: (j) => h("code", {}, j.entrypoint || "–"), class: "wide" },
    { title: "Started", get: (j) => fmtTime(j.start_time) },
    { title: "Ended", get: (j) => fmtTime(j.end_time) },
    { title: "Duration", get: (j) => fmtDuration(j.duration), class: "num" },
  ], jobs, "No jobs yet.");
}

export function render(root) {
  const body = h("div");
  root.append(h("h1", {}, "Jobs"), card("All jobs", body));
  const poller = new Poller("/api/ui/jobs", 2000, (data) => {
    const more = data.total > data.jobs.length
      ? h("p", { class: "note" }, `Showing the newest ${data.jobs.length} of ${fmtNumber(data.total)} jobs.`) : null;
    fill(body, jobsTable(data.jobs), more);
  }, (err) => fill(body, errorBox(err)));
  return () => poller.stop();
}

const PROGRESS_STATES = [
  ["FINISHED", "finished", "ok"], ["RUNNING", "running", "run"],
  ["PENDING", "pending", "wait"], ["FAILED", "failed", "bad"],
];

function progressRow(fn) {
  const total = Object.values(fn.counts).reduce((a, b) => a + b, 0) || 1;
  const bar = h("div", { class: "progress" }, PROGRESS_STATES.map(([key, , cls]) =>
    fn.counts[key] ? h("div", { class: "seg " + cls, style: `width:${(100 * fn.counts[key]) / total}%` }) : null));
  const counts = h("div", { class: "counts" }, PROGRESS_STATES.map(([key, label]) =>
    h("span", { class: "count", "data-state": key }, `${fmtNumber(fn.counts[key] || 0)} ${label}`)));
  return h("div", { class: "progress-row", "data-function": fn.name },
    h("div", { class: "fn-name" }, h("i", { class: "swatch", style: `background:${colourFor(fn.name)}` }), fn.name),
    bar, counts);
}

export function renderJob(root, params) {
  const id = params[0];
  const head = h("div");
  const progress = h("div");
  const failed = h("div");
  const logBox = h("div");
  root.append(h("p", {}, link("#/jobs", "← Jobs")), head,
    card("Progress by function", progress), card("Failed tasks", failed), card("Driver log", logBox));
  let follower = null;
  const poller = new Poller(`/api/ui/jobs/${encodeURIComponent(id)}`, 1500, (data) => {
    const job = data.job;
    fill(head, 
      h("h1", {}, "Job ", h("code", {}, job.submission_id || job.job_id), " ", badge(job.status)),
      h("dl", { class: "facts" },
        h("dt", {}, "Entrypoint"), h("dd", {}, h("code", {}, job.entrypoint || "–")),
        h("dt", {}, "Job id"), h("dd", {}, job.job_id || "–"),
        h("dt", {}, "Started"), h("dd", {}, fmtTime(job.start_time)),
        h("dt", {}, "Ended"), h("dd", {}, fmtTime(job.end_time)),
        h("dt", {}, "Duration"), h("dd", {}, fmtDuration(job.duration)),
        job.message ? [h("dt", {}, "Message"), h("dd", {}, job.message)] : null));
    fill(progress, data.functions.length
      ? h("div", { class: "progress-list" }, data.functions.map(progressRow))
      : h("p", { class: "empty" }, "No tasks yet."));
    const f = data.failed;
    const failedCount = data.functions.reduce((n, fn) => n + (fn.counts.FAILED || 0), 0);
    if (!data.tasks_recorded) {
      fill(failed, h("p", { class: "empty" }, failedCount
        ? `${fmtNumber(failedCount)} task(s) failed. This cluster records no task events, so their errors cannot be listed here; the driver got them as exceptions.`
        : "No task failed."));
    } else fill(failed, table([
      { title: "Task", get: (t) => h("code", {}, shortId(t.task_id)) },
      { title: "Function", get: (t) => t.name },
      { title: "Error", get: (t) => h("span", { class: "error-type" }, t.error_type || "–") },
      { title: "Message", get: (t) => h("pre", { class: "error-message" }, t.error_message || ""), class: "wide" },
      { title: "Node", get: (t) => link(`#/cluster/${t.node_id}`, shortId(t.node_id)) },
      { title: "Worker pid", get: (t) => t.worker_pid || "–", class: "num" },
    ], f.rows, "No task failed."),
    f.total > f.rows.length ? h("p", { class: "note" }, `Showing ${f.rows.length} of ${fmtNumber(f.total)} failed tasks.`) : null);
    if (data.driver_log && !follower) {
      follower = new LogFollower(data.driver_log.node_id, data.driver_log.file);
      fill(logBox, follower.element);
    } else if (!data.driver_log && !follower) {
      fill(logBox, h("p", { class: "empty" }, "This job's driver was not started by the jobs API; its output went to its own terminal."));
    }
  }, (err) => fill(head, errorBox(err)));
  return () => { poller.stop(); if (follower) follower.stop(); };
}
