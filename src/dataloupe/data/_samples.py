"""A table revision as plain arrays: the unit the cache, loaders and engine work on."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataloupe._imagepath import OutsideRootError, image_file
from dataloupe.project import DataloupeError

# Rows whose image cannot be read are trained as black images, with a warning each, up to
# this share of the rows a run uses; beyond it (a moved or deleted image folder) training
# stops before it starts, naming a few of them.
MAX_UNREADABLE_SHARE = 0.01


@dataclass(frozen=True)
class SampleSet:
    """The rows of one table revision, as arrays.

    Attributes:
        ids: ``(N,)`` int64 stable row ids.
        labels: ``(N,)`` int64 class indices into the run's classes; -1 = undefined.
        weights: ``(N,)`` float32 sampling weights; 0 = excluded.
        paths: ``N`` image paths relative to ``root`` (POSIX).
        root: absolute image root.
        content_key: hash of (id, path) and root: same key => same pixels.
    """

    ids: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    paths: list[str]
    root: Path
    content_key: str

    def __post_init__(self) -> None:
        n = len(self.ids)
        if not (len(self.labels) == len(self.weights) == len(self.paths) == n):
            raise ValueError("ids, labels, weights and paths must have the same length")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def trainable(self) -> np.ndarray:
        """``(N,)`` bool: labeled rows with weight > 0 (the only rows ever trained on)."""
        return (self.labels >= 0) & (self.weights > 0)

    def file(self, i: int) -> Path:
        """The image file of row ``i`` (inside ``root``, or ``OutsideRootError``)."""
        return image_file(self.root, self.paths[i])

    def subset(self, mask: np.ndarray) -> "SampleSet":
        """Rows where ``mask`` holds (content key kept: cache rows are looked up by id)."""
        idx = np.flatnonzero(mask)
        return SampleSet(
            ids=self.ids[idx], labels=self.labels[idx], weights=self.weights[idx],
            paths=[self.paths[i] for i in idx], root=self.root, content_key=self.content_key,
        )


def sample_set_from_table(table, classes: list[str]) -> SampleSet:
    """Arrays of a :class:`dataloupe.tables.Table` revision, labels indexed by ``classes``.

    Args:
        table: an open table revision (``to_arrow``, ``image_root``, ``content_key``).
        classes: the run's class order; a label outside it is an error.

    Example:
        >>> s = sample_set_from_table(open_table(project, "cm-train"), ["chihuahua", "muffin"])  # doctest: +SKIP
    """
    at = table.to_arrow(columns=["id", "path", "label", "weight"])
    labels_raw = at.column("label").to_pylist()
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lab for lab in labels_raw if lab is not None and lab not in index})
    if unknown:
        raise DataloupeError(
            f"table {table.name}@{table.revision} has labels not among the run's classes: {', '.join(unknown)}"
        )
    labels = np.array([-1 if lab is None else index[lab] for lab in labels_raw], dtype=np.int64)
    weights = np.asarray(at.column("weight").to_numpy(zero_copy_only=False), dtype=np.float32)
    return SampleSet(
        ids=np.asarray(at.column("id").to_numpy(zero_copy_only=False), dtype=np.int64),
        labels=labels,
        weights=np.nan_to_num(weights, nan=0.0),
        paths=[str(p) for p in at.column("path").to_pylist()],
        root=Path(table.image_root),
        content_key=str(table.content_key()),
    )


def missing_files(samples: SampleSet, threads: int = 16) -> dict[int, str]:
    """``{id: reason}`` of rows whose file is absent, not a file, or outside the image root."""
    def why(i: int) -> str | None:
        try:
            return None if samples.file(i).is_file() else "file not found"
        except OutsideRootError as e:
            return str(e)
        except OSError as e:
            return e.strerror or str(e)

    with ThreadPoolExecutor(max(1, min(threads, (os.cpu_count() or 1) * 4))) as pool:
        reasons = list(pool.map(why, range(len(samples)), chunksize=256))
    return {int(samples.ids[i]): f"{samples.paths[i]}: {r}" for i, r in enumerate(reasons) if r is not None}


def check_readable(samples: SampleSet, failed: dict[int, str], what: str) -> list[str]:
    """Warnings for the rows of ``samples`` listed in ``failed`` (``{id: reason}``); raises when
    they are more than :data:`MAX_UNREADABLE_SHARE` of the rows.

    Example:
        >>> check_readable(s, missing_files(s), "cm-train@3")  # doctest: +SKIP
        []
    """
    bad = [(i, failed[i]) for i in samples.ids.tolist() if i in failed] if failed else []
    if len(bad) > MAX_UNREADABLE_SHARE * len(samples):
        shown = "; ".join(r for _, r in bad[:3])
        raise DataloupeError(f"{len(bad)} of the {len(samples)} images {what} uses cannot be read ({shown}"
                             f"{'; ...' if len(bad) > 3 else ''}); fix the files or the image root"
                             " (`dataloupe table set-root`), or exclude those rows")
    return [f"warning: id {i} cannot be read (trained as a black image): {r}" for i, r in bad]
