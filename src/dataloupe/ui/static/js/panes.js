// The run view's side panes: grid + actions, sample detail, confusion matrix, curves.
import { getJSON, getPoints, postJSON, enc, imageURL, thumbURL } from "./api.js";
import { lineChart } from "./charts.js";
import { h, toast, showDiff, revertTo, confirmDialog } from "./ui.js";

// Edits over more samples than this ask to confirm, stating the count.
export const CONFIRM_OVER = 10;

const ACTIONS = [
  ["set_label", "set label"], ["undefine", "mark undefined"], ["exclude", "exclude"], ["include", "include"],
  ["accept_pseudo_labels", "accept pseudo-labels"], ["accept_suggested_labels", "accept suggested labels"],
];

export class Panes {
  constructor(view) {
    this.v = view;
    const tab = (id, label) => h("button", { id: `tab-${id}`, onclick: () => this.show(id) }, label);
    this.labelSel = h("select", { id: "action-label" });
    this.msg = h("input", { type: "text", id: "action-message", placeholder: "revision message (optional)" });
    this.tagInp = h("input", { type: "text", id: "action-tag", placeholder: "tag", size: 8 });
    this.actions = h("div", { class: "actions", id: "actions" },
      h("strong", {}, "Selection:"), "label", this.labelSel,
      ACTIONS.map(([a, label]) => h("button", { id: `act-${a}`, onclick: () => this.act(a) }, label)),
      this.tagInp, h("button", { id: "act-tag", onclick: () => this.tag(true) }, "add tag"),
      h("button", { id: "act-untag", onclick: () => this.tag(false) }, "remove tag"), this.msg);
    this.panes = {
      grid: h("div", { class: "pane", id: "pane-grid" }, this.actions, view.gridTools, view.gridEl),
      detail: h("div", { class: "pane detail", id: "pane-detail" }, h("p", { class: "muted" }, "Click a point or a grid cell.")),
      confusion: h("div", { class: "pane", id: "pane-confusion" }),
      curves: h("div", { class: "pane", id: "pane-curves" }),
      compare: h("div", { class: "pane", id: "pane-compare" }),
      pairs: h("div", { class: "pane", id: "pane-pairs" }),
    };
    view.side.replaceChildren(h("div", { class: "tabs" }, tab("grid", "grid"), tab("detail", "sample"), tab("confusion", "confusion"), tab("compare", "compare"), tab("pairs", "pairs"), tab("curves", "curves")),
      ...Object.values(this.panes));
    this.show("grid");
  }

  show(id) {
    this.current = id;
    for (const [k, el] of Object.entries(this.panes)) el.classList.toggle("on", k === id);
    for (const b of this.v.side.querySelectorAll(".tabs button")) b.classList.toggle("on", b.id === `tab-${id}`);
    if (id === "grid") this.v.grid.render();
    if (id === "confusion") this.confusion();
    if (id === "curves") this.curves();
    if (id === "compare") this.compare();
    if (id === "pairs") this.pairs();
  }

  showGrid() { if (this.current !== "grid") this.show("grid"); }

  refresh() {
    const v = this.v;
    if (!v.H) return;
    const keep = this.labelSel.value;
    this.labelSel.replaceChildren(...v.H.table_classes.map((c) => h("option", { value: c, selected: c === keep }, c)));
    if (this.current === "confusion") this.confusion();
    if (this.current === "compare" && this.other) this.compareTable();
  }

  /**
   * Apply an action as one revision. ids: the samples (default: the selection; with nothing
   * selected, every filtered sample — after asking). Edits over CONFIRM_OVER samples ask
   * first. advance: after the edit, the sample view moves to the next sample of the grid.
   */
  async act(action, { ids = null, label = null, advance = false } = {}) {
    const v = this.v;
    if (v.revision !== v.latest) {
      toast(`you are looking at revision ${v.revision}; switch to the latest (r${v.latest}) to edit`, [["go to latest", () => v.reload(null)]], true);
      return;
    }
    const what = ACTIONS.find(([a]) => a === action)[1];
    if (!ids) {
      ids = v.selectedIds();
      if (!ids.length) {
        if (v.selCount) { toast("the selected samples are all hidden by the filters", [], true); return; }
        ids = v.visibleIds();
        if (!ids.length) { toast("no samples are shown", [], true); return; }
        const ok = await confirmDialog(`Nothing is selected. Apply “${what}${action === "set_label" ? " " + (label ?? this.labelSel.value) : ""}” to all ${ids.length.toLocaleString()} samples the filters show?`,
          `${what} ${ids.length.toLocaleString()} samples`);
        if (!ok) return;
      } else if (ids.length > CONFIRM_OVER) {
        const ok = await confirmDialog(`Apply “${what}${action === "set_label" ? " " + (label ?? this.labelSel.value) : ""}” to ${ids.length.toLocaleString()} selected samples?`,
          `${what} ${ids.length.toLocaleString()} samples`);
        if (!ok) return;
      }
    } else if (ids.length > CONFIRM_OVER) {
      const ok = await confirmDialog(`Apply “${what}${label ? " " + label : ""}” to ${ids.length.toLocaleString()} samples?`, `${what} ${ids.length.toLocaleString()} samples`);
      if (!ok) return;
    }
    const body = { action, ids, expected_revision: v.latest, message: this.msg.value || null };
    if (action === "set_label") body.label = label ?? this.labelSel.value;
    if (action.startsWith("accept_")) body.run = v.run;
    window.__dl.ready = false;
    try {
      const r = await postJSON(`/api/tables/${enc(v.table)}/actions`, body);
      this.msg.value = "";
      if (!r.committed) {
        window.__dl.lastAction = r; window.__dl.ready = true; toast(`${r.message} (${r.matched} selected)`);
        if (advance) this.step(1);
        return;
      }
      const skipped = r.skipped.map((s) => `${s.count} skipped: ${s.reason}`).join("; ");
      await v.reload(r.revision);
      if (advance) this.step(1);
      window.__dl.lastAction = r;
      toast(`revision ${r.revision}: ${r.message}${skipped ? " — " + skipped : ""}`, [
        ["diff", () => showDiff(v.table, r.previous_revision, r.revision)],
        ["revert", () => revertTo(v.table, r.previous_revision, (x) => v.reload(x.revision))],
      ]);
    } catch (e) {
      window.__dl.ready = true;
      const buttons = e.status === 409 ? [["reload", () => v.reload(null)]] : [];
      toast(e.message, buttons, true);
    }
  }

  /** Tags and comments: one revision, like every edit. */
  async notes(ids, body, what) {
    const v = this.v;
    if (v.revision !== v.latest) { toast(`switch to the latest revision (r${v.latest}) to edit`, [["go to latest", () => v.reload(null)]], true); return null; }
    if (ids.length > CONFIRM_OVER && !(await confirmDialog(`${what} on ${ids.length.toLocaleString()} samples?`, `${what} ${ids.length.toLocaleString()} samples`))) return null;
    window.__dl.ready = false;
    try {
      const r = await postJSON(`/api/tables/${enc(v.table)}/notes`, { ids, expected_revision: v.latest, ...body });
      if (r.committed) await v.reload(r.revision);
      window.__dl.lastAction = r;
      window.__dl.ready = true;
      toast(r.committed ? `revision ${r.revision}: ${r.message}` : r.message,
        r.committed ? [["diff", () => showDiff(v.table, r.previous_revision, r.revision)]] : []);
      return r;
    } catch (e) {
      window.__dl.ready = true;
      toast(e.message, e.status === 409 ? [["reload", () => v.reload(null)]] : [], true);
      return null;
    }
  }

  async tag(add) {
    const v = this.v, tag = this.tagInp.value.trim();
    if (!tag) { toast("type a tag first", [], true); return; }
    const ids = v.selectedIds();
    if (!ids.length) { toast("select samples to tag", [], true); return; }
    await this.notes(ids, add ? { add_tags: [tag] } : { remove_tags: [tag] }, `${add ? "tag" : "untag"} “${tag}”`);
    v.refreshTags();
  }

  /** Move the sample view to the next (+1) or previous (-1) sample of the grid. */
  step(delta) {
    const v = this.v, items = v.items;
    if (!items.length) return;
    let pos = items.indexOf(this.detailIndex);
    if (pos < 0) pos = Math.min(Math.max(v.grid.cursor, 0), items.length - 1) - (delta > 0 ? 1 : 0);
    pos = Math.max(0, Math.min(items.length - 1, pos + delta));
    v.grid.cursor = pos;
    this.detail(items[pos]);
  }

  async detail(i, focus = true) {
    const v = this.v, id = v.C.id[i];
    this.detailIndex = i;
    const pos = v.items.indexOf(i);
    if (pos >= 0) v.grid.cursor = pos;
    this.show("detail");
    const seq = (this.detailSeq = (this.detailSeq || 0) + 1);
    const pane = this.panes.detail;
    pane.replaceChildren(h("p", { class: "muted" }, `loading sample ${id}…`));
    try {
      const [d, hist, notes] = await Promise.all([
        getJSON(`/api/runs/${enc(v.run)}/samples/${id}`, { table: v.table }),
        getJSON(`/api/tables/${enc(v.table)}/samples/${id}/history`),
        getJSON(`/api/tables/${enc(v.table)}/samples/${id}/notes`),
      ]);
      if (seq !== this.detailSeq) return;  // a newer sample was asked for meanwhile
      const m = d.metrics, cls = v.H.classes;
      const rows = ["label", "predicted", "confidence", "loss", "margin", "entropy", "aum", "forgetting", "cluster", "split", "suggested_label", "pseudo_label"]
        .filter((k) => m[k] !== undefined && m[k] !== null)
        .map((k) => h("tr", {}, h("th", {}, k), h("td", {}, typeof m[k] === "number" && !Number.isInteger(m[k]) ? m[k].toFixed(4) : m[k])));
      const current = v.C.label[i] < 0 ? "(undefined)" : cls[v.C.label[i]];
      const keys = h("div", { class: "labelkeys", id: "detail-keys" },
        v.H.table_classes.slice(0, 9).map((c, k) => h("button", { "data-key": k + 1, class: v.C.label[i] === cls.indexOf(c) ? "on" : "",
          onclick: () => this.act("set_label", { ids: [id], label: c, advance: true }) }, h("kbd", {}, k + 1), " ", c)),
        h("button", { onclick: () => this.act("undefine", { ids: [id], advance: true }) }, h("kbd", {}, "u"), " undefined"),
        h("button", { onclick: () => this.act("exclude", { ids: [id], advance: true }) }, h("kbd", {}, "x"), " exclude"));
      const big = h("img", { class: "big", id: "detail-image", src: imageURL(v.table, id), alt: `sample ${id}`, title: "click to zoom",
        onclick: () => big.classList.toggle("zoom") });
      const pos = v.items.indexOf(i);
      pane.replaceChildren(...[
        h("div", { class: "detail-nav" },
          h("button", { id: "detail-prev", onclick: () => this.step(-1) }, "← prev"),
          h("span", { class: "muted" }, pos >= 0 ? `${pos + 1} of ${v.items.length.toLocaleString()} in the grid` : ""),
          h("button", { id: "detail-next", onclick: () => this.step(1) }, "next →"),
          h("button", { onclick: () => this.show("grid") }, "back to grid (Esc)"),
          h("button", { id: "detail-similar", title: "select this sample and its 50 nearest neighbours", onclick: () => this.similar(i) }, "find similar")),
        h("h2", {}, `sample ${id}`, h("span", { class: "muted" }, ` · label now ${current}${v.C.excluded[i] ? " · excluded" : ""}`)),
        keys,
        big,
        h("div", { class: "notes", id: "detail-notes" },
          h("div", {}, "tags: ", notes.tags.length ? notes.tags.map((t) => h("span", { class: "tagchip" }, t)) : h("span", { class: "muted" }, "none")),
          (() => {
            const ta = h("textarea", { id: "detail-comment", rows: 2, placeholder: "comment (saved as a revision)" });
            ta.value = notes.comment || "";
            return h("div", {}, ta, h("button", { id: "detail-save-comment", onclick: () => this.notes([id],
              ta.value.trim() ? { comment: ta.value.trim() } : { clear_comment: true }, "comment") }, "save comment"));
          })()),
        m.findings.length ? h("p", { class: "bad" }, "findings: " + m.findings.join(", ")) : null,
        h("table", { id: "detail-metrics" }, rows),
        m.top ? h("div", {}, h("h3", {}, "top classes"), h("table", {}, m.top.map((t) => h("tr", {}, h("td", {}, t.class), h("td", {}, (100 * t.p).toFixed(1) + "%"))))) : null,
        h("h3", {}, `nearest neighbours (${d.neighbour_method})`),
        h("div", { class: "nbrs" }, d.neighbours.map((nb) => h("img", { src: thumbURL(v.table, nb.id), title: `id ${nb.id}`,
          onclick: () => { const k = indexOfId(v.C.id, nb.id); if (k >= 0) this.detail(k); } }))),
        h("h3", {}, "label across revisions"),
        h("table", { id: "detail-history" }, hist.revisions.map((r) => h("tr", {}, h("td", {}, `r${r.revision}`),
          h("td", {}, r.present ? r.label ?? "(undefined)" : "(absent)"), h("td", {}, r.weight === 0 ? "excluded" : ""),
          h("td", { class: "muted" }, r.message))))].filter((x) => x !== null));
    } catch (e) {
      pane.replaceChildren(h("p", { class: "bad" }, e.message));
    }
  }

  confusion() {
    const v = this.v, pane = this.panes.confusion;
    if (!v.H) return;
    const K = v.H.classes.length, counts = new Uint32Array(K * K), L = v.C.label, P = v.C.predicted, f = v.flags;
    for (let i = 0; i < v.n; i++) if (f[i] & 1 && L[i] >= 0 && P[i] >= 0) counts[L[i] * K + P[i]]++;
    let max = 1;
    for (const c of counts) if (c > max) max = c;
    const cls = v.H.classes;
    if (K > 40) { pane.replaceChildren(h("p", {}, `${K} classes: too many for a matrix view`)); return; }
    const cell = (a, b) => {
      const c = counts[a * K + b], t = Math.sqrt(c / max);
      const bg = a === b ? `rgba(21,128,61,${0.1 + 0.8 * t})` : `rgba(185,28,28,${c ? 0.1 + 0.8 * t : 0})`;
      return h("td", { style: `background:${bg};color:${t > 0.6 ? "#fff" : "#222"}`, "data-label": a, "data-pred": b, title: `label ${cls[a]}, predicted ${cls[b]}: ${c}`,
        onclick: () => this.selectCell(a, b) }, !c ? "" : this.normalise ? (100 * c / Math.max(this.rowTotals[a], 1)).toFixed(0) : c);
    };
    const norm = this.normalise;
    if (norm) {  // row-normalised: the share of each label's samples predicted as each class
      const rows = new Float64Array(K);
      for (let a = 0; a < K; a++) for (let b = 0; b < K; b++) rows[a] += counts[a * K + b];
      this.rowTotals = rows;
    }
    const toggle = h("label", { class: "muted" }, h("input", { type: "checkbox", id: "confusion-norm", checked: !!norm,
      onchange: (e) => { this.normalise = e.target.checked; this.confusion(); } }), " normalise rows");
    pane.replaceChildren(h("p", { class: "muted" }, "rows: label (current revision) · columns: predicted (numbered as the rows) · click a cell to select its samples · ", toggle),
      h("table", { class: "confusion", id: "confusion" },
        h("colgroup", {}, h("col", { class: "names" }), cls.map(() => h("col", {}))),
        h("tr", {}, h("th", {}, ""), cls.map((c, k) => h("th", { title: `predicted ${c}` }, String(k + 1)))),
        cls.map((c, a) => h("tr", {}, h("th", { title: c }, `${a + 1} ${c}`), cls.map((_, b) => cell(a, b))))),
      perClass(counts, cls));
  }

  // ---- near-duplicate and leakage pairs, side by side ------------------------------------
  async pairs() {
    const v = this.v, pane = this.panes.pairs;
    pane.replaceChildren(h("p", { class: "muted" }, "loading pairs…"));
    const pairs = await getJSON(`/api/runs/${enc(v.run)}/pairs`);
    const img = (s) => h("img", { src: thumbURL(s.table, s.id), title: `${s.table} #${s.id}`, alt: "" });
    const row = (p) => h("div", { class: "pair-row" },
      h("div", { class: "pair-imgs" }, img(p.a), img(p.b)),
      h("div", {}, h("strong", {}, p.kind), h("br"), `${p.a.table} #${p.a.id} · ${p.b.table} #${p.b.id}`, h("br"),
        p.exact ? "same file bytes" : `similarity ${(p.similarity ?? 0).toFixed(3)}`, h("br"),
        h("button", { class: "pair-select", onclick: () => {
          const idx = [p.a, p.b].filter((s) => s.table === v.table).map((s) => v.indexOf(s.id)).filter((i) => i >= 0);
          v.setSelection(idx);
        } }, "select on the map")));
    pane.replaceChildren(h("p", { class: "muted" }, `${pairs.length} pairs from the run's analysis (near duplicates within a table; leakage: validation ↔ training)`),
      h("div", { id: "pairs" }, pairs.map(row)));
  }

  /** Select the samples most similar to sample i (nearest neighbours in embedding space). */
  async similar(i, k = 50) {
    const v = this.v, id = v.C.id[i];
    const d = await getJSON(`/api/runs/${enc(v.run)}/samples/${id}`, { table: v.table, k });
    const idx = [i, ...d.neighbours.map((nb) => v.indexOf(nb.id)).filter((j) => j >= 0)];
    v.setSelection(idx);
    toast(`selected sample ${id} and its ${idx.length - 1} nearest neighbours (${d.neighbour_method})`);
  }

  // ---- compare this run with another on the same table, sample by sample ----------------
  async compare() {
    const v = this.v, pane = this.panes.compare;
    if (!this.runsList) {
      const runs = await getJSON("/api/runs");
      this.runsList = runs.filter((r) => r.run !== v.run && (r.metrics_tables || []).includes(v.table)).map((r) => r.run);
    }
    const sel = h("select", { id: "compare-run", onchange: (e) => this.loadOther(e.target.value) },
      h("option", { value: "" }, this.runsList.length ? "choose a run…" : "no other run has metrics on this table"),
      this.runsList.map((r) => h("option", { value: r, selected: this.other && this.other.run === r }, r)));
    this.compareBody = h("div", { id: "compare-body" });
    pane.replaceChildren(h("p", {}, `Compare ${v.run} with `, sel), this.compareBody);
    if (this.other) this.compareTable();
  }

  async loadOther(run) {
    const v = this.v;
    if (!run) { this.other = null; this.compareBody.replaceChildren(); return; }
    this.compareBody.replaceChildren(h("p", { class: "muted" }, `loading ${run}…`));
    const pts = await getPoints(run, v.table, v.revision);
    // the other run's prediction per point of this view (by id; -1 where it has none)
    const pred = new Int16Array(v.n).fill(-1), oid = pts.cols.id, op = pts.cols.predicted, ocls = pts.header.classes;
    const remap = ocls.map((c) => v.H.classes.indexOf(c));
    let j = 0;
    for (let i = 0; i < v.n; i++) {
      const id = v.C.id[i];
      while (j < oid.length && oid[j] < id) j++;
      if (j < oid.length && oid[j] === id && op[j] >= 0) pred[i] = remap[op[j]];
    }
    this.other = { run, pred };
    window.__dl.compare = this.other;
    this.compareTable();
  }

  /** Groups of visible labeled samples: right in both, fixed, broken, wrong in both. */
  compareGroups() {
    const v = this.v, L = v.C.label, A = v.C.predicted, B = this.other.pred, g = { both: [], fixed: [], broken: [], neither: [] };
    for (let i = 0; i < v.n; i++) {
      if (!(v.flags[i] & 1) || L[i] < 0 || B[i] < 0) continue;
      const a = A[i] === L[i], b = B[i] === L[i];
      g[a && b ? "both" : a ? "fixed" : b ? "broken" : "neither"].push(i);
    }
    return g;
  }

  compareTable() {
    const v = this.v, o = this.other, g = this.compareGroups();
    const row = (key, text) => h("tr", { class: "clickable", "data-group": key, onclick: () => v.setSelection(g[key]) },
      h("td", {}, text), h("td", { class: "num" }, g[key].length.toLocaleString()));
    const n = g.both.length + g.fixed.length + g.broken.length + g.neither.length;
    const acc = (k1, k2) => (n ? (100 * (g[k1].length + g[k2].length) / n).toFixed(1) + "%" : "–");
    this.compareBody.replaceChildren(
      h("p", { class: "muted" }, `${n.toLocaleString()} labeled samples shown by the filters, predicted by both runs · click a row to select them`),
      h("table", { id: "compare-table" },
        row("fixed", `right in ${v.run}, wrong in ${o.run}`), row("broken", `wrong in ${v.run}, right in ${o.run}`),
        row("both", "right in both"), row("neither", "wrong in both")),
      h("p", {}, `top-1 on these: ${v.run} ${acc("both", "fixed")}, ${o.run} ${acc("both", "broken")}`));
  }

  selectCell(a, b) {
    const v = this.v, out = [];
    for (let i = 0; i < v.n; i++) if (v.flags[i] & 1 && v.C.label[i] === a && v.C.predicted[i] === b) out.push(i);
    v.setSelection(out);
  }

  curves() {
    const v = this.v, pane = this.panes.curves, hist = v.info.history || [];
    const loss = h("canvas", { id: "curve-loss" }), acc = h("canvas", { id: "curve-acc" });
    pane.replaceChildren(h("h3", {}, `training curves · ${v.info.run} · best val top-1 ${typeof v.info.best_val_top1 === "number" ? (100 * v.info.best_val_top1).toFixed(2) + "%" : "–"}`),
      h("h3", {}, "loss"), loss, h("h3", {}, "top-1"), acc);
    if (this.current !== "curves") return;
    const pts = (k) => hist.filter((e) => typeof e[k] === "number").map((e) => [e.epoch, e[k]]);  // eval_every skips
    lineChart(loss, [{ name: "train loss", points: pts("train_loss") }, { name: "val loss", points: pts("val_loss") }]);
    lineChart(acc, [{ name: "train top-1", points: pts("train_top1") }, { name: "val top-1", points: pts("val_top1") }], { pct: true });
  }
}

/** Per-class precision, recall, F1 and support from a K×K count matrix (rows: label). */
function perClass(counts, cls) {
  const K = cls.length, pct = (x) => (Number.isFinite(x) ? (100 * x).toFixed(1) : "–");
  const rows = cls.map((c, k) => {
    let tp = counts[k * K + k], sup = 0, pred = 0;
    for (let j = 0; j < K; j++) { sup += counts[k * K + j]; pred += counts[j * K + k]; }
    const p = tp / pred, r = tp / sup, f = (2 * p * r) / (p + r);
    return h("tr", {}, h("th", { title: c }, c), h("td", { class: "num" }, pct(p)), h("td", { class: "num" }, pct(r)),
      h("td", { class: "num" }, pct(f)), h("td", { class: "num" }, sup));
  });
  return h("table", { class: "perclass", id: "per-class" },
    h("tr", {}, ["class", "precision %", "recall %", "F1 %", "support"].map((x) => h("th", {}, x))), rows);
}

/** Position of `id` in the sorted id column `ids` (binary search), -1 when absent. */
export function indexOfId(ids, id) {
  let lo = 0, hi = ids.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (ids[mid] === id) return mid;
    if (ids[mid] < id) lo = mid + 1; else hi = mid - 1;
  }
  return -1;
}
