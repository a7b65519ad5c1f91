"""Synthetic run folders for dashboard tests and the UI benchmark.

Builds exactly what training and analysis write (docs/architecture.md): ``run.json``,
``history.jsonl``, ``metrics/<table>.lance`` and ``analysis.json`` — from a real tiny
table of sklearn digits (8x8 PNGs) and a real logistic-regression model, so the map,
confidences and label issues mean something.
"""

from __future__ import annotations

import json
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
from PIL import Image

from dataloupe.project import Project
from dataloupe.tables import create_table, open_table

CLASSES = [str(i) for i in range(10)]
NOISY = 40  # labels flipped on purpose (ids 100..139): the known label issues
UNDEFINED = 30  # ids 1700..1729 get no label


FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def make_digits_table(project: Project, image_dir: Path, name: str = "digits", classes: list[str] = CLASSES) -> dict:
    """Write the 1,797 digits as PNGs and import them as table ``name``.

    Returns ``{"true": true labels (N,), "noisy": flipped ids}``.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    image_dir.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    true = d.target.astype(int)
    rng = np.random.default_rng(0)
    noisy = np.arange(100, 100 + NOISY)
    given = true.copy()
    given[noisy] = (true[noisy] + rng.integers(1, 10, NOISY)) % 10
    for i, img in enumerate(d.images):
        rel = f"{true[i]}/{i:04d}.png"
        (image_dir / rel).parent.mkdir(exist_ok=True)
        Image.fromarray((img * 255 / 16).astype(np.uint8)).save(image_dir / rel)
        paths.append(rel)
        labels.append(None if 1700 <= i < 1700 + UNDEFINED else classes[given[i]])
    create_table(project, name, pa.table({"path": paths, "label": pa.array(labels, pa.string())}),
                 classes=list(classes), image_root=image_dir, message="import digits")
    return {"true": true, "noisy": noisy, "features": d.data}


def make_meta_table(project: Project, name: str = "meta", source: str = "digits") -> tuple[int, list]:
    """Table ``name``: the rows of ``source`` (same images) with metadata columns ``source``
    (text: "scan-A" on even rows, "photo" on odd ones, null on every tenth), ``width``
    (int, row % 50) and ``ok`` (bool, every third row). Returns ``(rows, the source column)``."""
    t = open_table(project, source)
    rows = t.to_arrow(columns=["path", "label"])
    n = rows.num_rows
    src = [None if i % 10 == 9 else ("scan-A" if i % 2 == 0 else "photo") for i in range(n)]
    create_table(project, name, rows.append_column("source", pa.array(src, pa.string()))
                 .append_column("width", pa.array(np.arange(n) % 50, pa.int64()))
                 .append_column("ok", pa.array(np.arange(n) % 3 == 0)),
                 classes=t.classes, image_root=t.image_root, message=f"{source} with metadata")
    return n, src


def write_digits_run(project: Project, table: str, features: np.ndarray, run: str = "r1",
                     val_top1: float = 0.9, revision: int | None = None, classes: list[str] = CLASSES) -> Path:
    """Train a logistic regression on the table's labels and write a full run folder."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    t = open_table(project, table, revision)
    rows = t.to_arrow(columns=["id", "label", "weight"])
    ids = rows["id"].to_numpy()
    labels = rows["label"].to_pylist()
    x = features[ids] / 16.0
    lab = np.array([-1 if v is None else classes.index(v) for v in labels])
    known = lab >= 0
    clf = LogisticRegression(max_iter=300, C=0.5).fit(x[known], lab[known])
    probs = clf.predict_proba(x).astype(np.float32)
    emb = PCA(16, random_state=0).fit_transform(x).astype(np.float32)
    xy = PCA(2, random_state=0).fit_transform(x).astype(np.float32)
    pred = probs.argmax(1)
    suggested = {int(i): classes[pred[k]] for k, i in enumerate(ids) if known[k] and pred[k] != lab[k]}
    pseudo = {int(i): classes[pred[k]] for k, i in enumerate(ids) if not known[k] and probs[k].max() > 0.5}
    # the format `dataloupe analyze` writes: records name their table by run role
    analysis = {
        "label_issues": [{"id": i, "table": "train", "score": 0.9, "label": classes[lab[np.searchsorted(ids, i)]],
                          "suggested_label": s} for i, s in suggested.items()],
        "outliers": [{"id": int(i), "table": "train", "score": 1.0}
                     for i in ids[np.argsort(-np.linalg.norm(emb, axis=1))[:15]]],
        "near_duplicates": [{"ids": [int(ids[0]), int(ids[1])], "table": "train", "similarity": 0.99, "exact": False}],
        "leakage": [],
        "clusters": [{"cluster": c, "size": 0} for c in range(10)],
        "pseudo_labels": {"target_precision": 0.95, "items": [
            {"id": i, "predicted": s, "confidence": 0.8, "agreement": 1.0} for i, s in pseudo.items()]},
        "taxonomy": {},
    }
    return write_run(project, run, table, t.revision, ids=ids, labels=labels, classes=list(classes),
                     probs=probs, embedding=emb, map_xy=xy, cluster=pred.astype(np.int32),
                     analysis=analysis, val_top1=val_top1)


def write_run(project: Project, run: str, table: str, revision: int, *, ids: np.ndarray, labels: list,
              classes: list[str], probs: np.ndarray | None, map_xy: np.ndarray,
              predicted: np.ndarray | None = None, confidence: np.ndarray | None = None,
              embedding: np.ndarray | None = None, cluster: np.ndarray | None = None,
              analysis: dict | None = None, val_top1: float = 0.9, epochs: int = 5) -> Path:
    """Write a run folder per the contract from given arrays (N rows aligned with ``ids``)."""
    d = project.runs_dir / run
    (d / "metrics").mkdir(parents=True, exist_ok=True)
    n = len(ids)
    if probs is not None:
        pred = probs.argmax(1)
        conf = probs.max(1)
        srt = np.sort(probs, 1)
        margin = srt[:, -1] - srt[:, -2]
        entropy = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1)
    else:
        pred, conf = predicted, confidence
        margin, entropy = conf * 0.5, 1 - conf
    lab_codes = np.array([-1 if v is None else classes.index(v) for v in labels]) if not isinstance(labels, np.ndarray) else labels
    valid = lab_codes >= 0
    p_true = np.where(valid, conf, np.nan) if probs is None else np.where(valid, probs[np.arange(n), np.maximum(lab_codes, 0)], np.nan)
    loss = np.where(valid, -np.log(np.clip(p_true, 1e-7, 1)), np.nan).astype(np.float32)
    cls = np.array(classes, dtype=object)
    cols = {
        "id": pa.array(ids.astype(np.int64)),
        "table_revision": pa.array(np.full(n, revision, np.int64)),
        "split": pa.array(np.full(n, "train", dtype=object), pa.string()),
        "label": pa.array(np.where(valid, cls[np.maximum(lab_codes, 0)], None), pa.string()),
        "predicted": pa.DictionaryArray.from_arrays(pa.array(pred.astype(np.int32)), pa.array(classes)).cast(pa.string()),
        "confidence": pa.array(conf.astype(np.float32)),
        "margin": pa.array(margin.astype(np.float32)),
        "entropy": pa.array(entropy.astype(np.float32)),
        "loss": pa.array(loss, mask=~valid),
        "correct": pa.array(pred == lab_codes, mask=~valid),
    }
    if probs is not None:
        cols["probs"] = pa.FixedSizeListArray.from_arrays(pa.array(probs.ravel()), probs.shape[1])
    if embedding is not None:
        cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(embedding.ravel()), embedding.shape[1])
    aum = (margin * 2 - 1).astype(np.float32)
    if probs is not None:  # as training records it: the given label's score minus the largest other one
        rows, given = np.arange(n), np.clip(lab_codes, 0, None)
        other = probs.copy()
        other[rows, given] = -np.inf
        aum = (probs[rows, given] - other.max(1)).astype(np.float32)
    cols["aum"] = pa.array(aum, mask=~valid)
    cols["forgetting"] = pa.array(np.zeros(n, np.int32), mask=~valid)
    cols["map_x"] = pa.array(map_xy[:, 0].astype(np.float32))
    cols["map_y"] = pa.array(map_xy[:, 1].astype(np.float32))
    if cluster is not None:
        cols["cluster"] = pa.array(cluster.astype(np.int32))
    lance.write_dataset(pa.table(cols), d / "metrics" / f"{table}.lance", mode="overwrite")
    info = {"run": run, "status": "completed", "recipe": "synthetic", "classes": list(classes), "train_table": table,
            "train_revision": revision, "val_table": table, "val_revision": revision, "seed": 0,
            "version": "0.1.0", "hardware": "cpu", "created": f"2026-11-23T00:00:{len(list(project.runs_dir.iterdir())):02d}+00:00",
            "epochs": epochs, "epochs_done": epochs, "best_val_top1": val_top1, "best_epoch": epochs}
    (d / "run.json").write_text(json.dumps(info))
    with open(d / "history.jsonl", "w") as f:
        for e in range(1, epochs + 1):
            f.write(json.dumps({"epoch": e, "train_loss": 2.0 / e, "train_top1": min(1, val_top1 * e / epochs + 0.05),
                                "val_loss": 2.2 / e, "val_top1": val_top1 * e / epochs, "lr": 0.1 / e,
                                "images_per_s": 1000.0, "seconds": 1.0}) + "\n")
    (d / "analysis.json").write_text(json.dumps(analysis or {}))
    return d
