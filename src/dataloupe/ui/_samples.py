"""One sample in detail: its metrics, top classes, nearest neighbours, label history."""

from __future__ import annotations

import math

import lance
import numpy as np

from dataloupe.project import Project
from dataloupe.tables import open_table
from dataloupe.runs import metrics_path
from dataloupe.ui import _runs
from dataloupe.ui._cache import LRU
from dataloupe.ui._images import SampleNotFound
from dataloupe.ui._points import read_embedding

MAX_HISTORY = 50  # revisions shown in a sample's label history (newest first)


class SampleReader:
    """Reads single samples; keeps recently used embedding matrices for neighbour search."""

    def __init__(self, project: Project):
        self.project = project
        self._emb = LRU(2)
        self._maps = LRU(2)

    def detail(self, run_info: dict, table: str, sample_id: int, k: int) -> dict:
        """Metrics row of ``sample_id`` (probabilities as top-5 classes) and ``k`` neighbours."""
        run = run_info["run"]
        path = metrics_path(self.project, run, table, must_exist=True)
        ds = lance.dataset(path)
        cols = [c for c in ds.schema.names if c != "embedding"]
        rows = ds.to_table(columns=cols, filter=f"id = {int(sample_id)}").to_pylist()
        if not rows:
            raise SampleNotFound(f"run {run!r} has no metrics for sample {sample_id} of {table!r}")
        row = {key: _clean(v) for key, v in rows[0].items()}
        probs = row.pop("probs", None)
        classes = self._run_classes(run_info)
        if probs is not None and classes and len(classes) == len(probs):
            order = np.argsort(probs)[::-1][:5]
            row["top"] = [{"class": classes[i], "p": float(probs[i])} for i in order]
        ax = _runs.analysis_index(self.project, run, table)
        row["suggested_label"] = ax.suggested.get(sample_id)
        row["pseudo_label"] = ax.pseudo.get(sample_id)
        row["findings"] = [kind for kind, ids in ax.findings.items() if np.isin(sample_id, ids)]
        neighbours, method = self._neighbours(run, table, sample_id, k, ds.version)
        return {"id": sample_id, "run": run, "table": table, "metrics": row,
                "neighbours": neighbours, "neighbour_method": method}

    def label_history(self, t, sample_id: int) -> list[dict]:
        """``[{revision, message, label, weight}]`` of one sample, newest revision first."""
        out = []
        for entry in reversed(t.log()[-MAX_HISTORY:]):
            rev = open_table(self.project, t.name, entry["revision"])
            rows = rev.to_arrow(columns=["label", "weight"], where=f"id = {int(sample_id)}").to_pylist()
            out.append({"revision": entry["revision"], "message": entry["message"],
                        "created": entry["created"], "present": bool(rows),
                        "label": rows[0]["label"] if rows else None,
                        "weight": rows[0]["weight"] if rows else None})
        if not any(r["present"] for r in out):
            raise SampleNotFound(f"table {t.name!r} has no sample with id {sample_id}")
        return out

    def _neighbours(self, run: str, table: str, sample_id: int, k: int, version) -> tuple[list[dict], str]:
        if k == 0:
            return [], "none"
        emb = self._emb.get_or_make((run, table, version), lambda: read_embedding(self.project, run, table))
        if emb is not None:
            ids, x = emb
            method = "cosine similarity of embeddings"
        else:
            ids, x = self._maps.get_or_make((run, table, version), lambda: self._map(run, table))
            method = "distance on the 2-D map (embedding too large or absent)"
        pos = int(np.searchsorted(ids, sample_id))
        if pos >= ids.size or ids[pos] != sample_id:
            return [], method
        if emb is not None:
            score = x @ x[pos]
            score[pos] = -np.inf
            top = np.argpartition(-score, min(k, score.size - 1))[:k]
            top = top[np.argsort(-score[top])]
            return [{"id": int(ids[i]), "similarity": float(score[i])} for i in top if np.isfinite(score[i])], method
        d = np.sum((x - x[pos]) ** 2, axis=1)
        d[pos] = np.inf
        top = np.argpartition(d, min(k, d.size - 1))[:k]
        top = top[np.argsort(d[top])]
        return [{"id": int(ids[i]), "distance": float(np.sqrt(d[i]))} for i in top if np.isfinite(d[i])], method

    def _map(self, run: str, table: str):
        ds = lance.dataset(metrics_path(self.project, run, table, must_exist=True))
        if not {"map_x", "map_y"} <= set(ds.schema.names):
            return np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
        t = ds.to_table(columns=["id", "map_x", "map_y"])
        ids = t["id"].to_numpy()
        order = np.argsort(ids)
        xy = np.stack([t["map_x"].to_numpy(zero_copy_only=False), t["map_y"].to_numpy(zero_copy_only=False)], 1)
        return ids[order], xy[order].astype(np.float32)

    def _run_classes(self, run_info: dict) -> list[str] | None:
        if isinstance(run_info.get("classes"), list):
            return run_info["classes"]
        try:
            return open_table(self.project, run_info["train_table"], run_info.get("train_revision")).classes
        except Exception:  # noqa: BLE001 - a run without a readable train table shows no top-k
            return None


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
