"""``bench/loop_rounds.py`` replays the loop's estimate of its final labels outside the loop: its
propagation must give every validation row the class ``relabel_propagated`` gives it in the loop."""

import numpy as np
import pyarrow as pa

from _bench import load_bench


def _metrics(ids, emb):
    return pa.table({"id": pa.array(ids, pa.int64()), "predicted": ["a"] * len(ids),
                     "confidence": pa.array(np.full(len(ids), .9, np.float32)),
                     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1])})


def test_its_propagation_gives_the_classes_of_the_loops_estimate():
    from dataloupe.loop import RuleContext
    from dataloupe.loop._loop import _propagated_picks

    mod = load_bench("loop_rounds")
    rng = np.random.default_rng(1)
    # two overlapping blobs: the rows between them take whichever side the graph's weights favour
    train = np.concatenate([rng.normal([1, 0], 0.4, (60, 2)), rng.normal([0, 1], 0.4, (60, 2))]).astype(np.float32)
    val = np.concatenate([rng.normal([1, 0], 0.4, (30, 2)), rng.normal([0, 1], 0.4, (30, 2))]).astype(np.float32)
    given = {0: "a", 1: "a", 2: "a", 60: "b", 61: "b", 62: "b"}
    labels = [given.get(i) for i in range(120)]
    rows = pa.table({"id": pa.array(np.arange(120), pa.int64()), "label": pa.array(labels, pa.string()),
                     "weight": pa.array(np.ones(120, np.float32))})
    ctx = RuleContext(["a", "b"], rows, _metrics(np.arange(120), train), {}, origin_labels=given, iteration=2)
    truth = {i: "a" if i < 30 else "b" for i in range(60)}
    vm = _metrics(np.arange(60), val).append_column("label", pa.array([truth[i] for i in range(60)]))
    picks = _propagated_picks(ctx, vm, ["id", "predicted", "confidence", "embedding"], truth,
                              {**mod.PARAMS, "weigh": True})

    seeds = np.array([{"a": 0, "b": 1}[lab] if lab else -1 for lab in labels])
    dist, _ = mod.propagate(train, val, seeds)
    mine = np.array(["a", "b"])[dist.argmax(1)]
    assert len(picks) == 60 and all(picks[i] == mine[i] for i in range(60))
    assert 0.7 < np.mean(mine == np.array([truth[i] for i in range(60)])) < 1.0  # the blobs overlap: not trivial
