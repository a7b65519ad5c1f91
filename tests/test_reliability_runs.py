"""Issue 14, runs side: one process per run, dead runs read as failed, bad recipes and a
diverged loss stop with a message, missing images stop before training, usage mistakes
are one line. Each test names the item of the issue it covers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from _train_helpers import FAST, cli, cli_env, make_digit_tables

from dataloupe import _runstate
from dataloupe.project import DataloupeError
from dataloupe.train import load_recipe, train
from dataloupe.runs import read_run, run_dir


@pytest.fixture
def tables(project, tmp_path):
    make_digit_tables(project, tmp_path, n_train=120, n_val=60, undefined=4)
    return project


def test_item3_a_run_in_use_by_another_process_is_refused_and_untouched(tables):
    folder = run_dir(tables, "dup")
    held = _runstate.claim(folder, "dup")  # what a live `train --run dup` holds
    try:
        with pytest.raises(DataloupeError, match="in use by another process"):
            train(tables, "dig-train", "dig-val", "fashion-mnist", overrides=FAST + ["seed=2"], run="dup")
        assert not folder.exists()  # nothing written
    finally:
        held.release()
    info = train(tables, "dig-train", "dig-val", "fashion-mnist", overrides=FAST + ["epochs=1"], run="dup")
    assert info["status"] == "completed" and info["seed"] == 0


def test_item7_a_run_that_failed_before_epoch_1_does_not_keep_its_name(tables, tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("model: resnet9000\n")
    with pytest.raises(DataloupeError, match="unknown model"):
        train(tables, "dig-train", "dig-val", str(bad), overrides=["image_size=16"], run="z")
    assert read_run(tables, "z")["status"] == "failed"
    info = train(tables, "dig-train", "dig-val", "fashion-mnist", overrides=FAST + ["epochs=1"], run="z")
    assert info["status"] == "completed" and info["recipe"] == "fashion-mnist"


def test_item7_a_killed_run_reads_as_failed_and_says_how_to_go_on(tables):
    env = cli_env(tables.root)
    args = ["train", "--train", "dig-train", "--val", "dig-val", "--recipe", "fashion-mnist", "--run", "k",
            *FAST, "epochs=200", "batch_size=8"]
    proc = subprocess.Popen(cli(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    info_file = tables.runs_dir / "k" / "run.json"
    try:
        deadline = time.monotonic() + 600  # a busy shared machine can take minutes to start torch
        while proc.poll() is None and not (info_file.is_file() and read_run(tables, "k").get("epochs_done")):
            assert time.monotonic() < deadline, "the training process wrote no epoch in time"
            time.sleep(0.2)
        assert read_run(tables, "k")["status"] == "running"  # alive: its claim is held
    finally:
        proc.send_signal(signal.SIGKILL)  # what `kill -9` does
        proc.wait()
    info = read_run(tables, "k")
    assert info["status"] == "failed" and "killed" in info["failure"]
    assert json.loads(subprocess.run(cli("runs", "ls", "--json"), env=env, capture_output=True, text=True,
                                     timeout=600).stdout)[0]["status"] == "failed"
    with pytest.raises(DataloupeError, match="--resume to continue it, --force to start it over"):
        train(tables, "dig-train", "dig-val", "fashion-mnist", overrides=FAST + ["epochs=1"], run="k")
    info = train(tables, "dig-train", "dig-val", "fashion-mnist", overrides=FAST + ["epochs=1"], run="k",
                 force=True)
    assert info["status"] == "completed" and info["epochs_done"] == 1


@pytest.mark.parametrize("override, key", [
    ("lr=.inf", "lr"), ("lr=.nan", "lr"), ("min_lr=-5", "min_lr"), ("std=[0,0,0]", "std"),
    ("rrc_scale=[1.0,0.1]", "rrc_scale"), ("image_size=1", "image_size"), ("momentum=1.5", "momentum"),
    ("weight_decay=-1", "weight_decay"), ("rrc_ratio=[0,1]", "rrc_ratio"),
])
def test_item8_recipe_values_out_of_range_are_refused(override, key):
    with pytest.raises(DataloupeError, match=f"recipe key '{key}'"):
        load_recipe("fashion-mnist", [override])


def test_item8_a_diverged_loss_stops_the_run_without_a_checkpoint(tables):
    with pytest.raises(DataloupeError, match="training diverged in epoch 1"):
        train(tables, "dig-train", "dig-val", "fashion-mnist",
              overrides=FAST + ["optimizer=sgd", "lr=1e30", "epochs=2"], run="nan")
    info = read_run(tables, "nan")
    assert info["status"] == "failed" and info["epochs_done"] == 0
    assert not (tables.runs_dir / "nan" / "checkpoints" / "best.pt").exists()


def test_item9_images_deleted_after_import_stop_training_before_it_starts(tables, tmp_path):
    pngs = sorted((tmp_path / "img-train").rglob("*.png"))
    pngs[0].unlink()  # one missing of 120: a warning, the run trains
    info = train(tables, "dig-train", "dig-val", "fashion-mnist", overrides=FAST + ["epochs=1"], run="one")
    assert info["status"] == "completed"
    for p in pngs[1:]:
        p.unlink()
    with pytest.raises(DataloupeError, match=r"120 of the 120 images dig-train@1 uses cannot be read \(.*png: file"):
        train(tables, "dig-train", "dig-val", "fashion-mnist", overrides=FAST + ["epochs=1"], run="all")
    assert not (tables.runs_dir / "all").exists()


@pytest.mark.parametrize("args, says", [
    (["--version"], None),
    (["analyse", "a"], "No such command 'analyse'"),
    (["train", "--vall", "x"], "No such option: --vall"),
    (["table", "edit", "t", "--exclude"], "Missing option '--message'"),
    (["serve"], "Missing argument 'model'"),
    (["train", "--train", "t", "--val", "v", "--recipe", "fashion-mnist", "--run", "r\n"], "invalid run name"),
])
def test_item10_usage_mistakes_are_one_line(args, says, tmp_path):
    r = subprocess.run([sys.executable, "-m", "dataloupe", *args], env=cli_env(tmp_path / "p"),
                       capture_output=True, text=True, timeout=600)
    if says is None:
        assert r.returncode == 0 and r.stdout.startswith("dataloupe ") and not r.stderr
        return
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ") and says in r.stderr


def test_item11_pretrained_that_is_not_a_weights_file_is_one_line(tables):
    with pytest.raises(DataloupeError, match="not a PyTorch or safetensors weights file"):
        train(tables, "dig-train", "dig-val", "fashion-mnist", overrides=FAST + ["pretrained=/etc/passwd"], run="p")
    r = subprocess.run(cli("train", "--train", "dig-train", "--val", "dig-val", "--recipe", "fashion-mnist",
                           "--run", "p2", *FAST, "pretrained=/etc/passwd"), env=cli_env(tables.root),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_onecycle_on_a_run_of_a_few_steps_does_not_crash():
    """Found while probing item 7: a tiny run (3 steps) died of ZeroDivisionError in OneCycleLR."""
    import torch

    from dataloupe.train._schedules import Schedule

    for total in (1, 2, 3, 4, 5, 50):
        for warmup in (0.0, 0.25, 1.0):
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.SGD([p], lr=0.1)
            s = Schedule("onecycle", opt, lr=0.1, epochs=1, steps_per_epoch=total, warmup_fraction=warmup)
            for _ in range(total):
                opt.step()
                s.step()
            assert 0 < opt.param_groups[0]["lr"] <= 0.1
