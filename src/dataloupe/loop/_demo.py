"""The README's main job: the loop on a Fashion-MNIST few-labels scenario, end to end.

Fashion-MNIST (Debian package ``dataset-fashion-mnist``) is imported once into the tables
``fmnist-train`` / ``fmnist-test``. The scenario keeps ``per_class`` labels per class of a
random sample of the training images, flips ``flip`` of them to a wrong class and leaves
the rest of the sample undefined; the loop then trains, analyses and edits on its own.
The true labels stay in ``fmnist-train``; they only score the loop's automatic labels at
the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dataloupe.loop._loop import LoopResult, loops_dir, run_loop
from dataloupe.loop._policy import Policy, load_policy
from dataloupe.loop._scenario import few_labels_scenario, score_auto_labels
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import create_table, import_idx, list_tables, open_table

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
    """What the demo did: the loop, its automatic labels scored against the hidden truth, the
    baseline and oracle it is measured against, and the HTML report of the last iteration's run.

    ``baseline`` is the policy's recipe on the labeled rows only; ``oracle`` the same recipe
    on every scenario row with its true label (``oracle_epochs``); ``loop`` the val top-1 of
    the loop's *last* iteration. All as fractions; ``None`` when not measured.
    """

    loop: LoopResult
    score: dict
    flipped: int
    report: Path | None
    seed: int = 0
    baseline: float | None = None
    oracle: float | None = None
    minutes: float = 0.0

    @property
    def loop_top1(self) -> float | None:
        return self.loop.iterations[-1]["val_top1"] if self.loop.iterations else None

    @property
    def gap_closed(self) -> float | None:
        """``(loop - baseline) / (oracle - baseline)``: 0 = no better than the labels given, 1 = as
        good as training on every true label."""
        lo, b, o = self.loop_top1, self.baseline, self.oracle
        if lo is None or b is None or o is None or o <= b:
            return None
        return (lo - b) / (o - b)

    def to_json(self) -> dict:
        """The keys ``dataloupe demo --json`` prints (accuracies and shares as fractions)."""
        return {"seed": self.seed, "baseline": self.baseline, "oracle": self.oracle, "loop": self.loop_top1,
                "gap_closed": self.gap_closed, "auto_label_precision": self.score.get("precision"),
                "auto_label_coverage": self.score.get("coverage"), "minutes": round(self.minutes, 2),
                "iterations": [r["val_top1"] for r in self.loop.iterations], "stopped": self.loop.stopped,
                "flipped": self.flipped}


def demo_name(seed: int) -> str:
    """Loop (and table prefix) name of the demo for ``seed``: ``demo``, ``demo-s7``, ..."""
    return "demo" if seed == 0 else f"demo-s{seed}"


def oracle_table(project: Project, train: str, source: str, *, revision: int, name: str) -> str:
    """Table ``name``: the rows of ``train@revision`` with their true labels from ``source``."""
    import pyarrow as pa  # noqa: PLC0415

    existing = {t["name"] for t in list_tables(project)}
    if name in existing:
        return name
    t = open_table(project, train, revision)
    rows = t.to_arrow(columns=["path", "truth_id"])
    src = open_table(project, source).to_arrow(columns=["id", "label"])
    truth = dict(zip(src["id"].to_pylist(), src["label"].to_pylist()))
    labels = [truth[i] for i in rows["truth_id"].to_pylist()]
    create_table(project, name, pa.table({"path": rows["path"], "label": pa.array(labels, pa.string()),
                                          "truth_id": rows["truth_id"]}),
                 classes=t.classes, image_root=t.image_root,
                 message=f"oracle: the rows of {train}@{revision} with their true labels from {source}")
    return name


# The baseline and the oracle learn from labeled rows only, whatever the policy's recipe sets:
# no consistency loss, no rotation task on the pool, no pretrained start.
LABELED_ONLY = {"unlabeled_weight": 0.0, "unlabeled_rotation": 0.0, "pretrained": None}


def _measure(project: Project, run: str, train: str, val: str, policy: Policy, overrides: dict,
             log: Callable[[str], None]) -> float:
    """Train ``run`` (or reuse it when finished) and return its best val top-1."""
    from dataloupe.train import train as train_fn  # noqa: PLC0415 (loop sits above train)
    from dataloupe.runs import read_run_at  # noqa: PLC0415

    folder = project.runs_dir / run
    if (folder / "run.json").is_file():
        info = read_run_at(folder)
        if info.get("status") == "completed":
            return info["best_val_top1"]
    log(f"[demo] training {run} on {train} ({', '.join(f'{k}={v}' for k, v in overrides.items())})")
    info = train_fn(project, train, val, policy.recipe, overrides=overrides, run=run,
                    resume=(folder / "run.json").is_file())
    return info["best_val_top1"]


def _same_as_baseline(project: Project, res, train: str, policy: Policy, overrides: dict) -> float | None:
    """The loop's first run's val top-1 when it *is* the baseline: the same resolved recipe
    (seed included) on ``train@1``, finished; else None (the baseline is then trained)."""
    from dataloupe.runs import read_run_at  # noqa: PLC0415
    from dataloupe.train import load_recipe  # noqa: PLC0415

    if not res.iterations:
        return None
    folder = project.runs_dir / res.iterations[0]["run"]
    if not (folder / "run.json").is_file() or not (folder / "recipe.yaml").is_file():
        return None
    info = read_run_at(folder)
    if (info.get("status") != "completed" or info.get("train_table") != train
            or int(info.get("train_revision", -1)) != 1):
        return None
    if load_recipe(str(folder / "recipe.yaml")) != load_recipe(policy.recipe, overrides):
        return None
    return info["best_val_top1"]


def fashion_mnist_demo(project: Project, *, fashion_dir: Path | None = None, per_class: int = 20,
                       flip: float = 0.1, pool: int = 6000, val_size: int = 2000,
                       policy: str = "fashion-mnist-demo", iterations: int | None = None,
                       name: str | None = None, seed: int = 0, measure: bool = True, oracle_epochs: int = 10,
                       log: Callable[[str], None] = print) -> DemoResult:
    """Run the loop on a few-labels Fashion-MNIST scenario; a second call resumes or re-shows it.

    ``seed`` draws the scenario: which ``per_class`` rows per class are labeled, which
    ``flip`` share of them get a wrong label, which rows form the pool and the validation
    sample. The scenario tables are ``<name>-train`` and ``<name>-val``; the loop is
    ``<name>`` (default :func:`demo_name`). With ``measure``, the loop is compared with the
    baseline (the policy's first-iteration recipe on the labeled rows only: the loop's
    iteration-1 run when it is exactly that, else run ``<name>-baseline``) and the oracle
    (the same recipe on every scenario row with its true label for ``oracle_epochs`` epochs,
    run ``<name>-oracle``).
    """
    t0 = time.time()
    name = name or demo_name(seed)
    pol = load_policy(policy)
    import_fashion_mnist(project, fashion_dir, log=log)
    train, val = f"{name}-train", f"{name}-val"
    existing = {t["name"] for t in list_tables(project)}
    if train not in existing:
        sc = few_labels_scenario(project, "fmnist-train", train=train, per_class=per_class, flip=flip,
                                 pool=pool, val_source="fmnist-test", val=val, val_size=val_size, seed=seed)
        log(f"scenario (seed {seed}): {train} = {per_class * len(FASHION_CLASSES)} labeled rows "
            f"({len(sc.flipped_ids)} of them flipped to a wrong class) + {pool} undefined; "
            f"{val} = {val_size} test images")
        flipped = len(sc.flipped_ids)
    else:
        flipped = round(flip * per_class * len(FASHION_CLASSES))
        log(f"scenario tables {train}, {val} exist: reusing them")
    baseline = oracle = None
    base_over = {**pol.overrides_for(0), **LABELED_ONLY}
    if measure:
        # Measured on the scenario's first revision, so the loop's edits never reach them.
        orc = oracle_table(project, train, "fmnist-train", revision=1, name=f"{name}-oracle")
        orc_over = {**pol.overrides, **LABELED_ONLY, "epochs": oracle_epochs}
        oracle = _measure(project, f"{name}-oracle", orc, val, pol, orc_over, log)
    resume = (loops_dir(project) / name / "state.json").exists()
    res = run_loop(project, train=train, val=val, policy=pol, iterations=iterations, name=name,
                   resume=resume, log=log)
    if measure:
        baseline = _same_as_baseline(project, res, train, pol, base_over)
        if baseline is None:
            baseline = _measure(project, f"{name}-baseline", f"{train}@1", val, pol, base_over, log)
        else:
            log(f"[demo] baseline = the loop's iteration 1 ({res.iterations[0]['run']}): the same recipe on "
                f"{train}@1, so it is not trained twice")
    start = res.iterations[0]["revision"] if res.iterations else 1
    score = score_auto_labels(project, train, "fmnist-train", since=start)
    report = None
    if res.iterations:
        from dataloupe.report import write_report  # noqa: PLC0415

        report = write_report(project, res.iterations[-1]["run"])
    return DemoResult(res, score, flipped, report, seed=seed, baseline=baseline, oracle=oracle,
                      minutes=(time.time() - t0) / 60)
