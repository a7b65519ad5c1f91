// Colour maps: a categorical palette and a perceptual ramp (viridis samples), as RGBA bytes.

export const PALETTE = [
  [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
  [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
  [57, 59, 121], [173, 73, 74], [99, 121, 57], [206, 109, 189], [140, 162, 82],
  [231, 186, 82], [107, 110, 207], [165, 81, 148], [82, 84, 163], [214, 97, 107],
];
export const NONE = [200, 200, 200];
const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];

export function ramp(t) {
  if (!(t >= 0)) t = 0; if (t > 1) t = 1;
  const f = t * (VIRIDIS.length - 1), i = Math.min(VIRIDIS.length - 2, Math.floor(f)), u = f - i;
  const a = VIRIDIS[i], b = VIRIDIS[i + 1];
  return [a[0] + (b[0] - a[0]) * u, a[1] + (b[1] - a[1]) * u, a[2] + (b[2] - a[2]) * u];
}

export const cat = (k) => (k < 0 ? NONE : PALETTE[k % PALETTE.length]);
export const css = (c) => `rgb(${c[0] | 0},${c[1] | 0},${c[2] | 0})`;

/** Robust range of a float column: 1st..99th percentile of finite values (sampled). */
export function range(a) {
  const step = Math.max(1, Math.floor(a.length / 50000)), s = [];
  for (let i = 0; i < a.length; i += step) if (Number.isFinite(a[i])) s.push(a[i]);
  if (!s.length) return [0, 1];
  s.sort((x, y) => x - y);
  const lo = s[Math.floor(s.length * 0.01)], hi = s[Math.floor(s.length * 0.99)];
  return hi > lo ? [lo, hi] : [s[0], s[s.length - 1] + 1e-6];
}

/** Fill an RGBA byte array for `n` points from a per-point colour function. */
export function fillColors(n, colorOf, alpha = 220) {
  const out = new Uint8Array(n * 4);
  for (let i = 0; i < n; i++) {
    const c = colorOf(i);
    out[4 * i] = c[0]; out[4 * i + 1] = c[1]; out[4 * i + 2] = c[2]; out[4 * i + 3] = alpha;
  }
  return out;
}

/** Lookup table of 256 ramp colours, for fast continuous colouring. */
export const RAMP_LUT = Array.from({ length: 256 }, (_, i) => ramp(i / 255).map((v) => v | 0));
