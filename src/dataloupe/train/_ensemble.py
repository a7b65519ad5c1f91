"""An ensemble run: finished runs of one architecture, on the same table revisions, as one model.

``ensemble_runs(project, "e", ["a", "b"])`` writes run ``e``: a checkpoint of the
``ensemble-K:<base>`` classifier (:mod:`dataloupe.models._ensemble`: the members' logits
averaged), its validation top-1 measured the way training measures it, and its per-sample
metrics (``collect``). Analysis, the loop's rules, serving and export then read it as any run.
Averaging models that were trained apart (other seeds, other starts) is the cheapest way to a
better and steadier classifier (Lakshminarayanan et al. 2017): on the demo, two iteration-2
models ensembled scored +0.4 to +1.7 points over either (bench/RESULTS.md).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Callable

import torch

from dataloupe import runs
from dataloupe.data import sample_set_from_table
from dataloupe.models import combine_heads, create_model, ensemble_name, parse_ensemble_name
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import open_ref
from dataloupe.train import _runs
from dataloupe.train._checkpoint import atomic_save, load_checkpoint, model_checkpoint

# what members must share: the same model on the same data, evaluated the same way
_SAME_RUN = ("train_table", "train_revision", "val_table", "val_revision", "classes")
_SAME_CKPT = ("model_name", "image_size", "small_input", "mean", "std", "tta_hflip", "amp")


def _member(project: Project, run: str) -> tuple[dict, dict]:
    info = runs.read_run(project, run)
    if info.get("kind") in ("pretrain", "ensemble", "memory"):
        raise DataloupeError(f"run {run!r} is a {info['kind']} run: an ensemble's members are trained classifiers")
    if info.get("status") != "completed":
        raise DataloupeError(f"run {run!r} is {info.get('status', 'unfinished')}: only completed runs can be members")
    return info, load_checkpoint(runs.run_dir(project, run) / "checkpoints" / "best.pt")


def ensemble_runs(project: Project, run: str, members: list[str], *, force: bool = False) -> dict:
    """Write run ``run``: the logit-averaging ensemble of the completed runs ``members``.

    Each member contributes its kept checkpoint (``best.pt``: its best or, with
    ``checkpoint: last``, its last epoch). Members must share the architecture, the input
    pipeline (image size, normalisation, mirror-averaging, autocast) and the training and
    validation table revisions; anything else is refused before anything is written.

    Returns:
        the run record (``run.json``): ``kind: ensemble``, ``members``, ``best_val_top1``.
    """
    runs.check_run_name(run)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise DataloupeError("dataloupe ensemble runs in one process (it evaluates and collects once): "
                             "start it without torchrun")
    if len(members) < 2 or len(set(members)) != len(members):
        raise DataloupeError(f"an ensemble needs two or more different member runs, got {members}")
    if run in members:
        raise DataloupeError(f"run {run!r} cannot be its own member")
    loaded = [_member(project, m) for m in members]
    (first_info, first), others = loaded[0], loaded[1:]
    if parse_ensemble_name(first["model_name"]) is not None:
        raise DataloupeError(f"run {members[0]!r} is an ensemble already")
    for name, (info, ckpt) in zip(members[1:], others):
        for key in _SAME_RUN:
            if info.get(key) != first_info.get(key):
                raise DataloupeError(f"runs {members[0]!r} and {name!r} differ in {key} ({first_info.get(key)!r} vs "
                                     f"{info.get(key)!r}): members must share model, inputs and table revisions")
        for key in _SAME_CKPT:
            if ckpt.get(key) != first.get(key):
                raise DataloupeError(f"runs {members[0]!r} and {name!r} differ in {key} ({first.get(key)!r} vs "
                                     f"{ckpt.get(key)!r}): members must share model, inputs and table revisions")
    folder = runs.run_dir(project, run)
    if folder.exists():
        if not force:
            raise DataloupeError(f"run {run!r} exists: choose another name, or force=True (--force) to replace it")
        shutil.rmtree(folder)
    t0 = time.time()
    classes = list(first["classes"])
    name = ensemble_name(len(members), first["model_name"])
    model = create_model(name, len(classes), small_input=bool(first["small_input"]))
    state = {f"backbone.members.{i}.{k.removeprefix('backbone.')}": v
             for i, (_, ck) in enumerate(loaded) for k, v in ck["model"].items() if k.startswith("backbone.")}
    heads = []
    for _, ck in loaded:
        head = torch.nn.Linear(ck["model"]["head.weight"].shape[1], len(classes))
        head.load_state_dict({"weight": ck["model"]["head.weight"], "bias": ck["model"]["head.bias"]})
        heads.append(head)
    state["head.weight"], state["head.bias"] = combine_heads(heads)
    model.load_state_dict(state)  # strict: every tensor of every member is in the ensemble
    record = {"kind": "ensemble", "members": list(members)}
    return write_derived_run(project, run, model, name, first, members[0], first_info, record, t0)


# What a run made from finished runs keeps of its source run's record (tables, inputs, seed).
_KEPT = ("recipe", *_SAME_RUN, "train_content_key", "val_content_key", "image_size", "num_train", "num_val", "seed",
         "normalisation", "members")


def write_derived_run(project: Project, run: str, model, name: str, ckpt: dict, source: str, source_info: dict,
                      record: dict, t0: float, write_metrics: Callable[[], object] | None = None) -> dict:
    """Write run ``run`` for ``model`` (named ``name``) made from finished runs (an ensemble, a
    memory): the checkpoint with ``ckpt``'s input pipeline, ``source``'s recipe and table record,
    then ``collect`` and the validation top-1 measured as training measures it. ``record`` adds
    the run's own keys (``kind``, ...). The run's folder must not exist. ``write_metrics``, when
    given, writes the metrics instead of ``collect`` (a memory's: from its base's kept views); when
    it returns None, ``collect`` runs after all."""
    folder = runs.run_dir(project, run)
    classes = list(ckpt["classes"])
    (folder / "checkpoints").mkdir(parents=True)
    meta = dict(model_name=name, classes=classes, image_size=ckpt["image_size"], small_input=ckpt["small_input"],
                mean=ckpt["mean"], std=ckpt["std"], epoch=0, tta_hflip=bool(ckpt.get("tta_hflip")),
                amp=ckpt.get("amp", "auto"))
    atomic_save(model_checkpoint(model, val_top1=None, **meta), folder / "checkpoints" / "best.pt")
    src = runs.run_dir(project, source) / "recipe.yaml"
    if src.is_file():
        shutil.copy(src, folder / "recipe.yaml")  # the source's recipe (an ensemble's: its first member's seed)
    keep = {k: source_info[k] for k in _KEPT if k in source_info}
    runs.update_run(folder, **{**keep, **record}, run=run, status="running", model=name,
                    version=runs.package_version(), hardware=_runs.hardware(), created=runs.now())
    from dataloupe.train._collect import collect  # noqa: PLC0415 (collect imports the engine's helpers)

    if write_metrics is None or write_metrics() is None:
        collect(project, run)  # one pass over the validation rows: its metrics give the top-1 too
    top1 = _val_top1(project, run, source_info, classes)
    atomic_save(model_checkpoint(model, val_top1=top1, **meta), folder / "checkpoints" / "best.pt")
    shutil.copy(folder / "checkpoints" / "best.pt", folder / "checkpoints" / "last.pt")
    return runs.update_run(folder, best_val_top1=top1, best_epoch=0, epochs=0, epochs_done=0, status="completed",
                           finished=runs.now(), seconds=round(time.time() - t0, 1))


def _val_top1(project: Project, run: str, info: dict, classes: list[str]) -> float:
    """Top-1 on the validation rows training measures (labeled, weight > 0), read from the
    metrics ``collect`` wrote: its forward pass (mirror-average, autocast) is the engine's."""
    from dataloupe.analysis._runio import load_metrics  # noqa: PLC0415

    samples = sample_set_from_table(open_ref(project, f"{info['val_table']}@{info['val_revision']}"), classes)
    measured = set(samples.ids[samples.trainable].tolist())
    m = load_metrics(project, run, info["val_table"], columns=["id", "correct"])
    correct = [bool(c) for i, c in zip(m["id"].to_pylist(), m["correct"].to_pylist()) if i in measured]
    return sum(correct) / max(len(correct), 1)
