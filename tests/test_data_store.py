"""The training store: pre-resized JPEGs in Lance, locality-ordered sampling, CPU and device decode."""

import numpy as np
import pytest
import torch
from PIL import Image

from dataloupe.data import (EncodedBatch, WeightedEpochSampler, build_store, fragment_blocks, make_loader,
                            plan_loader, sample_set_from_table)
from dataloupe.data._store import locality_order
from dataloupe.tables import import_imagefolder, open_table


def _photos(root, n=24, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = "a" if i % 2 else "b"
        (root / c).mkdir(parents=True, exist_ok=True)
        w, h = int(rng.integers(60, 90)), int(rng.integers(40, 60))
        base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        img.save(root / c / f"{i:03d}.jpg", quality=95)
    return root


def _samples(project, tmp_path):
    import_imagefolder(project, _photos(tmp_path / "img"), table="ph")
    (tmp_path / "img" / "b" / "000.jpg").write_bytes(b"not a jpeg")  # broken after the import
    t = open_table(project, "ph")
    return sample_set_from_table(t, t.classes)


def test_store_rows_pixels_and_failures(project, tmp_path):
    s = _samples(project, tmp_path)
    store = build_store(s, project.cache_dir, short_side=32, rows_per_fragment=8, threads=2)
    assert np.array_equal(store.ids, np.sort(s.ids))
    assert len(store.failed) == 1 and "000.jpg" in next(iter(store.failed.values()))
    import lance

    ds = lance.dataset(str(store.path))
    assert ds.count_rows() == len(s) and len(ds.get_fragments()) == -(-len(s) // 8)
    tab = ds.to_table(columns=["width", "height"])
    assert min(min(w, h) for w, h in zip(tab["width"].to_pylist(), tab["height"].to_pylist())) == 32
    assert build_store(s, project.cache_dir, short_side=32).path == store.path  # reused, not rebuilt
    plan = plan_loader(len(s), 24, loader="store", num_workers=0)
    loader = make_loader(s, plan, image_size=24, batch_size=5, cache=store)
    seen = []
    for x, y, pos in loader:
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 24, 24)
        assert torch.equal(y, torch.as_tensor(s.labels)[pos])
        seen += pos.tolist()
    assert seen == list(range(len(s)))
    # device decode path (CPU device here): the same pixels, up to JPEG decoder rounding
    gplan = plan_loader(len(s), 24, loader="store", num_workers=0, decode="cpu")
    enc = make_loader(s, gplan, image_size=24, batch_size=len(s), cache=store).dataset
    enc.decode = "gpu"
    batch, _, _ = enc.__getitems__(list(range(len(s))))
    assert isinstance(batch, EncodedBatch)
    xs = batch.decode(torch.device("cpu"))
    x_cpu, _, _ = next(iter(make_loader(s, plan, image_size=24, batch_size=len(s), cache=store)))
    assert xs.shape == x_cpu.shape
    assert (xs.float() - x_cpu.float()).abs().mean() < 6


def test_locality_order_keeps_draws_and_groups_blocks():
    g = torch.Generator().manual_seed(0)
    blocks = np.repeat(np.arange(10), 100)
    order = torch.randperm(1000, generator=g)
    out = locality_order(order, blocks, buffer=200, generator=g)
    assert sorted(out.tolist()) == list(range(1000))
    # each window of 200 positions touches about 2 blocks (3 at most), not all 10
    for s in range(0, 1000, 200):
        assert len(set(blocks[out[s:s + 200].numpy()])) <= 3
    sampler = WeightedEpochSampler(np.ones(1000), num_replicas=2, rank=1, seed=3, blocks=blocks, buffer=200)
    a = list(sampler)
    assert len(a) == 500 and len(set(a)) == 500
    sampler.set_epoch(1)
    assert list(sampler) != a


def test_auto_plan_picks_cache_small_store_large():
    assert plan_loader(1000, 64, large="store").mode == "cache"
    assert plan_loader(1_281_167, 224, large="store").mode == "store"
    assert plan_loader(1_281_167, 224).mode == "stream"
    p = plan_loader(1_281_167, 224, large="store", cuda=True, per_image_transform=False)
    assert p.decode == "gpu"
    assert plan_loader(1_281_167, 224, large="store", cuda=True).decode == "cpu"
    with pytest.raises(ValueError, match="decode=gpu"):
        plan_loader(10, 8, loader="store", decode="gpu")  # no CUDA device


def test_training_from_the_store(project, tmp_path):
    """One epoch through the engine with a loader worker (a spawned process: Lance does not survive fork)."""
    from dataloupe.train import train

    import_imagefolder(project, _photos(tmp_path / "img", n=20), table="ph")
    info = train(project, "ph", "ph", "fashion-mnist", run="st", tty=False,
                 overrides=["model=convnet-xxs", "image_size=16", "batch_size=8", "epochs=1", "loader=store",
                            "collect=false", "rrc_scale=null", "num_workers=1"])
    assert info["status"] == "completed" and info["epochs_done"] == 1
    assert list((project.cache_dir / "store").glob("*-s16-q90.lance"))
    s = sample_set_from_table(open_table(project, "ph"), ["a", "b"])
    blocks = fragment_blocks(build_store(s, project.cache_dir, short_side=16), s)
    assert blocks.shape == (len(s),)
