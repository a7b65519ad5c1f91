"""The hand-label benchmark: test top-1 against the number of hand labels, queue order vs random.

A person is simulated with the review queue (``dataloupe.loop.answer_from_oracle``, what
``dataloupe review`` runs): a model is trained on the labeled rows; the queue is built from
its per-sample metrics (the pool, low-confidence rows); the first N rows of the queue are
answered from an oracle CSV (the true labels) as one revision; the same recipe is trained
again on the labeled rows plus the N answers and scored on the validation table. Every N
starts from the same first revision (a revert), so N = 50, 100, 200, 400 are nested
prefixes of one order. The random order is the baseline, measured in the same run.

Settings:
  fmnist     the demo's scenario (``dataloupe demo``): 20 labels per class of Fashion-MNIST,
             10% of them flipped, 6,000 undefined rows as the pool, 2,000 test images as
             validation; the oracle holds every row's true IDX label; the demo's first
             iteration recipe (convnet-xs, 28 px, SGD 0.05 OneCycle, batch 64) with a fixed
             6,400 labeled draws per training (20 epochs of 320), no mirror averaging.
  chihuahua  chihuahua-muffin: the 200 labeled photos plus half of test128 (stratified,
             seeded) as the undefined pool that the oracle answers; the other half of
             test128 is the validation table. The real undefined pool (4,533 photos without
             readable labels) is left out: the oracle could not answer it. The starter recipe's
             augmentation and Adam 1e-3 (cosine) on a 64-px convnet-xs, 3,200 labeled
             draws per training (10 epochs of 320).

    PYTHONPATH=src python bench/review_curve.py --setting fmnist --seeds 0 1 \\
        --strategies margin random --project /tmp/review-fmnist
    PYTHONPATH=src python bench/review_curve.py --setting chihuahua --seeds 0 --project /tmp/review-cm
    PYTHONPATH=src python bench/review_curve.py --setting fmnist --seeds 0 1 2 --repeats 1 \\
        --strategies typiclust random --project /tmp/review-fmnist   # one training per revision (default 3)

Strategies whose order depends on the budget (``typiclust``) are asked afresh for each N,
so their Ns are not prefixes of one order.

``--ssl-epochs E`` (E > 0): per seed, a self-supervised backbone is first learnt on every row
of the training table (``dataloupe pretrain``, SimCLR, labels never read; the validation
table never read) and the embedding strategies cluster on its embeddings instead of the
first model's (``review --embeddings``); results are kept as ``<strategy>+ssl``.

    PYTHONPATH=src python bench/review_curve.py --setting fmnist --seeds 0 1 2 \\
        --strategies typiclust random --ssl-epochs 30 --project /tmp/review-fmnist
    PYTHONPATH=src python bench/review_curve.py --setting fmnist --seeds 0 1 2 --draws 12800 \\
        --strategies typiclust random --budgets 200 400 --project /tmp/review-fmnist-12800  # converged trainings

Finished trainings are reused on a rerun (results are kept in ``<project>/review-curve.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dataloupe.loop import answer_from_oracle  # noqa: E402
from dataloupe.project import Project  # noqa: E402
from dataloupe.tables import create_table, list_tables, open_table, revert_table  # noqa: E402
from dataloupe.train import train  # noqa: E402

BUDGETS = (50, 100, 200, 400)
CM_DATA = ROOT.parent / "shared" / "datasets" / "chihuahua-muffin"

# Recipes: the same for the first model and every retraining of a setting.
# Each training draws the same number of labeled images (epochs x epoch_samples), whatever N.
FMNIST_RECIPE = ("fashion-mnist", {"batch_size": 64, "lr": 0.05, "label_smoothing": 0.0, "checkpoint": "last",
                                   "epochs": 20, "epoch_samples": 320, "eval_every": 20, "num_workers": 0})
CM_RECIPE = ("chihuahua-muffin-resnet18", {
    "model": "convnet-xs", "image_size": 64, "batch_size": 64, "optimizer": "adam", "lr": 0.001, "weight_decay": 0.0,
    "scheduler": "cosine", "epochs": 10, "epoch_samples": 320, "eval_every": 10, "checkpoint": "last",
    "label_smoothing": 0.1, "num_workers": 0})


def write_oracle(path: Path, rows: list[tuple[str, str]]) -> Path:
    """A ``path,label`` CSV, as ``dataloupe review --oracle`` reads it."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return path


def split_half(labels: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a stratified, seeded half of ``labels`` and of the rest (both sorted)."""
    rng = np.random.default_rng(seed)
    lab = np.array(labels, dtype=object)
    first = []
    for c in sorted(set(labels)):
        idx = np.flatnonzero(lab == c)
        first += rng.choice(idx, len(idx) // 2, replace=False).tolist()
    first = np.sort(np.array(first, np.int64))
    return first, np.setdiff1d(np.arange(len(labels)), first)


def fmnist_tables(project: Project, seed: int) -> tuple[str, str, Path]:
    """The demo's scenario for ``seed`` and an oracle CSV with every training row's true label."""
    from dataloupe.loop._demo import import_fashion_mnist  # noqa: PLC0415
    from dataloupe.loop._scenario import few_labels_scenario  # noqa: PLC0415

    train_t, val_t = f"rc-fm-s{seed}-train", f"rc-fm-s{seed}-val"
    import_fashion_mnist(project, log=lambda m: None)
    if train_t not in {t["name"] for t in list_tables(project)}:
        few_labels_scenario(project, "fmnist-train", train=train_t, per_class=20, flip=0.1, pool=6000,
                            val_source="fmnist-test", val=val_t, val_size=2000, seed=seed)
    rows = open_table(project, train_t, 1).to_arrow(columns=["path", "truth_id"])
    src = open_table(project, "fmnist-train").to_arrow(columns=["id", "label"])
    truth = dict(zip(src["id"].to_pylist(), src["label"].to_pylist()))
    oracle = write_oracle(project.root / f"oracle-fm-s{seed}.csv",
                          [(p, truth[i]) for p, i in zip(rows["path"].to_pylist(), rows["truth_id"].to_pylist())])
    return train_t, val_t, oracle


def chihuahua_tables(project: Project, seed: int, data: Path) -> tuple[str, str, Path]:
    """200 labeled photos + half of test128 undefined (the pool); the other half validates."""
    train_t, val_t = f"rc-cm-s{seed}-train", f"rc-cm-s{seed}-val"
    oracle = project.root / f"oracle-cm-s{seed}.csv"
    if train_t in {t["name"] for t in list_tables(project)} and oracle.is_file():
        return train_t, val_t, oracle
    classes = ["chihuahua", "muffin"]
    exts = {".jpg", ".jpeg", ".png"}

    def files(split: str) -> list[tuple[str, str]]:
        return [(f.relative_to(data).as_posix(), c) for c in classes
                for f in sorted((data / split / c).iterdir()) if f.suffix.lower() in exts]

    labeled, test = files("train128"), files("test128")
    pool_pos, val_pos = split_half([c for _, c in test], seed)
    pool = [test[i] for i in pool_pos]
    val = [test[i] for i in val_pos]
    create_table(project, train_t, pa.table({
        "path": pa.array([p for p, _ in labeled + pool], pa.string()),
        "label": pa.array([c for _, c in labeled] + [None] * len(pool), pa.string())}),
        classes=classes, image_root=data,
        message=f"review bench: train128's 200 labeled photos + {len(pool)} test128 photos undefined (seed {seed})")
    create_table(project, val_t, pa.table({"path": pa.array([p for p, _ in val], pa.string()),
                                           "label": pa.array([c for _, c in val], pa.string())}),
                 classes=classes, image_root=data, split="val",
                 message=f"review bench: the other {len(val)} test128 photos (seed {seed})")
    write_oracle(oracle, pool)
    return train_t, val_t, oracle


def _trained(project: Project, run: str, train_ref: str, val: str, recipe: tuple[str, dict], *,
             seed: int, collect: bool) -> float:
    """Train ``run`` (reused when finished) and return its val top-1 (the last epoch's)."""
    folder = project.runs_dir / run
    if (folder / "run.json").is_file():
        info = json.loads((folder / "run.json").read_text())
        if info.get("status") == "completed":
            return info["best_val_top1"]
    name, over = recipe
    info = train(project, train_ref, val, name, overrides={**over, "seed": seed, "collect": collect}, run=run,
                 tty=False, force=True)
    return info["best_val_top1"]  # checkpoint: last -> the last epoch's val top-1


# Self-supervised backbone per setting for ``--ssl-epochs`` (the recipe's model, size and statistics).
SSL = {"fmnist": {"method": "simclr", "model": "convnet-xs", "image_size": 28, "batch_size": 256,
                  "mean": [0.286] * 3, "std": [0.353] * 3, "num_workers": 0},
       "chihuahua": {"method": "simclr", "model": "convnet-xs", "image_size": 64, "batch_size": 128,
                     "num_workers": 0}}


def _ssl_run(project: Project, setting: str, seed: int, train_t: str, epochs: int, log) -> str:
    """A SimCLR backbone on every row of ``train_t``'s first revision, collected on the table
    (reused when finished); returns the run's name."""
    from dataloupe.train import pretrain  # noqa: PLC0415
    from dataloupe.train._collect import collect  # noqa: PLC0415 (a pretrain run: embeddings only)

    run = f"rc-{setting}-s{seed}-ssl{epochs}"
    folder = project.runs_dir / run
    done = (folder / "run.json").is_file() and json.loads((folder / "run.json").read_text()).get("status") == "completed"
    if not done:
        t0 = time.time()
        info = pretrain(project, [f"{train_t}@1"], {**SSL[setting], "epochs": epochs, "seed": seed}, run=run,
                        tty=False)
        log(f"[{setting} s{seed}] SimCLR {epochs} epochs: kNN monitor {info.get('knn_top1')} "
            f"({(time.time() - t0) / 60:.1f} min)")
    if not (folder / "metrics" / f"{train_t}.lance").exists():
        collect(project, run, f"{train_t}@1")
    return run


def curve(project: Project, setting: str, seed: int, strategies: list[str], budgets: tuple[int, ...],
          recipe: tuple[str, dict], tables: tuple[str, str, Path], results: dict, save, log, *,
          repeats: int = 1, ssl_epochs: int = 0, recheck: int = 0) -> None:
    """Fill ``results[setting][seed][strategy][N]`` with ``{"top1", "runs", "revision", "answered",
    "changed", "minutes"}``: ``runs`` are the val top-1 of ``repeats`` trainings of the answered
    revision (training seeds ``seed``, ``seed + 1000``, ...), ``top1`` their mean."""
    from dataloupe.runs import read_run  # noqa: PLC0415

    train_t, val_t, oracle = tables
    res = results.setdefault(setting, {}).setdefault(str(seed), {})
    first = f"rc-{setting}-s{seed}-first"
    if "first" not in res:
        t0 = time.time()
        top1 = _trained(project, first, f"{train_t}@1", val_t, recipe, seed=seed, collect=True)
        res["first"] = {"top1": top1, "minutes": (time.time() - t0) / 60}
        save()
    log(f"[{setting} s{seed}] first model (labels given): {100 * res['first']['top1']:.2f}%")
    ssl = _ssl_run(project, setting, seed, train_t, ssl_epochs, log) if ssl_epochs > 0 else None
    for strat_name in strategies:
        strat = strat_name
        if ssl is not None and strat != "random":
            strat_name = f"{strat}+ssl"
        if recheck:
            strat_name = f"{strat_name}+recheck{recheck}"
        for n in budgets:
            done = res.get(strat_name, {}).get(str(n))
            if done is not None and len(done.get("runs", [done["top1"]])) >= repeats:
                continue
            t0 = time.time()
            name = f"rc-{setting}-s{seed}-{strat_name.replace('+', '-')}-{n}"
            if done is None:
                revert_table(project, train_t, 1, message=f"review bench: back to the labels given ({strat_name}, N={n})")
                ans = answer_from_oracle(project, train_t, first, oracle, budget=n, strategy=strat, seed=seed,
                                         embeddings=ssl, recheck=recheck)
                done = {"revision": ans["revision"], "answered": ans["answered"], "changed": ans["changed"],
                        "runs": [], "minutes": 0.0}
            # results from before repeats existed hold one run and no revision: the run's record has it
            if "revision" not in done:
                done["revision"] = read_run(project, name)["train_revision"]
            runs = done.setdefault("runs", [done["top1"]] if "top1" in done else [])
            while len(runs) < repeats:
                r = len(runs)
                runs.append(_trained(project, name if r == 0 else f"{name}-r{r}", f"{train_t}@{done['revision']}",
                                     val_t, recipe, seed=seed + 1000 * r, collect=False))
            done["top1"] = float(np.mean(runs))
            done["minutes"] = done.get("minutes", 0.0) + (time.time() - t0) / 60
            res.setdefault(strat_name, {})[str(n)] = done
            save()
            log(f"[{setting} s{seed}] {strat_name:>8} N={n:>3}: {100 * done['top1']:.2f}% "
                f"(runs {', '.join(f'{100 * v:.2f}' for v in runs)}; answered {done['answered']}, "
                f"changed {done['changed']}, {(time.time() - t0) / 60:.1f} min)")


def table(results: dict, setting: str, strategies: list[str], budgets: tuple[int, ...]) -> str:
    """Mean (and range) val top-1 over seeds per strategy and N; the target check against random."""
    seeds = sorted(results.get(setting, {}), key=int)
    reps = sorted({len(c.get("runs", [c["top1"]])) for s in seeds for k, v in results[setting][s].items()
                   if k != "first" and k in strategies for c in v.values()})
    lines = [f"setting {setting}, seeds {', '.join(seeds)}: val top-1 (%), mean over seeds [min-max]"
             + (f"; each seed's cell the mean of {'/'.join(map(str, reps))} trainings" if reps and reps != [1] else ""),
             f"{'order':>12} " + " ".join(f"{'N=' + str(n):>18}" for n in (0,) + budgets)]
    mean = {}
    first = [results[setting][s]["first"]["top1"] for s in seeds if "first" in results[setting][s]]
    for strat in strategies:
        cells = [_cell(first)]
        for n in budgets:
            v = [results[setting][s][strat][str(n)]["top1"] for s in seeds
                 if str(n) in results[setting][s].get(strat, {})]
            mean[strat, n] = float(np.mean(v)) if len(v) == len(seeds) else None
            cells.append(_cell(v))
        lines.append(f"{strat:>12} " + " ".join(f"{c:>18}" for c in cells))
    ref = mean.get(("random", max(budgets)))
    if ref is not None:
        for strat in strategies:
            if strat == "random":
                continue
            reach = [n for n in budgets if mean.get((strat, n)) is not None and mean[strat, n] >= ref]
            ok = bool(reach) and min(reach) <= max(budgets) // 2
            lines.append(f"{strat}: reaches random's N={max(budgets)} ({100 * ref:.2f}%) at "
                         f"{'N=' + str(min(reach)) if reach else 'no N measured'} -> target "
                         f"{'held' if ok else 'NOT held'}")
    return "\n".join(lines)


def _cell(v: list[float]) -> str:
    if not v:
        return "-"
    if len(v) == 1:
        return f"{100 * v[0]:.2f}"
    return f"{100 * np.mean(v):.2f} [{100 * min(v):.1f}-{100 * max(v):.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=("fmnist", "chihuahua"), required=True)
    ap.add_argument("--project", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--strategies", nargs="+", default=["margin", "random"])
    ap.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    ap.add_argument("--repeats", type=int, default=3,
                    help="trainings per answered revision (training seeds seed, seed+1000, ...), averaged: "
                         "a single run of this recipe moves by 3-4 points (up to 12 measured); 1: the old protocol")
    ap.add_argument("--ssl-epochs", type=int, default=0,
                    help="> 0: cluster on a SimCLR backbone of this many epochs (per seed) instead of the first "
                         "model's embeddings; results as <strategy>+ssl")
    ap.add_argument("--draws", type=int, default=0,
                    help="labeled draws per training (multiples of 320; default: the setting's 6,400 / 3,200); "
                         "use a fresh --project: finished runs are reused by name")
    ap.add_argument("--recheck", type=int, default=0,
                    help="> 0: each queue opens with this many of the most doubted given labels (review --recheck); "
                         "results as <strategy>+recheck<K>")
    ap.add_argument("--data", type=Path, default=CM_DATA, help="chihuahua-muffin folder")
    ap.add_argument("--table-only", action="store_true", help="print the table of finished results and stop")
    args = ap.parse_args()
    project = Project.open(args.project)
    store = project.root / "review-curve.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    budgets = tuple(sorted(args.budgets))

    def save():
        store.write_text(json.dumps(results, indent=1))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if not args.table_only:
        import torch  # noqa: PLC0415

        log(f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}")
        recipe = FMNIST_RECIPE if args.setting == "fmnist" else CM_RECIPE
        if args.draws:  # the same recipe, longer: epochs of 320 draws
            recipe = (recipe[0], {**recipe[1], "epochs": max(1, args.draws // 320), "eval_every": max(1, args.draws // 320)})
        for seed in args.seeds:
            tables = (fmnist_tables(project, seed) if args.setting == "fmnist"
                      else chihuahua_tables(project, seed, args.data))
            curve(project, args.setting, seed, args.strategies, budgets, recipe, tables, results, save, log,
                  repeats=args.repeats, ssl_epochs=args.ssl_epochs, recheck=args.recheck)
    shown = [s if args.ssl_epochs <= 0 or s == "random" else f"{s}+ssl" for s in args.strategies]
    if args.recheck:
        shown = [f"{s}+recheck{args.recheck}" for s in shown] + ["random"]  # the target's reference: plain random
    print(table(results, args.setting, shown, budgets))


if __name__ == "__main__":
    main()
