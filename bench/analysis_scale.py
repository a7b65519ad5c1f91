"""Scale of the analysis: kNN findings on 60,000 x 512-d, PaCMAP on 60,000, analyze on 1,000,000.

Synthetic embeddings (a 10-class Gaussian mixture; 10% of labels flipped, 5% undefined,
probabilities from a softmax over class-centre similarities, AUM from noisy margins) so
sizes can be chosen freely. Baseline, measured in the same run: scikit-learn's exact
``NearestNeighbors`` (brute force, cosine) for the same kNN graph.

    PYTHONPATH=src python bench/analysis_scale.py [--n 60000] [--dim 512] [--big 1000000]
        [--big-dim 128] [--skip-big] [--skip-map]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from dataloupe.analysis import AnalysisInputs, SampleArrays, analyze, knn, reduce


def synthetic(n: int, dim: int, *, k: int = 10, seed: int = 0, undefined: float = 0.05, noise: float = 0.1):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)).astype(np.float32)
    y = rng.integers(0, k, n)
    emb = centres[y] + 1.2 * rng.standard_normal((n, dim), dtype=np.float32)
    logits = (emb @ centres.T) / np.sqrt(dim)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = y.copy()
    flip = rng.random(n) < noise
    labels[flip] = (labels[flip] + rng.integers(1, k, flip.sum())) % k
    aum = logits[np.arange(n), labels] - np.where(np.eye(k, dtype=bool)[labels], -np.inf, logits).max(1)
    aum += rng.standard_normal(n).astype(np.float32)
    labels[rng.random(n) < undefined] = -1
    return SampleArrays(ids=np.arange(n), labels=labels, probs=probs.astype(np.float32), embeddings=emb, aum=aum)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--big-dim", type=int, default=128)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-map", action="store_true")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    rows = []
    print(f"cores available: {len(os.sched_getaffinity(0))}", flush=True)

    train = synthetic(args.n, args.dim)
    val = synthetic(args.n // 6, args.dim, seed=1)
    classes = [f"c{i}" for i in range(10)]
    if not args.skip_baseline:
        from sklearn.neighbors import NearestNeighbors

        _, s = timed(lambda: NearestNeighbors(n_neighbors=11, metric="cosine", algorithm="brute", n_jobs=-1)
                     .fit(train.embeddings).kneighbors(train.embeddings))
        rows.append((f"kNN graph k=10, {args.n:,} x {args.dim} (sklearn brute, baseline)", s, None))
    _, s = timed(lambda: knn(train.embeddings, k=10))
    rows.append((f"kNN graph k=10, {args.n:,} x {args.dim} (faiss, ours)", s, None))
    print(rows[-1], flush=True)
    knn_names = ["label_issues", "outliers", "near_duplicates", "leakage", "pseudo_labels"]
    inputs = AnalysisInputs(classes, synthetic(args.n, args.dim), val)
    (found, _), s = timed(lambda: analyze(inputs, detectors=knn_names))
    rows.append((f"all kNN findings, {args.n:,} + {len(val):,} val x {args.dim} (target < 30 s)", s, None))
    print(rows[-1], {k: len(v) if isinstance(v, list) else len(v.get('items', [])) for k, v in found.items()
                     if k != "probabilities"}, flush=True)
    if not args.skip_map:
        _, s = timed(lambda: reduce(train.embeddings, method="pacmap", dims=2, apply=[val.embeddings]))
        rows.append((f"PaCMAP 2-D fit {args.n:,} x {args.dim} + place {len(val):,} (target < 90 s)", s, None))
        print(rows[-1], flush=True)
    if not args.skip_big:
        big_train = synthetic(args.big, args.big_dim, seed=2)
        big_val = synthetic(args.big // 10, args.big_dim, seed=3)
        t0 = time.perf_counter()
        (found, _), s = timed(lambda: analyze(AnalysisInputs(classes, big_train, big_val)))
        rows.append((f"analyze (all detectors) {args.big:,} + {len(big_val):,} val x {args.big_dim} (target < 600 s, 16 GiB)",
                     s, peak_rss_gib()))
        print(rows[-1], {k: len(v) if isinstance(v, list) else len(v.get('items', v.get('categories', [])))
                         for k, v in found.items() if k != "probabilities"}, flush=True)
    print(f"\n{'step':<92}{'seconds':>9}{'peak RSS GiB':>14}")
    for name, s, rss in rows:
        print(f"{name:<92}{s:>9.1f}{'' if rss is None else f'{rss:.1f}':>14}")
    print(f"peak RSS of the whole run: {peak_rss_gib():.1f} GiB")


if __name__ == "__main__":
    main()
