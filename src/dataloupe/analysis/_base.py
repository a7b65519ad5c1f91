"""Inputs shared by the detectors, and the detector registry.

A detector is a class with a ``name`` and one method, ``find(inputs) -> records``; it
wraps one of the pure array functions of this package. ``analyze`` runs them all.

Example:
    >>> from dataloupe.analysis import get_detector, list_detectors
    >>> "outliers" in list_detectors()
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from dataloupe.analysis._knn import knn
from dataloupe.project import DataloupeError

UNDEFINED = -1  # label index of an undefined (unlabeled) row


@dataclass
class SampleArrays:
    """Per-sample arrays of one table as the run saw it (row i of every array = one sample).

    Attributes:
        ids: `(N,)` int64 table row ids.
        labels: `(N,)` int64 class indices, ``UNDEFINED`` (-1) for undefined rows.
        probs: `(N, K)` float class probabilities (out-of-sample when available).
        embeddings: `(N, D)` float embeddings, or None.
        aum: `(N,)` float area under the margin, NaN for rows not trained on; or None.
        weights: `(N,)` float sample weights (0 = excluded), or None (all 1).
        hashes: `(N,)` str content hashes of the image files, or None.
        probs_source: where the labeled rows' ``probs`` come from: ``"out-of-sample"`` (a
            model that did not train on them, e.g. on the validation table),
            ``"in-sample"`` (the run's model, trained on them) or ``"crossfit-K"``.
    """

    ids: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    embeddings: np.ndarray | None = None
    aum: np.ndarray | None = None
    weights: np.ndarray | None = None
    hashes: np.ndarray | None = None
    probs_source: str = "out-of-sample"
    # Caches, one kind each: kNN graphs by k (valid while the embeddings are), and label
    # issues by k (valid while the probabilities are too).
    _knn_graphs: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    _label_issues: dict[int, tuple] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.probs = np.asarray(self.probs, dtype=np.float32)
        n = len(self.ids)
        for name in ("labels", "probs", "embeddings", "aum", "weights", "hashes"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != n:
                raise DataloupeError(f"{name} has {len(arr)} rows, ids has {n}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labeled(self) -> np.ndarray:
        """`(N,)` bool: rows with a label and non-zero weight."""
        mask = self.labels != UNDEFINED
        if self.weights is not None:
            mask &= np.asarray(self.weights) > 0
        return mask

    def neighbours(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cached cosine kNN of the set with itself: `(sims (N, k), idx (N, k))`."""
        if self.embeddings is None:
            raise DataloupeError("this finding needs embeddings; the metrics have none")
        best = max((kk for kk in self._knn_graphs if kk >= k), default=None)
        if best is None:
            self._knn_graphs[k] = knn(self.embeddings, k=k)
            best = k
        sims, idx = self._knn_graphs[best]
        return sims[:, :k], idx[:, :k]


@dataclass
class AnalysisInputs:
    """Everything the detectors read for one run.

    Attributes:
        classes: class names; index i of ``probs`` is ``classes[i]``.
        train: the training table's samples.
        val: the validation table's samples, or None.
        real_labels: ReaL-style valid class indices, one list per val sample, or None.
        k: neighbours per sample for the kNN findings.
        seed: random seed (cross-fitting folds, maps).
    """

    classes: list[str]
    train: SampleArrays
    val: SampleArrays | None = None
    real_labels: list[list[int]] | None = None
    k: int = 10
    seed: int = 0


@dataclass(frozen=True)
class FindingRow:
    """One sample a finding names, in the shape every finding type shares (cleanlab Datalab's
    ``is_<name>_issue`` / ``<name>_score`` columns), so the dashboard, the report, the loop
    rules and the CLI read findings without guessing keys.

    Attributes:
        id: the sample's table row id (ids are unique within one table only).
        table: the run role (``"train"`` / ``"val"``) or table name the id belongs to.
        score: how strongly the sample is flagged (label-issue score, outlier score, pair
            similarity, pseudo-label confidence), or None when the finding has none.
        flagged: whether the finding flags the sample (every row ``analyze`` stores is).
        suggested_label: the class the finding proposes (label issues, pseudo-labels), or None.
    """

    id: int
    table: str
    score: float | None = None
    flagged: bool = True
    suggested_label: str | None = None


class Detector:
    """Base class: one named finding computed from ``AnalysisInputs``.

    ``find`` computes the finding's JSON-ready records (the ``analysis.json`` section);
    ``rows`` reads such records back as :class:`FindingRow` s. ``per_sample`` detectors
    name samples (their rows are shown per sample); the others (clusters, taxonomy)
    summarise and yield no rows.
    """

    name: ClassVar[str] = ""
    per_sample: ClassVar[bool] = True

    def find(self, inputs: AnalysisInputs) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def rows(self, records: Any) -> list[FindingRow]:
        """The samples ``records`` (this finding's ``analysis.json`` section) name."""
        return []


_REGISTRY: dict[str, type[Detector]] = {}


def register_detector(cls: type[Detector]) -> type[Detector]:
    """Class decorator adding a detector to the registry under ``cls.name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"detector name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def list_detectors(*, per_sample: bool | None = None) -> list[str]:
    """Names of the registered detectors, in the order ``analyze`` runs them; ``per_sample``
    True keeps those whose findings name samples (in a fixed order: the dashboard's
    ``findings`` bits), False those that summarise."""
    return [n for n, cls in _REGISTRY.items() if per_sample is None or cls.per_sample == per_sample]


def get_detector(name: str) -> Detector:
    """A new detector by name; unknown names raise with the list of known ones."""
    if name not in _REGISTRY:
        raise DataloupeError(f"unknown detector {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]()
