import errno
import json

import numpy as np
import pytest
import torch
from _train_helpers import CLASSES, FAST, make_digit_tables

from dataloupe.project import DataloupeError, Project
from dataloupe.tables import edit_table
from dataloupe.train import load_recipe, show_run, train
from dataloupe.train import _checkpoint


@pytest.fixture()
def project(tmp_path):
    p = Project.open(tmp_path / "proj")
    make_digit_tables(p, tmp_path)
    return p


def _recipe(*extra):
    return load_recipe("fashion-mnist", FAST + list(extra))


def test_train_writes_a_complete_run(project):
    info = train(project, "dig-train", "dig-val", _recipe("epochs=3", "collect=true"), run="r1", tty=False)
    assert info["status"] == "completed" and info["epochs_done"] == 3
    shown = show_run(project, "r1")
    for key in ("best_val_top1", "epochs", "train_table", "train_revision", "val_table", "val_revision", "status",
                "seed", "version", "hardware", "recipe"):
        assert key in shown
    assert (shown["train_table"], shown["train_revision"], shown["val_revision"]) == ("dig-train", 1, 1)
    assert 0.3 < shown["best_val_top1"] <= 1.0  # 10 classes: well above chance after 3 tiny epochs
    hist = shown["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for h in hist:
        assert {"train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr", "images_per_s"} <= set(h)
        assert h["val_top5"] >= h["val_top1"]
    assert shown["best_val_top1"] == max(h["val_top1"] for h in hist)
    folder = project.runs_dir / "r1"
    assert {p.name for p in (folder / "plots").glob("*.png")} == {"accuracy.png", "loss.png", "lr.png"}
    assert load_recipe(str(folder / "recipe.yaml")).epochs == 3
    best = torch.load(folder / "checkpoints" / "best.pt", weights_only=True)
    assert best["classes"] == CLASSES and best["image_size"] == 16 and best["val_top1"] == shown["best_val_top1"]
    torch.load(folder / "checkpoints" / "last.pt", weights_only=True)
    # undefined rows are never trained on: the dynamics hold labeled training ids only
    with np.load(folder / "dynamics.npz") as z:
        assert z["margins"].shape == (3, 320) and len(z["ids"]) == 320
    import lance

    m = lance.dataset(str(folder / "metrics" / "dig-train.lance")).to_table()
    assert m.num_rows == 340 and m.column("loss").null_count == 20 and m.column("aum").null_count == 20
    assert m.schema.field("probs").type.list_size == 10


def test_val_classes_must_match(project, tmp_path):
    from _train_helpers import write_digits

    from dataloupe.tables import import_imagefolder

    write_digits(tmp_path / "other", start=500, n=30)
    (tmp_path / "other" / "d9").rename(tmp_path / "other" / "cat")
    import_imagefolder(project, tmp_path / "other", table="other", classes=CLASSES[:9] + ["cat"])
    with pytest.raises(DataloupeError, match="different classes.*only in val: cat"):
        train(project, "dig-train", "other", _recipe(), run="x", tty=False)
    assert not (project.runs_dir / "x").exists()


def test_empty_training_set_after_filtering(project):
    edit_table(project, "dig-train", action="exclude", where="label IS NOT NULL", message="drop all")
    with pytest.raises(DataloupeError, match="no labeled rows with weight > 0"):
        train(project, "dig-train", "dig-val", _recipe(), run="x", tty=False)
    assert not (project.runs_dir / "x").exists()


def test_resume_refuses_changed_tables_unless_forced(project):
    # the loop's call form: a recipe name plus overrides
    train(project, "dig-train@1", "dig-val", "fashion-mnist", overrides=FAST + ["epochs=1"], run="r", tty=False)
    edit_table(project, "dig-train", action="exclude", ids=[0, 1], message="exclude two")
    with pytest.raises(DataloupeError, match="tables changed.*--force"):
        train(project, "dig-train", "dig-val", _recipe("epochs=2"), run="r", resume=True, tty=False)
    assert json.loads((project.runs_dir / "r" / "run.json").read_text())["epochs_done"] == 1
    info = train(project, "dig-train", "dig-val", _recipe("epochs=2"), run="r", resume=True, force=True, tty=False)
    # provenance follows the forced change, and the change is recorded
    assert info["epochs_done"] == 2 and info["train_revision"] == 2
    assert info["forced_resumes"][0]["after_epoch"] == 1 and "dig-train@1 -> dig-train@2" in \
        info["forced_resumes"][0]["changes"][0]
    with pytest.raises(DataloupeError, match="tables changed"):
        train(project, "dig-train@1", "dig-val", _recipe("epochs=3"), run="r", resume=True, tty=False)
    with pytest.raises(DataloupeError, match="already exists"):
        train(project, "dig-train", "dig-val", _recipe(), run="r", tty=False)


def test_out_of_disk_during_checkpoint_write_keeps_the_previous(project, monkeypatch):
    train(project, "dig-train", "dig-val", _recipe("epochs=1"), run="r", tty=False)
    last = project.runs_dir / "r" / "checkpoints" / "last.pt"
    before = last.read_bytes()
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # some bytes reach the temp file...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(_checkpoint.torch, "save", full_disk)
    with pytest.raises(DataloupeError, match="out of disk space.*previous one is intact"):
        train(project, "dig-train", "dig-val", _recipe("epochs=2"), run="r", resume=True, tty=False)
    assert last.read_bytes() == before
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert not list(last.parent.glob(".*tmp*"))
    assert json.loads((project.runs_dir / "r" / "run.json").read_text())["status"] == "failed"


def test_continue_from_a_previous_run(project):
    train(project, "dig-train", "dig-val", _recipe("epochs=2"), run="stage1", tty=False)
    r = _recipe("epochs=1", "continue_from=stage1", "lr=0.0001", "scheduler=none")
    info = train(project, "dig-train", "dig-val", r, run="stage2", tty=False)
    s1 = show_run(project, "stage1")["best_val_top1"]
    assert info["best_val_top1"] >= s1 - 0.1  # starts from stage 1's weights, not from scratch
    with pytest.raises(DataloupeError, match="continue_from=nope"):
        train(project, "dig-train", "dig-val", _recipe("continue_from=nope"), run="s3", tty=False)


def test_streaming_path_trains_like_the_cached_one(project):
    a = train(project, "dig-train", "dig-val", _recipe("epochs=1", "loader=cache"), run="c", tty=False)
    b = train(project, "dig-train", "dig-val", _recipe("epochs=1", "loader=stream", "num_workers=1"), run="s",
              tty=False)
    ha, hb = show_run(project, "c")["history"][0], show_run(project, "s")["history"][0]
    # same pixels (decode_image), same sampler order, same seed: the same numbers
    assert abs(ha["train_loss"] - hb["train_loss"]) < 1e-4 and ha["val_top1"] == hb["val_top1"]
    assert a["status"] == b["status"] == "completed"


@pytest.mark.parametrize("augment", ["v2", "batched"])
def test_every_augmentation_runs_in_the_engine(project, augment):
    r = _recipe("epochs=1", f"augment={augment}", "rrc_scale=[0.5,1]", "hflip=0.5", "rotation=10",
                "color_jitter=[0.2,0.2,0.2,0.02]", "autoaugment=imagenet", "random_erasing=0.25",
                "mixup_alpha=0.2", "cutmix_alpha=1.0", "label_smoothing=0.1")
    info = train(project, "dig-train", "dig-val", r, run=f"aug-{augment}", tty=False)
    h = show_run(project, f"aug-{augment}")["history"][0]
    assert info["status"] == "completed" and np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"])


def test_tta_hflip_averages_the_mirror_in_eval_and_collect(project):
    from dataloupe.models import create_model
    from dataloupe.train._epoch import StepOptions

    torch.manual_seed(0)
    model = create_model("convnet-xxs", 3, small_input=True).eval()
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    plain = StepOptions(torch.device("cpu"), (0.5,) * 3, (0.25,) * 3)
    tta = StepOptions(torch.device("cpu"), (0.5,) * 3, (0.25,) * 3, tta_hflip=True)
    with torch.no_grad():
        want = (torch.softmax(plain.eval_forward(model, x), 1) + torch.softmax(plain.eval_forward(model, x.flip(3)), 1)) / 2
        logits, emb = tta.eval_forward(model, x, return_embedding=True)
        _, e1 = plain.eval_forward(model, x, return_embedding=True)
        _, e2 = plain.eval_forward(model, x.flip(3), return_embedding=True)
    torch.testing.assert_close(torch.softmax(logits, 1), want)
    torch.testing.assert_close(emb, (e1 + e2) / 2)
    # the run remembers it: its checkpoint says so, and collect uses it
    train(project, "dig-train", "dig-val", _recipe("epochs=1", "tta_hflip=true", "collect=true"), run="t", tty=False)
    assert _checkpoint.load_checkpoint(project.runs_dir / "t" / "checkpoints" / "best.pt")["tta_hflip"] is True
    assert (project.runs_dir / "t" / "metrics" / "dig-train.lance").exists()


def test_consistency_on_undefined_rows_trains_and_logs_its_usage(project):
    r = _recipe("epochs=2", "unlabeled_weight=1.0", "unlabeled_ratio=2", "unlabeled_threshold=0.0", "epoch_samples=96")
    info = train(project, "dig-train", "dig-val", r, run="fm", tty=False)
    hist = [json.loads(line) for line in (project.runs_dir / "fm" / "history.jsonl").read_text().splitlines()]
    assert info["status"] == "completed" and len(hist) == 2
    assert all(h["unlabeled_used"] == 1.0 for h in hist)  # threshold 0: every undefined image is used
    r = _recipe("epochs=1", "unlabeled_weight=1.0", "unlabeled_threshold=1.0")
    train(project, "dig-train", "dig-val", r, run="fm1", tty=False)
    hist = [json.loads(line) for line in (project.runs_dir / "fm1" / "history.jsonl").read_text().splitlines()]
    assert hist[0]["unlabeled_used"] < 0.5  # a fresh model is rarely certain
    with pytest.raises(DataloupeError, match="unlabeled_ratio"):
        _recipe("unlabeled_ratio=0")
    with pytest.raises(DataloupeError, match="epoch_samples"):
        _recipe("epoch_samples=0")
