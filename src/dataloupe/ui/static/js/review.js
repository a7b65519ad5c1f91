// The review queue page (#/review/<run>?table=&strategy=&recheck=): the rows the loop flags for a
// person, in active-learning order (dataloupe.loop.review_queue), opened by the `recheck` given
// labels the evidence doubts most when asked. One key per answer:
// 1..9 a class, Enter confirms (the label, or the prediction for an undefined row),
// u undefined, x exclude, s / → skip, ← back. "Write answers" makes ONE revision.
import { getJSON, postJSON, enc, imageURL, thumbURL } from "./api.js";
import { h, status, toast, showDiff } from "./ui.js";

const EXCLUDE = "__exclude__";
const STRATEGIES = [["margin", "margin (least sure between two classes)"], ["entropy", "entropy"],
  ["density", "density × entropy (typical and unsure)"], ["cluster-margin", "cluster-margin (unsure, spread over the data)"],
  ["typiclust", "typiclust (typical rows of uncovered clusters)"],
  ["typiclust-margin", "typiclust-margin (typical clusters, unsure rows)"], ["random", "random"]];

export class ReviewView {
  constructor(root, run, table, strategy, recheck) {
    this.root = root;
    this.run = run;
    this.table = table;
    this.strategy = strategy || "margin";
    this.recheck = Math.max(0, parseInt(recheck, 10) || 0);
    this.answers = new Map();  // id -> class | null (undefined) | EXCLUDE
    this.done = new Set();  // confirmed in this session (a confirmation changes nothing, so the queue keeps them)
    this.pos = 0;
    const keys = (e) => this.onKey(e);
    document.addEventListener("keydown", keys);
    this.destroy = () => document.removeEventListener("keydown", keys);
  }

  async load() {
    status(`loading the review queue of run ${this.run}…`);
    this.info = await getJSON(`/api/runs/${enc(this.run)}`);
    if (!this.table) this.table = this.info.train_table;
    await this.fetchQueue();
  }

  async fetchQueue() {
    window.__dl.ready = false;
    const [q, t] = await Promise.all([
      getJSON(`/api/runs/${enc(this.run)}/review`, { table: this.table, strategy: this.strategy, limit: 500, recheck: this.recheck }),
      getJSON(`/api/tables/${enc(this.table)}`)]);
    this.q = q;
    this.items = q.items.filter((it) => !this.done.has(it.id));
    this.latest = q.revision;
    this.classes = q.classes;
    this.pos = 0;
    this.layout(t);
    this.show();
    status(`review queue · ${this.table} r${q.revision} · run ${this.run} · ${q.total.toLocaleString()} rows`);
    window.__dl.ready = true;
  }

  layout() {
    const q = this.q, t = this.info.trust;
    const go = (strategy, recheck) => {
      location.hash = `#/review/${enc(this.run)}?table=${enc(this.table)}&strategy=${enc(strategy)}` + (recheck ? `&recheck=${recheck}` : "");
    };
    const sel = h("select", { id: "review-strategy", onchange: (e) => go(e.target.value, this.recheck) },
      STRATEGIES.map(([v, label]) => h("option", { value: v, selected: v === this.strategy }, label)));
    const recheck = h("input", { id: "review-recheck", type: "number", min: 0, step: 10, value: this.recheck, style: "width:4.5em",
      title: "open the queue with this many given labels, the ones the evidence doubts most (a wrong label misleads every model trained on it)",
      onchange: (e) => go(this.strategy, Math.max(0, parseInt(e.target.value, 10) || 0)) });
    this.pendingEl = h("span", { id: "review-pending" });
    this.submitBtn = h("button", { id: "review-submit", class: "primary", onclick: () => this.submit() }, "write answers");
    this.list = h("div", { class: "review-list", id: "review-list" });
    this.main = h("div", { class: "review-main", id: "review-main" });
    const counts = Object.entries(q.counts).map(([k, v]) => `${k.replace(/_/g, " ")} ${v}`).join(" · ");
    this.root.replaceChildren(h("div", { class: "review" },
      h("div", { class: "review-bar" }, h("strong", {}, `Review queue of ${this.table}`), " order ", sel, " re-check first ", recheck, " labels ",
        h("span", { class: "muted" }, `${q.total.toLocaleString()} rows (${counts})`), this.pendingEl, this.submitBtn,
        h("a", { href: `#/run/${enc(this.run)}?table=${enc(this.table)}` }, "map and grid")),
      t ? h("div", { id: "trust", class: t.weak ? "trust weak" : "trust" }, (t.weak ? "⚠ " : "") + t.message) : null,
      h("div", { class: "review-body" }, this.main, this.list)));
    this.renderList();
  }

  renderList() {
    const cells = this.items.slice(0, 200).map((it, k) => {
      const a = this.answers.has(it.id) ? this.answers.get(it.id) : undefined;
      const mark = a === undefined ? "" : a === EXCLUDE ? "excluded" : a === null ? "undefined" : a;
      return h("div", { class: `rcell${k === this.pos ? " cur" : ""}${a !== undefined ? " answered" : ""}`, "data-id": it.id,
        onclick: () => { this.pos = k; this.show(); } },
        h("img", { src: thumbURL(this.table, it.id), alt: "" }), h("span", {}, mark || it.predicted));
    });
    this.list.replaceChildren(h("div", { class: "muted" }, `next ${Math.min(200, this.items.length)} of ${this.items.length}`), ...cells);
    this.pendingEl.textContent = `${this.answers.size} answer${this.answers.size === 1 ? "" : "s"} pending`;
    this.submitBtn.disabled = !this.answers.size;
  }

  show() {
    const it = this.items[this.pos];
    if (!it) {
      this.main.replaceChildren(h("h2", {}, "The queue is done."), h("p", {}, this.answers.size ? "Write your answers as one revision." : "Nothing left to review for this run."));
      this.renderList();
      return;
    }
    const a = this.answers.has(it.id) ? this.answers.get(it.id) : undefined;
    const keyBtn = (key, text, value, on) => h("button", { class: on ? "on" : "", "data-key": key, onclick: () => this.answer(value) }, h("kbd", {}, key), " ", text);
    const img = h("img", { class: "review-img", src: imageURL(this.table, it.id), alt: `sample ${it.id}`, title: "click to zoom",
      onclick: () => img.classList.toggle("zoom") });
    const pct = (x) => (x === null || x === undefined ? "–" : (100 * x).toFixed(1) + "%");
    this.main.replaceChildren(
      h("div", { class: "muted" }, `${this.pos + 1} of ${this.items.length} · id ${it.id} · ${it.path}`),
      img,
      h("table", { class: "review-facts" },
        h("tr", {}, h("th", {}, "label"), h("td", { id: "review-label" }, it.label ?? "(undefined)")),
        h("tr", {}, h("th", {}, "model predicts"), h("td", {}, `${it.predicted} (${pct(it.confidence)}, margin ${pct(it.margin)})`)),
        it.suggested ? h("tr", {}, h("th", {}, "analysis suggests"), h("td", {}, it.suggested)) : null,
        h("tr", {}, h("th", {}, "why here"), h("td", {}, it.reasons.map((r) => r.replace(/_/g, " ")).join(", "))),
        h("tr", {}, h("th", {}, "your answer"), h("td", { id: "review-answer" }, a === undefined ? "–" : a === EXCLUDE ? "exclude" : a ?? "(undefined)"))),
      h("div", { class: "labelkeys", id: "review-keys" },
        keyBtn("⏎", `confirm ${it.label ?? it.predicted}`, it.label ?? it.predicted, false),
        this.classes.slice(0, 9).map((c, k) => keyBtn(k + 1, c, c, a === c)),
        keyBtn("u", "undefined", null, a === null), keyBtn("x", "exclude", EXCLUDE, a === EXCLUDE),
        h("button", { onclick: () => this.move(1) }, h("kbd", {}, "s"), " skip"),
        h("button", { onclick: () => this.move(-1) }, h("kbd", {}, "←"), " back")));
    this.renderList();
    const cur = this.list.querySelector(".rcell.cur");
    if (cur) cur.scrollIntoView({ block: "nearest" });
  }

  answer(value) {
    const it = this.items[this.pos];
    if (!it) return;
    this.answers.set(it.id, value);
    this.move(1);
  }

  move(d) {
    this.pos = Math.max(0, Math.min(this.items.length, this.pos + d));
    this.show();
  }

  onKey(e) {
    const tag = (e.target.tagName || "").toLowerCase();
    if (["input", "select", "textarea"].includes(tag) || e.altKey || e.metaKey || !document.getElementById("modal").hidden) return;
    const it = this.items[this.pos], k = e.key;
    if (e.ctrlKey) { if (k === "Enter") { e.preventDefault(); this.submit(); } return; }
    if (/^[1-9]$/.test(k) && this.classes[+k - 1] !== undefined) this.answer(this.classes[+k - 1]);
    else if (k === "Enter" && it) this.answer(it.label ?? it.predicted);
    else if (k === "u") this.answer(null);
    else if (k === "x") this.answer(EXCLUDE);
    else if (k === "s" || k === "ArrowRight") this.move(1);
    else if (k === "ArrowLeft") this.move(-1);
    else return;
    e.preventDefault();
  }

  async submit() {
    if (!this.answers.size) { toast("no answers yet", [], true); return; }
    const answers = [...this.answers].map(([id, label]) => ({ id, label }));
    window.__dl.ready = false;
    try {
      const r = await postJSON(`/api/tables/${enc(this.table)}/review`,
        { run: this.run, strategy: this.strategy, answers, expected_revision: this.latest });
      for (const a of answers) this.done.add(a.id);
      this.answers.clear();
      window.__dl.lastReview = r;
      await this.fetchQueue();
      toast(r.committed ? `revision ${r.revision}: ${r.message} — ${r.changed} changed` : `${answers.length} confirmed; nothing changed, no revision made`,
        r.committed ? [["diff", () => showDiff(this.table, r.previous_revision, r.revision)]] : []);
    } catch (e) {
      window.__dl.ready = true;
      toast(e.message, e.status === 409 ? [["reload", () => this.fetchQueue()]] : [], true);
    }
  }
}
