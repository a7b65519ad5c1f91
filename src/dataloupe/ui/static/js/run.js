// The run view: embedding map, filter panel, selection, image grid and the side panes.
// All filtering, colouring, sorting and the confusion matrix run in the browser over the
// typed-array columns from /api/runs/<run>/points; the server is asked again only after
// an edit (new revision) or when another revision is chosen.
import { getJSON, getPoints, enc, thumbURL } from "./api.js";
import { Loading } from "./loading.js";
import { cat, css, fillColors, range, RAMP_LUT, NONE } from "./colors.js";
import { ImageGrid } from "./grid.js";
import { Scatter } from "./scatter.js";
import { h, status, toast } from "./ui.js";
import { Panes, indexOfId } from "./panes.js";

const METRICS = ["confidence", "loss", "aum"];
const COLOR_BY = ["label", "predicted", "correct", "confidence", "loss", "aum", "finding", "cluster", "excluded", "changed"];

export class RunView {
  constructor(root, run, table, revision, params = null) {
    this.root = root;
    this.urlParams = params || new URLSearchParams();
    this.run = run;
    this.table = table;
    this.revision = revision ? Number(revision) : null;
    this.mode = "pan";
    this.colorBy = "label";
    this.sortBy = "id";
    this.sortDesc = false;
    this.cleanup = [];
  }

  destroy() { for (const fn of this.cleanup) fn(); }

  async load() {
    performance.mark("dl:load-start");
    this.loading = new Loading(this.root, `loading run ${this.run}`);
    try {
      this.loading.phase("reading the run");
      this.info = await getJSON(`/api/runs/${enc(this.run)}`);
      const tables = this.info.metrics_tables;
      if (!tables.length) throw new Error(`run ${this.run} has no per-sample metrics yet (dataloupe collect)`);
      if (!this.table || !tables.includes(this.table)) this.table = tables.includes(this.info.train_table) ? this.info.train_table : tables[0];
      this.layout();
      this.loading.attach(this.root.querySelector(".mapbox"));
      this.panes = new Panes(this);
      this.panes.curves();
      await this.reload(this.revision, true);
    } finally {
      this.loading.done();
    }
    this.applyUrlState(this.urlParams);
    this.urlReady = true;
    this.refreshTags().catch((e) => toast(`tags: ${e.message}`, [], true));  // in the background
  }

  // ---- the view in the URL: filters, colour, sort, selection and revision ------------
  urlState() {
    const f = this.filterEl, p = new URLSearchParams();
    p.set("table", this.table);
    if (this.revision !== this.latest) p.set("revision", this.revision);
    for (const [name, key] of [["label", "nolabel"], ["predicted", "nopred"]]) {
      const off = [...f.querySelectorAll(`input[name=${name}]`)].filter((c) => !c.checked).map((c) => c.value);
      if (off.length) p.set(key, off.join(","));
    }
    for (const [id, key] of [["f-correct", "correct"], ["f-undefined", "undef"], ["f-excluded", "excl"], ["f-finding", "finding"]]) {
      const v = f.querySelector("#" + id).value;
      if (v !== "any") p.set(key, v);
    }
    if (f.querySelector("#f-changed").checked) p.set("changed", "1");
    if (f.querySelector("#f-ids").value.trim()) p.set("ids", f.querySelector("#f-ids").value.trim());
    const mq = this.matchQuery();
    if (mq.path) p.set("path", mq.path);
    if (mq.column) { p.set("meta", mq.column); p.set("metav", mq.value); }
    for (const m of METRICS) {
      if (!this.C[m]) continue;
      const lo = f.querySelector(`#r-${m}-lo`), hi = f.querySelector(`#r-${m}-hi`);
      if (+lo.value !== +lo.min || +hi.value !== +hi.max) p.set(m, `${(+lo.value).toPrecision(4)}:${(+hi.value).toPrecision(4)}`);
    }
    if (this.colorBy !== "label") p.set("color", this.colorBy);
    if (this.sortBy !== "id") p.set("sort", this.sortBy);
    if (this.sortDesc) p.set("desc", "1");
    if (this.selCount && this.selCount <= 5000) {
      const ids = [];
      for (let i = 0; i < this.n; i++) if (this.selected[i]) ids.push(this.C.id[i]);
      p.set("sel", ids.join(","));
    }
    return p;
  }

  saveUrl() {
    if (!this.urlReady || this.urlPending) return;
    this.urlPending = true;
    setTimeout(() => {
      this.urlPending = false;
      if (!this.C) return;
      history.replaceState(null, "", `#/run/${enc(this.run)}?${this.urlState()}`);
    }, 150);
  }

  applyUrlState(p) {
    const f = this.filterEl;
    const has = [...p.keys()].some((k) => k !== "table" && k !== "revision");
    if (!has) return;
    for (const [name, key] of [["label", "nolabel"], ["predicted", "nopred"]]) {
      const off = new Set((p.get(key) || "").split(",").filter((x) => x !== ""));
      for (const cb of f.querySelectorAll(`input[name=${name}]`)) cb.checked = !off.has(cb.value);
    }
    for (const [id, key] of [["f-correct", "correct"], ["f-undefined", "undef"], ["f-excluded", "excl"], ["f-finding", "finding"]]) {
      if (p.get(key)) f.querySelector("#" + id).value = p.get(key);
    }
    f.querySelector("#f-changed").checked = p.get("changed") === "1";
    if (p.get("ids")) f.querySelector("#f-ids").value = p.get("ids");
    if (p.get("path")) f.querySelector("#f-path").value = p.get("path");
    const metaCol = f.querySelector("#f-meta-col");
    if (p.get("meta") && metaCol && [...metaCol.options].some((o) => o.value === p.get("meta"))) {
      metaCol.value = p.get("meta");
      f.querySelector("#f-meta-val").value = p.get("metav") || "";
    }
    for (const m of METRICS) {
      if (!this.C[m] || !p.get(m)) continue;
      const [lo, hi] = p.get(m).split(":").map(Number);
      f.querySelector(`#r-${m}-lo`).value = lo;
      f.querySelector(`#r-${m}-hi`).value = hi;
    }
    if (p.get("color")) { this.colorBy = p.get("color"); this.root.querySelector("#color-by").value = this.colorBy; this.colorize(false); }
    if (p.get("sort")) { this.sortBy = p.get("sort"); this.root.querySelector("#sort-by").value = this.sortBy; }
    if (p.get("desc") === "1") { this.sortDesc = true; this.root.querySelector("#sort-dir").textContent = "↓"; }
    this.applyFilters("url");
    if (p.get("path") || p.get("meta")) this.loadMatch();  // asks the server, then filters again
    if (p.get("sel")) {
      const idx = p.get("sel").split(",").map(Number).map((id) => this.indexOf(id)).filter((i) => i >= 0);
      this.setSelection(idx);
    }
  }

  saveView() {
    const name = prompt("Name of this view (filters, colour, selection):");
    if (!name) return;
    const views = JSON.parse(localStorage.getItem("dataloupe-views") || "{}");
    views[name] = location.hash;
    localStorage.setItem("dataloupe-views", JSON.stringify(views));
    this.fillViews();
    toast(`view “${name}” saved`);
  }

  fillViews() {
    const views = JSON.parse(localStorage.getItem("dataloupe-views") || "{}");
    this.viewsSel.replaceChildren(h("option", { value: "" }, `views (${Object.keys(views).length})`),
      ...Object.entries(views).map(([k, v]) => h("option", { value: v }, k)));
  }

  /** Download the selection (or, with none, the grid) as CSV: id,label,predicted,confidence. */
  exportCSV() {
    const cls = this.H.classes, C = this.C;
    const rows = ["id,label,predicted,confidence"];
    const idx = this.selCount ? [...this.items].filter((i) => this.selected[i]) : [...this.items];
    for (const i of idx) {
      const q = (s) => (/[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s);
      rows.push([C.id[i], C.label[i] < 0 ? "" : q(cls[C.label[i]]), C.predicted[i] < 0 ? "" : q(cls[C.predicted[i]]),
        C.confidence ? C.confidence[i].toFixed(4) : ""].join(","));
    }
    const a = h("a", { href: URL.createObjectURL(new Blob([rows.join("\n") + "\n"], { type: "text/csv" })),
      download: `${this.table}-r${this.revision}-${this.selCount ? "selection" : "grid"}.csv` });
    document.body.append(a);
    a.click();
    a.remove();
    window.__dl.lastExport = rows;
    return rows.length - 1;
  }

  /**
   * (Re)fetch the columns for a table revision. After the first load it keeps the person's
   * place: filters, colouring, sort, selection (by id), grid scroll and the open sample.
   */
  async reload(revision, first = false) {
    const t0 = performance.now();
    const place = first || !this.C ? null : this.place();
    const progress = this.loading && first ? (p) => this.loading.progress(p) : null;
    if (this.loading && first) this.loading.phase(`packing ${this.run}'s samples on the server (the first load of a run computes its map)`);
    const [tinfo, pts] = await Promise.all([getJSON(`/api/tables/${enc(this.table)}`), getPoints(this.run, this.table, revision, progress)]);
    performance.mark("dl:points-fetched");
    if (this.loading && first) this.loading.phase("drawing");
    this.tinfo = tinfo;
    this.latest = Math.max(...tinfo.log.map((e) => e.revision));
    this.P = pts;
    this.H = pts.header;
    this.C = pts.cols;
    this.n = this.H.n;
    this.revision = this.H.revision;
    this.selected = new Uint8Array(this.n);
    this.selCount = 0;
    this.flags = new Uint8Array(this.n);
    this.ranges = {};
    for (const m of METRICS) if (this.C[m]) this.ranges[m] = range(this.C[m]);
    const T = (window.__dl.timings = { fetch: performance.now() - t0 });
    let t = performance.now();
    const lap = (k) => { const now = performance.now(); T[k] = now - t; t = now; };
    this.scatter.setPoints(this.C.map_x, this.C.map_y, !first);
    lap("setPoints");
    const shape = JSON.stringify([this.H.classes, this.H.finding_types, Object.keys(this.ranges)]);
    if (!place || shape !== this.filterShape) this.buildFilters();  // an edit keeps the filter panel as it was
    else this.revisionSelect();
    this.filterShape = shape;
    lap("buildFilters");
    if (place) this.restoreSelection(place);
    this.colorize(false);
    lap("colorize");
    this.applyFilters("load", !!place);
    lap("applyFilters");
    if (place) this.restorePlace(place);
    if (place && this.matchIds) this.loadMatch(true);  // rows may differ in this revision
    performance.mark("dl:first-draw");
    performance.measure("dl:load-to-first-draw", "dl:load-start", "dl:first-draw");
    const missing = this.H.missing_metrics ? ` · ${this.H.missing_metrics.toLocaleString()} rows have no metrics in this run` : "";
    status(`${this.n.toLocaleString()} samples · ${this.table} r${this.revision}${this.revision !== this.latest ? ` (latest r${this.latest}: edits need the latest)` : ""}${missing} · ${(pts.bytes / 1e6).toFixed(1)} MB in ${(performance.now() - t0).toFixed(0)} ms`);
    this.mapHint.hidden = this.H.map_source === "map_x/map_y";
    this.mapHint.textContent = `map: ${this.H.map_source}`;
    this.panes.refresh();
    window.__dl.ready = true;
  }

  /** What an edit must not lose. */
  place() {
    const sel = [];
    for (let i = 0; i < this.n; i++) if (this.selected[i]) sel.push(this.C.id[i]);
    const cur = this.grid.cursor >= 0 ? this.C.id[this.items[this.grid.cursor]] : null;
    const detail = this.panes.current === "detail" && this.panes.detailIndex >= 0 ? this.C.id[this.panes.detailIndex] : null;
    return { sel, scroll: this.grid.el.scrollTop, cursorPos: this.grid.cursor, cursorId: cur, detail, pane: this.panes.current };
  }

  indexOf(id) {
    return indexOfId(this.C.id, id);
  }

  restoreSelection(place) {
    let c = 0;
    for (const id of place.sel) { const i = this.indexOf(id); if (i >= 0) { this.selected[i] = 1; c++; } }
    this.selCount = c;
  }

  restorePlace(place) {
    const g = this.grid;
    g.el.scrollTop = place.scroll;
    g.render();
    // the cursor stays on its sample, or (when an edit filtered it out) at the same position
    const k = place.cursorId === null ? -1 : this.items.indexOf(this.indexOf(place.cursorId));
    g.cursor = k >= 0 ? k : Math.min(place.cursorPos, this.items.length - 1);
    g.refreshMarks();
    if (place.pane === "detail" && place.detail !== null) {
      const i = this.indexOf(place.detail);
      if (i >= 0) this.panes.detail(i, false);
    }
  }

  layout() {
    const colorSel = h("select", { id: "color-by", onchange: (e) => { this.colorBy = e.target.value; this.colorize(); } },
      COLOR_BY.map((c) => h("option", { value: c }, c)));
    const tableSel = h("select", { id: "table-sel", onchange: (e) => { location.hash = `#/run/${enc(this.run)}?table=${enc(e.target.value)}`; } },
      this.info.metrics_tables.map((t) => h("option", { value: t, selected: t === this.table }, t)));
    const modeBtn = (m, label) => h("button", { id: `mode-${m}`, class: m === this.mode ? "on" : "", onclick: () => this.setMode(m) }, label);
    this.overlay = h("canvas", { id: "overlay" });
    this.canvas = h("canvas", { id: "map" });
    this.legend = h("div", { class: "legend", id: "legend" });
    this.filterEl = h("form", { class: "filters", id: "filters", onsubmit: (e) => e.preventDefault() });
    this.gridEl = h("div", { class: "grid", id: "grid" });
    this.countEl = h("span", { id: "counts" });
    const sortSel = h("select", { id: "sort-by", onchange: (e) => { this.sortBy = e.target.value; this.updateGrid(); this.saveUrl(); } },
      ["id", ...METRICS, "margin", "entropy"].map((m) => h("option", { value: m }, m)));
    const sortDir = h("button", { id: "sort-dir", onclick: (e) => { this.sortDesc = !this.sortDesc; e.target.textContent = this.sortDesc ? "↓" : "↑"; this.updateGrid(); } }, "↑");
    this.side = h("div", { class: "side" });
    this.root.replaceChildren(h("div", { class: "run" },
      this.filterEl,
      h("div", { class: "mapwrap" },
        h("div", { class: "maptools" }, "table ", tableSel, " colour ", colorSel,
          modeBtn("pan", "pan / zoom"), modeBtn("box", "box select"), modeBtn("lasso", "lasso"),
          h("button", { id: "clear-sel", onclick: () => this.setSelection(null) }, "clear selection"),
          h("button", { onclick: () => { this.scatter.fit(); this.scatter.requestDraw(); this.scatter._viewSettled(); } }, "fit"),
          this.viewsSel = h("select", { id: "views", onchange: (e) => { if (e.target.value) { location.hash = e.target.value; } } }),
          h("button", { id: "save-view", title: "save filters, colour and selection under a name", onclick: () => this.saveView() }, "save view"),
          h("a", { id: "to-review", href: `#/review/${enc(this.run)}?table=${enc(this.table)}` }, "review queue"), this.countEl),
        this.trustEl = h("div", { id: "trust" }),
        h("div", { class: "mapbox" }, this.canvas, this.overlay, this.legend,
          this.mapHint = h("div", { id: "map-hint", class: "map-hint", hidden: true }))),
      this.side));
    this.scatter = new Scatter(this.canvas);
    this.scatter.onViewChange = () => this.drawOverlay();
    this.grid = new ImageGrid(this.gridEl, {
      id: (i) => this.C.id[i],
      caption: (i) => this.caption(i),
      isSelected: (i) => this.selected[i],
      onToggle: (pos, e) => this.gridClick(pos, e),
      onOpen: (i) => this.panes.detail(i),
    });
    const size = h("input", { type: "range", id: "thumb-size", min: 64, max: 256, step: 16, value: 96, title: "thumbnail size",
      oninput: (e) => this.grid.setCellSize(+e.target.value) });
    this.gridTools = h("div", { class: "gridbar" }, "sort ", sortSel, sortDir,
      h("button", { id: "grid-all", title: "select every cell in the grid (Ctrl+A)", onclick: () => this.selectAllGrid() }, "select all"),
      h("button", { id: "grid-invert", title: "invert the selection within the grid (i)", onclick: () => this.invertGrid() }, "invert"),
      h("button", { id: "grid-none", title: "clear the selection (Esc)", onclick: () => this.setSelection(null) }, "none"),
      h("button", { id: "grid-export", title: "download the selection (or the grid) as CSV", onclick: () => this.exportCSV() }, "export CSV"),
      h("label", { class: "muted" }, "size ", size), h("span", { id: "grid-count", class: "muted" }));
    this.fillViews();
    this.trustEl.hidden = true;
    const t = this.info.trust;
    if (t) {
      this.trustEl.hidden = false;
      this.trustEl.className = t.weak ? "trust weak" : "trust";
      this.trustEl.textContent = (t.weak ? "⚠ " : "") + t.message;
    }
    const keys = (e) => this.onKey(e);
    document.addEventListener("keydown", keys);
    this.cleanup.push(() => document.removeEventListener("keydown", keys));
    this.bindMouse();
    const ro = new ResizeObserver(() => { this.scatter.requestDraw(); });
    ro.observe(this.canvas);
    this.cleanup.push(() => ro.disconnect());
  }

  /** Grid caption: {text: label (→ predicted when it differs), conf: "97%", title: everything}. */
  caption(i) {
    const cls = this.H.classes, l = this.C.label[i], p = this.C.predicted[i];
    const ln = l < 0 ? "∅" : cls[l], pn = p < 0 ? "?" : cls[p];
    const conf = this.C.confidence && Number.isFinite(this.C.confidence[i]) ? `${(this.C.confidence[i] * 100).toFixed(0)}%` : "";
    const text = l === p ? ln : `${ln}→${pn}`;
    return { text, conf, title: `id ${this.C.id[i]} · label ${l < 0 ? "(undefined)" : ln} · predicted ${pn}${conf ? " " + conf : ""}${this.C.excluded[i] ? " · excluded" : ""}` };
  }

  /** Tooltip/one-line form of the caption. */
  captionText(i) {
    const c = this.caption(i);
    return `${c.text}${c.conf ? " " + c.conf : ""}`;
  }

  // ---- filters ------------------------------------------------------------------------
  buildFilters() {
    const cls = this.H.classes, f = this.filterEl;
    this.matchIds = null;  // the path and metadata inputs start empty
    const checks = (name) => h("div", { class: "checks", id: `f-${name}` },
      [[-1, name === "label" ? "(undefined)" : "(none)"], ...cls.map((c, k) => [k, c])].map(([k, c]) =>
        h("label", {}, h("input", { type: "checkbox", name, value: k, checked: true, onchange: () => this.applyFilters("filter") }), " ", c)));
    const sel = (id, opts) => h("select", { id, onchange: () => this.applyFilters("filter") }, opts.map(([v, t]) => h("option", { value: v }, t)));
    const allNone = (name) => h("span", {}, h("button", { type: "button", onclick: () => this.setAll(name, true) }, "all"), " ",
      h("button", { type: "button", onclick: () => this.setAll(name, false) }, "none"));
    const rangeBox = (m) => {
      if (!this.C[m]) return null;
      const [lo, hi] = this.ranges[m], step = (hi - lo) / 200;
      const outLo = h("output", { id: `o-${m}-lo` }, lo.toFixed(3)), outHi = h("output", { id: `o-${m}-hi` }, hi.toFixed(3));
      const inp = (id, v) => h("input", { type: "range", id, min: lo, max: hi, step, value: v, oninput: () => {
        outLo.textContent = (+f.querySelector(`#r-${m}-lo`).value).toFixed(3);
        outHi.textContent = (+f.querySelector(`#r-${m}-hi`).value).toFixed(3);
        this.scheduleFilter();
      } });
      return h("fieldset", {}, h("legend", {}, m), h("canvas", { class: "hist", id: `h-${m}` }),
        h("div", { class: "range" }, inp(`r-${m}-lo`, lo), inp(`r-${m}-hi`, hi), outLo, outHi));
    };
    this.revSel = h("select", { id: "f-revision", onchange: (e) => this.reload(Number(e.target.value)) });
    this.revisionSelect();
    f.replaceChildren(
      h("fieldset", {}, h("legend", {}, "revision"), this.revSel,
      h("label", {}, " ", h("input", { type: "checkbox", id: "f-changed", onchange: () => this.applyFilters("filter") }), " changed in it")),
      h("fieldset", {}, h("legend", {}, "tag"), this.tagSel = h("select", { id: "f-tag", onchange: () => this.loadTagFilter() },
        h("option", { value: "" }, "any"))),
      h("fieldset", {}, h("legend", {}, "ids"), h("input", { type: "text", id: "f-ids", placeholder: "e.g. 12, 40-60 (Enter)",
        onchange: () => this.applyFilters("filter") })),
      h("fieldset", {}, h("legend", {}, "path"), h("input", { type: "text", id: "f-path", placeholder: "text in the image path (Enter)",
        onchange: () => this.loadMatch() })),
      this.metaFilter(),
      h("fieldset", {}, h("legend", {}, "label ", allNone("label")), checks("label")),
      h("fieldset", {}, h("legend", {}, "predicted ", allNone("predicted")), checks("predicted")),
      h("fieldset", {}, h("legend", {}, "correct"), sel("f-correct", [["any", "any"], ["correct", "correct"], ["incorrect", "incorrect"]])),
      h("fieldset", {}, h("legend", {}, "undefined"), sel("f-undefined", [["any", "any"], ["only", "only undefined"], ["hide", "only labeled"]])),
      h("fieldset", {}, h("legend", {}, "excluded"), sel("f-excluded", [["any", "any"], ["only", "only excluded"], ["hide", "only included"]])),
      h("fieldset", {}, h("legend", {}, "finding"), sel("f-finding", [["any", "any"], ["some", "any finding"], ["none", "no finding"],
        ...this.H.finding_types.map((t, k) => [`b${k}`, t.replace(/_/g, " ")])])),
      ...METRICS.map(rangeBox),
      h("button", { type: "button", id: "f-reset", onclick: () => { this.buildFilters(); this.applyFilters("filter"); } }, "reset filters"));
  }

  /** The metadata filter: one of the table's columns and a value ("scan", =a, >3, 2..5). */
  metaFilter() {
    const cols = (this.tinfo && this.tinfo.filter_columns) || [];
    if (!cols.length) return null;
    return h("fieldset", {}, h("legend", {}, "metadata"),
      h("select", { id: "f-meta-col", onchange: () => { if (this.filterEl.querySelector("#f-meta-val").value.trim()) this.loadMatch(); } },
        cols.map((c) => h("option", { value: c }, c))),
      h("input", { type: "text", id: "f-meta-val", placeholder: "value: text, =exact, >3, 2..5 (Enter)",
        title: "text: contains (=x equals, !x does not contain); numbers: 3, >3, <=3, !=3, 2..5; = alone: empty",
        onchange: () => this.loadMatch() }));
  }

  /** What the path and metadata inputs ask for ({} when both are empty). */
  matchQuery() {
    const f = this.filterEl, q = {};
    const path = f.querySelector("#f-path") ? f.querySelector("#f-path").value.trim() : "";
    const col = f.querySelector("#f-meta-col"), val = f.querySelector("#f-meta-val");
    if (path) q.path = path;
    if (col && val && val.value.trim()) { q.column = col.value; q.value = val.value.trim(); }
    return q;
  }

  /**
   * Ask the server for the ids the path and metadata filters match (the points carry neither
   * paths nor metadata), then filter on them. A refused value keeps the previous match.
   */
  async loadMatch(keepGrid = false) {
    const q = this.matchQuery(), key = JSON.stringify(q);
    this.matchPending = key;
    if (!Object.keys(q).length) { this.matchIds = null; this.applyFilters("filter", keepGrid); return; }
    let r;
    try {
      r = await getJSON(`/api/tables/${enc(this.table)}/match`, { ...q, revision: this.revision });
    } catch (e) {
      toast(`filter: ${e.message}`, [], true);
      return;
    }
    if (this.matchPending !== key) return;  // a newer request was made meanwhile
    this.matchIds = new Set(r.ids);
    this.applyFilters("filter", keepGrid);
    window.__dl.matchCount = (window.__dl.matchCount || 0) + 1;
  }

  revisionSelect() {
    const revs = this.tinfo.log.map((e) => e.revision).sort((a, b) => b - a);
    this.revSel.replaceChildren(...revs.map((r) => h("option", { value: r, selected: r === this.revision },
      `r${r}${r === this.latest ? " (latest)" : ""}`)));
  }

  /** A histogram inside each range filter: every point (grey) and the points shown (blue). */
  drawHistograms() {
    const BINS = 40;
    for (const m of METRICS) {
      const cv = this.filterEl.querySelector(`#h-${m}`);
      if (!cv || !this.C[m]) continue;
      const a = this.C[m], [lo, hi] = this.ranges[m], all = new Uint32Array(BINS), shown = new Uint32Array(BINS);
      const s = BINS / (hi - lo), f = this.flags;
      for (let i = 0; i < this.n; i++) {
        const v = a[i];
        if (!Number.isFinite(v)) continue;
        const b = Math.max(0, Math.min(BINS - 1, ((v - lo) * s) | 0));
        all[b]++;
        if (f[i] & 1) shown[b]++;
      }
      const W = (cv.width = cv.clientWidth || 220), H = (cv.height = 34), g = cv.getContext("2d");
      let max = 1;
      for (const c of all) if (c > max) max = c;
      const bw = W / BINS;
      g.clearRect(0, 0, W, H);
      for (const [arr, col] of [[all, "#cbd5e1"], [shown, "#2563eb"]]) {
        g.fillStyle = col;
        for (let b = 0; b < BINS; b++) { const hh = Math.ceil((H * arr[b]) / max); if (arr[b]) g.fillRect(b * bw, H - hh, bw - 1, hh); }
      }
      cv.dataset.shown = shown.reduce((x, y) => x + y, 0);
    }
  }

  /** Tags of the table (for the tag filter), and the ids carrying the chosen one. */
  async refreshTags() {
    if (!this.tagSel) return;
    const keep = this.tagSel.value;
    const r = await getJSON(`/api/tables/${enc(this.table)}/tags`, keep ? { tag: keep } : {});
    this.tagSel.replaceChildren(h("option", { value: "" }, "any"),
      ...Object.entries(r.tags).map(([t, n]) => h("option", { value: t, selected: t === keep }, `${t} (${n})`)));
    if (keep && r.ids) { this.tagIds = new Set(r.ids); this.applyFilters("filter", true); }
  }

  async loadTagFilter() {
    const tag = this.tagSel.value;
    this.tagIds = tag ? new Set((await getJSON(`/api/tables/${enc(this.table)}/tags`, { tag })).ids) : null;
    this.applyFilters("filter");
  }

  setAll(name, on) {
    for (const cb of this.filterEl.querySelectorAll(`input[name=${name}]`)) cb.checked = on;
    this.applyFilters("filter");
  }

  scheduleFilter() {
    if (this.filterPending) return;
    this.filterPending = true;
    requestAnimationFrame(() => { this.filterPending = false; this.applyFilters("filter"); });
  }

  readFilters() {
    const f = this.filterEl, K = this.H.classes.length;
    const lut = (name) => {
      const a = new Uint8Array(K + 1);
      for (const cb of f.querySelectorAll(`input[name=${name}]`)) a[+cb.value + 1] = cb.checked ? 1 : 0;
      return a;
    };
    const ranges = [];
    for (const m of METRICS) {
      if (!this.C[m]) continue;
      const lo = +f.querySelector(`#r-${m}-lo`).value, hi = +f.querySelector(`#r-${m}-hi`).value;
      const [rlo, rhi] = this.ranges[m], eps = (rhi - rlo) / 150;  // > one slider step
      // an end left at its extreme is open, so values beyond the 1–99th percentile stay visible
      const openLo = lo <= rlo + eps, openHi = hi >= rhi - eps;
      if (!openLo || !openHi) ranges.push([this.C[m], openLo ? -Infinity : lo, openHi ? Infinity : hi]);
    }
    return {
      label: lut("label"), predicted: lut("predicted"), ranges, ids: parseIds(f.querySelector("#f-ids").value),
      tagged: f.querySelector("#f-tag").value && this.tagIds ? this.tagIds : null,
      matched: this.matchIds,
      correct: f.querySelector("#f-correct").value, undef: f.querySelector("#f-undefined").value,
      excl: f.querySelector("#f-excluded").value, finding: f.querySelector("#f-finding").value,
      changed: f.querySelector("#f-changed").checked,
    };
  }

  /** Recompute visibility from the filter panel, upload flags, redraw (synchronously). */
  applyFilters(reason, keepGrid = false) {
    const t0 = performance.now();
    const F = this.readFilters(), C = this.C, n = this.n, flags = this.flags, sel = this.selected;
    const label = C.label, pred = C.predicted, excl = C.excluded, fnd = C.findings, chg = C.changed;
    const fbit = F.finding.startsWith("b") ? 1 << +F.finding.slice(1) : 0;
    let visible = 0;
    for (let i = 0; i < n; i++) {
      const l = label[i], p = pred[i];
      let ok = F.label[l + 1] && F.predicted[p + 1];
      if (ok && F.correct !== "any") ok = l >= 0 && (F.correct === "correct" ? l === p : l !== p);
      if (ok && F.undef !== "any") ok = F.undef === "only" ? l < 0 : l >= 0;
      if (ok && F.excl !== "any") ok = F.excl === "only" ? excl[i] === 1 : excl[i] === 0;
      if (ok && F.finding !== "any") ok = F.finding === "some" ? fnd[i] !== 0 : F.finding === "none" ? fnd[i] === 0 : (fnd[i] & fbit) !== 0;
      if (ok && F.changed) ok = chg[i] === 1;
      if (ok && F.ids) ok = F.ids(C.id[i]);
      if (ok && F.tagged) ok = F.tagged.has(C.id[i]);
      if (ok && F.matched) ok = F.matched.has(C.id[i]);
      for (let r = 0; ok && r < F.ranges.length; r++) {
        const v = F.ranges[r][0][i];
        ok = v >= F.ranges[r][1] && v <= F.ranges[r][2];
      }
      flags[i] = ok ? 1 | (sel[i] << 1) : 0;
      visible += ok;
    }
    this.visible = visible;
    const t1 = performance.now();
    this.scatter.setFlags(flags, this.selCount > 0);
    const t2 = performance.now();
    this.drawHistograms();
    this.scatter.draw(true);
    const ms = performance.now() - t0;
    window.__dl.filterTimings = { loop: t1 - t0, upload: t2 - t1, draw: ms - (t2 - t0) };
    performance.mark(`dl:${reason}-drawn`);
    this.lastFilterMs = ms;
    this.updateGrid(keepGrid);
    this.panes.refresh();
    this.saveUrl();
    window.__dl.filterCount = (window.__dl.filterCount || 0) + 1;
    return ms;
  }

  // ---- colour -------------------------------------------------------------------------
  colorize(draw = true) {
    const C = this.C, cls = this.H.classes, by = this.colorBy;
    let colorOf, legend = [];
    if (by === "label" || by === "predicted") {
      const a = C[by];
      colorOf = (i) => cat(a[i]);
      legend = cls.slice(0, 20).map((c, k) => [cat(k), c]).concat([[NONE, by === "label" ? "undefined" : "none"]]);
    } else if (by === "correct") {
      colorOf = (i) => (C.label[i] < 0 ? NONE : C.label[i] === C.predicted[i] ? [44, 160, 44] : [214, 39, 40]);
      legend = [[[44, 160, 44], "correct"], [[214, 39, 40], "incorrect"], [NONE, "undefined"]];
    } else if (METRICS.includes(by) && C[by]) {
      const a = C[by], [lo, hi] = this.ranges[by], s = 255 / (hi - lo);
      colorOf = (i) => (Number.isFinite(a[i]) ? RAMP_LUT[Math.max(0, Math.min(255, ((a[i] - lo) * s) | 0))] : NONE);
      legend = [[RAMP_LUT[0], `${by} ≤ ${lo.toPrecision(3)}`], [RAMP_LUT[128], ""], [RAMP_LUT[255], `≥ ${hi.toPrecision(3)}`], [NONE, "null"]];
    } else if (by === "finding") {
      const f = C.findings;
      colorOf = (i) => (f[i] ? cat(31 - Math.clz32(f[i] & -f[i])) : NONE);
      legend = this.H.finding_types.map((t, k) => [cat(k), t.replace(/_/g, " ")]).concat([[NONE, "no finding"]]);
    } else if (by === "cluster" && C.cluster) {
      colorOf = (i) => cat(C.cluster[i]);
      legend = [[NONE, "colour = cluster id mod 20"]];
    } else if (by === "excluded" || by === "changed") {
      const a = C[by];
      colorOf = (i) => (a[i] ? [214, 39, 40] : [170, 190, 210]);
      legend = [[[214, 39, 40], by], [[170, 190, 210], `not ${by}`]];
    } else {
      colorOf = () => [90, 110, 140];
      legend = [[[90, 110, 140], `${by}: not in this run`]];
    }
    this.scatter.setColors(fillColors(this.n, colorOf, this.n > 200000 ? 160 : 210));
    this.legend.replaceChildren(...legend.map(([c, t]) => h("div", {}, h("i", { style: `background:${css(c)}` }), t)));
    if (draw) this.scatter.draw(true);
    this.saveUrl();
  }

  // ---- selection and grid ---------------------------------------------------------------
  setSelection(indices, add = false) {
    this.anchor = undefined;
    const t0 = performance.now();
    if (!add) this.selected.fill(0);
    if (indices) for (const i of indices) this.selected[i] = 1;
    let c = 0;
    for (let i = 0; i < this.n; i++) c += this.selected[i];
    this.selCount = c;
    for (let i = 0; i < this.n; i++) this.flags[i] = (this.flags[i] & 1) | (this.flags[i] & 1 ? this.selected[i] << 1 : 0);
    this.scatter.setFlags(this.flags, c > 0);
    this.updateGrid();  // the grid first; the map highlight is drawn with the next frame
    performance.mark("dl:selection-grid");
    this.scatter.requestDraw();
    requestAnimationFrame(() => setTimeout(() => performance.mark("dl:selection-painted")));
    this.lastSelectionMs = performance.now() - t0;
    this.panes.showGrid();
    this.panes.refresh();
    this.saveUrl();
  }

  /** Point indices shown in the grid: visible ∩ (selection if any), sorted. */
  currentItems() {
    const n = this.n, flags = this.flags, useSel = this.selCount > 0;
    let m = 0;
    for (let i = 0; i < n; i++) if (flags[i] & 1 && (!useSel || flags[i] & 2)) m++;
    const out = new Uint32Array(m);
    for (let i = 0, k = 0; i < n; i++) if (flags[i] & 1 && (!useSel || flags[i] & 2)) out[k++] = i;
    const key = this.C[this.sortBy] || this.C[this.sortBy + "_q"];  // margin, entropy: uint16 ranks
    if (this.sortBy !== "id" && key) sortByKey(out, key, this.sortDesc, key instanceof Uint16Array ? 65535 : null);
    else if (this.sortDesc) out.reverse();
    return out;
  }

  updateGrid(keep = false) {
    this.items = this.currentItems();
    this.grid.setItems(this.items, this.table, keep);
    this.updateCounts();
  }

  updateCounts() {
    const txt = `${this.visible.toLocaleString()} of ${this.n.toLocaleString()} shown` + (this.selCount ? ` · ${this.selectedVisible().toLocaleString()} selected` : "");
    const sc = this.scatter;
    this.countEl.textContent = txt + (sc.sampled ? ` · map draws a ${sc.drawn.toLocaleString()}-point sample (software WebGL: zoom in or filter to see all)` : "");
    const gc = this.gridTools.querySelector("#grid-count");
    if (gc) gc.textContent = `${this.items.length.toLocaleString()} in grid` + (this.selCount ? ` · ${this.selectedVisible().toLocaleString()} selected` : "");
  }

  selectedVisible() {
    let c = 0;
    for (let i = 0; i < this.n; i++) c += this.selected[i] & this.flags[i] & 1;
    return c;
  }

  /** Ids of the selected samples the filters show (empty when nothing is selected). */
  selectedIds() {
    const out = [];
    for (let i = 0; i < this.n; i++) if (this.selected[i] && this.flags[i] & 1) out.push(this.C.id[i]);
    return out;
  }

  /** Ids of every sample the filters show. */
  visibleIds() {
    const out = [];
    for (let i = 0; i < this.n; i++) if (this.flags[i] & 1) out.push(this.C.id[i]);
    return out;
  }

  // Grid selection changes the selection in place: the grid keeps its cells (a deselected
  // cell stays, unticked), so a person can drop the wrong ones from a box selection.
  changeSelection(fn) {
    fn(this.selected);
    let c = 0;
    for (let i = 0; i < this.n; i++) c += this.selected[i];
    this.selCount = c;
    for (let i = 0; i < this.n; i++) this.flags[i] = (this.flags[i] & 1) | (this.flags[i] & 1 ? this.selected[i] << 1 : 0);
    this.scatter.setFlags(this.flags, c > 0);
    this.scatter.requestDraw();
    this.grid.refreshMarks();
    this.updateCounts();
    this.saveUrl();
  }

  gridClick(pos, e) {
    const items = this.items;
    if (e.shiftKey && this.anchor !== undefined && this.anchor < items.length) {
      const [a, b] = this.anchor < pos ? [this.anchor, pos] : [pos, this.anchor];
      this.changeSelection((s) => { for (let k = a; k <= b; k++) s[items[k]] = 1; });
    } else {
      const i = items[pos];
      this.changeSelection((s) => { s[i] = s[i] ? 0 : 1; });
      this.anchor = pos;
    }
  }

  selectAllGrid() {
    const items = this.items;
    this.changeSelection((s) => { for (const i of items) s[i] = 1; });
  }

  invertGrid() {
    const items = this.items;
    this.changeSelection((s) => { for (const i of items) s[i] = s[i] ? 0 : 1; });
  }

  // ---- keyboard ----------------------------------------------------------------------
  // Grid: arrows move, space toggles, Enter opens, Ctrl+A selects all, i inverts, Esc clears.
  // Grid and sample view: 1..9 set that class, u marks undefined, x excludes — on the
  // selection, else on the sample under the cursor (the sample view: its sample, then the next).
  onKey(e) {
    const tag = (e.target.tagName || "").toLowerCase();
    if (["input", "select", "textarea"].includes(tag) || e.altKey || !this.C || !document.getElementById("modal").hidden) return;
    const inDetail = this.panes.current === "detail", g = this.grid;
    const k = e.key;
    if ((e.ctrlKey || e.metaKey) && k.toLowerCase() === "a") {
      if (this.panes.current !== "grid") return;
      e.preventDefault(); this.selectAllGrid(); return;
    }
    if (e.ctrlKey || e.metaKey) return;
    const nav = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -g.columns, ArrowDown: g.columns };
    if (k in nav) {
      e.preventDefault();
      if (inDetail) { this.panes.step(k === "ArrowLeft" || k === "ArrowUp" ? -1 : 1); return; }
      g.moveCursor(nav[k]);
      return;
    }
    if (k === " " && !inDetail && g.cursor >= 0) { e.preventDefault(); this.gridClick(g.cursor, { shiftKey: e.shiftKey }); return; }
    if (k === "Enter" && !inDetail && g.cursor >= 0) { e.preventDefault(); this.panes.detail(this.items[g.cursor]); return; }
    if (k === "Escape") { if (inDetail) this.panes.show("grid"); else this.setSelection(null); return; }
    if (k === "i" && !inDetail) { this.invertGrid(); return; }
    let action = null, label = null;
    if (/^[1-9]$/.test(k)) {
      const cls = this.H.table_classes[+k - 1];
      if (cls === undefined) { toast(`no class ${k}: this table has ${this.H.table_classes.length}`, [], true); return; }
      action = "set_label"; label = cls;
    } else if (k === "u") action = "undefine";
    else if (k === "x") action = "exclude";
    if (!action) return;
    e.preventDefault();
    let ids;
    if (inDetail && this.panes.detailIndex >= 0) ids = [this.C.id[this.panes.detailIndex]];
    else if (this.selCount) ids = this.selectedIds();
    else if (g.cursor >= 0) ids = [this.C.id[this.items[g.cursor]]];
    else { toast("select samples, or move the cursor with the arrow keys, before using a label key", [], true); return; }
    this.panes.act(action, { ids, label, advance: inDetail });
  }

  // ---- mouse on the map ---------------------------------------------------------------
  setMode(m) {
    this.mode = m;
    for (const b of this.root.querySelectorAll(".maptools button[id^=mode-]")) b.classList.toggle("on", b.id === `mode-${m}`);
  }

  bindMouse() {
    const ov = this.overlay, tip = document.getElementById("tip");
    let drag = null, hoverPending = false, last = null;
    const pos = (e) => { const r = ov.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
    ov.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [x, y] = pos(e);
      this.scatter.zoomAt(x, y, Math.exp(-e.deltaY * 0.0015));
    }, { passive: false });
    ov.addEventListener("mousedown", (e) => {
      const p = pos(e);
      drag = { start: p, last: p, path: [p], moved: false, add: e.shiftKey };
      tip.hidden = true;
    });
    const move = (e) => {
      const p = pos(e);
      last = [p, e.clientX, e.clientY];
      if (drag) {
        drag.moved = drag.moved || Math.hypot(p[0] - drag.start[0], p[1] - drag.start[1]) > 3;
        if (this.mode === "pan") { this.scatter.panBy(p[0] - drag.last[0], p[1] - drag.last[1]); }
        else { drag.path.push(p); this.drawOverlay(drag); }
        drag.last = p;
        return;
      }
      if (hoverPending) return;
      hoverPending = true;
      requestAnimationFrame(() => { hoverPending = false; this.hover(last, tip); });
    };
    const up = (e) => {
      if (!drag) return;
      const d = drag;
      drag = null;
      this.drawOverlay();
      if (this.mode === "pan" && !d.moved) {
        const i = this.scatter.pick(d.start[0], d.start[1]);
        if (i >= 0) this.panes.detail(i);
        return;
      }
      if (this.mode === "box" && d.moved) this.setSelection(this.scatter.selectBox(d.start[0], d.start[1], d.last[0], d.last[1]), d.add);
      if (this.mode === "lasso" && d.path.length > 2) this.setSelection(this.scatter.selectPolygon(d.path), d.add);
    };
    ov.addEventListener("mousemove", move);
    window.addEventListener("mouseup", up);
    ov.addEventListener("mouseleave", () => { tip.hidden = true; });
    this.cleanup.push(() => window.removeEventListener("mouseup", up));
  }

  hover([p, cx, cy], tip) {
    const i = this.scatter.pick(p[0], p[1]);
    if (i < 0) { tip.hidden = true; return; }
    const id = this.C.id[i];
    const img = tip.querySelector("img");
    const url = thumbURL(this.table, id);
    if (img.getAttribute("src") !== url) img.src = url;
    const C = this.C, parts = [`id ${id}`, this.captionText(i)];
    if (C.loss && Number.isFinite(C.loss[i])) parts.push(`loss ${C.loss[i].toFixed(3)}`);
    if (C.aum && Number.isFinite(C.aum[i])) parts.push(`AUM ${C.aum[i].toFixed(3)}`);
    tip.querySelector("div").textContent = parts.join(" · ");
    tip.style.left = cx + 14 + "px";
    tip.style.top = cy + 14 + "px";
    tip.hidden = false;
    tip.dataset.id = id;
  }

  drawOverlay(drag) {
    const ov = this.overlay, dpr = window.devicePixelRatio || 1;
    if (ov.width !== ov.clientWidth * dpr) { ov.width = ov.clientWidth * dpr; ov.height = ov.clientHeight * dpr; }
    const g = ov.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, ov.width, ov.height);
    if (!drag || this.mode === "pan") return;
    g.strokeStyle = "#111"; g.setLineDash([5, 4]); g.fillStyle = "rgba(37,99,235,.08)";
    g.beginPath();
    if (this.mode === "box") g.rect(drag.start[0], drag.start[1], drag.last[0] - drag.start[0], drag.last[1] - drag.start[1]);
    else drag.path.forEach(([x, y], k) => (k ? g.lineTo(x, y) : g.moveTo(x, y)));
    g.closePath(); g.fill(); g.stroke();
  }
}

/** "12, 40-60" → a test id => bool (null when empty). */
function parseIds(text) {
  const parts = (text || "").split(/[\s,]+/).filter(Boolean);
  if (!parts.length) return null;
  const single = new Set(), spans = [];
  for (const p of parts) {
    const m = p.match(/^(\d+)-(\d+)$/);
    if (m) spans.push([+m[1], +m[2]]);
    else if (/^\d+$/.test(p)) single.add(+p);
  }
  return (id) => single.has(id) || spans.some(([a, b]) => id >= a && id <= b);
}

/**
 * Sort point indices by a float key in place. For up to 2^21 points the key's order-
 * preserving 32 bits and the index are packed into one exact float64 integer, so the
 * engine's native numeric sort does the work (~10x faster than a comparator sort).
 */
function sortByKey(idx, key, desc, nullValue = null) {
  const m = idx.length;
  if (key.length <= 1 << 21) {
    const f = new Float32Array(1), u = new Uint32Array(f.buffer), packed = new Float64Array(m);
    for (let k = 0; k < m; k++) {
      const i = idx[k];
      let v = key[i];
      if (!Number.isFinite(v) || v === nullValue) v = desc ? -Infinity : Infinity;  // nulls last
      f[0] = desc ? -v : v;
      let b = u[0];
      b = b & 0x80000000 ? ~b >>> 0 : (b | 0x80000000) >>> 0;  // order-preserving bits
      packed[k] = b * 2097152 + i;
    }
    packed.sort();
    for (let k = 0; k < m; k++) idx[k] = packed[k] % 2097152;
  } else {
    const arr = Array.from(idx);
    arr.sort((a, b) => (desc ? key[b] - key[a] : key[a] - key[b]));
    idx.set(arr);
  }
}
