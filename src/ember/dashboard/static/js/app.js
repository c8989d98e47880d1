// The dashboard's router: `#/<view>/<params...>` picks a view; each view renders into
// <main> and returns a function that stops its pollers when the user leaves it.

import { h, clear } from "./lib.js";
import * as overview from "./views/overview.js";
import * as cluster from "./views/cluster.js";
import * as jobs from "./views/jobs.js";
import * as stream from "./views/stream.js";
import * as actors from "./views/actors.js";
import * as logs from "./views/logs.js";

const ROUTES = {
  overview: { nav: "overview", list: overview.render },
  cluster: { nav: "cluster", list: cluster.render, item: cluster.renderNode },
  jobs: { nav: "jobs", list: jobs.render, item: jobs.renderJob },
  stream: { nav: "stream", list: stream.render },
  actors: { nav: "actors", list: actors.render, item: actors.renderActor },
  logs: { nav: "logs", list: logs.render, item: logs.render },
};

let cleanup = null;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const name = ROUTES[parts[0]] ? parts[0] : "overview";
  const spec = ROUTES[name];
  const params = parts.slice(1);
  if (cleanup) cleanup();
  cleanup = null;
  const root = clear(document.getElementById("view"));
  document.documentElement.dataset.shown = "0";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.view === spec.nav);
  }
  const render = params.length && spec.item ? spec.item : spec.list;
  document.title = `Ember · ${name}`;
  try {
    cleanup = render(root, params) || null;
  } catch (err) {
    root.append(h("div", { class: "error" }, String(err)));
  }
}

window.addEventListener("hashchange", route);
route();
