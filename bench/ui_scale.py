"""Dashboard at scale: a synthetic run with 1,000,000 samples, timed inside headless Chromium.

Measures with the browser's Performance API (through Playwright):
  * page load → first drawn map (cold: server packs the columns; warm: packed columns cached)
  * a filter change → map redrawn (WebGL draw waited on with a 1-pixel read), and the
    whole task including the grid update until the next frame
  * a ~10,000-point lasso → selection grid rendered, and its thumbnails loaded
Baseline, measured in the same run: the same columns as per-point JSON objects (what the
dashboard avoids), fetched and parsed in the same browser.

Targets (issue 6): first map < 3 s, filter redraw < 300 ms, 10k lasso grid < 1 s.

Usage:
    PYTHONPATH=src python bench/ui_scale.py [--n 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from ui_synth import CLASSES, write_run  # noqa: E402

from dataloupe.project import Project  # noqa: E402
from dataloupe.tables import create_table  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ANALYSIS: list = [None]  # the run's analysis.json (touched to force a cold re-pack)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def build(root: Path, n: int) -> Project:
    """A table of ``n`` rows (paths cycle over the 1,797 digit PNGs) and a run over it."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    img = root / "img"
    img.mkdir(parents=True)
    for i, im in enumerate(d.images):
        Image.fromarray((im * 255 / 16).astype(np.uint8)).save(img / f"{i:04d}.png")
    rng = np.random.default_rng(0)
    k = len(CLASSES)
    true = rng.integers(0, k, n)
    label = true.copy()
    flip = rng.random(n) < 0.05
    label[flip] = rng.integers(0, k, flip.sum())
    label[rng.random(n) < 0.02] = -1  # undefined
    src = np.array([np.flatnonzero(d.target == c) for c in range(k)], dtype=object)
    paths = [f"{src[c][i % len(src[c])]:04d}.png" for i, c in enumerate(true)]
    cls = np.array(CLASSES, dtype=object)
    p = Project.open(root / "proj")
    create_table(p, "big", pa.table({"path": paths, "label": pa.array(np.where(label >= 0, cls[np.maximum(label, 0)], None), pa.string())}),
                 classes=CLASSES, image_root=img, message="synthetic 1M")
    centres = rng.normal(0, 10, (50, 2))
    cl = rng.integers(0, 50, n)
    xy = (centres[cl] + rng.normal(0, 1.2, (n, 2))).astype(np.float32)
    conf = rng.beta(5, 1.5, n).astype(np.float32)
    pred = np.where(rng.random(n) < conf, true, rng.integers(0, k, n))
    ids = np.arange(n, dtype=np.int64)
    wrong = np.flatnonzero((label >= 0) & (pred != label))
    analysis = {"label_issues": [{"id": int(i), "suggested_label": CLASSES[pred[i]]} for i in wrong[:20000]],
                "outliers": [{"id": int(i)} for i in rng.choice(n, 5000, replace=False)],
                "near_duplicates": [], "leakage": [], "clusters": [],
                "pseudo_labels": [{"id": int(i), "label": CLASSES[pred[i]]} for i in np.flatnonzero(label < 0)[:5000]],
                "taxonomy": {}}
    write_run(p, "big-run", "big", 1, ids=ids, labels=label, classes=CLASSES, probs=None, map_xy=xy,
              predicted=pred, confidence=conf, cluster=cl.astype(np.int32), analysis=analysis)
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, default=None, help="build/keep the synthetic project here")
    ap.add_argument("--screenshot", type=Path, default=None, help="save a PNG of the 1M-point run view here")
    a = ap.parse_args()
    root = a.keep or Path(tempfile.mkdtemp(prefix="ui-scale-"))
    t0 = time.perf_counter()
    if not (root / "proj" / "runs" / "big-run" / "run.json").exists():
        shutil.rmtree(root, ignore_errors=True)
        build(root, a.n)
    print(f"synthetic project: {a.n:,} samples in {time.perf_counter() - t0:.1f} s ({root})", flush=True)

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    server = subprocess.Popen([sys.executable, "-m", "dataloupe", "ui", "--port", str(port), "--project", str(root / "proj")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        ANALYSIS[0] = root / "proj" / "runs" / "big-run" / "analysis.json"
        rows = run_browser(url, port, a.screenshot)
    finally:
        server.terminate()
        server.wait(10)
        if a.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"{'measure (headless Chromium, SwiftShader WebGL2, 2-core CPU)':64s} {'ms':>9s}  target")
    for name, ms, target in rows:
        ok = "" if target is None else ("ok" if ms < target else "MISSED")
        print(f"{name:64s} {ms:9.0f}  {'' if target is None else f'< {target} {ok}'}")


def run_browser(url: str, port: int, screenshot: Path | None = None) -> list[tuple[str, float, float | None]]:
    import httpx
    from playwright.sync_api import sync_playwright

    for _ in range(100):
        try:
            httpx.get(url + "api/health")
            break
        except httpx.ConnectError:
            time.sleep(0.1)
    rows = []
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        ctx = b.new_context(viewport={"width": 1400, "height": 850})
        pg = ctx.new_page()

        def load(label):
            pg.goto(url + "#/run/big-run")
            pg.wait_for_function("window.__dl && window.__dl.ready", timeout=120000)
            ms = pg.evaluate("performance.getEntriesByName('dl:first-draw')[0].startTime")
            rows.append((label, ms, 3000))
            return ms

        load("page load -> first drawn map (first load after server start)")
        pg.reload()
        load("page load -> first drawn map (warm)")
        os.utime(ANALYSIS[0])  # invalidate the server's packed columns
        pg.reload()
        load("page load -> first drawn map (cold: server re-packs 1M rows)")
        n = pg.evaluate("__dl.run.n")
        assert n > 0 and pg.evaluate("__dl.run.scatter.countInkPixels()") > 10000
        mb = pg.evaluate("__dl.run.P.bytes") / 1e6

        # filter changes: synchronous map redraw, and the whole task until the next frame
        steps = [
            "document.querySelector(\"#f-label input[value='3']\").click()",
            "document.querySelector('#f-correct').value = 'incorrect'; document.querySelector('#f-correct').dispatchEvent(new Event('change'))",
            "const r = document.querySelector('#r-confidence-hi'); r.value = +r.min + (r.max - r.min) * 0.6; r.dispatchEvent(new Event('input'))",
            "document.querySelector('#f-finding').value = 'some'; document.querySelector('#f-finding').dispatchEvent(new Event('change'))",
            "document.querySelector('#f-reset').click()",
        ]
        draw, task = [], []
        for s in steps:
            res = pg.evaluate("""async (code) => {
                const before = __dl.filterCount || 0; const t0 = performance.now();
                (new Function(code))();
                while ((__dl.filterCount || 0) === before) await new Promise((r) => requestAnimationFrame(r));
                const t1 = performance.now();
                await new Promise((r) => requestAnimationFrame(() => setTimeout(r)));
                return [__dl.run.lastFilterMs, performance.now() - t0, t1 - t0];
            }""", s)
            draw.append(res[0])
            task.append(res[1])
        rows.append(("filter change -> map redrawn (median of 5, WebGL sync)", float(np.median(draw)), 300))
        rows.append(("filter change -> map + grid + next frame (median of 5)", float(np.median(task)), None))

        # lasso of ~10,000 points with real mouse events
        pg.click("#mode-lasso")
        box = pg.locator("#overlay").bounding_box()
        cx, cy = box["width"] / 2, box["height"] / 2
        circle = lambda r: [[cx + r * math.cos(2 * math.pi * k / 48), cy + r * math.sin(2 * math.pi * k / 48)] for k in range(48)]
        lo, hi = 1.0, min(cx, cy)
        for _ in range(30):
            mid = (lo + hi) / 2
            cnt = pg.evaluate("(p) => __dl.run.scatter.selectPolygon(p).length", circle(mid))
            if cnt < 10000:
                lo = mid
            else:
                hi = mid
        poly = circle(hi)
        pg.evaluate("() => { window.addEventListener('mouseup', () => { window.__tUp = performance.now(); }, {capture: true, once: true}); }")
        pg.mouse.move(box["x"] + poly[0][0], box["y"] + poly[0][1])
        pg.mouse.down()
        for x, y in poly[1:]:
            pg.mouse.move(box["x"] + x, box["y"] + y)
        pg.mouse.up()
        res = pg.evaluate("""async () => {
            while (!window.__tUp) await new Promise((r) => setTimeout(r, 5));
            while (!performance.getEntriesByName('dl:selection-painted').length) await new Promise((r) => setTimeout(r, 5));
            const mark = performance.getEntriesByName('dl:selection-painted').pop().startTime;
            await __dl.run.grid.imagesSettled();
            return {sel: __dl.run.selCount, cells: document.querySelectorAll('#grid .cell').length,
                    grid: mark - window.__tUp, images: performance.now() - window.__tUp};
        }""")
        rows.append((f"lasso ({res['sel']:,} points) -> grid rendered + map redrawn (next frame)", res["grid"], 1000))
        rows.append((f"lasso -> grid thumbnails loaded ({res['cells']} cells, cold cache)", res["images"], 1000))

        if screenshot is not None:
            pg.wait_for_timeout(300)
            pg.screenshot(path=str(screenshot))

        # baseline: the same columns as per-point JSON objects, fetched and parsed in the page
        base = pg.evaluate("""async (n) => {
            const r = __dl.run, C = r.C, cls = r.H.classes, keys = ['id','map_x','map_y','confidence','loss','aum'];
            const objs = new Array(n);
            for (let i = 0; i < n; i++) { const o = {}; for (const k of keys) if (C[k]) o[k] = C[k][i];
              o.label = C.label[i] < 0 ? null : cls[C.label[i]]; o.predicted = cls[C.predicted[i]]; objs[i] = o; }
            const body = JSON.stringify(objs);
            const blob = new Blob([body], {type: 'application/json'}), u = URL.createObjectURL(blob);
            const t0 = performance.now();
            const parsed = await (await fetch(u)).json();
            const x = new Float32Array(n), y = new Float32Array(n);
            for (let i = 0; i < n; i++) { x[i] = parsed[i].map_x; y[i] = parsed[i].map_y; }
            const t1 = performance.now();
            const t2 = performance.now();
            const res = await fetch(`/api/runs/big-run/points?table=big`);
            const buf = await res.arrayBuffer();
            const t3 = performance.now();
            return {json_ms: t1 - t0, json_mb: body.length / 1e6, bin_ms: t3 - t2, bin_mb: buf.byteLength / 1e6};
        }""", n)
        rows.append((f"baseline: per-point JSON ({base['json_mb']:.0f} MB) fetch+parse+unpack", base["json_ms"], None))
        rows.append((f"ours: binary columns ({base['bin_mb']:.0f} MB) fetch (cached on server)", base["bin_ms"], None))
        drawn = pg.evaluate("[__dl.run.scatter.drawn, __dl.run.scatter.renderer]")
        print(f"points: {n:,}; packed columns {mb:.1f} MB; the map's last full view drew a {drawn[0]:,}-point "
              f"random sample (adaptive, software WebGL: {drawn[1]})", flush=True)
        b.close()
    return rows


if __name__ == "__main__":
    main()
