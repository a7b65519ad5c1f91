// The loop page (#/loop/<name>): val top-1 per iteration (the figure of accuracy.png), and
// per iteration its revision, counts, run, the diff of its edits and its review list.
import { getJSON, enc } from "./api.js";
import { lineChart } from "./charts.js";
import { h, status, showDiff } from "./ui.js";

export class LoopView {
  constructor(root, name) {
    this.root = root;
    this.name = name;
  }

  destroy() {}

  async load() {
    status(`loading loop ${this.name}…`);
    const st = (this.state = await getJSON(`/api/loops/${enc(this.name)}`));
    const train = String(st.train || "").split("@")[0];
    const its = st.iterations || [];
    const chart = h("canvas", { id: "loop-chart" });
    const pct = (x) => (typeof x === "number" ? (100 * x).toFixed(2) + "%" : "–");
    const rows = its.map((r) => {
      const flagged = st.review[r.iteration] || [];
      const edits = r.next_revision !== undefined && r.next_revision !== r.revision;
      return h("tr", { "data-iteration": r.iteration },
        h("td", {}, r.iteration), h("td", {}, `r${r.revision}`), h("td", { class: "num" }, r.labeled),
        h("td", { class: "num" }, r.undefined), h("td", { class: "num" }, r.excluded),
        h("td", { class: "num" }, pct(r.val_top1)), h("td", { class: "num" }, pct(r.val_top1_last)),
        h("td", {}, r.run ? h("a", { href: `#/run/${enc(r.run)}?table=${enc(train)}` }, r.run) : "–"),
        h("td", {}, edits ? h("button", { class: "loop-diff", onclick: () => showDiff(train, r.revision, r.next_revision) },
          `diff r${r.revision} → r${r.next_revision}`) : h("span", { class: "muted" }, "no edits")),
        h("td", {}, Object.entries(r.changes || {}).map(([k, v]) => `${k} ${v}`).join(", ")),
        h("td", {}, flagged.length && r.run
          ? h("a", { class: "loop-review", href: `#/run/${enc(r.run)}?table=${enc(train)}&sel=${flagged.slice(0, 5000).join(",")}` }, `${flagged.length} flagged`)
          : h("span", { class: "muted" }, "none")));
    });
    this.root.replaceChildren(h("div", { class: "project" },
      h("section", { class: "card wide" }, h("h2", {}, `Loop ${st.loop}: ${train} (validation ${st.val}), policy ${st.policy}`),
        h("p", { class: "muted" }, st.stopped || "running"), chart),
      h("section", { class: "card wide", id: "loop-iterations" }, h("h2", {}, `Iterations (${its.length})`),
        h("table", {}, h("tr", {}, ["it.", "trained on", "labeled", "undefined", "excluded", "val top-1 (best)", "last epoch",
          "run", "its edits", "changes", "review list"].map((x) => h("th", {}, x))), rows))));
    const pts = (k) => its.filter((r) => typeof r[k] === "number").map((r) => [r.iteration, r[k]]);
    window.__dl.loopChart = lineChart(chart, [{ name: "val top-1 (best epoch)", points: pts("val_top1") },
      { name: "val top-1 (last epoch)", points: pts("val_top1_last") }], { pct: true, valueLabels: true, empty: "no iteration finished yet" });
    status(`loop ${st.loop}`);
    window.__dl.ready = true;
  }
}
