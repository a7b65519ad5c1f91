"""Self-supervised pretraining (``dataloupe pretrain``) on tiny digits tables.

Tables: 320 labeled + 20 undefined training digits, 160 validation digits (16 px);
model convnet-xxs, batch 32, two epochs unless said otherwise — a few seconds each.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

import lance
import numpy as np
import pyarrow as pa
import pytest
import torch
from _train_helpers import FAST, cli, cli_env, make_digit_tables

from dataloupe.models import create_model
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import edit_table, open_table
from dataloupe.train import load_checkpoint, load_pretrain_config, load_recipe, pretrain, train
from dataloupe.train._pretrain import knn_top1

TINY = {"model": "convnet-xxs", "image_size": 16, "epochs": 2, "batch_size": 32, "log_every": 0.5}
BEST_KEYS = {"model", "kind", "model_name", "image_size", "small_input", "mean", "std", "method", "epoch", "amp"}


@pytest.fixture()
def project(tmp_path):
    p = Project.open(tmp_path / "proj")
    make_digit_tables(p, tmp_path)
    return p


def _history(p, run):
    return [json.loads(x) for x in (p.runs_dir / run / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_pretrain_writes_a_complete_run_and_a_backbone_checkpoint(project, method):
    info = pretrain(project, ["dig-train"], dict(TINY, method=method, collect=False), run=method, tty=False)
    assert info["status"] == "completed" and info["epochs_done"] == 2 and info["kind"] == "pretrain"
    assert info["method"] == method and info["tables"][0]["table"] == "dig-train" and info["tables"][0]["revision"] == 1
    assert 0 <= info["knn_top1_start"] <= 1 and info["knn_top1"] == _history(project, method)[-1]["knn_top1"]
    hist = _history(project, method)
    assert [h["epoch"] for h in hist] == [1, 2]
    for h in hist:
        assert math.isfinite(h["loss"]) and 0.0 <= h["knn_top1"] <= 1.0  # 10 labeled classes
        assert {"lr", "seconds", "images_per_s"} <= set(h)
    folder = project.runs_dir / method
    assert (folder / "recipe.yaml").is_file() and load_pretrain_config(folder / "recipe.yaml").method == method
    assert {p.name for p in (folder / "plots").glob("*.png")} == {"loss.png", "knn_top1.png", "lr.png"}
    best = load_checkpoint(folder / "checkpoints" / "best.pt")
    assert set(best) == BEST_KEYS
    assert (best["kind"], best["model_name"], best["image_size"], best["small_input"], best["method"],
            best["epoch"]) == ("pretrain", "convnet-xxs", 16, True, method, 2)
    assert best["mean"] == [0.485, 0.456, 0.406] and len(best["std"]) == 3
    backbone = create_model("convnet-xxs", 3, small_input=True).backbone
    assert set(best["model"]) == {f"backbone.{k}" for k in backbone.state_dict()}  # backbone keys only
    backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in best["model"].items()})  # strict
    last = load_checkpoint(folder / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and any(k.startswith("head.") for k in last["model"]) and last["optimizer"]


def test_every_row_with_weight_is_seen_once_per_epoch_undefined_included(project):
    edit_table(project, "dig-train", action="exclude", ids=[0, 1, 2, 3, 4], message="drop five")
    pretrain(project, ["dig-train", "dig-val"], dict(TINY, method="simclr", epochs=1, collect=False), run="rows",
             tty=False)
    info = json.loads((project.runs_dir / "rows" / "run.json").read_text())
    # 320 labeled - 5 excluded + 20 undefined from dig-train, 160 from dig-val
    assert info["num_rows"] == 495 and _history(project, "rows")[0]["images"] == 495
    assert info["num_knn_rows"] == 475  # the monitor sees labeled rows only
    assert [(t["table"], t["revision"]) for t in info["tables"]] == [("dig-train", 2), ("dig-val", 1)]


def test_labels_are_not_read_for_learning(tmp_path):
    runs = {}
    for name in ("same", "shuffled"):
        p = Project.open(tmp_path / name / "proj")
        make_digit_tables(p, tmp_path / name)
        if name == "shuffled":
            rows = open_table(p, "dig-train").to_arrow(columns=["id", "label"])
            ids = [i for i, lab in zip(rows.column("id").to_pylist(), rows.column("label").to_pylist()) if lab]
            labels = np.random.default_rng(1).permutation([lab for lab in rows.column("label").to_pylist() if lab])
            extra = pa.table({"id": pa.array(ids, pa.int64()), "shuffled": pa.array(labels.tolist())})
            edit_table(p, "dig-train", action="set_label", ids=ids, extra=extra, set_label_from="shuffled",
                       message="shuffle labels")
            edit_table(p, "dig-train", action="undefine", ids=list(range(10)), message="and forget ten")
            after = open_table(p, "dig-train").to_arrow(columns=["label"]).column("label").to_pylist()
            assert after != open_table(p, "dig-train", revision=1).to_arrow(columns=["label"]).column(
                "label").to_pylist()
        pretrain(p, ["dig-train"], dict(TINY, method="simclr", collect=False), run="r", tty=False)
        runs[name] = load_checkpoint(p.runs_dir / "r" / "checkpoints" / "best.pt")["model"]
    assert runs["same"].keys() == runs["shuffled"].keys()
    for k in runs["same"]:
        assert torch.equal(runs["same"][k], runs["shuffled"][k]), k


def test_resume_after_sigkill_finishes_every_epoch_once(project):
    env = cli_env(project.root)
    args = ["pretrain", "--table", "dig-train", "--method", "simclr", "model=convnet-xxs", "image_size=16",
            "epochs=4", "batch_size=8", "collect=false", "--run", "k"]
    proc = subprocess.Popen(cli(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = project.runs_dir / "k"
    deadline = time.time() + 240
    while time.time() < deadline and not (folder / "checkpoints" / "last.pt").is_file():
        time.sleep(0.05)
    time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [h["epoch"] for h in _history(project, "k")]
    assert 1 <= len(before) < 4
    r = subprocess.run(cli("pretrain", "--run", "k", "--resume"), env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "run k: completed, simclr epochs 4/4" in r.stdout
    assert [h["epoch"] for h in _history(project, "k")] == [1, 2, 3, 4]
    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs_done"] == 4 and info["resumed"]
    assert load_checkpoint(folder / "checkpoints" / "best.pt")["epoch"] == 4


@pytest.mark.parametrize("method", ["moco", "simsiam", "dino", "barlowtwins", "vicreg"])
def test_other_methods_train_one_epoch(project, method):
    extra = {"local_views": 2} if method == "dino" else {}
    info = pretrain(project, ["dig-train"], dict(TINY, method=method, epochs=1, collect=False, **extra), run=method,
                    tty=False)
    assert info["status"] == "completed" and math.isfinite(_history(project, method)[0]["loss"])
    assert load_checkpoint(project.runs_dir / method / "checkpoints" / "best.pt")["method"] == method


def test_bad_input_gives_one_line_errors_and_leaves_nothing(project):
    with pytest.raises(DataloupeError, match="unknown pretraining method 'nope'; known: simclr, moco, byol"):
        pretrain(project, ["dig-train"], dict(TINY, method="nope"), run="x")
    with pytest.raises(DataloupeError, match="unknown table 'nope'"):
        pretrain(project, ["nope"], dict(TINY, method="simclr"), run="x")
    with pytest.raises(DataloupeError, match=r"method simclr does not use momentum \(used by: moco, byol, dino\)"):
        pretrain(project, ["dig-train"], dict(TINY, method="simclr", momentum=0.9), run="x")
    with pytest.raises(DataloupeError, match="given more than once: dig-train"):
        pretrain(project, ["dig-train", "dig-train@1"], dict(TINY, method="simclr"), run="x")
    with pytest.raises(DataloupeError, match="cannot resume: run 'x' does not exist"):
        pretrain(project, ["dig-train"], dict(TINY, method="simclr"), run="x", resume=True)
    assert not (project.runs_dir / "x").exists()


def test_pretrain_run_feeds_collect_and_maps_but_not_analysis(project):
    from dataloupe.analysis import analyze_run, reduce_run
    from dataloupe.train._collect import collect

    pretrain(project, ["dig-train"], dict(TINY, method="simclr", epochs=1), run="ssl", tty=False)  # collects
    collect(project, "ssl", "dig-val")  # any table
    m = lance.dataset(str(project.runs_dir / "ssl" / "metrics" / "dig-train.lance")).to_table()
    assert m.num_rows == 340 and "probs" not in m.column_names and m.column("label").null_count == 20
    assert m.schema.field("embedding").type.list_size == 32
    out = reduce_run(project, "ssl")
    assert out["fitted_on"] == "dig-train" and out["rows"] == {"dig-train": 340, "dig-val": 160}
    v = lance.dataset(str(project.runs_dir / "ssl" / "metrics" / "dig-val.lance")).to_table()
    assert v.column("map_x").null_count == 0
    with pytest.raises(DataloupeError, match="is a self-supervised pretrain run: its metrics hold embeddings only"):
        analyze_run(project, "ssl")
    with pytest.raises(DataloupeError, match="is a pretrain run: resume it with `dataloupe pretrain --run ssl"):
        train(project, "dig-train", "dig-val", load_recipe("fashion-mnist", FAST), run="ssl", resume=True)


@pytest.mark.parametrize("method", ["simclr", "moco", "byol", "simsiam", "dino", "barlowtwins", "vicreg"])
def test_batched_views_take_lightlys_parameters(method):
    from dataloupe.train._ssl_methods import METHODS, batched_views, build_method

    clf = create_model("convnet-xxs", 1, small_input=True)
    m = build_method(method, clf.backbone, clf.num_features, **dict(METHODS[method].defaults, local_views=2))
    tf = m.views_transform(input_size=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), min_scale=0.3)
    views = batched_views(tf.transform)
    assert len(views) == len(tf.transform.transforms)  # one per lightly view (dino: 2 global + 2 local)
    for cfg in views:
        assert cfg.mean == (0.5, 0.4, 0.3) and cfg.std == (0.2, 0.2, 0.2) and cfg.hflip == 0.5
        assert cfg.color_jitter_p == 0.8 and cfg.grayscale == 0.2 and cfg.blur_sigma == (0.1, 2.0)
    assert views[0].output_size == 32 and views[0].rrc_scale == (0.3, 1.0)
    if method == "simclr":
        assert views[0].color_jitter == pytest.approx((0.8, 0.8, 0.8, 0.2)) and views[0].blur == 0.5
    if method in ("byol", "barlowtwins"):
        assert (views[0].blur, views[0].solarize, views[1].blur, views[1].solarize) == (1.0, 0.0, 0.1, 0.2)
    if method == "dino":
        assert views[-1].output_size == 14 and views[-1].rrc_scale == (0.05, 0.4)  # round(32 * 96 / 224)


def test_batched_views_refuse_a_step_they_cannot_draw():
    from lightly.transforms import SimCLRTransform

    from dataloupe.train._ssl_methods import batched_views

    with pytest.raises(DataloupeError, match="no on-device form of lightly's RandomVerticalFlip.*augment=lightly"):
        batched_views(SimCLRTransform(input_size=16, vf_prob=0.5))


def test_batched_pretraining_trains_repeats_and_says_so(project):
    for run in ("b1", "b2"):
        info = pretrain(project, ["dig-train"], dict(TINY, method="simclr", augment="batched", collect=False), run=run,
                        tty=False)
        assert info["status"] == "completed" and info["augment"] == "batched"
        assert all(math.isfinite(h["loss"]) and 0 <= h["knn_top1"] <= 1 for h in _history(project, run))
    one, two = (load_checkpoint(project.runs_dir / r / "checkpoints" / "best.pt")["model"] for r in ("b1", "b2"))
    assert all(torch.equal(one[k], two[k]) for k in one)  # the views are drawn from the seeded generator
    info = pretrain(project, ["dig-train"], dict(TINY, method="dino", local_views=2, epochs=1, augment="batched",
                                                 collect=False), run="dino", tty=False)
    assert info["status"] == "completed" and math.isfinite(_history(project, "dino")[0]["loss"])
    lightly = pretrain(project, ["dig-train"], dict(TINY, method="simclr", epochs=1, collect=False), run="pil",
                       tty=False)
    assert lightly["augment"] == "lightly"  # auto on a CPU
    with pytest.raises(DataloupeError, match=r"key 'augment': bad value 'gpu' \(one of: auto, lightly, batched\)"):
        pretrain(project, ["dig-train"], dict(TINY, method="simclr", augment="gpu"), run="x")


def test_knn_top1_is_leave_one_out():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert knn_top1(emb, torch.tensor([0, 0, 1, 1]), k=1) == 1.0
    assert knn_top1(emb, torch.tensor([0, 1, 0, 1]), k=1) == 0.0  # each row's only neighbour is the other class
    assert knn_top1(emb, torch.tensor([0, 0, 0, 0])) is None  # fewer than two classes


@pytest.mark.slow  # ~20 s: two torchrun processes
@pytest.mark.distributed
def test_two_processes_pretrain_like_one(project):
    env = cli_env(project.root)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "dataloupe",
                        "pretrain", "--table", "dig-train", "--method", "moco", "model=convnet-xxs", "image_size=16",
                        "epochs=2", "batch_size=32", "collect=false", "--run-name", "two"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    hist = _history(project, "two")
    assert [h["epoch"] for h in hist] == [1, 2] and hist[0]["images"] == 340  # each rank half, counted once
    info = json.loads((project.runs_dir / "two" / "run.json").read_text())
    assert info["hardware"]["world_size"] == 2 and info["status"] == "completed"


def test_a_pretrain_run_starts_a_supervised_run_with_every_backbone_tensor(project):
    pretrain(project, ["dig-train"], dict(TINY, method="simclr", epochs=1, collect=False), run="ssl", tty=False)
    best = load_checkpoint(project.runs_dir / "ssl" / "checkpoints" / "best.pt")
    r = load_recipe("fashion-mnist", [*FAST, "epochs=1", "pretrained=run:ssl", "lr=1e-12", "weight_decay=0"])
    info = train(project, "dig-train", "dig-val", r, run="ft", tty=False)
    rep = info["pretrained"]
    assert rep["loaded"] == rep["total"] == len(best["model"]) and not rep["missing"]
    # lr ~0: the fine-tuned backbone is the pretrained one, tensor for tensor
    ft = load_checkpoint(project.runs_dir / "ft" / "checkpoints" / "best.pt")["model"]
    assert all(torch.allclose(ft[k], v, atol=1e-6) for k, v in best["model"].items()
               if v.is_floating_point() and "running" not in k)
