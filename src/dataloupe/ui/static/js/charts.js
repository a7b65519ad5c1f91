// Small canvas charts: line chart (training curves, accuracy per run) without libraries.
import { PALETTE, css } from "./colors.js";

/**
 * series: [{name, points: [[x, y], ...]}]; opts: {labels: {x: text}, ymin, ymax, pct, valueLabels, empty}
 * A series is drawn as its own line (never joined to another). With pct the axis stays in
 * 0–100%. Returns (and keeps as canvas.__chart) the axis range and every x label's box, so
 * tests can check that nothing is cut off.
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
  const ANGLE = 0.5, MAXW = 170;  // rotated x labels: radians, longest label in px
  let labelW = 0;
  if (opts.labels) for (const t of Object.values(opts.labels)) labelW = Math.max(labelW, g.measureText(t).width);
  const L = 48, R = 16, T = 24 + (series.length > 1 ? 14 : 0);
  const B = opts.labels ? 20 + Math.min(labelW, MAXW) * Math.sin(ANGLE) + 8 : 30;
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  let y0 = opts.ymin ?? Math.min(...all.map((p) => p[1])), y1 = opts.ymax ?? Math.max(...all.map((p) => p[1]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (opts.labels) { const pad = Math.max(0.5, (x1 - x0) * 0.08); x0 -= pad; x1 += pad; }
  if (opts.pct) {  // a share: pad a little, never past 0% or 100%
    const pad = Math.max(0.02, (y1 - y0) * 0.1);
    y0 = Math.max(0, y0 - pad); y1 = Math.min(1, y1 + pad);
    if (y1 - y0 < 0.04) { y0 = Math.max(0, y1 - 0.04); y1 = Math.min(1, y0 + 0.04); }
  } else if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const info = { y0, y1, labels: [], width: W, height: H };
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
    let text = opts.labels ? opts.labels[x] ?? String(x) : String(x);
    const px = X(x), py = H - B + 12;
    if (opts.labels) {
      // rotated text, right-aligned at the tick: shorten it until it fits left and below
      const room = Math.min(MAXW, (px - 2) / Math.cos(ANGLE), (H - py - 2) / Math.sin(ANGLE));
      while (text.length > 1 && g.measureText(text).width > room) text = text.slice(0, -2) + "…";
      const w = g.measureText(text).width;
      info.labels.push({ text, left: px - w * Math.cos(ANGLE), right: px + 4, top: py - 10, bottom: py + w * Math.sin(ANGLE) });
    } else {
      const w = g.measureText(text).width;
      info.labels.push({ text, left: px - w / 2, right: px + w / 2, top: py - 10, bottom: py + 2 });
    }
    g.save(); g.translate(px, py);
    if (opts.labels) { g.rotate(-ANGLE); g.textAlign = "right"; } else g.textAlign = "center";
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
    g.fillText(s.name, L + 8 + k * 160, T - (series.length > 1 ? 12 : -4));
  });
  canvas.__chart = info;
  return info;
}
