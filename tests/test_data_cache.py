import numpy as np
import pytest
import torch
from _train_helpers import CLASSES, make_digit_tables

from dataloupe.data import (AugmentConfig, ShardSampler, WeightedEpochSampler, build_cache, decode_image,
                            make_loader, mix_transform, plan_loader, sample_set_from_table, sample_transform)
from dataloupe.project import Project
from dataloupe.tables import edit_table, open_table


@pytest.fixture()
def project(tmp_path):
    p = Project.open(tmp_path / "proj")
    make_digit_tables(p, tmp_path, n_train=60, n_val=20, undefined=5)
    return p


def test_sample_set_marks_undefined_and_trainable(project):
    s = sample_set_from_table(open_table(project, "dig-train"), CLASSES)
    assert len(s) == 65 and (s.labels == -1).sum() == 5
    assert s.trainable.sum() == 60 and not s.trainable[s.labels == -1].any()


def test_cache_matches_decode_image_and_is_reused(project):
    t = open_table(project, "dig-train")
    s = sample_set_from_table(t, CLASSES)
    c = build_cache(s, 12, project.cache_dir)
    assert c.images.shape == (65, 12, 12, 3) and c.images.dtype == np.uint8 and not c.failed
    i = 7
    row = c.rows_of(s.ids[i : i + 1])[0]
    assert np.array_equal(c.images[row], decode_image(s.root / s.paths[i], 12))
    mtime = c.path.stat().st_mtime_ns
    # a revision that only changes labels keeps the content key: the cache is reused, not rebuilt
    edit_table(project, "dig-train", action="set_label", ids=[int(s.ids[0])], label="d9", message="relabel")
    t2 = open_table(project, "dig-train")
    assert t2.revision == 2
    s2 = sample_set_from_table(t2, CLASSES)
    assert s2.content_key == s.content_key
    assert build_cache(s2, 12, project.cache_dir).path.stat().st_mtime_ns == mtime
    # another resolution is another cache
    assert build_cache(s, 8, project.cache_dir).path != c.path


def test_cache_reports_undecodable_rows(project, tmp_path):
    t = open_table(project, "dig-train")
    s = sample_set_from_table(t, CLASSES)
    (s.root / s.paths[3]).write_bytes(b"not an image")
    c = build_cache(s, 8, project.cache_dir)
    assert int(s.ids[3]) in c.failed and "not" in c.failed[int(s.ids[3])]


def test_weighted_sampler_honours_weights_and_splits_across_ranks():
    w = np.array([0.0, 1.0, 3.0, 0.0], dtype=np.float32)
    s = WeightedEpochSampler(w, seed=1, num_samples=4000)
    drawn = np.bincount(list(s), minlength=4)
    assert drawn[0] == drawn[3] == 0
    assert 2.6 < drawn[2] / drawn[1] < 3.4
    # two ranks together draw exactly the one-process order, interleaved
    one = WeightedEpochSampler(w, seed=1, num_samples=100)
    ranks = [list(WeightedEpochSampler(w, seed=1, num_samples=100, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(list(one))
    # uniform weights: a permutation, new each epoch
    u = WeightedEpochSampler(np.ones(10))
    first = list(u)
    u.set_epoch(1)
    assert sorted(first) == list(range(10)) and list(u) != first
    with pytest.raises(ValueError):
        WeightedEpochSampler(np.zeros(3))


def test_cached_and_streamed_paths_yield_the_same_batches(project):
    s = sample_set_from_table(open_table(project, "dig-val"), CLASSES)
    cache = build_cache(s, 16, project.cache_dir)
    out = {}
    for mode in ("cache", "stream"):
        plan = plan_loader(len(s), 16, loader=mode, num_workers=0)
        assert plan.mode == mode
        loader = make_loader(s, plan, image_size=16, batch_size=8, cache=cache, sampler=ShardSampler(len(s)))
        out[mode] = [b for b in loader]
    for (xa, ya, pa), (xb, yb, pb) in zip(out["cache"], out["stream"]):
        assert xa.dtype == torch.uint8 and xa.shape[1:] == (3, 16, 16)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(pa, pb)
    # streaming with a worker process works too
    plan = plan_loader(len(s), 16, loader="stream", num_workers=1)
    n = sum(len(b[0]) for b in make_loader(s, plan, image_size=16, batch_size=8, sampler=ShardSampler(len(s))))
    assert n == len(s)


def test_auto_plan_streams_when_the_cache_would_be_too_big():
    assert plan_loader(1000, 64, cache_max_gb=1.0).mode == "cache"
    assert plan_loader(1_281_167, 224, cache_max_gb=8.0).mode == "stream"


def test_augmentation_draws_per_sample_and_mixes_batches():
    cfg = AugmentConfig(image_size=16, rrc_scale=(0.2, 1.0), hflip=0.5, rotation=10,
                        color_jitter=(0.2, 0.2, 0.2, 0.02), autoaugment="imagenet", random_erasing=0.5,
                        mixup_alpha=0.2, cutmix_alpha=1.0)
    t = sample_transform(cfg)
    img = torch.randint(0, 255, (3, 16, 16), dtype=torch.uint8)
    batch = img.expand(8, 3, 16, 16).contiguous()
    torch.manual_seed(0)
    from dataloupe.data import augment_batch, normalize_batch

    out = augment_batch(batch, t)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert len({o.numpy().tobytes() for o in out}) > 1  # each image got its own draw
    x = normalize_batch(out, cfg.mean, cfg.std)
    xm, ym = mix_transform(cfg, 10)(x, torch.arange(8))
    assert ym.shape == (8, 10) and torch.allclose(ym.sum(1), torch.ones(8))


def test_batched_augmentation_identity_flip_and_own_draws():
    from dataloupe.data import batch_augment, normalize_batch

    x = torch.randint(0, 255, (6, 3, 16, 16), dtype=torch.uint8)
    base = AugmentConfig(image_size=16, rrc_scale=None, hflip=0.0)
    assert torch.allclose(batch_augment(x, base), normalize_batch(x, base.mean, base.std), atol=1e-4)
    flip = AugmentConfig(image_size=16, rrc_scale=None, hflip=1.0)
    assert torch.allclose(batch_augment(x, flip), normalize_batch(x.flip(-1), base.mean, base.std), atol=1e-4)
    full = AugmentConfig(image_size=16, rrc_scale=(0.3, 1.0), rotation=15, color_jitter=(0.2, 0.2, 0.2, 0.05),
                         random_erasing=0.5)
    same = x[:1].expand(6, 3, 16, 16)
    out = batch_augment(same, full)
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert len({o.numpy().tobytes() for o in out}) == 6  # every image its own draw


def test_batched_self_supervised_steps_greyscale_solarise_blur_and_crop_size():
    from dataloupe.data import batch_augment, normalize_batch

    unit = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))  # "normalised" = the 0..255 pixels
    plain = dict(image_size=16, rrc_scale=None, hflip=0.0, **unit)
    x = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    grey = batch_augment(x, AugmentConfig(grayscale=1.0, **plain))
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose(grey[:, :1], (x.float() * weights).sum(1, keepdim=True), atol=1e-3)
    solar = batch_augment(x, AugmentConfig(solarize=1.0, **plain))
    bright = x.float() >= 127.5
    assert torch.allclose(solar[bright], 255.0 - x.float()[bright], atol=1e-3)
    assert torch.allclose(solar[~bright], x.float()[~bright], atol=1e-3)
    # blur: a constant image stays constant, an impulse spreads and keeps (nearly) its mass
    flat = torch.full((2, 3, 16, 16), 77, dtype=torch.uint8)
    assert torch.allclose(batch_augment(flat, AugmentConfig(blur=1.0, blur_sigma=(1.0, 2.0), **plain)),
                          torch.full((2, 3, 16, 16), 77.0), atol=1e-3)
    dot = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    dot[:, :, 8, 8] = 255
    spread = batch_augment(dot, AugmentConfig(blur=1.0, blur_sigma=(1.0, 1.0), **plain))
    assert spread[:, :, 8, 8].max() < 255 * 0.25 and spread[:, :, 8, 9].min() > 0
    assert torch.allclose(spread.sum((2, 3)), torch.full((2, 3), 255.0), rtol=1e-3)
    # probability 0 (or no jitter) leaves every image as it was; the crop can have its own size
    off = AugmentConfig(color_jitter=(0.8, 0.8, 0.8, 0.2), color_jitter_p=0.0, grayscale=0.0, blur=0.0, **plain)
    assert torch.allclose(batch_augment(x, off), normalize_batch(x, unit["mean"], unit["std"]), atol=1e-3)
    small = batch_augment(x, AugmentConfig(image_size=16, rrc_scale=(0.05, 0.4), output_size=6))
    assert small.shape == (4, 3, 6, 6)
    half = AugmentConfig(grayscale=0.5, **plain)
    greyed = [bool(torch.allclose(o[0], o[1]) and torch.allclose(o[1], o[2]))
              for o in batch_augment(x.repeat(16, 1, 1, 1), half)]
    assert 0 < sum(greyed) < 64  # each image its own draw


def test_excluded_rows_are_not_trainable_and_unknown_labels_are_refused(project):
    from dataloupe.project import DataloupeError

    edit_table(project, "dig-train", action="exclude", ids=[0, 1, 2], message="exclude")
    s = sample_set_from_table(open_table(project, "dig-train"), CLASSES)
    assert s.trainable.sum() == 57 and not s.trainable[np.isin(s.ids, [0, 1, 2])].any()
    with pytest.raises(DataloupeError, match="not among the run's classes"):
        sample_set_from_table(open_table(project, "dig-train"), CLASSES[:5])
