import errno
import json
import subprocess

import numpy as np
import pytest
import torch
from _train_helpers import CLASSES, FAST, cli, cli_env, make_digit_tables

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
    with pytest.raises(DataloupeError, match="disk full.*previous one is intact"):
        train(project, "dig-train", "dig-val", _recipe("epochs=2"), run="r", resume=True, tty=False)
    assert last.read_bytes() == before
    assert torch.load(last, weights_only=True)["epoch"] == 1
    assert not list(last.parent.glob(".*tmp*"))
    assert json.loads((project.runs_dir / "r" / "run.json").read_text())["status"] == "failed"


def test_continue_from_a_previous_run(project):
    from dataloupe.models import create_model
    from dataloupe.train._model_init import init_weights, small_input_for

    train(project, "dig-train", "dig-val", _recipe("epochs=2"), run="stage1", tty=False)
    stage1 = _checkpoint.load_checkpoint(project.runs_dir / "stage1" / "checkpoints" / "best.pt")["model"]
    r = _recipe("epochs=1", "continue_from=stage1", "lr=1e-9", "scheduler=none")
    # the model stage 2 starts from holds stage 1's weights, every tensor (a fresh start would not)
    classes = show_run(project, "stage1")["classes"]
    model = create_model(r.model, len(classes), small_input=small_input_for(r))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    init_weights(project, r, model, classes)
    for key, value in model.state_dict().items():
        assert torch.equal(value, stage1[key]), key
    assert any(not torch.equal(fresh[k], stage1[k]) for k in stage1 if k.endswith("weight"))
    # and the engine trains from them: with lr ~ 0 the weights after stage 2 are stage 1's
    train(project, "dig-train", "dig-val", r, run="stage2", tty=False)
    shown = show_run(project, "stage2")
    assert shown["continue_from"]["loaded"] == shown["continue_from"]["total"] > 0
    stage2 = _checkpoint.load_checkpoint(project.runs_dir / "stage2" / "checkpoints" / "best.pt")["model"]
    names = {n for n, _ in model.named_parameters()}  # BatchNorm running statistics move even at lr 0
    for key in names:
        torch.testing.assert_close(stage2[key], stage1[key], atol=1e-5, rtol=0, msg=key)
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
    # the run remembers it: its checkpoint says so, and collect and serving use it
    train(project, "dig-train", "dig-val", _recipe("epochs=1", "tta_hflip=true", "collect=true"), run="t", tty=False)
    ckpt = _checkpoint.load_checkpoint(project.runs_dir / "t" / "checkpoints" / "best.pt")
    assert ckpt["tta_hflip"] is True
    _check_tta_everywhere(project, ckpt)


def _check_tta_everywhere(project, ckpt):
    """The collected probabilities and the server's are the mean over each image and its mirror."""
    import lance

    from dataloupe.data import decode_image
    from dataloupe.serve import load_bundle
    from dataloupe.serve._bundle import model_from_checkpoint, preprocess
    from dataloupe.tables import open_table

    t = open_table(project, "dig-train")
    rows = t.to_arrow(columns=["id", "path"]).sort_by("id").slice(0, 16)
    x = np.stack([preprocess(decode_image(t.image_path(p), ckpt["image_size"]), ckpt["mean"], ckpt["std"])
                  for p in rows["path"].to_pylist()])
    model = model_from_checkpoint(ckpt)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        plain = torch.softmax(model(xt), 1).numpy()
        want = ((torch.softmax(model(xt), 1) + torch.softmax(model(xt.flip(3)), 1)) / 2).numpy()
    assert np.abs(want - plain).max() > 1e-3  # the mirror matters for this model: the check can fail
    m = lance.dataset(str(project.runs_dir / "t" / "metrics" / "dig-train.lance")).to_table(
        columns=["id", "probs"]).sort_by("id")
    pos = {int(i): j for j, i in enumerate(m["id"].to_pylist())}
    probs = m["probs"].combine_chunks()
    collected = probs.values.to_numpy().reshape(len(probs), -1)[[pos[int(i)] for i in rows["id"].to_pylist()]]
    np.testing.assert_allclose(collected, want, atol=1e-4)
    served = load_bundle("t", project).predict_proba(x)
    np.testing.assert_allclose(served, want, atol=1e-4)


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


@pytest.mark.parametrize("mixing", [("mixup_alpha=0.3",), ("mixup_alpha=0.3", "cutmix_alpha=1.0")],
                         ids=["mixup", "mixup-or-cutmix"])
def test_mixup_with_consistency_mixes_the_labeled_batch_only(project, monkeypatch, mixing):
    """MixUp (``mixup_alpha``), or MixUp or CutMix per batch as the demo policy ships, with
    consistency training: the labeled images and their labels are mixed; the undefined images
    (the soft targets' inputs) never pass through it."""
    from dataloupe.train import _engine

    seen = []
    real = _engine.mix_transform

    def spy(cfg, k):
        mix = real(cfg, k)

        def wrapped(x, y):
            out = mix(x, y)
            seen.append((len(x), out[1]))
            return out
        return wrapped

    monkeypatch.setattr(_engine, "mix_transform", spy)
    r = _recipe("epochs=1", "batch_size=16", "unlabeled_weight=1.0", "unlabeled_ratio=3", "unlabeled_threshold=0.0",
                "epoch_samples=64", *mixing, "ema_decay=0.99", "unlabeled_temperature=0.5")
    assert train(project, "dig-train", "dig-val", r, run=f"mx-{len(mixing)}", tty=False)["status"] == "completed"
    assert len(seen) == 4 and all(n == 16 for n, _ in seen)  # 64 draws / 16 labeled; pool batches are 48
    targets = torch.cat([t for _, t in seen])
    assert targets.shape[1] == 10 and torch.allclose(targets.sum(1), torch.ones(len(targets)))
    assert (targets.max(1).values < 0.999).any()  # mixed: soft targets, not one-hot labels


def test_ema_teacher_alignment_adaptive_thresholds_and_soft_targets_train_and_resume(project):
    r = _recipe("epochs=2", "unlabeled_weight=1.0", "unlabeled_ratio=2", "unlabeled_threshold=0.9", "epoch_samples=96",
                "ema_decay=0.99", "unlabeled_da=true", "unlabeled_adaptive=flexmatch", "unlabeled_temperature=0.5")
    info = train(project, "dig-train", "dig-val", r, run="ema", tty=False)
    assert info["status"] == "completed"
    last = _checkpoint.load_checkpoint(project.runs_dir / "ema" / "checkpoints" / "last.pt")
    assert last["ema"]["updates"] == 2 * 3  # 96 draws / batch 32 per epoch, one update per step
    # "model" (what collect and serve load) is the average, not the last trained weights
    assert any(not torch.equal(last["model"][k], last["trained_model"][k]) for k in last["model"]
               if last["model"][k].is_floating_point())
    # resume continues the average too
    train(project, "dig-train", "dig-val", _recipe("epochs=3", "unlabeled_weight=1.0", "unlabeled_ratio=2",
                                                   "epoch_samples=96", "ema_decay=0.99", "unlabeled_da=true",
                                                   "unlabeled_adaptive=flexmatch", "unlabeled_temperature=0.5"),
          run="ema", resume=True, tty=False)
    last = _checkpoint.load_checkpoint(project.runs_dir / "ema" / "checkpoints" / "last.pt")
    assert last["ema"]["updates"] == 3 * 3
    with pytest.raises(DataloupeError, match="unlabeled_adaptive"):
        _recipe("unlabeled_adaptive=magic")
    with pytest.raises(DataloupeError, match="ema_decay"):
        _recipe("ema_decay=1.5")


def test_prior_match_offsets_the_classifier_so_the_pool_predictions_follow_the_prior(project, capsys):
    r = _recipe("epochs=1", "unlabeled_weight=1.0", "unlabeled_threshold=0.0", "epoch_samples=64",
                "unlabeled_prior_match=uniform", "collect=true")
    import lance

    train(project, "dig-train", "dig-val", r, run="pm", tty=False)
    assert "matched the mean prediction on the undefined rows to the uniform prior" in capsys.readouterr().out
    m = lance.dataset(str(project.runs_dir / "pm" / "metrics" / "dig-train.lance")).to_table(columns=["label", "probs"])
    probs = np.stack(m["probs"].to_numpy(zero_copy_only=False))
    pool = np.array([lab is None for lab in m["label"].to_pylist()])
    assert pool.sum() == 20
    # what collect and serve load is the corrected model: its mean prediction on the pool is uniform
    assert np.allclose(probs[pool].mean(0), 0.1, atol=2e-3)
    with pytest.raises(DataloupeError, match="unlabeled_prior_match"):
        _recipe("unlabeled_prior_match=balanced")


def test_prior_bias_solves_for_the_given_prior():
    from dataloupe.train._epoch import StepOptions, prior_bias

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8, generator=gen)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 3))
    with torch.no_grad():
        net[1].bias.copy_(torch.tensor([2.0, 0.0, -1.0]))  # skewed towards class 0
    loader = [(images[:25], torch.full((25,), -1), torch.arange(25)), (images[25:], torch.full((15,), -1),
                                                                         torch.arange(25, 40))]
    opts = StepOptions(torch.device("cpu"), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), None)
    prior = torch.tensor([0.2, 0.3, 0.5])
    bias = prior_bias(net, loader, opts=opts, prior=prior)
    with torch.no_grad():
        mean = torch.softmax(net(opts.inputs(images)) + bias, 1).mean(0)
    assert torch.allclose(mean, prior, atol=1e-3) and abs(float(bias.sum())) < 1e-5


def test_semi_supervised_training_never_reads_undefined_rows_labels(project, monkeypatch):
    """Whatever label the loader hands out with an undefined row, training is the same: the
    consistency step never reads it (the table has none; here we plant random ones)."""
    from dataloupe.train import _epoch

    orig = _epoch.Consistency.batches
    finals = []
    for planted in (0, 1):
        gen = torch.Generator().manual_seed(planted)

        def batches(self, gen=gen):
            for images, labels, pos in orig(self):
                yield images, torch.randint(0, 10, labels.shape, generator=gen), pos

        monkeypatch.setattr(_epoch.Consistency, "batches", batches)
        r = _recipe("epochs=1", "unlabeled_weight=1.0", "unlabeled_threshold=0.5", "epoch_samples=64",
                    "ema_decay=0.9", "unlabeled_da=true", "unlabeled_adaptive=flexmatch")
        train(project, "dig-train", "dig-val", r, run=f"u{planted}", tty=False)
        finals.append(_checkpoint.load_checkpoint(project.runs_dir / f"u{planted}" / "checkpoints" / "last.pt"))
    a, b = (f["trained_model"] for f in finals)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_consistency_targets_align_adapt_and_soften():
    import torch as T

    from dataloupe.train._epoch import Consistency

    c = Consistency(None, None, None, 1.0, 0.9, num_rows=4, num_classes=2, adaptive="flexmatch")
    guess = T.tensor([[0.95, 0.05], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    pseudo, mask = c.targets(guess, T.arange(4))
    # warm-up: 3 of 4 rows undecided -> class 0 (1 confident row) gets threshold 0.9 * (1/3) / (2 - 1/3)
    assert pseudo.tolist() == [0, 0, 1, 0] and mask.tolist() == [1.0, 1.0, 1.0, 1.0]
    c2 = Consistency(None, None, None, 1.0, 0.9)
    assert c2.targets(guess, T.arange(4))[1].tolist() == [1.0, 0.0, 0.0, 0.0]  # fixed threshold
    soft, _ = Consistency(None, None, None, 1.0, 0.0, temperature=0.5).targets(guess, T.arange(4))
    assert soft.shape == (4, 2) and T.allclose(soft.sum(1), T.ones(4)) and soft[1, 0] > 0.6
    da = Consistency(None, None, None, 1.0, 0.0, align=True, prior=T.tensor([0.5, 0.5]))
    skewed = T.tensor([[0.9, 0.1]] * 4)
    aligned, _ = da.targets(skewed, T.arange(4))
    assert aligned.tolist() == [0, 0, 0, 0]
    assert da._guess_mean[0] == pytest.approx(0.9)  # the running mean the next batches are divided by


def test_softmatch_weights_trust_confident_guesses_and_fade_the_rest():
    import torch as T

    from dataloupe.train._epoch import Consistency

    c = Consistency(None, None, None, 1.0, 0.95, num_classes=2, adaptive="softmatch", temperature=0.5)
    guess = T.tensor([[0.99, 0.01], [0.9, 0.1], [0.7, 0.3], [0.55, 0.45]])
    for _ in range(10000):  # the running mean / variance settle on this batch's confidence
        soft, w = c.targets(guess, T.arange(4))
    conf = guess.max(1).values
    assert c._conf_mean == pytest.approx(float(conf.mean()), abs=1e-3)
    assert c._conf_var == pytest.approx(float(conf.var()), rel=1e-2)
    assert w[0] == 1.0 and w[1] == 1.0  # at or above the mean: full weight, whatever the threshold
    expected = T.exp(-(conf[2:] - conf.mean()) ** 2 / (2 * conf.var() / 4))
    assert T.allclose(w[2:], expected, atol=1e-3) and 0 < w[3] < w[2] < 1  # fades, never cut to 0
    assert soft.shape == (4, 2)  # soft targets unchanged by the weighting
    with pytest.raises(DataloupeError, match="softmatch"):
        _recipe("unlabeled_adaptive=freematch")


def test_consistency_weight_ramps_up_then_holds():
    import math

    import torch as T

    from dataloupe.train._epoch import Consistency
    from dataloupe.train._schedules import Schedule

    c = Consistency(None, None, None, 2.0, 0.0, rampup=0.5)
    assert c.weight_at(0.0) == pytest.approx(2.0 * math.exp(-5.0))  # near zero at the start
    assert c.weight_at(0.25) == pytest.approx(2.0 * math.exp(-1.25))
    assert c.weight_at(0.5) == c.weight_at(0.9) == 2.0  # full weight after the ramp
    assert Consistency(None, None, None, 2.0, 0.0).weight_at(0.0) == 2.0  # no ramp: full from the start
    # the schedule's progress counts optimizer steps, for every scheduler kind
    for name in ("onecycle", "cosine", "none"):
        opt = T.optim.SGD([T.nn.Parameter(T.zeros(1))], lr=0.1)
        s = Schedule(name, opt, lr=0.1, epochs=2, steps_per_epoch=5)
        for _ in range(5):
            opt.step()
            s.step()
        assert s.progress() == pytest.approx(0.5), name


def test_balanced_weights_give_every_class_the_same_draw_share():
    from dataloupe.train._engine import balanced_weights
    labels = np.array([0] * 90 + [1] * 10)
    weights = np.ones(100)
    weights[0] = 3.0  # keeps its 3x share within its class
    w = balanced_weights(labels, weights)
    assert w[labels == 0].sum() == pytest.approx(w[labels == 1].sum())
    assert w[0] == pytest.approx(3 * w[1])
    assert balanced_weights(np.array([0, 1]), np.array([0.0, 1.0])).tolist() == [0.0, 1.0]


def test_alignment_prior_follows_the_labels_or_is_uniform():
    from dataloupe.train._engine import alignment_prior
    labels, weights = np.array([0, 0, 0, 1]), np.array([1.0, 1.0, 2.0, 4.0])
    assert alignment_prior(labels, weights, 3).tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert alignment_prior(labels, weights, 3, "uniform").tolist() == pytest.approx([1 / 3] * 3)


def test_strong_view_crop_comes_from_its_own_key():
    from dataloupe.data import AugmentConfig
    from dataloupe.train._epoch import consistency_configs
    aug = AugmentConfig(image_size=28, rrc_scale=(0.85, 1.0))
    assert consistency_configs(aug)[1].rrc_scale == (0.85, 1.0)
    assert consistency_configs(aug, [0.35, 1.0])[1].rrc_scale == (0.35, 1.0)
    assert consistency_configs(AugmentConfig(image_size=28, rrc_scale=None))[1].rrc_scale == (0.35, 1.0)
    # the teacher's (weak) view: 70-100% unless its own key says otherwise; the strong view is untouched
    assert consistency_configs(aug)[0].rrc_scale == (0.7, 1.0)
    weak, strong = consistency_configs(aug, [0.2, 1.0], [1.0, 1.0])
    assert (weak.rrc_scale, strong.rrc_scale) == ((1.0, 1.0), (0.2, 1.0))


def test_weight_ema_warms_up_and_tracks():
    from torch import nn

    from dataloupe.train._epoch import WeightEMA

    net = nn.Linear(2, 1)
    ema = WeightEMA(net, 0.999)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update()  # first update: decay min(0.999, 2/11) -> mostly the new weights
    assert torch.allclose(ema.module.weight, net.weight - 1.0 * 2 / 11, atol=1e-6)
    assert not ema.module.weight.requires_grad


def test_weight_ema_warmup_and_buffers():
    from torch import nn

    from dataloupe.train._epoch import WeightEMA

    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(net, 0.995, warmup=2.0)  # about Mean Teacher's mean of the updates so far
    seen = [net[0].weight.detach().clone()]
    for _ in range(3):
        with torch.no_grad():
            net[0].weight.add_(1.0)
        seen.append(net[0].weight.detach().clone())
        ema.update()
    # decays 2/3, 3/4, 4/5: the initial weights count twice, each update once
    expected = (2 * seen[0] + seen[1] + seen[2] + seen[3]) / 5
    assert torch.allclose(ema.module[0].weight, expected, atol=1e-6)
    with torch.no_grad():
        net[1].running_mean.fill_(4.0)
    ema.update()
    assert torch.equal(ema.module[1].running_mean, net[1].running_mean)  # copied by default
    avg = WeightEMA(net, 0.5, warmup=1.0, average_buffers=True)
    with torch.no_grad():
        net[1].running_mean.fill_(8.0)
    avg.update()
    assert torch.allclose(avg.module[1].running_mean, torch.full((2,), 6.0))  # averaged like the weights
    assert avg.module[1].num_batches_tracked == net[1].num_batches_tracked  # integer buffers are copied
    with pytest.raises(DataloupeError, match="ema_buffers"):
        _recipe("ema_buffers=mean")
    with pytest.raises(DataloupeError, match="ema_warmup"):
        _recipe("ema_warmup=0.5")


def test_alignment_running_mean_can_forget_the_first_guesses():
    import torch as T

    from dataloupe.train._epoch import Consistency

    first, later = T.tensor([[0.9, 0.1]] * 4), T.tensor([[0.5, 0.5]] * 4)
    plain = Consistency(None, None, None, 1.0, 0.0, align=True, prior=T.tensor([0.5, 0.5]))
    debiased = Consistency(None, None, None, 1.0, 0.0, align=True, prior=T.tensor([0.5, 0.5]), da_debias=True)
    for c in (plain, debiased):
        c.targets(first, T.arange(4))
        for _ in range(1400):
            c.targets(later, T.arange(4))
    # started at the first batch, a quarter of its skew is left after 1,400 steps (0.999 ** 1400)
    assert float(plain._guess_mean[0]) == pytest.approx(0.5 + 0.4 * 0.999 ** 1400, abs=1e-4)
    running = debiased._guess_mean / (1 - 0.999 ** 1401)  # bias-corrected: the first batch weighs 1 of ~1,400
    assert float(running[0]) == pytest.approx(0.5, abs=0.002)
    with pytest.raises(DataloupeError, match="unlabeled_da_momentum"):
        _recipe("unlabeled_da_momentum=1.0")


def test_channels_last_is_the_memory_format_on_the_cpu_too_and_its_checkpoints_load_anywhere(project):
    # NHWC is ~15% faster per consistency step of the demo's ConvNet on 2 CPU cores (bench/RESULTS.md)
    first = {}
    for cl in ("true", "false"):
        train(project, "dig-train", "dig-val", _recipe("epochs=2", f"channels_last={cl}"), run=f"cl-{cl}", tty=False)
        ck = torch.load(project.runs_dir / f"cl-{cl}" / "checkpoints" / "last.pt", weights_only=True)
        convs = [v for v in ck["model"].values() if v.dim() == 4 and v.shape[-1] > 1]
        assert convs and all(v.is_contiguous(memory_format=torch.channels_last) == (cl == "true") for v in convs)
        first[cl] = ck
    # the NHWC checkpoint predicts the same in a plain (NCHW) model: memory format changes no number
    from dataloupe.models import create_model

    x = torch.rand(8, 3, 16, 16)
    outs = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        m = create_model("convnet-xxs", 10, small_input=True).eval().to(memory_format=fmt)
        m.load_state_dict(first["true"]["model"])
        with torch.no_grad():
            outs.append(m(x.contiguous(memory_format=fmt)))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


def test_amp_native_is_bf16_where_the_hardware_computes_it_and_collect_evaluates_as_training_did(project, monkeypatch):
    from dataloupe.models import amp_dtype, native_bf16

    cpu = torch.device("cpu")
    assert (amp_dtype("none", cpu), amp_dtype("auto", cpu), amp_dtype("bf16", cpu)) == (None, None, torch.bfloat16)
    assert amp_dtype("native", cpu) == (torch.bfloat16 if native_bf16(cpu) else None)
    for amx, avx512_bf16, want in ((False, False, None), (True, False, torch.bfloat16), (False, True, torch.bfloat16)):
        # a CPU with neither AMX nor AVX512-BF16 emulates bf16: stays float32
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        assert amp_dtype("native", cpu) is want
    monkeypatch.undo()
    with pytest.raises(DataloupeError, match="amp"):
        _recipe("amp=fp16")
    # a bf16 run records its setting, and collect evaluates in it, predicting the validation rows as the
    # last epoch did
    from dataloupe.train import _collect

    asked = []
    monkeypatch.setattr(_collect, "amp_dtype", lambda setting, device: asked.append(setting) or amp_dtype(setting, device))
    info = train(project, "dig-train", "dig-val", _recipe("epochs=2", "amp=bf16", "collect=true", "checkpoint=last"),
                 run="bf", tty=False)
    ck = torch.load(project.runs_dir / "bf" / "checkpoints" / "last.pt", weights_only=True)
    assert ck["amp"] == "bf16" and asked and set(asked) == {"bf16"}
    import lance

    m = lance.dataset(str(project.runs_dir / "bf" / "metrics" / "dig-val.lance")).to_table(columns=["label", "predicted"])
    labels, predicted = np.array(m["label"].to_pylist()), np.array(m["predicted"].to_pylist())
    assert np.mean(labels == predicted) == pytest.approx(info["best_val_top1"], abs=1e-9)


def test_eval_every_skips_validation_passes_but_always_evaluates_the_last_epoch(project):
    info = train(project, "dig-train", "dig-val", _recipe("epochs=5", "eval_every=2"), run="ev", tty=False)
    hist = [json.loads(line) for line in (project.runs_dir / "ev" / "history.jsonl").read_text().splitlines()]
    assert [("val_top1" in h) for h in hist] == [False, True, False, True, True]
    assert info["best_epoch"] in (2, 4, 5) and info["best_val_top1"] == max(h["val_top1"] for h in hist if "val_top1" in h)
    assert (project.runs_dir / "ev" / "plots" / "accuracy.png").is_file()
    with pytest.raises(DataloupeError, match="eval_every"):
        _recipe("eval_every=0")
    with pytest.raises(DataloupeError, match="eval_every"):
        _recipe("eval_every=2", "scheduler=plateau")


def test_interpolation_consistency_mixes_images_targets_and_masks_alike():
    import torch as T

    from dataloupe.train._epoch import Consistency

    T.manual_seed(0)
    c = Consistency(None, None, None, 1.0, 0.0, num_classes=6, mixup=0.75)
    # image i is all pixels = i and its hard guess is class i: a mixture's pixel value and
    # its mask must then be the target-weighted mean over classes
    images = T.arange(6, dtype=T.float32).view(6, 1, 1, 1).expand(6, 1, 2, 2).clone()
    mask = T.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    mixed, targets, m = c.mix(images, T.arange(6), mask)
    assert mixed.shape == images.shape and targets.shape == (6, 6) and T.allclose(targets.sum(1), T.ones(6))
    assert (targets.diagonal() >= 0.5 - 1e-6).all()  # each image stays mostly itself (lam folded to >= 0.5)
    assert (targets > 1e-6).sum(1).max() <= 2  # one partner each
    assert (targets.diagonal() < 1 - 1e-3).any()  # some were really mixed
    classes = T.arange(6, dtype=T.float32)
    assert T.allclose(mixed[:, 0, 0, 0], targets @ classes, atol=1e-5)
    assert T.allclose(mixed, mixed[:, :1, :1, :1].expand_as(mixed))  # one lam per image, all its pixels
    assert T.allclose(m, targets @ mask, atol=1e-5)
    soft = T.softmax(T.randn(6, 6), 1)  # soft targets mix the same way and stay distributions
    _, mixed_soft, _ = c.mix(images, soft, mask)
    assert T.allclose(mixed_soft.sum(1), T.ones(6), atol=1e-5)
    with pytest.raises(DataloupeError, match="unlabeled_mixup"):
        _recipe("unlabeled_mixup=-1")


def test_training_stops_its_loader_workers_before_returning(project):
    """Persistent loader workers left to interpreter exit can hold the exit for seconds per
    worker (with pinned memory on a GPU); a finished run has stopped them itself."""
    import multiprocessing

    r = _recipe("epochs=2", "num_workers=2", "unlabeled_weight=1.0", "unlabeled_threshold=0.0", "epoch_samples=64",
                "unlabeled_prior_match=uniform")
    info = train(project, "dig-train", "dig-val", r, run="workers", tty=False)
    assert info["status"] == "completed"
    assert multiprocessing.active_children() == []


def test_swa_averages_the_last_epochs_recomputes_batchnorm_and_resumes(project, monkeypatch):
    """The final model is the mean of the trained weights at the end of each SWA epoch (run at
    the constant swa_lr), with BatchNorm statistics of its own; a run stopped inside the SWA
    phase and resumed ends with the same model as one that ran through."""
    from dataloupe.train import _engine

    r = _recipe("epochs=4", "swa_epochs=2", "swa_lr=0.005", "optimizer=sgd", "scheduler=onecycle")
    info = train(project, "dig-train", "dig-val", r, run="swa", tty=False)
    assert [h["lr"] for h in show_run(project, "swa")["history"][2:]] == [0.005, 0.005]
    last = _checkpoint.load_checkpoint(project.runs_dir / "swa" / "checkpoints" / "last.pt")
    assert int(last["swa"]["n_averaged"]) == 2
    model, trained = last["model"], last["trained_model"]
    for key, value in model.items():
        if key.endswith("running_mean"):  # recomputed for the average, not the last trained model's
            assert not torch.allclose(value, trained[key])
        elif value.is_floating_point() and not key.endswith("running_var"):
            assert torch.equal(value, last["swa"][f"module.{key}"])
    assert info["best_val_top1"] > 0.3

    calls = []
    original = _engine._one_epoch

    def stop_after_three(s, ctx, recipe, data, writer, epoch, *rest):
        if epoch == 4:
            raise KeyboardInterrupt
        calls.append(epoch)
        return original(s, ctx, recipe, data, writer, epoch, *rest)

    monkeypatch.setattr(_engine, "_one_epoch", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        train(project, "dig-train", "dig-val", r, run="swa-resumed", tty=False)
    monkeypatch.setattr(_engine, "_one_epoch", original)
    train(project, "dig-train", "dig-val", r, run="swa-resumed", resume=True, tty=False)
    resumed = _checkpoint.load_checkpoint(project.runs_dir / "swa-resumed" / "checkpoints" / "last.pt")
    assert calls == [1, 2, 3] and int(resumed["swa"]["n_averaged"]) == 2
    for key, value in model.items():
        assert torch.allclose(resumed["model"][key].float(), value.float(), atol=1e-5), key
    with pytest.raises(DataloupeError, match="swa_epochs"):
        _recipe("epochs=4", "swa_epochs=4")


def test_rotation_task_turns_the_first_strong_views_by_their_targets():
    from dataloupe.train._epoch import Consistency

    torch.manual_seed(0)
    c = Consistency(None, None, None, 1.0, 0.0, num_classes=10, rotation=0.5, rotation_images=12)
    views = torch.randn(20, 3, 8, 8)  # no symmetric image: every turn gives another tensor
    rotated, turns = c.rotated(views)
    assert rotated.shape == (12, 3, 8, 8) and turns.shape == (12,)
    assert set(turns.tolist()) == {0, 1, 2, 3}  # 12 draws of four: every turn occurs with this seed
    for img, src, k in zip(rotated, views[:12], turns.tolist()):
        assert torch.equal(img, torch.rot90(src, k, dims=(-2, -1)))
        assert k == 0 or not torch.equal(img, src)
    with pytest.raises(DataloupeError, match="unlabeled_rotation"):
        _recipe("unlabeled_rotation=-0.5")


def test_rotation_task_trains_a_head_that_is_resumed_but_never_part_of_the_model(project, monkeypatch):
    """ReMixMatch's / S4L's self-supervised task on the pool: a 4-way head on the embedding
    learns how far each strong view was turned. It is trained alongside, resumed with the run,
    and left out of the model that collect and serve load."""
    keys = ("unlabeled_weight=1.0", "unlabeled_ratio=2", "unlabeled_threshold=0.0", "epoch_samples=96",
            "ema_decay=0.99", "unlabeled_temperature=0.5", "unlabeled_rotation=0.5")
    plain = train(project, "dig-train", "dig-val", _recipe("epochs=1", *keys[:-1]), run="norot", tty=False)
    info = train(project, "dig-train", "dig-val", _recipe("epochs=1", *keys), run="rot", tty=False)
    assert plain["status"] == info["status"] == "completed"
    folder = project.runs_dir / "rot" / "checkpoints"
    last = _checkpoint.load_checkpoint(folder / "last.pt")
    ref = _checkpoint.load_checkpoint(project.runs_dir / "norot" / "checkpoints" / "last.pt")
    assert set(last["model"]) == set(ref["model"])  # no extra tensors in the model
    head = last["rotation_head"]
    assert head["weight"].shape == (4, ref["model"]["head.weight"].shape[1])
    assert len(last["optimizer"]["param_groups"]) == len(ref["optimizer"]["param_groups"]) + 2
    # the rotation loss moved the shared weights: the same seed without it ends elsewhere
    assert any(not torch.equal(last["model"][k], ref["model"][k]) for k in ref["model"]
               if ref["model"][k].is_floating_point())
    loaded = []
    real = torch.nn.Linear.load_state_dict

    def spy(self, state, *a, **kw):
        loaded.append({k: v.clone() for k, v in state.items()})
        return real(self, state, *a, **kw)

    monkeypatch.setattr(torch.nn.Linear, "load_state_dict", spy)
    train(project, "dig-train", "dig-val", _recipe("epochs=2", *keys), run="rot", resume=True, tty=False)
    assert any(torch.equal(s["weight"], head["weight"]) for s in loaded if "weight" in s)  # resumed, not redrawn
    again = _checkpoint.load_checkpoint(folder / "last.pt")
    assert again["epoch"] == 2 and not torch.equal(again["rotation_head"]["weight"], head["weight"])
    # switching the task on or off on resume is refused by name (the optimizer's groups differ), nothing lost
    with pytest.raises(DataloupeError, match="rotation task"):
        train(project, "dig-train", "dig-val", _recipe("epochs=3", *keys[:-1]), run="rot", resume=True, tty=False)
    with pytest.raises(DataloupeError, match="without the rotation task"):
        train(project, "dig-train", "dig-val", _recipe("epochs=2", *keys), run="norot", resume=True, tty=False)
    assert _checkpoint.load_checkpoint(folder / "last.pt")["epoch"] == 2


def test_rotation_task_alone_learns_from_the_pool_without_a_teacher(project, monkeypatch):
    """S4L-Rotation: with ``unlabeled_weight`` 0 the pool's turned strong views are its only use;
    no teacher is asked for guesses."""
    from dataloupe.train import _epoch

    plain = train(project, "dig-train", "dig-val", _recipe("epochs=1", "ema_decay=0.99"), run="sup", tty=False)
    guesses = []
    real_targets = _epoch.Consistency.targets
    monkeypatch.setattr(_epoch.Consistency, "targets", lambda self, *a: guesses.append(1) or real_targets(self, *a))
    info = train(project, "dig-train", "dig-val",
                 _recipe("epochs=1", "ema_decay=0.99", "unlabeled_rotation=0.5", "unlabeled_rotation_images=24"),
                 run="rot0", tty=False)
    assert plain["status"] == info["status"] == "completed" and guesses == []  # no guess, no teacher forward
    last = _checkpoint.load_checkpoint(project.runs_dir / "rot0" / "checkpoints" / "last.pt")
    ref = _checkpoint.load_checkpoint(project.runs_dir / "sup" / "checkpoints" / "last.pt")
    assert set(last["model"]) == set(ref["model"]) and last["rotation_head"]["weight"].shape[0] == 4
    assert any(not torch.equal(last["model"][k], ref["model"][k]) for k in ref["model"]
               if ref["model"][k].is_floating_point())  # the pool moved the shared weights
    assert "unlabeled_used" not in show_run(project, "rot0")["history"][-1]  # nothing was guessed


def test_the_demos_labeled_only_overrides_switch_off_every_use_of_the_pool(project):
    """The demo's baseline and oracle keep to the labeled rows even when the policy's recipe
    trains on the pool (consistency and the rotation task)."""
    from dataloupe.loop._demo import LABELED_ONLY

    r = _recipe("epochs=1", "unlabeled_weight=1.0", "unlabeled_threshold=0.0", "unlabeled_rotation=0.5")
    train(project, "dig-train", "dig-val", r, overrides=LABELED_ONLY, run="labeled", tty=False)
    last = _checkpoint.load_checkpoint(project.runs_dir / "labeled" / "checkpoints" / "last.pt")
    assert "rotation_head" not in last and "unlabeled_used" not in show_run(project, "labeled")["history"][-1]


def test_an_ensemble_run_averages_its_members_logits_and_reads_as_any_run(project, monkeypatch):
    from dataloupe.models import create_model
    from dataloupe.serve import load_bundle
    from dataloupe.train import ensemble_runs

    for seed in (0, 1):
        train(project, "dig-train", "dig-val", _recipe("epochs=2", f"seed={seed}", "tta_hflip=true", "collect=false"),
              run=f"m{seed}", tty=False)
    info = ensemble_runs(project, "ens", ["m0", "m1"])
    assert (info["kind"], info["status"], info["members"], info["model"]) == \
        ("ensemble", "completed", ["m0", "m1"], "ensemble-2:convnet-xxs")
    from dataloupe.runs import list_runs

    assert [(r["kind"], r["members"]) for r in list_runs(project) if r["run"] == "ens"] == [("ensemble", ["m0", "m1"])]
    env = cli_env(project.root)  # the listing says what the run is, not "epochs 0/0"
    ls = subprocess.run(cli("runs", "ls"), env=env, capture_output=True, text=True, check=True).stdout
    assert "ensemble of m0, m1" in next(line for line in ls.splitlines() if line.startswith("ens "))
    show = subprocess.run(cli("runs", "show", "ens"), env=env, capture_output=True, text=True, check=True).stdout
    assert "members: m0, m1" in show and "kind: ensemble" in show and "epochs_done" not in show
    ck = torch.load(project.runs_dir / "ens" / "checkpoints" / "best.pt", weights_only=True)
    members = []
    for m in ("m0", "m1"):
        net = create_model("convnet-xxs", 10, small_input=True).eval()
        net.load_state_dict(torch.load(project.runs_dir / m / "checkpoints" / "best.pt", weights_only=True)["model"])
        members.append(net)
    ens = create_model(ck["model_name"], 10, small_input=True).eval()
    ens.load_state_dict(ck["model"])  # strict: every member tensor is there
    x = torch.rand(6, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ens(x), (members[0](x) + members[1](x)) / 2, rtol=1e-4, atol=1e-5)
    # its validation top-1 is measured as training measures it, and collect's metrics agree with it
    import lance

    m = lance.dataset(str(project.runs_dir / "ens" / "metrics" / "dig-val.lance")).to_table(
        columns=["label", "predicted", "embedding"])
    assert np.mean(np.array(m["label"].to_pylist()) == np.array(m["predicted"].to_pylist())) == \
        pytest.approx(info["best_val_top1"], abs=1e-9)
    assert m.schema.field("embedding").type.list_size == 2 * members[0].num_features
    bundle = load_bundle("ens", project)  # serving reads it as any run, and an ONNX export computes the same
    assert bundle.metadata["model_name"] == "ensemble-2:convnet-xxs"
    from dataloupe.serve import export_model

    export_model(project, "ens", format="onnx", out=project.root / "ens.onnx")
    batch = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    np.testing.assert_allclose(load_bundle(project.root / "ens.onnx").predict_proba(batch), bundle.predict_proba(batch),
                               atol=1e-5)
    # refused before anything is written
    train(project, "dig-train", "dig-val", _recipe("epochs=1", "image_size=12", "collect=false"), run="small", tty=False)
    for members, message in ((["m0"], "two or more"), (["m0", "m0"], "two or more"), (["m0", "nope"], "unknown run"),
                             (["m0", "small"], "image_size"), (["ens", "m0"], "ensemble run")):
        with pytest.raises(DataloupeError, match=message):
            ensemble_runs(project, "bad", members)
        assert not (project.runs_dir / "bad").exists()
    with pytest.raises(DataloupeError, match="exists"):
        ensemble_runs(project, "ens", ["m0", "m1"])
    with monkeypatch.context() as env, pytest.raises(DataloupeError, match="without torchrun"):
        env.setenv("WORLD_SIZE", "2")  # under torchrun every process would write the same run
        ensemble_runs(project, "bad", ["m0", "m1"])
    assert ensemble_runs(project, "ens", ["m1", "m0"], force=True)["best_val_top1"] == pytest.approx(info["best_val_top1"])


def test_a_memory_run_adds_a_knn_vote_over_its_training_rows_and_reads_as_any_run(project, monkeypatch):
    import lance

    from dataloupe.models import create_model
    from dataloupe.serve import export_model, load_bundle
    from dataloupe.train import memory_run

    train(project, "dig-train", "dig-val", _recipe("epochs=2", "tta_hflip=true", "collect=false"), run="b", tty=False)
    info = memory_run(project, "mem", "b", k=5, pool_fraction=0.5)  # collects b's training rows first
    assert (info["kind"], info["status"], info["base"], info["model"]) == ("memory", "completed", "b", "knn:convnet-xxs")
    assert info["memory"]["labeled"] == 320 and info["memory"]["pool_rows"] == 20 and info["memory"]["pool"] == 10
    ck = torch.load(project.runs_dir / "mem" / "checkpoints" / "best.pt", weights_only=True)
    assert ck["model"]["memory.keys"].shape[0] == 330 and ck["model"]["memory.labels"].shape == (330,)
    # the memory holds the given labels and the base's most confident pool rows with its prediction
    m = lance.dataset(str(project.runs_dir / "b" / "metrics" / "dig-train.lance")).to_table().to_pydict()
    pool = [i for i, label in enumerate(m["label"]) if label is None]
    sure = sorted(pool, key=lambda i: -m["confidence"][i])[:10]
    want = sorted([CLASSES.index(m["label"][i]) for i in range(len(m["id"])) if m["label"][i] is not None] +
                  [CLASSES.index(m["predicted"][i]) for i in sure])
    assert sorted(ck["model"]["memory.labels"].tolist()) == want
    # rebuilt from its checkpoint (the memory resizes to the saved one), its prediction is the mean of the
    # head's softmax and the vote of the k nearest memory rows, weighted exp(cosine / T)
    model = create_model(ck["model_name"], 10, small_input=True).eval()
    model.load_state_dict(ck["model"])
    base = create_model("convnet-xxs", 10, small_input=True).eval()
    base.load_state_dict(torch.load(project.runs_dir / "b" / "checkpoints" / "best.pt", weights_only=True)["model"])
    x = torch.rand(6, 3, 16, 16)
    with torch.no_grad():
        logits, emb = base(x, return_embedding=True)
        sims = torch.nn.functional.normalize(emb, dim=1) @ ck["model"]["memory.keys"].T
        top, idx = sims.topk(5, dim=1)
        votes = torch.zeros(6, 10).index_put_((torch.arange(6).repeat_interleave(5), ck["model"]["memory.labels"][idx]
                                               .flatten()), torch.exp(top / 0.1).flatten(), accumulate=True)
        want_p = (torch.softmax(logits, 1) + votes / votes.sum(1, keepdim=True)) / 2
        torch.testing.assert_close(torch.softmax(model(x), 1), want_p, rtol=1e-4, atol=1e-5)
    v = lance.dataset(str(project.runs_dir / "mem" / "metrics" / "dig-val.lance")).to_table(columns=["label", "predicted"])
    assert np.mean(np.array(v["label"].to_pylist()) == np.array(v["predicted"].to_pylist())) == \
        pytest.approx(info["best_val_top1"], abs=1e-9)
    bundle = load_bundle("mem", project)  # serving reads it as any run, and an ONNX export computes the same
    batch = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    for fmt, suffix in (("onnx", "onnx"), ("torchscript", "pt")):
        export_model(project, "mem", format=fmt, out=project.root / f"mem.{suffix}")
        np.testing.assert_allclose(load_bundle(project.root / f"mem.{suffix}").predict_proba(batch),
                                   bundle.predict_proba(batch), atol=1e-5)
    # refused before anything is written
    train(project, "dig-train", "dig-val", _recipe("epochs=1", "collect=false"), run="short", tty=False)
    for base_run, keys, message in (("mem", {}, "memory run"), ("nope", {}, "nope"), ("b", {"k": 0}, "k must be"),
                                    ("b", {"pool_fraction": 1.5}, "pool_fraction"), ("b", {"temperature": 0}, "temp")):
        with pytest.raises(DataloupeError, match=message):
            memory_run(project, "bad", base_run, **keys)
        assert not (project.runs_dir / "bad").exists()
    with pytest.raises(DataloupeError, match="exists"):
        memory_run(project, "mem", "b")
    from dataloupe.train import _memory

    with monkeypatch.context() as env, pytest.raises(DataloupeError, match="GiB"):
        env.setattr(_memory, "MAX_MEMORY_BYTES", 1000)  # a memory too large to travel in a checkpoint
        memory_run(project, "bad", "b")
    assert not (project.runs_dir / "bad").exists()
    assert memory_run(project, "mem", "b", k=5, pool_fraction=0.5, force=True)["best_val_top1"] == \
        pytest.approx(info["best_val_top1"])
    assert memory_run(project, "mem0", "b", pool_fraction=0.0)["memory"]["pool"] == 0  # labeled rows only
    env = cli_env(project.root)  # the CLI is the same call; the listing says what the run is
    out = json.loads(subprocess.run(cli("knn", "b", "--run", "memcli", "--k", "5", "--json"), env=env, check=True,
                                    capture_output=True, text=True).stdout)
    assert (out["kind"], out["memory"]["k"], out["best_val_top1"]) == ("memory", 5, pytest.approx(info["best_val_top1"]))
    ls = subprocess.run(cli("runs", "ls"), env=env, capture_output=True, text=True, check=True).stdout
    assert "b + kNN memory" in next(line for line in ls.splitlines() if line.startswith("memcli "))


def test_a_memory_run_writes_its_metrics_from_the_views_its_base_kept_as_a_forward_pass_would(project, monkeypatch):
    import os

    import lance

    from dataloupe.train import _collect, memory_run

    base = train(project, "dig-train", "dig-val", _recipe("epochs=2", "tta_hflip=true", "collect=true"), run="b",
                 tty=False)
    ref = f"dig-train@{base['train_revision']}"
    folder = project.runs_dir / "b" / "metrics"
    views = np.load(folder / "dig-train.views.npz")  # the image and its mirror, unmerged
    assert views["logits"].shape == (340, 2, 10) and views["embeddings"].shape[:2] == (340, 2)
    forward = []
    real = _collect.predict_batches
    monkeypatch.setattr(_collect, "predict_batches", lambda *a, **k: forward.append(1) or real(*a, **k))
    info = memory_run(project, "fast", "b", k=5)
    assert forward == []  # no forward pass: the memory's vote on base's kept views
    with monkeypatch.context() as m:  # as without views: collect's forward pass
        m.setattr(_collect, "kept_views", lambda *a: None)
        slow = memory_run(project, "slow", "b", k=5)
    assert forward and slow["best_val_top1"] == info["best_val_top1"]
    for table in ("dig-train", "dig-val"):
        a, b = (lance.dataset(str(project.runs_dir / r / "metrics" / f"{table}.lance")).to_table().sort_by("id")
                for r in ("fast", "slow"))
        assert a.column_names == b.column_names and a["predicted"].equals(b["predicted"])
        for col in ("probs", "embedding"):
            np.testing.assert_allclose(np.array(a[col].to_pylist()), np.array(b[col].to_pylist()), atol=1e-6)
    # views of another checkpoint or revision are not used
    assert _collect.kept_views(project, "b", ref) is not None
    ckpt = project.runs_dir / "b" / "checkpoints" / "best.pt"
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 1))
    assert _collect.kept_views(project, "b", ref) is None
