"""What a loop's finished iterations give when their outputs are combined otherwise — nothing trained.

For the runs of successive loop iterations on one training table (``--runs``, oldest first; each
run's kNN-memory run ``<run>-knn``, as ``dataloupe knn`` / the loop name it, is read when present),
prints per iteration, on the validation rows (their labels only score):

- ``net`` / ``vote``: the run's own top-1 and its memory classifier's (the loop's ``val_top1``);
- ``labels``: the loop's estimate of its final labels over that run's embedding — the labels given
  at the start (``--start-revision``) propagated as ``relabel_propagated`` does, validation rows in
  the graph unlabeled (``loop/_loop.py``: ``_propagated_picks``);
- ``labels cmn``: the same propagation with class mass normalisation (Zhu et al. 2003: each class's
  propagated mass scaled to the given labels' class shares);
- ``labels concat``: the propagation over this and the previous run's embeddings side by side (two
  teachers' neighbourhoods in one graph);
- ``votes avg``: this and the previous iteration's memory classifiers averaged (an ensemble across
  iterations); ``labels+vote``: the propagated class distribution averaged with this vote.

Reads what ``collect`` wrote (``runs/<run>/metrics``). Example, after ``dataloupe loop --train
cm-train --val cm-test --policy default`` (loop ``cm-train-default``, runs ``cm-train-default-itN``):

    PYTHONPATH=src python bench/loop_rounds.py --project dataloupe-project --table cm-train \\
        --runs cm-train-default-it1 cm-train-default-it2 cm-train-default-it3
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
PARAMS = dict(k=20, temperature=0.1, alpha=0.9, steps=60)  # default.yaml's relabel_propagated


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _load(project, run: str, table: str, cols: list[str]) -> dict:
    from dataloupe.analysis._runio import load_metrics

    m = load_metrics(project, run, table, columns=["id", *cols]).sort_by("id")
    return {c: np.asarray(m[c].to_pylist()) if c in ("id", "label") else np.asarray(m[c].to_pylist(), np.float64)
            for c in m.column_names}


def propagate(train_emb: np.ndarray, val_emb: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """``relabel_propagated``'s class distribution of each validation row: the given labels
    ``seeds`` (class index, -1 none) spread over the weighted k-NN graph of train + val rows."""
    from sklearn.semi_supervised import LabelSpreading

    from dataloupe.loop._rules import _weighted_knn_graph

    x = _unit(np.concatenate([train_emb, val_emb]))
    y = np.concatenate([seeds, np.full(len(val_emb), -1)])
    ls = LabelSpreading(kernel=_weighted_knn_graph(PARAMS["k"], PARAMS["temperature"]), n_neighbors=PARAMS["k"],
                        alpha=PARAMS["alpha"], max_iter=PARAMS["steps"], tol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter reached: a fixed number of steps, as the rule runs it
        ls.fit(x, y)
    dist = np.nan_to_num(ls.label_distributions_)
    pool = dist[: len(train_emb)][seeds < 0].sum(0)
    prior = np.bincount(seeds[seeds >= 0], minlength=dist.shape[1]) / max(1, int((seeds >= 0).sum()))
    return dist[len(train_emb):], dist[len(train_emb):] * prior / np.maximum(pool, 1e-12)


def measure(project, table: str, runs: list[str], start_revision: int) -> list[dict]:
    from dataloupe.runs import read_run, run_dir
    from dataloupe.tables import open_table

    info = read_run(project, runs[0])
    classes, val = list(info["classes"]), info["val_table"]
    index = {c: i for i, c in enumerate(classes)}
    origin = open_table(project, table, start_revision).to_arrow(columns=["id", "label"])
    given = {int(i): lab for i, lab in zip(origin["id"].to_pylist(), origin["label"].to_pylist()) if lab in index}
    out, prev = [], None
    for run in runs:
        tr = _load(project, run, table, ["embedding"])
        va = _load(project, run, val, ["label", "probs", "embedding"])
        memory = run_dir(project, f"{run}-knn").is_dir()
        vote = _load(project, f"{run}-knn", val, ["probs"])["probs"] if memory else va["probs"]
        y = np.array([index[label] for label in va["label"]])
        seeds = np.array([index[given[int(i)]] if int(i) in given else -1 for i in tr["id"]])
        acc = lambda p: float((p.argmax(1) == y).mean())  # noqa: E731
        dist, cmn = propagate(tr["embedding"], va["embedding"], seeds)
        row = {"run": run, "net": acc(va["probs"]), "vote": acc(vote), "labels": acc(dist), "labels cmn": acc(cmn),
               "labels+vote": acc(dist / np.maximum(dist.sum(1, keepdims=True), 1e-12) + vote)}
        if prev is not None:
            both = np.concatenate([_unit(prev["train"]), _unit(tr["embedding"])], 1)
            row["labels concat"] = acc(propagate(both, np.concatenate([_unit(prev["val"]), _unit(va["embedding"])], 1),
                                                 seeds)[0])
            row["votes avg"] = acc(prev["vote"] + vote)
        out.append(row)
        prev = {"train": tr["embedding"], "val": va["embedding"], "vote": vote}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", required=True)
    ap.add_argument("--table", required=True, help="the loop's training table (every run trained on a revision of it)")
    ap.add_argument("--runs", nargs="+", required=True, help="the iterations' runs, oldest first")
    ap.add_argument("--start-revision", type=int, default=1, help="the revision holding the labels given at the start")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from dataloupe.project import Project

    rows = measure(Project.open(Path(args.project)), args.table, args.runs, args.start_revision)
    keys = ["net", "vote", "labels", "labels cmn", "labels concat", "votes avg", "labels+vote"]
    print("| iteration | " + " | ".join(keys) + " |")
    print("|---:|" + "---:|" * len(keys))
    for k, r in enumerate(rows, 1):
        print(f"| {k} | " + " | ".join(f"{100 * r[c]:.2f}" if c in r else "" for c in keys) + " |")


if __name__ == "__main__":
    main()
