// A small WebGL2 scatter renderer for up to a few million points.
//
// Why our own instead of a vendored library (regl-scatterplot, deck.gl): the dashboard
// needs exactly three things — gl.POINTS with per-point colour, a per-point flag byte
// (visible / selected) that a filter change rewrites in one 1-byte-per-point upload, and
// CPU picking for hover and lasso. That is ~300 lines with no build step, no licence
// bundle to track, and a filter change costs one bufferSubData plus one draw call.
//
// Coordinates: data space (map_x, map_y) → view (scale, offset) → clip space. Picking
// uses a uniform grid over the data bounds (counting sort of point indices into cells).
//
// Only visible points are drawn, through an index buffer built in a fixed random order.
// On a software rasteriser (SwiftShader, llvmpipe: no GPU) a million vertices cost ~0.7 s
// per frame, so there the index is capped (starts at 200,000 and adapts so a draw takes
// ~120 ms, between 50,000 and 400,000; `?maxpoints=N` fixes it): a
// uniform random sample of the visible points in view, always including every selected
// point, rebuilt when zooming or panning stops — zoom in or filter and every point shows.
// With a GPU the cap is effectively off. Picking, box and lasso always use all points.

const VS = `#version 300 es
in float a_x; in float a_y; in vec4 a_color; in uint a_flags;
uniform vec2 u_scale; uniform vec2 u_offset; uniform float u_size; uniform bool u_hasSel;
out vec4 v_color;
void main() {
  if ((a_flags & 1u) == 0u) { gl_Position = vec4(2.0, 2.0, 2.0, 1.0); gl_PointSize = 0.0; return; }
  bool sel = (a_flags & 2u) != 0u;
  gl_Position = vec4(a_x * u_scale.x + u_offset.x, a_y * u_scale.y + u_offset.y, sel ? -0.5 : 0.0, 1.0);
  gl_PointSize = sel ? u_size + 2.0 : u_size;
  float alpha = u_hasSel && !sel ? 0.18 : a_color.a;
  v_color = vec4(a_color.rgb, alpha);
}`;
const FS = `#version 300 es
precision mediump float;
in vec4 v_color; out vec4 outColor;
void main() {
  vec2 c = gl_PointCoord - 0.5;
  if (dot(c, c) > 0.25) discard;
  outColor = v_color;
}`;

const DRAW_BUDGET_MS = 120;  // software rendering only: target time of one full draw

function compile(gl, type, src) {
  const s = gl.createShader(type);
  gl.shaderSource(s, src);
  gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
  return s;
}

export class Scatter {
  constructor(canvas) {
    this.canvas = canvas;
    const gl = canvas.getContext("webgl2", { antialias: false, preserveDrawingBuffer: true, alpha: false });
    if (!gl) throw new Error("WebGL2 is not available in this browser");
    this.gl = gl;
    const prog = gl.createProgram();
    gl.attachShader(prog, compile(gl, gl.VERTEX_SHADER, VS));
    gl.attachShader(prog, compile(gl, gl.FRAGMENT_SHADER, FS));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
    this.prog = prog;
    this.loc = {};
    for (const u of ["u_scale", "u_offset", "u_size", "u_hasSel"]) this.loc[u] = gl.getUniformLocation(prog, u);
    this.vao = gl.createVertexArray();
    this.buf = {};
    this.n = 0;
    this.view = { cx: 0, cy: 0, zoom: 1 };  // centre in data units, zoom 1 = fit
    this.hasSel = false;
    this.drawCount = 0;
    this.lastDrawMs = 0;
    this.pending = false;
    this.onViewChange = null;
    const info = gl.getExtension("WEBGL_debug_renderer_info");
    this.renderer = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
    this.software = /swiftshader|llvmpipe|software|softpipe/i.test(this.renderer);
    const asked = Number(new URLSearchParams(location.search).get("maxpoints"));
    this.cap = asked > 0 ? asked : this.software ? 200000 : 50000000;
    this.fixedCap = asked > 0;
    this.drawn = 0;
    this.sampled = false;
    this.ibuf = gl.createBuffer();
  }

  _attr(name, data, size, type, integer) {
    const gl = this.gl;
    const loc = gl.getAttribLocation(this.prog, name);
    if (!this.buf[name]) this.buf[name] = gl.createBuffer();
    gl.bindVertexArray(this.vao);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.buf[name]);
    gl.bufferData(gl.ARRAY_BUFFER, data, gl.DYNAMIC_DRAW);
    gl.enableVertexAttribArray(loc);
    if (integer) gl.vertexAttribIPointer(loc, size, type, 0, 0);
    else gl.vertexAttribPointer(loc, size, type, type === gl.UNSIGNED_BYTE, 0, 0);
  }

  /** Upload positions (Float32Array x, y of length n); builds the picking grid. */
  setPoints(x, y, keepView = false) {
    const gl = this.gl;
    this.n = x.length;
    this.x = x; this.y = y;
    this._attr("a_x", x, 1, gl.FLOAT, false);
    this._attr("a_y", y, 1, gl.FLOAT, false);
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < x.length; i++) {
      const a = x[i], b = y[i];
      if (a < x0) x0 = a; if (a > x1) x1 = a; if (b < y0) y0 = b; if (b > y1) y1 = b;
    }
    if (!isFinite(x0)) { x0 = y0 = 0; x1 = y1 = 1; }
    if (x1 === x0) x1 = x0 + 1; if (y1 === y0) y1 = y0 + 1;
    this.bounds = { x0, x1, y0, y1 };
    if (!keepView) this.fit();
    this._buildGrid();
    const n = this.n, perm = new Uint32Array(n);
    for (let i = 0; i < n; i++) perm[i] = i;
    let seed = 12345;  // fixed order: the same sample on every reload
    for (let i = n - 1; i > 0; i--) {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      const j = seed % (i + 1), t = perm[i]; perm[i] = perm[j]; perm[j] = t;
    }
    this.perm = perm;
    this.index = new Uint32Array(n);
  }

  setColors(rgba) { this._attr("a_color", rgba, 4, this.gl.UNSIGNED_BYTE, false); }

  /** flags: Uint8Array(n), bit 0 visible, bit 1 selected. */
  setFlags(flags, hasSel) {
    const gl = this.gl;
    this.flags = flags;
    this.hasSel = hasSel;
    if (!this.buf.a_flags || this.flagsLen !== flags.length) this._attr("a_flags", flags, 1, gl.UNSIGNED_BYTE, true);
    else { gl.bindBuffer(gl.ARRAY_BUFFER, this.buf.a_flags); gl.bufferSubData(gl.ARRAY_BUFFER, 0, flags); }
    this.flagsLen = flags.length;
    this._buildIndex();
  }

  /** Index buffer of the points to draw: visible ones (capped sample in view), selected last (on top). */
  _buildIndex() {
    const { flags, perm, index, n } = this, limit = Math.min(this.cap, n);
    let visible = 0, selected = 0;
    for (let i = 0; i < n; i++) { const f = flags[i]; visible += f & 1; selected += (f & 3) === 3; }
    const nsel = Math.min(selected, limit), target = limit - nsel;
    // selected points go last (drawn on top); a sequential scan is cache-friendly
    let s = target;
    if (nsel) for (let i = 0; i < n && s < limit; i++) if ((flags[i] & 3) === 3) index[s++] = i;
    let k = 0;
    if (visible - selected <= target) {
      for (let i = 0; i < n; i++) if ((flags[i] & 3) === 1) index[k++] = i;
    } else {
      // more than the cap: a uniform random sample (fixed permutation) of the points in view
      let [vx0, vy1] = this.toData(0, 0), [vx1, vy0] = this.toData(this.canvas.clientWidth, this.canvas.clientHeight);
      const padX = (vx1 - vx0) * 0.1, padY = (vy1 - vy0) * 0.1;
      vx0 -= padX; vx1 += padX; vy0 -= padY; vy1 += padY;
      const x = this.x, y = this.y;
      for (let p = 0; p < n && k < target; p++) {
        const i = perm[p];
        if ((flags[i] & 3) !== 1) continue;
        const a = x[i], b = y[i];
        if (a < vx0 || a > vx1 || b < vy0 || b > vy1) continue;
        index[k++] = i;
      }
    }
    if (k < target) index.copyWithin(k, target, s);
    this.drawn = k + (s - target);
    this.sampled = this.drawn < visible;
    this.visibleCount = visible;
    const gl = this.gl;
    gl.bindVertexArray(this.vao);
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, this.ibuf);
    gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, index.subarray(0, this.drawn), gl.DYNAMIC_DRAW);
  }

  /** After zooming or panning stops, re-pick the sample from the points now in view. */
  _viewSettled() {
    if (!this.sampled && !(this.visibleCount > this.cap)) return;
    clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => { this._buildIndex(); this.requestDraw(); }, 150);
  }

  fit() {
    const b = this.bounds;
    this.view = { cx: (b.x0 + b.x1) / 2, cy: (b.y0 + b.y1) / 2, zoom: 1 };
  }

  /** Pixels per data unit (same on both axes so the map keeps its shape). */
  _ppu() {
    const b = this.bounds, w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    return 0.92 * Math.min(w / (b.x1 - b.x0), h / (b.y1 - b.y0)) * this.view.zoom;
  }

  toData(px, py) {
    const ppu = this._ppu(), w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    return [this.view.cx + (px - w / 2) / ppu, this.view.cy - (py - h / 2) / ppu];
  }

  toPixel(dx, dy) {
    const ppu = this._ppu(), w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    return [(dx - this.view.cx) * ppu + w / 2, h / 2 - (dy - this.view.cy) * ppu];
  }

  zoomAt(px, py, factor) {
    const [dx, dy] = this.toData(px, py);
    this.view.zoom = Math.min(Math.max(this.view.zoom * factor, 0.2), 5000);
    const [nx, ny] = this.toData(px, py);
    this.view.cx += dx - nx; this.view.cy += dy - ny;
    this.requestDraw();
    this._viewSettled();
  }

  panBy(dpx, dpy) {
    const ppu = this._ppu();
    this.view.cx -= dpx / ppu; this.view.cy += dpy / ppu;
    this.requestDraw();
    this._viewSettled();
  }

  requestDraw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  /** Draw now; with sync=true wait for the GPU (1-pixel read) so timings are honest. */
  draw(sync = false) {
    const gl = this.gl, c = this.canvas, dpr = window.devicePixelRatio || 1;
    const t0 = performance.now();
    const W = Math.max(1, Math.round(c.clientWidth * dpr)), H = Math.max(1, Math.round(c.clientHeight * dpr));
    if (c.width !== W || c.height !== H) { c.width = W; c.height = H; }
    gl.viewport(0, 0, W, H);
    gl.clearColor(1, 1, 1, 1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    if (this.n && this.buf.a_color && this.buf.a_flags) {
      gl.useProgram(this.prog);
      gl.enable(gl.BLEND);
      gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
      const ppu = this._ppu();
      const sx = (2 * ppu) / c.clientWidth, sy = (2 * ppu) / c.clientHeight;
      gl.uniform2f(this.loc.u_scale, sx, sy);
      gl.uniform2f(this.loc.u_offset, -this.view.cx * sx, -this.view.cy * sy);
      const size = Math.max(1.5, Math.min(9, 2.2 * Math.sqrt(this.view.zoom) * (this.n > 200000 ? 0.8 : this.n > 20000 ? 1.3 : 2.2))) * dpr;
      gl.uniform1f(this.loc.u_size, size);
      gl.uniform1i(this.loc.u_hasSel, this.hasSel ? 1 : 0);
      gl.bindVertexArray(this.vao);
      gl.drawElements(gl.POINTS, this.drawn, gl.UNSIGNED_INT, 0);
    }
    if (sync) gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
    this.drawCount++;
    this.lastDrawMs = performance.now() - t0;
    // software rasteriser: keep a synced draw near DRAW_BUDGET_MS by adapting the sample size
    if (sync && this.software && !this.fixedCap && this.drawn >= 20000) {
      this.cap = Math.round(Math.min(400000, Math.max(50000, (this.drawn * DRAW_BUDGET_MS) / Math.max(this.lastDrawMs, 1))));
    }
    if (this.onViewChange) this.onViewChange();
  }

  /** Number of non-background pixels (used by tests to see that points were drawn). */
  countInkPixels() {
    const gl = this.gl, W = this.canvas.width, H = this.canvas.height;
    const px = new Uint8Array(W * H * 4);
    gl.readPixels(0, 0, W, H, gl.RGBA, gl.UNSIGNED_BYTE, px);
    let ink = 0;
    for (let i = 0; i < px.length; i += 4) if (px[i] < 250 || px[i + 1] < 250 || px[i + 2] < 250) ink++;
    return ink;
  }

  _buildGrid() {
    const G = this.n > 200000 ? 512 : 128, b = this.bounds, n = this.n;
    const cell = new Int32Array(n), count = new Int32Array(G * G + 1);
    const fx = G / (b.x1 - b.x0), fy = G / (b.y1 - b.y0);
    for (let i = 0; i < n; i++) {
      const cx = Math.min(G - 1, Math.max(0, ((this.x[i] - b.x0) * fx) | 0));
      const cy = Math.min(G - 1, Math.max(0, ((this.y[i] - b.y0) * fy) | 0));
      const k = cy * G + cx;
      cell[i] = k; count[k + 1]++;
    }
    for (let k = 0; k < G * G; k++) count[k + 1] += count[k];
    const order = new Uint32Array(n), fill = count.slice(0, G * G);
    for (let i = 0; i < n; i++) order[fill[cell[i]]++] = i;
    this.grid = { G, start: count, order, fx, fy };
  }

  /** Calls fn(i) for every point whose grid cell overlaps the data rectangle. */
  _eachInRect(x0, y0, x1, y1, fn) {
    const { G, start, order, fx, fy } = this.grid, b = this.bounds;
    const c0 = Math.max(0, Math.floor((x0 - b.x0) * fx)), c1 = Math.min(G - 1, Math.floor((x1 - b.x0) * fx));
    const r0 = Math.max(0, Math.floor((y0 - b.y0) * fy)), r1 = Math.min(G - 1, Math.floor((y1 - b.y0) * fy));
    for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) {
      const k = r * G + c;
      for (let j = start[k]; j < start[k + 1]; j++) fn(order[j]);
    }
  }

  /** Index of the nearest visible point within `radius` pixels of (px, py), or -1. */
  pick(px, py, radius = 8) {
    if (!this.n || !this.flags) return -1;
    const [dx, dy] = this.toData(px, py), r = radius / this._ppu();
    let best = -1, bd = r * r;
    this._eachInRect(dx - r, dy - r, dx + r, dy + r, (i) => {
      if (!(this.flags[i] & 1)) return;
      const ex = this.x[i] - dx, ey = this.y[i] - dy, d = ex * ex + ey * ey;
      if (d <= bd) { bd = d; best = i; }
    });
    return best;
  }

  /** Visible point indices inside a polygon given in pixels [[px, py], ...]. */
  selectPolygon(poly) {
    const pts = poly.map(([a, b]) => this.toData(a, b));
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const [a, b] of pts) { x0 = Math.min(x0, a); x1 = Math.max(x1, a); y0 = Math.min(y0, b); y1 = Math.max(y1, b); }
    const out = [];
    const m = pts.length;
    this._eachInRect(x0, y0, x1, y1, (i) => {
      if (!(this.flags[i] & 1)) return;
      const px = this.x[i], py = this.y[i];
      if (px < x0 || px > x1 || py < y0 || py > y1) return;
      let inside = false;
      for (let a = 0, b = m - 1; a < m; b = a++) {
        const [xa, ya] = pts[a], [xb, yb] = pts[b];
        if ((ya > py) !== (yb > py) && px < ((xb - xa) * (py - ya)) / (yb - ya) + xa) inside = !inside;
      }
      if (inside) out.push(i);
    });
    return out;
  }

  selectBox(px0, py0, px1, py1) {
    const [ax, ay] = this.toData(Math.min(px0, px1), Math.max(py0, py1));
    const [bx, by] = this.toData(Math.max(px0, px1), Math.min(py0, py1));
    const out = [];
    this._eachInRect(ax, ay, bx, by, (i) => {
      if (!(this.flags[i] & 1)) return;
      const px = this.x[i], py = this.y[i];
      if (px >= ax && px <= bx && py >= ay && py <= by) out.push(i);
    });
    return out;
  }
}
