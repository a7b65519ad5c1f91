// Small canvas charts: line chart (training curves, accuracy per run) without libraries.
import { PALETTE, css } from "./colors.js";

/**
 * series: [{name, points: [[x, y], ...]}]; opts: {xlabel, ylabel, labels: {x: text}, ymin, ymax}
 */
export function lineChart(canvas, series, opts = {}) {
  const dpr = window.devicePixelRatio || 1, W = canvas.clientWidth, H = canvas.clientHeight;
  canvas.width = W * dpr; canvas.height = H * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, W, H);
  g.font = "11px system-ui, sans-serif";
  const all = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[1]));
  if (!all.length) { g.fillStyle = "#888"; g.fillText(opts.empty || "no data yet", 10, 20); return; }
  const L = 48, R = 16, T = 24, B = opts.labels ? 56 : 30;
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  let y0 = opts.ymin ?? Math.min(...all.map((p) => p[1])), y1 = opts.ymax ?? Math.max(...all.map((p) => p[1]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (opts.labels) { const pad = Math.max(0.5, (x1 - x0) * 0.08); x0 -= pad; x1 += pad; } if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R), Y = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  g.strokeStyle = "#ccc"; g.fillStyle = "#555"; g.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const y = y0 + ((y1 - y0) * k) / 4;
    g.beginPath(); g.moveTo(L, Y(y)); g.lineTo(W - R, Y(y)); g.stroke();
    g.fillText(opts.pct ? (100 * y).toFixed(1) + "%" : y.toPrecision(3), 2, Y(y) + 4);
  }
  const xs = [...new Set(all.map((p) => p[0]))].sort((a, b) => a - b);
  const every = Math.max(1, Math.ceil(xs.length / 12));
  xs.forEach((x, k) => {
    if (k % every) return;
    const text = opts.labels ? opts.labels[x] ?? String(x) : String(x);
    g.save(); g.translate(X(x), H - B + 12);
    if (opts.labels) { g.rotate(-0.5); g.textAlign = "right"; } else g.textAlign = "center";
    g.fillText(text, 0, 0); g.restore();
  });
  series.forEach((s, k) => {
    const c = css(s.color || PALETTE[k % PALETTE.length]);
    g.strokeStyle = c; g.fillStyle = c; g.lineWidth = 2;
    g.beginPath();
    s.points.filter((p) => Number.isFinite(p[1])).forEach(([x, y], j) => (j ? g.lineTo(X(x), Y(y)) : g.moveTo(X(x), Y(y))));
    g.stroke();
    for (const [x, y] of s.points) if (Number.isFinite(y)) { g.beginPath(); g.arc(X(x), Y(y), 3, 0, 7); g.fill(); }
    if (opts.valueLabels) for (const [x, y] of s.points) if (Number.isFinite(y)) g.fillText(opts.pct ? (100 * y).toFixed(2) : y.toPrecision(3), X(x) - 12, Y(y) - 7);
    g.fillText(s.name, L + 8 + k * 110, T + 4);
  });
}
