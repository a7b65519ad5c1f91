"""The README's main job: the loop on a Fashion-MNIST few-labels scenario, end to end.

Fashion-MNIST (Debian package ``dataset-fashion-mnist``) is imported once into the tables
``fmnist-train`` / ``fmnist-test``. The scenario keeps ``per_class`` labels per class of a
random sample of the training images, flips ``flip`` of them to a wrong class and leaves
the rest of the sample undefined; the loop then trains, analyses and edits on its own.
The true labels stay in ``fmnist-train``; they only score the loop's automatic labels at
the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dataloupe.loop._loop import LoopResult, loops_dir, run_loop
from dataloupe.loop._scenario import few_labels_scenario, score_auto_labels
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import import_idx, list_tables

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {"fmnist-train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "train"),
                 "fmnist-test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "test")}


def _find(folder: Path, stem: str) -> Path | None:
    for cand in (folder / f"{stem}.gz", folder / stem):
        if cand.is_file():
            return cand
    return None


def import_fashion_mnist(project: Project, folder: Path | None = None, *,
                         log: Callable[[str], None] = print) -> list[str]:
    """Import Fashion-MNIST's IDX files as ``fmnist-train`` and ``fmnist-test`` (once)."""
    folder = Path(folder or FASHION_DIR)
    existing = {t["name"] for t in list_tables(project)}
    for name, (img, lab, split) in FASHION_FILES.items():
        if name in existing:
            continue
        xi, yl = _find(folder, img), _find(folder, lab)
        if xi is None or yl is None:
            raise DataloupeError(
                f"Fashion-MNIST not found in {folder}: install it with "
                "`sudo apt-get install dataset-fashion-mnist` (Debian) or pass --fashion-dir "
                "DIR holding the four IDX files")
        log(f"importing {xi.name} -> table {name} ...")
        import_idx(project, xi, yl, table=name, classes=FASHION_CLASSES, split=split)
    return list(FASHION_FILES)


@dataclass
class DemoResult:
    """What the demo did: the loop, its automatic labels scored against the hidden truth,
    and the HTML report of the last iteration's run."""

    loop: LoopResult
    score: dict
    flipped: int
    report: Path | None


def fashion_mnist_demo(project: Project, *, fashion_dir: Path | None = None, per_class: int = 20,
                       flip: float = 0.1, pool: int = 6000, val_size: int = 2000,
                       policy: str = "fashion-mnist-demo", iterations: int | None = None,
                       name: str = "demo", seed: int = 0, log: Callable[[str], None] = print) -> DemoResult:
    """Run the loop on a few-labels Fashion-MNIST scenario; a second call resumes or re-shows it.

    The scenario tables are ``<name>-train`` and ``<name>-val``; the loop is ``<name>``.
    """
    import_fashion_mnist(project, fashion_dir, log=log)
    train, val = f"{name}-train", f"{name}-val"
    existing = {t["name"] for t in list_tables(project)}
    if train not in existing:
        sc = few_labels_scenario(project, "fmnist-train", train=train, per_class=per_class, flip=flip,
                                 pool=pool, val_source="fmnist-test", val=val, val_size=val_size, seed=seed)
        log(f"scenario: {train} = {per_class * len(FASHION_CLASSES)} labeled rows ({len(sc.flipped_ids)} "
            f"of them flipped to a wrong class) + {pool} undefined; {val} = {val_size} test images")
        flipped = len(sc.flipped_ids)
    else:
        flipped = round(flip * per_class * len(FASHION_CLASSES))
        log(f"scenario tables {train}, {val} exist: reusing them")
    resume = (loops_dir(project) / name / "state.json").exists()
    res = run_loop(project, train=train, val=val, policy=policy, iterations=iterations, name=name,
                   resume=resume, log=log)
    start = res.iterations[0]["revision"] if res.iterations else 1
    score = score_auto_labels(project, train, "fmnist-train", since=start)
    report = None
    if res.iterations:
        from dataloupe.report import write_report  # noqa: PLC0415

        report = write_report(project, res.iterations[-1]["run"])
    return DemoResult(res, score, flipped, report)
