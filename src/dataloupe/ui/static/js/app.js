// Entry point: hash router (#/ project, #/run/<run>?table=...) and the project view.
import { getJSON, enc } from "./api.js";
import { lineChart } from "./charts.js";
import { h, status, showDiff, revertTo, toast } from "./ui.js";
import { RunView } from "./run.js";
import { ReviewView } from "./review.js";
import { LoopView } from "./loop.js";

const view = document.getElementById("view");
const crumbs = document.getElementById("crumbs");
window.__dl = { ready: false };  // test/benchmark hooks

async function projectView() {
  crumbs.replaceChildren();
  status("loading project…");
  const [proj, tables, runs, loops] = await Promise.all([getJSON("/api/project"), getJSON("/api/tables"), getJSON("/api/runs"),
    getJSON("/api/loops")]);
  status(proj.root);
  const logs = await Promise.all(tables.map((t) => getJSON(`/api/tables/${enc(t.name)}/log`)));
  const chart = h("canvas", { id: "acc-chart" });
  const page = h("div", { class: "project" },
    h("section", { class: "card wide" }, h("h2", {}, "Validation top-1 per run (train table revision)"), chart),
    h("section", { class: "card", id: "tables" }, h("h2", {}, `Tables (${tables.length})`),
      tables.length ? tables.map((t, k) => tableCard(t, logs[k])) : h("p", { class: "muted" }, "No tables yet: dataloupe table import …")),
    h("section", { class: "card", id: "runs" }, h("h2", {}, `Runs (${runs.length})`), runsTable(runs)),
    loops.length ? h("section", { class: "card wide", id: "loops" }, h("h2", {}, `Loops (${loops.length})`),
      h("table", {}, h("tr", {}, ["loop", "train", "val", "policy", "iterations", "best val top-1", "stopped"].map((x) => h("th", {}, x))),
        loops.map((l) => h("tr", {}, h("td", {}, h("a", { href: `#/loop/${enc(l.loop)}` }, l.loop)), h("td", {}, l.train), h("td", {}, l.val),
          h("td", {}, l.policy), h("td", {}, l.iterations),
          h("td", {}, typeof l.best_val_top1 === "number" ? (100 * l.best_val_top1).toFixed(2) + "%" : "–"),
          h("td", { class: "muted" }, l.stopped || "running"))))) : null);
  view.replaceChildren(page);
  const done = runs.filter((r) => typeof r.best_val_top1 === "number");
  const labels = {};
  done.forEach((r, i) => { labels[i] = `${r.run} (${r.train_table}@${r.train_revision})`; });
  // one line per validation table: accuracies on different tables are not comparable
  const byVal = new Map();
  done.forEach((r, i) => {
    const key = `val top-1 on ${r.val_table ?? "?"}${r.val_revision !== undefined ? "@" + r.val_revision : ""}`;
    if (!byVal.has(key)) byVal.set(key, []);
    byVal.get(key).push([i, r.best_val_top1]);
  });
  window.__dl.accChart = lineChart(chart, [...byVal].map(([name, points]) => ({ name, points })),
    { labels, pct: true, valueLabels: true, empty: "no finished runs yet: dataloupe train …" });
  window.__dl.ready = true;
}

function tableCard(t, log) {
  const rows = [...log].reverse().map((e) => h("tr", {},
    h("td", {}, `r${e.revision}`), h("td", {}, e.message), h("td", { class: "muted" }, fmtChanges(e.changes)),
    h("td", { class: "muted" }, (e.tags || []).join(", ")),
    h("td", {}, e.parent ? h("button", { onclick: () => showDiff(t.name, e.parent, e.revision) }, "diff") : "",
      e.revision !== t.revision ? h("button", { onclick: () => revertTo(t.name, e.revision, route) }, "revert to") : "")));
  return h("div", { class: "table-card" },
    h("h3", {}, `${t.name} `, h("span", { class: "muted" }, `revision ${t.revision} · ${t.rows} rows · ${t.classes.length} classes`)),
    h("details", { class: "log", open: log.length <= 6 }, h("summary", {}, `${log.length} revisions`),
      h("table", {}, rows)));
}

function fmtChanges(c) {
  return Object.entries(c || {}).map(([k, v]) => `${k} ${v}`).join(", ");
}

function runsTable(runs) {
  if (!runs.length) return h("p", { class: "muted" }, "No runs yet: dataloupe train …");
  return h("table", {}, h("tr", {}, ...["run", "status", "train table", "val top-1", "epochs", "metrics", ""].map((x) => h("th", {}, x))),
    runs.map((r) => h("tr", {},
      h("td", {}, (r.metrics_tables || []).length ? h("a", { href: `#/run/${enc(r.run)}` }, r.run) : r.run),
      h("td", {}, r.status), h("td", {}, `${r.train_table ?? "?"}@${r.train_revision ?? "?"}`),
      h("td", {}, typeof r.best_val_top1 === "number" ? (100 * r.best_val_top1).toFixed(2) + "%" : "–"),
      h("td", {}, r.kind === "ensemble" ? `ensemble of ${(r.members || []).length}` : r.kind === "memory" ? `${r.base} + kNN` : `${r.epochs_done ?? "?"}/${r.epochs ?? "?"}`),
      h("td", {}, (r.metrics_tables || []).join(", ") || "–"),
      h("td", {}, (r.metrics_tables || []).includes(r.train_table) ? h("a", { href: `#/review/${enc(r.run)}`, class: "review-link" }, "review queue") : ""))));
}

let current = null;
async function route() {
  window.__dl.ready = false;
  if (current) current.destroy();
  current = null;
  const m = location.hash.match(/^#\/run\/([^?]+)(?:\?(.*))?$/);
  const rv = location.hash.match(/^#\/review\/([^?]+)(?:\?(.*))?$/);
  const lp = location.hash.match(/^#\/loop\/([^?]+)$/);
  try {
    if (lp) {
      const name = decodeURIComponent(lp[1]);
      crumbs.replaceChildren(h("a", { href: "#/" }, "project"), " / ", `loop ${name}`);
      current = new LoopView(view, name);
      await current.load();
    } else if (rv) {
      const run = decodeURIComponent(rv[1]);
      const p = new URLSearchParams(rv[2] || "");
      crumbs.replaceChildren(h("a", { href: "#/" }, "project"), " / ", h("a", { href: `#/run/${enc(run)}` }, `run ${run}`), " / review");
      current = new ReviewView(view, run, p.get("table"), p.get("strategy"), p.get("recheck"));
      window.__dl.review = current;
      await current.load();
    } else if (m) {
      const run = decodeURIComponent(m[1]);
      const p = new URLSearchParams(m[2] || "");
      crumbs.replaceChildren(h("a", { href: "#/" }, "project"), " / ", `run ${run}`);
      current = new RunView(view, run, p.get("table"), p.get("revision"), p);
      window.__dl.run = current;
      await current.load();
    } else await projectView();
  } catch (e) {
    status("");
    view.replaceChildren(h("div", { class: "card", style: "margin:12px" }, h("h2", { class: "bad" }, "Error"), e.message));
    toast(e.message, [], true);
    window.__dl.error = e.message;
  }
}
window.addEventListener("hashchange", route);
route();
