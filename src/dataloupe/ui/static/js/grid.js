// Virtually scrolled image grid: only the rows in view (plus a margin) exist in the DOM,
// so a grid over a million samples costs the same as one over a hundred.
import { thumbURL } from "./api.js";

export class ImageGrid {
  /** container: scrollable element; opts: {cell (px), onClick(index), caption(index) -> text, id(index)} */
  constructor(container, opts) {
    this.el = container;
    this.opts = { cell: 88, ...opts };
    this.items = new Uint32Array(0);
    this.spacer = document.createElement("div");
    this.spacer.className = "grid-spacer";
    this.el.appendChild(this.spacer);
    this.pool = new Map();  // item position -> element
    this.el.addEventListener("scroll", () => this.render());
    new ResizeObserver(() => this.render()).observe(this.el);
  }

  /** items: point indices in display order; table: table name for thumbnails. */
  setItems(items, table) {
    this.items = items;
    this.table = table;
    for (const node of this.pool.values()) node.remove();
    this.pool.clear();
    this.el.scrollTop = 0;
    this.render();
  }

  render() {
    const W = this.el.clientWidth - 4;
    const cols = Math.max(1, Math.floor(W / this.opts.cell)), cell = Math.floor(W / cols);
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
        const idx = this.items[pos];
        node = document.createElement("div");
        node.className = "cell";
        node.dataset.index = idx;
        node.dataset.id = this.opts.id(idx);
        const img = document.createElement("img");
        img.loading = "eager";
        img.decoding = "async";
        img.src = thumbURL(this.table, this.opts.id(idx));
        img.alt = "";
        const cap = document.createElement("span");
        cap.textContent = this.opts.caption(idx);
        node.append(img, cap);
        node.addEventListener("click", () => this.opts.onClick(idx));
        this.spacer.appendChild(node);
        this.pool.set(pos, node);
      }
      node.style.transform = `translate(${c * cell}px, ${r * cell}px)`;
      node.style.width = node.style.height = cell - 4 + "px";
    }
    for (const [pos, node] of this.pool) if (!keep.has(pos)) { node.remove(); this.pool.delete(pos); }
  }

  /** Resolves when every thumbnail now in the DOM has loaded (or failed). */
  imagesSettled() {
    const imgs = [...this.el.querySelectorAll("img")];
    return Promise.all(imgs.map((im) => (im.complete ? null : new Promise((ok) => { im.onload = im.onerror = ok; }))));
  }
}
