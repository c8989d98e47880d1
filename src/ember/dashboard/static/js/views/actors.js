// Actors: state, class, name, node, pid, restarts, death cause and a link to the
// actor's log; an actor's page lists its calls.

import { h, clear, fill, card, badge, link, table, fmtTime, fmtDuration, fmtNumber, shortId, Poller, errorBox } from "../lib.js";

// Ray's TaskState times are milliseconds (start_time_ms / end_time_ms).
function taskStart(t) {
  return t.start_time ?? (t.start_time_ms ? t.start_time_ms / 1000 : null);
}

function taskDuration(t) {
  if (t.duration !== undefined) return t.duration;
  if (!t.start_time_ms) return null;
  return ((t.end_time_ms || Date.now()) - t.start_time_ms) / 1000;
}

function logLink(a) {
  return a.log_file ? link(`#/logs/${a.node_id}/${encodeURIComponent(a.log_file)}`, "log") : "–";
}

export function render(root) {
  const body = h("div");
  const filter = h("input", { type: "search", placeholder: "filter by class, name or state" });
  root.append(h("h1", {}, "Actors"), card("All actors", filter, body));
  let last = null;
  const draw = () => {
    if (!last) return;
    const q = filter.value.toLowerCase();
    const rows = last.actors.filter((a) => !q ||
      [a.class_name, a.name, a.state].some((v) => (v || "").toLowerCase().includes(q)));
    fill(body, table([
      { title: "Actor", get: (a) => link(`#/actors/${a.actor_id}`, shortId(a.actor_id)) },
      { title: "Class", get: (a) => a.class_name },
      { title: "Name", get: (a) => a.name || "–" },
      { title: "State", get: (a) => badge(a.state) },
      { title: "Node", get: (a) => a.node_id ? link(`#/cluster/${a.node_id}`, shortId(a.node_id)) : "–" },
      { title: "Pid", get: (a) => a.pid || "–", class: "num" },
      { title: "Restarts", get: (a) => fmtNumber(a.num_restarts), class: "num" },
      { title: "Death cause", get: (a) => a.death_cause || "–", class: "wide" },
      { title: "Logs", get: logLink },
    ], rows, "No actors."),
    last.total > last.actors.length ? h("p", { class: "note" }, `Showing ${last.actors.length} of ${fmtNumber(last.total)} actors.`) : null);
  };
  filter.addEventListener("input", draw);
  const poller = new Poller("/api/ui/actors", 2000, (data) => { last = data; draw(); },
    (err) => fill(body, errorBox(err)));
  return () => poller.stop();
}

export function renderActor(root, params) {
  const head = h("div");
  const calls = h("div");
  root.append(h("p", {}, link("#/actors", "← Actors")), head, card("Calls", calls));
  const poller = new Poller(`/api/ui/actors/${encodeURIComponent(params[0])}`, 1500, (data) => {
    const a = data.actor;
    fill(head, 
      h("h1", {}, "Actor ", h("code", {}, a.class_name), " ", badge(a.state)),
      h("dl", { class: "facts" },
        h("dt", {}, "Actor id"), h("dd", {}, a.actor_id),
        h("dt", {}, "Name"), h("dd", {}, a.name || "–"),
        h("dt", {}, "Namespace"), h("dd", {}, a.namespace || "–"),
        h("dt", {}, "Node"), h("dd", {}, a.node_id ? link(`#/cluster/${a.node_id}`, a.node_id) : "–"),
        h("dt", {}, "Pid"), h("dd", {}, a.pid || "–"),
        h("dt", {}, "Restarts"), h("dd", {}, fmtNumber(a.num_restarts)),
        h("dt", {}, "Death cause"), h("dd", {}, a.death_cause || "–"),
        h("dt", {}, "Log"), h("dd", {}, logLink(a))));
    const c = data.calls;
    fill(calls, 
      h("p", { class: "summary" }, Object.entries(c.counts).map(([s, n]) => `${fmtNumber(n)} ${s.toLowerCase()}`).join(", ") || "No calls yet."),
      c.scope === "class" ? h("p", { class: "note" }, `Counts of calls to ${a.class_name} methods in this actor's job (this cluster records no per-call events).`) : null,
      c.scope === "class" ? null : table([
        { title: "Call", get: (t) => h("code", {}, shortId(t.task_id)) },
        { title: "Method", get: (t) => t.name },
        { title: "State", get: (t) => badge(t.state) },
        { title: "Started", get: (t) => fmtTime(taskStart(t)) },
        { title: "Duration", get: (t) => fmtDuration(taskDuration(t)), class: "num" },
        { title: "Error", get: (t) => t.error_type ? h("span", { class: "error-type", title: t.error_message || "" }, t.error_type) : "–", class: "wide" },
      ], c.rows, "No calls recorded."),
      c.scope !== "class" && c.total > c.rows.length ? h("p", { class: "note" }, `Showing the newest ${c.rows.length} of ${fmtNumber(c.total)} calls.`) : null);
  }, (err) => fill(head, errorBox(err)));
  return () => poller.stop();
}
