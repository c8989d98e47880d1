// Cluster: every node with its resources, object store, memory per component and
// worker processes; a node's page adds its log files.

import { h, clear, fill, card, badge, link, table, meter, fmtBytes, fmtNumber, shortId, Poller, errorBox } from "../lib.js";
import { nodeLogTable } from "./logs.js";

function resourceMeters(node) {
  return h("div", { class: "meters small" }, Object.keys(node.resources_total).sort().map((name) => {
    const total = node.resources_total[name];
    const used = total - (node.resources_available[name] ?? total);
    const bytes = name === "memory" || name === "object_store_memory";
    const text = bytes ? `${fmtBytes(used)} / ${fmtBytes(total)}` : `${fmtNumber(used)} / ${fmtNumber(total)}`;
    return h("div", { class: "meter-row" }, h("span", { class: "meter-name" }, name), meter(used, total, text));
  }));
}

function storeText(store) {
  const parts = [`${fmtBytes(store.used)} / ${fmtBytes(store.capacity)}`, `${fmtNumber(store.objects)} objects`];
  if (store.spilled) parts.push(`${fmtBytes(store.spilled)} spilled`);
  if (store.fallback) parts.push(`${fmtBytes(store.fallback)} fallback`);
  return parts.join(", ");
}

function componentTable(node) {
  return table([
    { title: "Component", get: (c) => c.name },
    { title: "Pid", get: (c) => c.pid, class: "num" },
    { title: "Memory (RSS)", get: (c) => fmtBytes(c.rss), class: "num" },
  ], node.components, "No processes.");
}

function workerTable(node) {
  return table([
    { title: "Pid", get: (w) => w.pid, class: "num" },
    { title: "Worker", get: (w) => h("code", {}, shortId(w.worker_id)) },
    { title: "State", get: (w) => badge(w.state) },
    { title: "Running", get: (w) => w.running || "–", class: "wide" },
    { title: "Memory (RSS)", get: (w) => fmtBytes(w.rss), class: "num" },
  ], node.workers, "No worker processes.");
}

function nodeCard(node, detail) {
  const title = h("span", {},
    detail ? node.ip : link(`#/cluster/${node.node_id}`, node.ip), " ",
    h("code", { class: "note" }, shortId(node.node_id)), " ",
    node.is_head ? h("span", { class: "tag" }, "head") : null, " ", badge(node.state));
  return h("section", { class: "card node", "data-node-id": node.node_id },
    h("h2", {}, title),
    h("div", { class: "row" },
      h("div", {},
        h("h3", {}, "Resources"), resourceMeters(node),
        h("h3", {}, "Object store"),
        meter(node.store.used, node.store.capacity, storeText(node.store)),
        h("h3", {}, "Host memory"),
        meter(node.memory.used, node.memory.total, `${fmtBytes(node.memory.used)} / ${fmtBytes(node.memory.total)}`)),
      h("div", {}, h("h3", {}, "Memory by component"), componentTable(node))),
    h("h3", {}, `Worker processes (${node.workers.length})`), workerTable(node));
}

function shape(resources) {
  return Object.keys(resources).sort().map((k) => `${k}: ${fmtNumber(resources[k])}`).join(", ") || "–";
}

function lines(items, empty) {
  return items.length ? h("ul", {}, ...items.map((text) => h("li", {}, text))) : h("p", { class: "note" }, empty);
}

// The autoscaler: node types (active / idle / pending of min..max), demands, verdicts, events.
function autoscalerCard(a) {
  const state = a.running ? "RUNNING" : "STOPPED";
  return h("section", { class: "card autoscaler" },
    h("h2", {}, "Autoscaler ", h("code", { class: "note" }, a.cluster_name || ""), " ", badge(state)),
    table([
      { title: "Node type", get: (t) => t.head ? h("span", {}, t.name, " ", h("span", { class: "tag" }, "head")) : t.name },
      { title: "Resources", get: (t) => shape(t.resources) },
      { title: "Active", get: (t) => t.active, class: "num" },
      { title: "Idle", get: (t) => t.idle, class: "num" },
      { title: "Pending", get: (t) => t.pending, class: "num" },
      { title: "Min..max", get: (t) => t.head ? "–" : `${t.min_workers}..${t.max_workers}`, class: "num" },
    ], a.node_types, "No node types."),
    h("h3", {}, "Pending demands"), lines(a.demands, "No resource demands."),
    a.infeasible.length ? h("h3", {}, "Infeasible (no node type can run these)") : null,
    a.infeasible.length ? lines(a.infeasible.map(([what, why]) => `${what}: ${why}`), "") : null,
    a.waiting.length ? h("h3", {}, "Waiting for a limit") : null,
    a.waiting.length ? lines(a.waiting.map(([what, why]) => `${what}: ${why}`), "") : null,
    a.kept && a.kept.length ? h("h3", {}, "Idle nodes kept past the idle timeout") : null,
    a.kept && a.kept.length ? lines(a.kept.map(([node, type, why]) => `${node.slice(0, 12)} (${type}): ${why}`), "") : null,
    a.failures.length ? h("h3", {}, "Launch failures") : null,
    a.failures.length ? lines(a.failures.map((f) => `${f.node_type}: ${f.reason}`), "") : null,
    h("h3", {}, "Recent scaling events"),
    lines(a.events.map((e) => `${new Date(e.time * 1000).toLocaleTimeString()} ${e.kind}: ${e.message}`), "None yet."));
}

export function render(root) {
  const body = h("div");
  root.append(h("h1", {}, "Cluster"), body);
  const poller = new Poller("/api/ui/nodes", 2000, (data) => {
    fill(body, h("p", { class: "summary" },
      `${data.nodes.filter((n) => n.state === "ALIVE").length} ALIVE, ` +
      `${data.nodes.filter((n) => n.state !== "ALIVE").length} DEAD`),
    data.autoscaler ? autoscalerCard(data.autoscaler) : null,
    ...data.nodes.map((n) => nodeCard(n, false)));
  }, (err) => fill(body, errorBox(err)));
  return () => poller.stop();
}

export function renderNode(root, params) {
  const body = h("div");
  const logs = h("div");
  root.append(h("p", {}, link("#/cluster", "← Cluster")), h("h1", {}, "Node"), body, card("Log files", logs));
  const poller = new Poller(`/api/ui/nodes/${encodeURIComponent(params[0])}`, 2000, (data) => {
    fill(body, nodeCard(data.node, true));
    fill(logs, nodeLogTable(data.node));
  }, (err) => fill(body, errorBox(err)));
  return () => poller.stop();
}
