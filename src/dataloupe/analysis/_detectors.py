"""The registered detectors and ``analyze``: run them all over one run's samples.

Every detector wraps pure array functions and turns row indices into table ``id``s and
class indices into class names, so its records are JSON-ready.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from dataloupe.analysis._base import (
    AnalysisInputs,
    Detector,
    FindingRow,
    SampleArrays,
    get_detector,
    list_detectors,
    register_detector,
)
from dataloupe.analysis._clusters import cluster_embeddings, cluster_stats
from dataloupe.analysis._crossfit import crossfit_probs
from dataloupe.analysis._label_issues import find_label_issues
from dataloupe.analysis._neighbours import duplicate_threshold, leakage_pairs, near_duplicate_pairs, outlier_mask, outlier_scores
from dataloupe.analysis._pseudo import pseudo_label
from dataloupe.analysis._taxonomy import CATEGORIES, error_taxonomy

EXAMPLES = 25  # example ids listed per taxonomy category / cluster


@dataclass
class DetectorResult:
    """What a detector found: JSON-ready ``records``, optional per-row ``columns``
    (role -> column name -> `(N,)` array) to store with the run's metrics, and optional
    top-level ``notes`` for the findings (provenance, e.g. which probabilities were used)."""

    records: object
    columns: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)


def _sets(inputs: AnalysisInputs) -> list[tuple[str, SampleArrays]]:
    return [(role, s) for role, s in (("train", inputs.train), ("val", inputs.val)) if s is not None and len(s)]


LABEL_ISSUE_FOLDS = 5  # cross-fitting folds for label issues when a set's probabilities are in-sample
LABEL_ISSUE_FIT_ROWS = 20_000  # rows each fold's linear head is fitted on, at most (bounds the cost)


def _issues(inputs: AnalysisInputs, s: SampleArrays):
    """Label issues of the labeled rows of ``s`` (computed once per set, cached on it):
    `(labeled mask, LabelIssues, probabilities used)`."""
    if inputs.k not in s._label_issues:
        s._label_issues[inputs.k] = _compute_issues(inputs, s)
    return s._label_issues[inputs.k]


def _issue_probs(inputs: AnalysisInputs, s: SampleArrays, lab: np.ndarray) -> tuple[np.ndarray, str]:
    """Probabilities of the labeled rows for label issues, and where they come from.

    A model's probabilities on the rows it trained on have partly fitted their labels,
    wrong ones included; label issues need out-of-sample ones, so those rows are
    cross-fitted on the embeddings (``LABEL_ISSUE_FOLDS`` folds, fewer when the smallest
    class has fewer labeled rows; kept in-sample when it has one or there are no embeddings).
    """
    if s.probs_source != "in-sample" or s.embeddings is None:
        return s.probs[lab], s.probs_source
    labels = s.labels[lab]
    counts = np.bincount(labels, minlength=len(inputs.classes))
    folds = min(LABEL_ISSUE_FOLDS, int(counts[counts > 0].min())) if len(labels) else 0
    if folds < 2:
        return s.probs[lab], s.probs_source
    probs = crossfit_probs(s.embeddings[lab], labels, num_classes=len(inputs.classes), folds=folds,
                           seed=inputs.seed, max_fit_rows=max(LABEL_ISSUE_FIT_ROWS, len(inputs.classes)))
    return probs, f"crossfit-{folds}"


def _compute_issues(inputs: AnalysisInputs, s: SampleArrays):
    lab = s.labeled
    nbrs = None
    if s.embeddings is not None:
        sims, idx = s.neighbours(inputs.k)
        nbrs = (sims[lab], idx[lab])
    aum = None if s.aum is None else np.asarray(s.aum, dtype=np.float64)[lab]
    labels_all = np.where(s.labeled, s.labels, -1)
    probs, source = _issue_probs(inputs, s, lab)
    return lab, find_label_issues(s.labels[lab], probs, aum=aum, neighbours=nbrs, nbr_labels=labels_all), source


@register_detector
class LabelIssuesDetector(Detector):
    name = "label_issues"

    def find(self, inputs: AnalysisInputs) -> DetectorResult:
        records, sources = [], {}
        for role, s in _sets(inputs):
            lab, r, sources[role] = _issues(inputs, s)
            rows = np.flatnonzero(lab)
            for j in np.flatnonzero(r.mask)[np.argsort(-r.scores[r.mask], kind="stable")]:
                records.append(dict(id=int(s.ids[rows[j]]), table=role, score=float(r.scores[j]),
                                    label=inputs.classes[s.labels[rows[j]]],
                                    suggested_label=inputs.classes[int(r.suggested[j])]))
        records.sort(key=lambda x: -x["score"])
        return DetectorResult(records, notes={"label_issue_probabilities": sources})

    def rows(self, records) -> list[FindingRow]:
        return [FindingRow(int(r["id"]), r.get("table", "train"), r.get("score"), True, r.get("suggested_label"))
                for r in _listed(records)]


@register_detector
class OutliersDetector(Detector):
    name = "outliers"

    def find(self, inputs: AnalysisInputs) -> DetectorResult:
        records = []
        for role, s in _sets(inputs):
            if s.embeddings is None:
                continue
            scores = outlier_scores(s.neighbours(inputs.k)[0])
            for i in np.flatnonzero(outlier_mask(scores)):
                records.append(dict(id=int(s.ids[i]), table=role, score=float(scores[i])))
        records.sort(key=lambda x: -x["score"])
        return DetectorResult(records)

    def rows(self, records) -> list[FindingRow]:
        return [FindingRow(int(r["id"]), r.get("table", "train"), r.get("score")) for r in _listed(records)]


@register_detector
class NearDuplicatesDetector(Detector):
    name = "near_duplicates"

    def find(self, inputs: AnalysisInputs) -> DetectorResult:
        records = []
        for role, s in _sets(inputs):
            if s.embeddings is None:
                continue
            sims, idx = s.neighbours(inputs.k)
            pairs, sim, exact = near_duplicate_pairs(sims, idx, hashes=s.hashes)
            for (a, b), v, e in zip(pairs, sim, exact):
                records.append(dict(ids=[int(s.ids[a]), int(s.ids[b])], table=role, similarity=float(v), exact=bool(e)))
        return DetectorResult(records)

    def rows(self, records) -> list[FindingRow]:  # both samples of each pair
        return [FindingRow(int(i), r.get("table", "train"), r.get("similarity"))
                for r in _listed(records) for i in r.get("ids") or []]


@register_detector
class LeakageDetector(Detector):
    name = "leakage"

    def find(self, inputs: AnalysisInputs) -> DetectorResult:
        tr, va = inputs.train, inputs.val
        if va is None or not len(va) or tr.embeddings is None or va.embeddings is None:
            return DetectorResult([])
        thr = duplicate_threshold(tr.neighbours(inputs.k)[0])
        pairs, sim, exact = leakage_pairs(va.embeddings, tr.embeddings, threshold=thr,
                                          query_hashes=va.hashes, base_hashes=tr.hashes)
        return DetectorResult([dict(val_id=int(va.ids[q]), train_id=int(tr.ids[b]), similarity=float(v), exact=bool(e))
                               for (q, b), v, e in zip(pairs, sim, exact)])

    def rows(self, records) -> list[FindingRow]:  # the validation sample and its training twin
        return [FindingRow(int(r[f"{role}_id"]), role, r.get("similarity"))
                for r in _listed(records) for role in ("val", "train") if f"{role}_id" in r]


@register_detector
class ClustersDetector(Detector):
    name = "clusters"
    per_sample = False

    def find(self, inputs: AnalysisInputs) -> DetectorResult:
        sets = [(role, s) for role, s in _sets(inputs) if s.embeddings is not None]
        if not sets:
            return DetectorResult([])
        emb = np.concatenate([s.embeddings for _, s in sets])
        labels = np.concatenate([np.where(s.labeled, s.labels, -1) for _, s in sets])
        conf = np.concatenate([s.probs.max(1) for _, s in sets])
        ids = np.concatenate([s.ids for _, s in sets])
        assign = cluster_embeddings(emb, seed=inputs.seed)
        records = []
        for rec in cluster_stats(assign, labels, conf, examples=EXAMPLES):
            rec["majority_label"] = inputs.classes[rec["majority_label"]] if rec["majority_label"] >= 0 else None
            rec["example_ids"] = [int(ids[r]) for r in rec.pop("rows")]
            records.append(rec)
        columns, start = {}, 0
        for role, s in sets:
            columns[role] = {"cluster": assign[start : start + len(s)]}
            start += len(s)
        return DetectorResult(records, columns)


@register_detector
class PseudoLabelsDetector(Detector):
    name = "pseudo_labels"
    target_precision = 0.95  # precision the thresholds must reach on labeled training rows

    def find(self, inputs: AnalysisInputs) -> DetectorResult:
        s = inputs.train
        lab = s.labeled
        # Precision is measured against the given labels, wrong ones included, so it errs
        # low under label noise and the thresholds err high: conservative on purpose (a
        # noise-rate correction would trust an estimate that a weak model inflates).
        target = self.target_precision
        nbrs = s.neighbours(inputs.k) if s.embeddings is not None else None
        r = pseudo_label(s.labels, s.probs, target_precision=target, neighbours=nbrs,
                         calibration_mask=lab, vote_labels=np.where(lab, s.labels, -1))
        # ``agreement`` is left out when none of the row's neighbours is labeled
        items = [dict(id=int(s.ids[i]), predicted=inputs.classes[int(p)], confidence=float(c),
                      **({"agreement": float(a)} if np.isfinite(a) else {}))
                 for i, p, c, a in zip(r["rows"], r["predicted"], r["confidence"], r["agreement"])]
        return DetectorResult(dict(
            target_precision=self.target_precision, global_threshold=r["global_threshold"],
            class_thresholds={c: float(t) for c, t in zip(inputs.classes, r["class_thresholds"])},
            calibrated_on=int(lab.sum()), undefined=int((s.labels == -1).sum()), items=items))

    def rows(self, records) -> list[FindingRow]:  # made for the training table
        items = records.get("items", []) if isinstance(records, dict) else []
        return [FindingRow(int(r["id"]), r.get("table", "train"), r.get("confidence"), True, r.get("predicted"))
                for r in _listed(items)]


def _listed(records) -> list[dict]:
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def finding_rows(findings: dict, kind: str, tables: set[str] | None = None) -> list[FindingRow]:
    """The samples finding ``kind`` of an ``analysis.json`` object names, as :class:`FindingRow` s.

    Args:
        findings: the parsed ``analysis.json`` (``analyze``'s findings).
        kind: a detector name (``list_detectors()``); unknown names raise with the known ones.
        tables: keep rows whose ``table`` is one of these names (a table's name and its run
            roles, :func:`dataloupe.runs.table_roles`); None keeps every row.

    Example:
        >>> finding_rows({"outliers": [{"id": 3, "table": "val", "score": 2.5}]}, "outliers")
        [FindingRow(id=3, table='val', score=2.5, flagged=True, suggested_label=None)]
    """
    rows = get_detector(kind).rows(findings.get(kind))
    return rows if tables is None else [r for r in rows if r.table in tables]


@register_detector
class TaxonomyDetector(Detector):
    name = "taxonomy"
    per_sample = False

    def find(self, inputs: AnalysisInputs) -> DetectorResult:
        s = inputs.val
        if s is None or not s.labeled.any():
            return DetectorResult(dict(note="no labeled validation samples"))
        lab, issues, _ = _issues(inputs, s)
        real = None
        if inputs.real_labels is not None:  # one entry per val sample (sorted by id)
            real = [inputs.real_labels[i] for i in np.flatnonzero(lab)]
        t = error_taxonomy(s.labels[lab], s.probs[lab], label_issue_mask=issues.mask, real_labels=real)
        ids = s.ids[lab]
        t["confusable_pairs"] = [[inputs.classes[a], inputs.classes[b]] for a, b in t["confusable_pairs"]]
        pred = s.probs[lab].argmax(1)
        labels = s.labels[lab]
        t["categories"] = {name: dict(count=len(rows), example_ids=[int(ids[i]) for i in rows[:EXAMPLES]],
                                      examples=[dict(id=int(ids[i]), label=inputs.classes[labels[i]],
                                                     predicted=inputs.classes[pred[i]]) for i in rows[:EXAMPLES]])
                           for name, rows in ((n, t["categories"][n]) for n in CATEGORIES)}
        return DetectorResult(t)


def with_crossfit(inputs: AnalysisInputs, *, folds: int) -> AnalysisInputs:
    """Inputs whose labeled training rows carry K-fold out-of-sample probabilities."""
    s = inputs.train
    if s.embeddings is None:
        from dataloupe.project import DataloupeError

        raise DataloupeError("--folds needs embeddings in the run's metrics")
    lab = s.labeled
    probs = s.probs.copy()
    probs[lab] = crossfit_probs(s.embeddings[lab], s.labels[lab], num_classes=len(inputs.classes),
                                folds=folds, seed=inputs.seed)
    # kNN graphs stay valid (same embeddings); label issues do not (new probabilities)
    return replace(inputs, train=replace(s, probs=probs, probs_source=f"crossfit-{folds}",
                                         _knn_graphs=dict(s._knn_graphs), _label_issues={}))


def _clean(obj):
    """JSON-safe copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def analyze(inputs: AnalysisInputs, *, detectors: list[str] | None = None,
            folds: int | None = None) -> tuple[dict, dict]:
    """Run detectors (default: all registered) over ``inputs``.

    Args:
        inputs: the run's samples.
        detectors: names to run, default ``list_detectors()``.
        folds: when set, cross-fit the training probabilities first (``crossfit_probs``).

    Returns:
        `(findings, columns)`: findings maps detector name -> JSON-ready records (plus
        ``probabilities``: "crossfit-K" or "model", and the detectors' notes, e.g.
        ``label_issue_probabilities``: role -> "crossfit-K", "in-sample" or
        "out-of-sample"); columns maps role -> column -> array.

    Example:
        >>> from sklearn.datasets import load_digits
        >>> from dataloupe.analysis import AnalysisInputs, SampleArrays, crossfit_probs
        >>> d = load_digits(); p = crossfit_probs(d.data, d.target, num_classes=10, folds=3)
        >>> s = SampleArrays(ids=range(len(p)), labels=d.target, probs=p, embeddings=d.data)
        >>> findings, _ = analyze(AnalysisInputs([str(c) for c in range(10)], s, val=s))
        >>> sorted(findings)[:4]
        ['clusters', 'label_issue_probabilities', 'label_issues', 'leakage']
    """
    names = detectors or list_detectors()
    found = [get_detector(n) for n in names]  # unknown names fail before any work
    if folds:
        inputs = with_crossfit(inputs, folds=folds)
    findings, columns = {}, {}
    for det in found:
        res = det.find(inputs)
        findings[det.name] = _clean(res.records)
        findings.update(_clean(res.notes))
        for role, cols in res.columns.items():
            columns.setdefault(role, {}).update(cols)
    findings["probabilities"] = f"crossfit-{folds}" if folds else "model"
    return findings, columns
