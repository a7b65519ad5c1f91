"""``bench/weigh_pair.py``'s two revisions (no training): the one iteration 3 trained on with every
automatic row at weight 1, and the same labels with ``relabel_propagated``'s certainty weights."""

import numpy as np
import pyarrow as pa
import pytest

from _bench import load_bench


def _loop_project(project, *, weighed: bool):
    """Table ``t`` (80 rows in two blobs, rows 0/1 and 40/41 given) where a `default`-like loop ran
    twice: revision 2 is what iteration 3 trained on (labels propagated over run ``r2``'s
    embedding), revision 3 a later edit. Returns the loop's state."""
    import lance

    from dataloupe.loop import RuleContext, get_rule
    from dataloupe.runs import metrics_path
    from dataloupe.tables import EditOp, open_table
    from dataloupe.tables._edit import apply_edits, create_table

    rng = np.random.default_rng(0)
    # blob a around +x, blob b around +y, and four rows in between whose class is in doubt
    e = np.concatenate([rng.normal([1, 0], 0.15, (38, 2)), [[0.8, 0.6], [0.75, 0.66]],
                        rng.normal([0, 1], 0.15, (38, 2)), [[0.6, 0.8], [0.66, 0.75]]]).astype(np.float32)
    given = {0: "a", 1: "a", 40: "b", 41: "b"}
    create_table(project, "t", pa.table({"path": [f"x/{i}.png" for i in range(80)],
                                         "label": pa.array([given.get(i) for i in range(80)], pa.string())}),
                 classes=["a", "b"], image_root="/")
    path = metrics_path(project, "r2", "t")
    path.parent.mkdir(parents=True, exist_ok=True)
    lance.write_dataset(pa.table({"id": pa.array(np.arange(80), pa.int64()), "predicted": ["a"] * 80,
                                  "confidence": pa.array(np.full(80, .9, np.float32)),
                                  "embedding": pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), 2)}),
                        str(path))
    rows = open_table(project, "t").to_arrow()
    metrics = pa.table({"id": np.arange(80, dtype=np.int64), "predicted": ["a"] * 80,
                        "confidence": np.full(80, .9, np.float32),
                        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), 2)})
    ctx = RuleContext(["a", "b"], rows, metrics, {}, origin_labels=given, iteration=2)
    ops = get_rule("relabel_propagated")(ctx, weigh=weighed).ops
    apply_edits(project, "t", ops, message="the loop: iteration 2's rules")
    apply_edits(project, "t", [EditOp("exclude", ids=np.array([5]), name="later")], message="later")
    return {"train": "t", "start_revision": 1, "iterations": [{"run": "r1", "next_revision": 2},
                                                               {"run": "r2", "next_revision": 2}]}


@pytest.mark.parametrize("weighed", [False, True])
def test_weigh_pair_makes_the_unweighted_and_the_weighted_revision(project, weighed):
    from dataloupe.loop import load_policy
    from dataloupe.tables import open_table

    wp = load_bench("weigh_pair")
    state = _loop_project(project, weighed=weighed)
    trained = open_table(project, "t", 2).to_arrow().sort_by("id")
    plain, heavy = wp.weighted_revision(project, state, load_policy("default"))
    a = open_table(project, "t", plain).to_arrow().sort_by("id")
    b = open_table(project, "t", heavy).to_arrow().sort_by("id")
    # both carry the labels iteration 3 trained on (the later exclusion is not in them)
    assert a["label"].equals(trained["label"]) and b["label"].equals(trained["label"])
    assert np.all(a["weight"].to_numpy() == 1)  # a loop that weighed is put back at weight 1
    w = b["weight"].to_numpy()
    assert np.all(w[[0, 1, 40, 41]] == 1) and np.all((w >= 0.05) & (w <= 1))
    assert w[[38, 39, 78, 79]].max() < 1 and w[[38, 39, 78, 79]].mean() < w[2:38].mean()  # the doubtful rows


def test_weigh_pair_refuses_a_revision_whose_labels_are_not_the_propagations(project):
    from dataloupe.loop import load_policy
    from dataloupe.tables import EditOp
    from dataloupe.tables._edit import apply_edits

    wp = load_bench("weigh_pair")
    state = _loop_project(project, weighed=False)
    apply_edits(project, "t", [EditOp("set_label", ids=np.array([10]), label="b", name="a hand edit")],
                message="not the rule's")
    state["iterations"][1]["next_revision"] = 4
    with pytest.raises(SystemExit, match="not the loop's revision"):
        wp.weighted_revision(project, state, load_policy("default"))
