// A visible progress panel for long waits (first load of a big run, map computation):
// what is happening, for how long, and how much has arrived. Every text shown is kept in
// window.__dl.loadLog for tests.
import { h, status } from "./ui.js";

export class Loading {
  constructor(root, title) {
    this.t0 = performance.now();
    this.title = title;
    this.text = "";
    this.bytes = null;
    this.el = h("div", { id: "loading", class: "loading", role: "status" });
    root.replaceChildren(this.el);
    window.__dl.loadLog = [];
    this.timer = setInterval(() => this.show(), 500);
    this.show();
  }

  /** Move the panel (e.g. over the map once the page is laid out). */
  attach(parent) { parent.append(this.el); this.show(); }

  phase(text) { this.text = text; this.bytes = null; this.show(); }

  progress({ loaded, total }) { this.bytes = [loaded, total]; this.show(); }

  show() {
    const s = Math.round((performance.now() - this.t0) / 1000);
    let txt = `${this.title}: ${this.text}… ${s} s`;
    if (this.bytes) {
      const [a, b] = this.bytes;
      txt += b ? ` · ${(a / 1e6).toFixed(1)} of ${(b / 1e6).toFixed(1)} MB` : ` · ${(a / 1e6).toFixed(1)} MB`;
    }
    if (this.el.isConnected) this.el.textContent = txt;
    status(txt);
    const log = window.__dl.loadLog;
    if (log && log[log.length - 1] !== txt) log.push(txt);
  }

  done() {
    clearInterval(this.timer);
    this.el.remove();
  }
}
