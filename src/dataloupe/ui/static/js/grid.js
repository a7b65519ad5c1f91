// Virtually scrolled image grid: only the rows in view (plus a margin) exist in the DOM,
// so a grid over a million samples costs the same as one over a hundred.
// A click selects or deselects a cell, shift-click a range, double-click (or Enter) opens it;
// the keyboard cursor moves with the arrow keys.
import { thumbURL } from "./api.js";

export class ImageGrid {
  /**
   * container: scrollable element; opts: {cell (px), id(index), caption(index) -> {text, conf, title},
   * isSelected(index), onToggle(pos, event), onOpen(index)}
   */
  constructor(container, opts) {
    this.el = container;
    this.opts = { cell: 96, ...opts };
    this.items = new Uint32Array(0);
    this.cursor = -1;  // position in items
    this.spacer = document.createElement("div");
    this.spacer.className = "grid-spacer";
    this.el.appendChild(this.spacer);
    this.pool = new Map();  // item position -> element
    this.el.addEventListener("scroll", () => this.render());
    new ResizeObserver(() => this.render()).observe(this.el);
  }

  /** items: point indices in display order; table: table name for thumbnails; keep: keep the scroll position. */
  setItems(items, table, keep = false) {
    const top = this.el.scrollTop;
    this.items = items;
    this.table = table;
    for (const node of this.pool.values()) node.remove();
    this.pool.clear();
    if (!keep) this.cursor = -1;
    else if (this.cursor >= items.length) this.cursor = items.length - 1;
    this.el.scrollTop = keep ? top : 0;
    this.render();
    if (keep) this.el.scrollTop = top;  // the spacer has its height now
  }

  setCellSize(px) {
    this.opts.cell = px;
    for (const node of this.pool.values()) node.remove();
    this.pool.clear();
    this.render();
    this.scrollToCursor();
  }

  get columns() {
    return Math.max(1, Math.floor((this.el.clientWidth - 4) / this.opts.cell));
  }

  render() {
    const W = this.el.clientWidth - 4;
    const cols = this.columns, cell = Math.floor(W / cols);
    this.cellPx = cell;
    const rows = Math.ceil(this.items.length / cols);
    this.spacer.style.height = rows * cell + "px";
    const first = Math.max(0, Math.floor(this.el.scrollTop / cell) - 2);
    const last = Math.min(rows, Math.ceil((this.el.scrollTop + this.el.clientHeight) / cell) + 2);
    const keep = new Set();
    for (let r = first; r < last; r++) for (let c = 0; c < cols; c++) {
      const pos = r * cols + c;
      if (pos >= this.items.length) break;
      keep.add(pos);
      let node = this.pool.get(pos);
      if (!node) {
        node = this.makeCell(pos);
        this.spacer.appendChild(node);
        this.pool.set(pos, node);
      }
      node.style.transform = `translate(${c * cell}px, ${r * cell}px)`;
      node.style.width = node.style.height = cell - 4 + "px";
    }
    for (const [pos, node] of this.pool) if (!keep.has(pos)) { node.remove(); this.pool.delete(pos); }
    this.refreshMarks();
  }

  makeCell(pos) {
    const idx = this.items[pos], o = this.opts;
    const node = document.createElement("div");
    node.className = "cell";
    node.dataset.index = idx;
    node.dataset.pos = pos;
    node.dataset.id = o.id(idx);
    const img = document.createElement("img");
    img.loading = "eager";
    img.decoding = "async";
    img.src = thumbURL(this.table, o.id(idx), this.opts.cell > 120 ? 256 : 96);
    img.alt = "";
    img.draggable = false;
    const cap = o.caption(idx);
    const text = document.createElement("span");
    text.className = "cap";
    text.textContent = cap.text;
    node.title = cap.title;
    node.append(img, text);
    if (cap.conf) {
      const conf = document.createElement("b");
      conf.className = "conf";
      conf.textContent = cap.conf;
      node.append(conf);
    }
    const tick = document.createElement("i");
    tick.className = "tick";
    node.append(tick);
    node.addEventListener("mousedown", (e) => { if (e.shiftKey) e.preventDefault(); });  // no text selection
    node.addEventListener("click", (e) => { this.cursor = pos; o.onToggle(pos, e); });
    node.addEventListener("dblclick", () => { this.cursor = pos; o.onOpen(idx); });
    return node;
  }

  /** Re-mark selected cells and the cursor without rebuilding the grid. */
  refreshMarks() {
    for (const [pos, node] of this.pool) {
      node.classList.toggle("sel", !!this.opts.isSelected(this.items[pos]));
      node.classList.toggle("cursor", pos === this.cursor);
    }
  }

  moveCursor(delta) {
    if (!this.items.length) return -1;
    this.cursor = this.cursor < 0 ? 0 : Math.max(0, Math.min(this.items.length - 1, this.cursor + delta));
    this.scrollToCursor();
    this.refreshMarks();
    return this.cursor;
  }

  scrollToCursor() {
    if (this.cursor < 0 || !this.cellPx) return;
    const row = Math.floor(this.cursor / this.columns), top = row * this.cellPx;
    if (top < this.el.scrollTop) this.el.scrollTop = top;
    else if (top + this.cellPx > this.el.scrollTop + this.el.clientHeight) this.el.scrollTop = top + this.cellPx - this.el.clientHeight;
    this.render();
  }

  /** Resolves when every thumbnail now in the DOM has loaded (or failed). */
  imagesSettled() {
    const imgs = [...this.el.querySelectorAll("img")];
    return Promise.all(imgs.map((im) => (im.complete ? null : new Promise((ok) => { im.onload = im.onerror = ok; }))));
  }
}
