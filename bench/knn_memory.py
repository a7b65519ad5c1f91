"""A k-nearest-neighbour vote over the pool, beside a finished run's own predictions.

Measures, without training anything, what a memory of the training table's embeddings would
add to a run's validation top-1: the labeled rows with their labels plus the undefined rows the
run itself is most confident about (``--pool-fraction``), each with the run's prediction; a
validation image is classified by the ``k`` most cosine-similar memory rows, each voting with
weight ``exp(similarity / temperature)`` (the kNN monitor of self-supervised learning, Wu et al.
2018). Columns: the run's own top-1 (the baseline, from the same metrics), the vote alone, and
the vote blended with the run's probabilities (``net+vote`` at equal shares, ``wW`` at weight W
against 1, ``--weight``). Validation labels only score.

Reads what ``collect`` wrote (``runs/<run>/metrics``: embeddings, probabilities, confidence of
every train and validation row), so any run with metrics on both tables works, e.g. the demo's
iteration-2 ensemble after ``dataloupe demo --seed 0 --project P``:

    PYTHONPATH=src python bench/knn_memory.py --project P --runs demo-it2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def memory_predict(probs: np.ndarray, query: np.ndarray, memory: np.ndarray, labels: np.ndarray, k: int,
                   temperature: float, weight: float) -> np.ndarray:
    """The shipped memory classifier's prediction (``models/_memory.py``: the head's probabilities
    ``probs`` blended with the vote of the ``k`` nearest memory rows); a huge ``weight`` is the vote alone."""
    import torch

    from dataloupe.models import MemoryVote

    vote = MemoryVote(probs.shape[1])
    vote.fill(torch.from_numpy(memory), torch.from_numpy(labels), k=k, temperature=temperature, weight=weight)
    with torch.no_grad():
        return vote(torch.from_numpy(np.log(np.maximum(probs, 1e-12))), torch.from_numpy(query)).numpy()


def measure(project, run: str, fractions: list[float], k: int, temperature: float,
            weights: tuple[float, ...] = (1.0,)) -> dict:
    from dataloupe.analysis._runio import load_metrics
    from dataloupe.runs import read_run

    info = read_run(project, run)
    classes = list(info["classes"])
    index = {c: i for i, c in enumerate(classes)}
    cols = ["label", "predicted", "confidence", "probs", "embedding"]
    tr = load_metrics(project, run, info["train_table"], columns=cols).to_pydict()
    va = load_metrics(project, run, info["val_table"], columns=cols).to_pydict()
    emb_t = np.asarray(tr["embedding"], np.float32)
    emb_v = np.asarray(va["embedding"], np.float32)
    y_val = np.array([index[label] for label in va["label"]])
    probs_v = np.asarray(va["probs"], np.float64)
    labeled = np.array([label in index for label in tr["label"]])
    y_mem = np.array([index[label] if ok else index[p] for label, p, ok in zip(tr["label"], tr["predicted"], labeled)])
    conf = np.asarray(tr["confidence"], np.float64)
    out = {"run": run, "network": float((probs_v.argmax(1) == y_val).mean()), "pool": int((~labeled).sum())}
    for frac in fractions:
        cut = np.quantile(conf[~labeled], 1.0 - frac) if frac > 0 else np.inf
        mem = labeled | (conf >= cut)
        blends = [(f"net+vote@{frac:g}" if w == 1.0 else f"w{w:g}@{frac:g}", w) for w in weights]
        for key, weight in [(f"vote@{frac:g}", 1e9), *blends]:
            pred = memory_predict(probs_v, emb_v, emb_t[mem], y_mem[mem], k, temperature, weight)
            out[key] = float((pred.argmax(1) == y_val).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--pool-fraction", type=float, nargs="+", default=[0.0, 0.5, 1.0],
                    help="shares of the undefined rows in the memory (most confident first); 0: labeled rows only")
    ap.add_argument("-k", type=int, default=20)
    ap.add_argument("--temperature", type=float, default=0.1)
    ap.add_argument("--weight", type=float, nargs="+", default=[1.0],
                    help="the vote's weight against the head's softmax (share weight / (1 + weight)); 1: equal")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from dataloupe.project import Project

    project = Project.open(args.project)
    rows = [measure(project, run, args.pool_fraction, args.k, args.temperature, tuple(args.weight)) for run in args.runs]
    keys = [k for k in rows[0] if k not in ("run", "pool")]
    print(f"{'run':<20}" + "".join(f"{k:>14}" for k in keys))
    for r in rows:
        print(f"{r['run']:<20}" + "".join(f"{100 * r[k]:>14.2f}" for k in keys))
    if len(rows) > 1:
        print(f"{'mean':<20}" + "".join(f"{100 * np.mean([r[k] for r in rows]):>14.2f}" for k in keys))


if __name__ == "__main__":
    main()
