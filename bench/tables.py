"""Table benchmarks (issue: foundation).

1. Import the chihuahua-muffin folders (5,917 files, full decode check) vs a baseline
   of the same decode check in a plain single-threaded PIL loop, measured in this run.
2. A 1,000,000-row synthetic table: an edit touching 100,000 rows (one revision) vs the
   baseline of a raw Lance write of the same rows; reading revision 1 vs the latest.

Usage: python bench/tables.py [--data ../shared/datasets/chihuahua-muffin] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
from PIL import Image

from dataloupe.project import Project
from dataloupe.tables import create_table, edit_table, import_imagefolder, open_table


def timed(fn, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_import(data: Path, work: Path) -> list[tuple[str, float, str]]:
    p = Project.open(work / "imp")

    def ours():
        a = import_imagefolder(p, data / "train128", table="cm-train", unlabeled_dir="undefined")
        b = import_imagefolder(p, data / "test128", table="cm-test", classes=["chihuahua", "muffin"])
        return a.imported + b.imported

    t_ours, n = timed(ours)
    files = sorted(f for f in data.rglob("*") if f.is_file() and f.suffix == ".jpg")

    def baseline():
        for f in files:
            with Image.open(f) as im:
                im.load()
        return len(files)

    t_base, _ = timed(baseline)
    return [(f"import {n} files (decode check)", t_ours, f"{t_base / t_ours:.2f}x vs 1-thread PIL loop ({t_base:.2f} s)")]


def bench_edit(rows: int, work: Path) -> list[tuple[str, float, str]]:
    p = Project.open(work / "big")
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b", "c", "d", None], dtype=object)[rng.integers(0, 5, rows)]
    t = pa.table({"path": pa.array([f"img/{i:08d}.jpg" for i in range(rows)]),
                  "label": pa.array(labels, pa.string()),
                  "group": pa.array(rng.integers(0, 10, rows))})
    t_create, _ = timed(lambda: create_table(p, "big", t, classes=["a", "b", "c", "d"], image_root="/"))
    latest = open_table(p, "big")
    full = latest.to_arrow()
    t_raw, _ = timed(lambda: lance.write_dataset(full, work / "raw.lance", mode="overwrite"), 3)
    k = 0

    def one_edit():
        nonlocal k
        k += 1
        return edit_table(p, "big", action="set_weight", weight=float(k + 1), where="group = 3",
                          message=f"edit {k}")

    t_edit, res = timed(one_edit, 3)
    assert res.changed > 90_000, res
    v1, vl = open_table(p, "big", 1), open_table(p, "big")
    t_old, _ = timed(lambda: v1.to_arrow(), 5)
    t_new, _ = timed(lambda: vl.to_arrow(), 5)
    return [
        (f"create {rows:,}-row table", t_create, ""),
        (f"edit touching {res.changed:,} rows (1 revision)", t_edit,
         f"{t_edit / t_raw:.2f}x a raw Lance write of the table ({t_raw:.2f} s)"),
        ("read revision 1 (all rows)", t_old, f"{t_old / t_new:.2f}x reading the latest ({t_new:.2f} s)"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared/datasets/chihuahua-muffin")
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dl-bench-"))
    try:
        results = []
        if args.data.is_dir():
            results += bench_import(args.data, work)
        else:
            print(f"(skipping import: {args.data} not found)")
        results += bench_edit(args.rows, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'benchmark':<46} {'seconds':>8}  vs baseline (same run)")
    for name, secs, note in results:
        print(f"{name:<46} {secs:>8.3f}  {note}")


if __name__ == "__main__":
    main()
