"""Policy rules turn findings into edit steps; policies validate their YAML."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from dataloupe.loop import RuleContext, get_rule, load_policy
from dataloupe.project import DataloupeError


def _ctx(findings=None, cluster=None):
    rows = pa.table({"id": pa.array(np.arange(8, dtype=np.int64)),
                     "label": pa.array(["a", "a", "b", "b", None, None, None, None]),
                     "weight": pa.array(np.ones(8, np.float32))})
    metrics = {"id": np.arange(8, dtype=np.int64),
               "predicted": ["a", "b", "b", "b", "a", "b", "a", "b"],
               "confidence": np.array([.9, .6, .95, .99, .97, .99, .5, .91], np.float32),
               "loss": np.array([.1, 2.0, .1, .05, np.nan, np.nan, np.nan, np.nan], np.float32)}
    if cluster is not None:
        metrics["cluster"] = np.array(cluster, np.int32)
    return RuleContext(["a", "b"], rows, pa.table(metrics), findings or {})


PSEUDO = {"pseudo_labels": {"global_threshold": 0.9, "class_thresholds": {"a": 0.96, "b": 0.9},
                            "items": [dict(id=4, predicted="a", confidence=.97, agreement=1.0),
                                      dict(id=5, predicted="b", confidence=.99, agreement=0.5),
                                      dict(id=6, predicted="a", confidence=.5, agreement=1.0),
                                      dict(id=7, predicted="b", confidence=.91, agreement=0.9),
                                      dict(id=0, predicted="a", confidence=.9, agreement=1.0)]}}


def test_auto_label_thresholds_agreement_and_labeled_rows_untouched():
    out = get_rule("auto_label")(_ctx(PSEUDO))
    got = {op.label: sorted(op.ids.tolist()) for op in out.ops}
    assert got == {"a": [4], "b": [5, 7]}  # id 6 below threshold; id 0 is already labeled
    out = get_rule("auto_label")(_ctx(PSEUDO), min_agreement=0.8)
    assert {op.label: sorted(op.ids.tolist()) for op in out.ops} == {"a": [4], "b": [7]}
    out = get_rule("auto_label")(_ctx(PSEUDO), threshold=0.98)
    assert {op.label: op.ids.tolist() for op in out.ops} == {"b": [5]}


def _emb_ctx(origin=None):
    """Two clusters in embedding space: labeled a's near +x, b's near +y; undefined rows
    4 (near a), 5 (near b, predicted a: neighbours disagree), 6 (near b), 7 (near a, predicted b)."""
    e = np.array([[1, .1], [1, -.1], [.1, 1], [-.1, 1], [1, 0], [0, 1], [.05, 1], [1, .05]], np.float32)
    rows = pa.table({"id": pa.array(np.arange(8, dtype=np.int64)),
                     "label": pa.array(["a", "a", "b", "b", None, None, None, None]),
                     "weight": pa.array(np.ones(8, np.float32))})
    emb = pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), 2)
    metrics = pa.table({"id": np.arange(8, dtype=np.int64),
                        "predicted": ["a", "b", "b", "b", "a", "a", "b", "b"],
                        "confidence": np.array([.9, .95, .95, .99, .97, .99, .96, .93], np.float32),
                        "embedding": emb})
    return RuleContext(["a", "b"], rows, metrics, {}, origin_labels=origin)


def test_auto_label_agreement_from_embeddings_and_per_class_cap():
    rule = get_rule("auto_label")
    out = rule(_emb_ctx(), threshold=0.9, min_agreement=0.8, agreement_from="embeddings", neighbours=2)
    assert {op.label: op.ids.tolist() for op in out.ops} == {"a": [4], "b": [6]}  # 5 and 7 disagree
    out = rule(_emb_ctx(), threshold=0.9)  # no agreement test: all four, by predicted class
    assert {op.label: op.ids.tolist() for op in out.ops} == {"a": [4, 5], "b": [6, 7]}
    out = rule(_emb_ctx(), threshold=0.9, max_fraction=0.5)  # the most confident half of each class
    assert {op.label: op.ids.tolist() for op in out.ops} == {"a": [5], "b": [6]}
    with pytest.raises(DataloupeError, match="agreement_from"):
        rule(_emb_ctx(), min_agreement=0.5, agreement_from="vibes")
    with pytest.raises(DataloupeError, match="embedding"):  # the run has no embeddings
        rule(_ctx(PSEUDO), threshold=0.5, min_agreement=0.5, agreement_from="embeddings")


def test_undefine_disputed_only_touches_the_loops_own_labels():
    ctx = _emb_ctx(origin={0: "a", 1: "a", 2: "b", 3: "b", 4: None, 5: None, 6: None, 7: None})
    rows = ctx.rows.set_column(1, "label", pa.array(["a", "a", "b", "b", "a", "b", "a", None]))
    ctx = RuleContext(ctx.classes, rows, ctx.metrics, {}, origin_labels=ctx.origin_labels)
    # row 1 (given "a", predicted b) is an original label: left alone; row 5 (auto "b",
    # predicted a at .99) and row 6 (auto "a", predicted b at .96) go back to the pool
    out = get_rule("undefine_disputed")(ctx, min_confidence=0.9)
    assert [(op.action, op.ids.tolist()) for op in out.ops] == [("undefine", [5, 6])]
    assert get_rule("undefine_disputed")(ctx, min_confidence=0.999).ops == []
    issues = {"label_issues": [dict(id=4, table="train", score=.9), dict(id=0, table="train", score=.9),
                               dict(id=7, table="val", score=.9)]}
    ctx2 = RuleContext(ctx.classes, rows, ctx.metrics, issues, origin_labels=ctx.origin_labels)
    out = get_rule("undefine_disputed")(ctx2, min_confidence=0.999, label_issues=True)
    assert [op.ids.tolist() for op in out.ops] == [[4]]  # id 0 is an original label; id 7 a val record
    assert get_rule("undefine_disputed")(_emb_ctx()).ops == []  # origin unknown: no-op


def test_auto_label_precision_estimate_replays_the_rule_on_hidden_validation_rows():
    from dataloupe.loop._loop import estimate_auto_label_precision
    from dataloupe.loop._policy import Policy, RuleSpec

    ctx = _emb_ctx()
    e = np.array([[1, 0], [0, 1], [.02, 1], [0, 1]], np.float32)  # val row 2 sits among the b's
    val = pa.table({"id": np.arange(4, dtype=np.int64), "label": ["a", "b", "b", "b"],
                    "predicted": ["a", "b", "a", "a"], "confidence": np.array([.99, .98, .975, .6], np.float32),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), 2)})
    pol = Policy("p", "r", rules=(RuleSpec("auto_label", {"threshold": 0.9}),))
    shadow: dict = {}
    est = estimate_auto_label_precision(pol, ctx, val, shadow)
    # val rows 0, 1, 2 pass the gate (row 3 is unsure); row 2 is wrong
    assert est == {"precision": round(2 / 3, 4), "labeled": 3, "cumulative_precision": round(2 / 3, 4),
                   "coverage": 0.75, "rows": 4}
    assert shadow == {0: "a", 1: "b", 2: "a"}
    # the next iteration only draws from what is left: nothing passes now
    again = estimate_auto_label_precision(pol, ctx, val, shadow)
    assert again["labeled"] == 0 and again["precision"] is None and again["cumulative_precision"] == round(2 / 3, 4)
    # the per-class cap is applied as in the loop, ranked together with the pool
    capped = Policy("p", "r", rules=(RuleSpec("auto_label", {"threshold": 0.9, "max_fraction": 0.25}),))
    est = estimate_auto_label_precision(capped, ctx, val, {})
    assert est["labeled"] == 2 and est["precision"] == 1.0  # the top quarter of the a's, the top b: val rows 0, 1
    pol = Policy("p", "r", rules=(RuleSpec("auto_label", {"threshold": 0.9, "min_agreement": 0.8,
                                                          "agreement_from": "embeddings", "neighbours": 2}),))
    assert estimate_auto_label_precision(pol, ctx, val)["precision"] == 1.0  # neighbours veto row 2
    assert estimate_auto_label_precision(Policy("p", "r"), ctx, val) is None  # no auto_label rule


def test_label_issue_rules_use_training_records_only():
    findings = {"label_issues": [dict(id=1, table="train", score=.9, label="a", suggested_label="b"),
                                 dict(id=3, table="val", score=.99, label="b", suggested_label="a")]}
    out = get_rule("exclude_label_issues")(_ctx(findings))
    assert [op.ids.tolist() for op in out.ops] == [[1]] and out.ops[0].action == "exclude"
    many = {"label_issues": [dict(id=i, table="train", score=s, label="a", suggested_label="b")
                             for i, s in ((0, .5), (1, .9), (2, .7), (3, .8))]}
    capped = get_rule("exclude_label_issues")(_ctx(many), max_fraction=0.5)  # 4 labeled rows
    assert [sorted(op.ids.tolist()) for op in capped.ops] == [[1, 3]]  # the two highest scores
    out = get_rule("relabel_label_issues")(_ctx(findings), min_confidence=0.5)
    assert [(op.label, op.ids.tolist()) for op in out.ops] == [("b", [1])]
    assert get_rule("relabel_label_issues")(_ctx(findings), min_confidence=0.7).ops == []


def test_pure_clusters_imbalance_and_flags():
    ctx = _ctx(cluster=[0, 0, 1, 1, 0, 1, 1, -1])
    out = get_rule("label_pure_clusters")(ctx, min_labeled=2, min_confidence=0.5)
    assert {op.label: sorted(op.ids.tolist()) for op in out.ops} == {"a": [4], "b": [5, 6]}
    assert get_rule("flag_low_confidence")(ctx, max_confidence=0.6).flagged == [6]
    rows = ctx.rows.set_column(1, "label", pa.array(["a", "a", "a", "a", "a", "a", "b", "b"]))
    out = get_rule("cap_imbalance")(RuleContext(["a", "b"], rows, ctx.metrics, {}), max_ratio=1.5)
    assert len(out.ops) == 1 and out.ops[0].weight == pytest.approx(0.5)
    assert sorted(out.ops[0].ids.tolist()) == [0, 1, 2, 3, 4, 5]


def test_rules_become_one_revision(project, digits_dir):
    from dataloupe.tables import apply_edits, import_imagefolder, open_table

    t = import_imagefolder(project, digits_dir, table="d", unlabeled_dir="undefined").table
    rows = t.to_arrow()
    undefined = rows.filter(pa.compute.is_null(rows["label"]))["id"].to_pylist()
    findings = {"pseudo_labels": {"class_thresholds": {"0": .5, "1": .5, "2": .5},
                                  "items": [dict(id=i, predicted="1", confidence=.9, agreement=1)
                                            for i in undefined[:4]]},
                "label_issues": [dict(id=0, table="train", score=1, label="0", suggested_label="2")]}
    ids = rows["id"].to_pylist()
    metrics = pa.table({"id": rows["id"], "predicted": pa.array(["1"] * len(ids)),
                        "confidence": pa.array([.9 if i in undefined[:4] else .2 for i in ids],
                                               pa.float32())})
    ctx = RuleContext(t.classes, rows, metrics, findings)
    ops = get_rule("auto_label")(ctx).ops + get_rule("exclude_label_issues")(ctx).ops
    res = apply_edits(project, "d", ops, message="iteration 1")
    assert res.changes == {"labeled": 4, "excluded": 1}
    assert open_table(project, "d").revision == 2


@pytest.mark.parametrize("text, match", [
    ("recipe: r\nbogus: 1\n", "unknown key"),
    ("rules: []\n", "needs a 'recipe'"),
    ("recipe: r\nrules:\n  - {rule: teleport}\n", "unknown rule 'teleport'"),
    ("recipe: r\nrules:\n  - {rule: auto_label, thresh: 1}\n", "no parameter"),
    ("recipe: r\nschedule: 5\n", "schedule"),
    ("recipe: r\nknn: {neighbours: 5}\n", "'knn' takes"),
    ("recipe: r\nknn: {k: 0}\n", "k must be"),
    ("recipe: r\nknn: {pool_fraction: 1.5}\n", "pool_fraction in"),
    ("recipe: r\nknn: {iterations: 2}\n", "knn iterations"),
])
def test_bad_policies_are_refused(tmp_path, text, match):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(DataloupeError, match=match):
        load_policy(str(f))
    with pytest.raises(DataloupeError, match="unknown policy"):
        load_policy("no-such-policy")


def test_shipped_policies_load():
    from dataloupe.loop._loop import check_validation_use

    for name in ("hackathon", "default", "fashion-mnist-demo"):
        p = load_policy(name)
        assert p.rules and p.recipe
        check_validation_use(p)  # no shipped policy lets validation loss steer training
        assert p.overrides_for(99) == {**p.overrides, **p.schedule[-1]}


def test_later_rules_see_what_earlier_rules_did():
    from dataloupe.loop._loop import plan_edits
    from dataloupe.loop._policy import Policy, RuleSpec

    rows = pa.table({"id": pa.array(np.arange(12, dtype=np.int64)),
                     "label": pa.array(["a"] * 8 + ["b"] * 4),
                     "weight": pa.array(np.ones(12, np.float32))})
    loss = np.full(12, .1, np.float32)
    loss[5] = 9.0
    metrics = pa.table({"id": np.arange(12, dtype=np.int64), "predicted": ["a"] * 12,
                        "confidence": np.full(12, .9, np.float32), "loss": loss})
    ctx = RuleContext(["a", "b"], rows, metrics, {})
    pol = Policy("p", "r", rules=(RuleSpec("exclude_high_loss", {"quantile": 0.9}),
                                  RuleSpec("cap_imbalance", {"max_ratio": 1.5})))
    ops, per_rule, _ = plan_edits(pol, ctx)
    assert [op.action for op in ops] == ["exclude", "set_weight"] and per_rule == [("exclude_high_loss", 1),
                                                                                    ("cap_imbalance", 1)]
    assert ops[0].ids.tolist() == [5]
    assert sorted(ops[1].ids.tolist()) == [0, 1, 2, 3, 4, 6, 7]  # row 5 stays excluded
    assert ops[1].weight == pytest.approx(6 / 7, abs=1e-4)  # seven active a's against four b's, ratio 1.5
    from dataloupe.tables import EditOp, rows_after_ops

    with pytest.raises(DataloupeError, match="select by ids"):  # a predicate needs the stored table
        rows_after_ops(rows, [EditOp("exclude", where="loss > 1")], ["a", "b"])
    with pytest.raises(DataloupeError, match="unknown class"):
        rows_after_ops(rows, [EditOp("set_label", ids=[1], label="zebra")], ["a", "b"])


def test_crossfit_label_issues_uses_out_of_sample_probabilities_least_plausible_first():
    from dataclasses import replace

    ctx = _ctx()
    oos = {0: np.array([.95, .05]), 1: np.array([.02, .98]), 2: np.array([.08, .92]), 3: np.array([.97, .03])}
    # labels a, a, b, b: ids 1 (p(a)=.02) and 3 (p(b)=.03) are implausible; 2 (p(b)=.92) is fine
    out = get_rule("crossfit_label_issues")(replace(ctx, crossfit=oos), max_fraction=1.0)
    assert [(op.action, sorted(op.ids.tolist())) for op in out.ops] == [("undefine", [1, 3])]
    out = get_rule("crossfit_label_issues")(replace(ctx, crossfit=oos), max_fraction=0.25, action="exclude")
    assert [(op.action, op.ids.tolist()) for op in out.ops] == [("exclude", [1])]  # 1 of 4 labeled: the least plausible
    assert get_rule("crossfit_label_issues")(ctx).ops == []  # no cross-fitting this iteration: nothing
    with pytest.raises(DataloupeError, match="action"):
        get_rule("crossfit_label_issues")(replace(ctx, crossfit=oos), action="delete")


def test_rules_can_start_at_a_later_iteration_and_crossfit_keys_are_checked(tmp_path):
    from dataclasses import replace

    from dataloupe.loop._loop import plan_edits

    f = tmp_path / "p.yaml"
    f.write_text("recipe: fashion-mnist\ncrossfit: {folds: 3}\nrules:\n"
                 "  - {rule: auto_label, from_iteration: 2, threshold: 0.9}\n")
    pol = load_policy(str(f))
    assert pol.crossfit == {"folds": 3, "iterations": [1], "overrides": {}} and pol.rules[0].from_iteration == 2
    ops, per_rule, _ = plan_edits(pol, _ctx(PSEUDO))
    assert ops == [] and per_rule == [("auto_label", 0)]  # iteration 1: not yet
    ops, _, _ = plan_edits(pol, replace(_ctx(PSEUDO), iteration=2))
    assert ops
    f.write_text("recipe: fashion-mnist\ncrossfit:\n  - {folds: 3}\n  - {folds: 2, overrides: {epochs: 4}}\n")
    from dataloupe.loop._policy import crossfit_judges

    assert crossfit_judges(load_policy(str(f))) == ({"folds": 3, "iterations": [1], "overrides": {}},
                                                    {"folds": 2, "iterations": [1], "overrides": {"epochs": 4}})
    assert crossfit_judges(pol) == (pol.crossfit,)
    for bad in ("crossfit: {folds: 1}", "crossfit: {foldz: 3}", "crossfit: {iterations: 2}", "crossfit: []",
                "crossfit: [{folds: 3}, {folds: 1}]", "crossfit: [[{folds: 3}]]",
                "rules:\n  - {rule: auto_label, from_iteration: 0}"):
        f.write_text(f"recipe: fashion-mnist\n{bad}\n")
        with pytest.raises(DataloupeError):
            load_policy(str(f))


def test_fold_assignment_is_stratified_and_seeded():
    from dataloupe.train._crossfit import fold_assignment

    labels = np.repeat(np.arange(3), [10, 7, 5])
    f = fold_assignment(labels, 5, seed=1)
    for c in range(3):
        counts = np.bincount(f[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1  # each class spread evenly over the folds
    assert (fold_assignment(labels, 5, seed=1) == f).all() and (fold_assignment(labels, 5, seed=2) != f).any()


def test_auto_label_from_label_propagation_agrees_ranks_and_caps_over_the_pool():
    from dataloupe.loop._rules import propagated_labels

    ctx = _emb_ctx()
    names, score = propagated_labels(ctx, k=3)
    assert names[4] == "a" and names[5] == "b" and names[6] == "b" and names[7] == "a"
    assert np.all((score[4:] > 0.5) & (score[4:] <= 1.0))
    # network predicts a, a, b, b for rows 4..7: it agrees with propagation on 4 and 6 only
    out = get_rule("auto_label")(ctx, threshold=0.0, agreement_from="propagation", neighbours=3)
    assert {op.label: op.ids.tolist() for op in out.ops} == {"a": [4], "b": [6]}
    # a pool-wide cap: the best-ranked half of the 4 undefined rows, whatever their class
    out = get_rule("auto_label")(ctx, threshold=0.0, agreement_from="propagation", neighbours=3, max_fraction=0.25,
                                 cap_per_class=False)
    assert sum(len(op.ids) for op in out.ops) == 1
    # seeds are labeled rows with weight > 0 only: without two labeled classes, nothing is propagated
    no_b = pa.table({"id": ctx.rows["id"], "label": pa.array(["a", "a", None, None, None, None, None, None]),
                     "weight": ctx.rows["weight"]})
    from dataclasses import replace

    assert get_rule("auto_label")(replace(ctx, rows=no_b), threshold=0.0, agreement_from="propagation").ops == []


def test_undefine_outliers_touches_training_outliers_only():
    findings = {"outliers": [dict(id=1, table="train", score=3.0), dict(id=5, table="train", score=2.5),
                             dict(id=2, table="val", score=9.0), dict(id=99, table="train", score=4.0)]}
    ops = get_rule("undefine_outliers")(_ctx(findings)).ops
    # id 1 is labeled: undefined; 5 is already undefined; 2 is a validation row; 99 is not in the table
    assert [(op.action, op.ids.tolist()) for op in ops] == [("undefine", [1])]
    ops = get_rule("undefine_outliers")(_ctx(findings), labeled_only=False).ops
    assert [(op.action, sorted(op.ids.tolist())) for op in ops] == [("undefine", [1, 5])]
    assert get_rule("undefine_outliers")(_ctx({"outliers": [dict(id=2, table="val", score=1.0)]})).ops == []


def test_policy_parameters_are_read_from_the_rule_signature(tmp_path):
    from dataloupe.loop import RuleOutput, rule
    from dataloupe.loop._policy import rule_parameters
    from dataloupe.loop._rules import _RULES

    @rule("test_signature_rule")
    def _r(ctx, min_score: float = 0.0, *, limit: int = 1, **extra) -> RuleOutput:
        local_variable = limit  # a local name is no parameter
        return RuleOutput(flagged=[local_variable])

    try:
        assert rule_parameters(_r) == {"min_score", "limit"}
        f = tmp_path / "p.yaml"
        f.write_text("recipe: fashion-mnist\nrules:\n  - rule: test_signature_rule\n    local_variable: 3\n")
        with pytest.raises(DataloupeError, match="no parameter.*local_variable; valid: limit, min_score"):
            load_policy(str(f))
    finally:
        _RULES.pop("test_signature_rule")


def test_default_policy_labels_the_whole_pool_then_relabels_what_the_next_model_disputes():
    """`default`: after every iteration the vote labels every undefined row, however unsure (the
    next network learns from all of them), then every automatic label is propagated anew from the
    given rows over the run's embedding and weighed by its certainty. Given labels are never touched."""
    from dataloupe.loop._loop import plan_edits
    from dataloupe.tables import rows_after_ops

    pol = load_policy("default")
    assert [pol.overrides_for(i).get("mixup_alpha") for i in (0, 1)] == [0.2, 0.2]  # 0-based
    given = {0: "a", 1: "a", 2: "b", 3: "b", 4: None, 5: None, 6: None, 7: None}
    ctx = _emb_ctx(origin=given)  # ids 4-7 undefined, predicted a / a / b / b at 0.96-0.99
    metrics = ctx.metrics.set_column(2, "confidence", pa.array(np.array([.9, .95, .95, .99, .97, .51, .96, .93],
                                                                        np.float32)))
    ctx = RuleContext(ctx.classes, ctx.rows, metrics, {}, origin_labels=given)
    ops, _, _ = plan_edits(pol, ctx)
    after = rows_after_ops(ctx.rows, ops, ["a", "b"])
    # the vote labels rows 4-7 (0.51 too), then propagation from the given rows over the embedding
    # overrides it where it disagrees: row 5 sits with the given b's, row 7 with the given a's
    assert after["label"].to_pylist() == ["a", "a", "b", "b", "a", "b", "b", "a"]
    assert dict(plan_edits(pol, ctx)[1])["relabel_propagated"] > 0  # after iteration 1 already

    # iteration 2: its model says row 5 is b (0.99), row 0 (a given label) b as well
    metrics2 = metrics.set_column(1, "predicted", pa.array(["b", "b", "b", "b", "a", "b", "b", "b"]))
    metrics2 = metrics2.set_column(2, "confidence", pa.array(np.full(8, .99, np.float32)))
    ctx2 = RuleContext(ctx.classes, after, metrics2, {}, origin_labels=given, iteration=2)
    ops2, per_rule, _ = plan_edits(pol, ctx2)
    after2 = rows_after_ops(after, ops2, ["a", "b"])
    # the network contradicts row 7's automatic a (b at 0.99), so it returns to the pool and gets the
    # vote's b; then every automatic label is propagated anew from the given rows over its embedding:
    # row 7, near the given a's, is a again although the network says b
    assert after2["label"].to_pylist() == ["a", "a", "b", "b", "a", "b", "b", "a"]
    assert dict(per_rule)["relabel_propagated"] == 1  # one set_label edit; every weight stays 1 here
    # and weighs every automatic label by the propagation's certainty (here all sure: weight 1;
    # the weighing itself: test_relabel_propagated_can_weigh_rows_by_the_propagations_certainty)
    assert [r.params.get("weigh") for r in pol.rules if r.rule == "relabel_propagated"] == [True]
    w2 = after2["weight"].to_numpy()
    assert np.all(w2[:4] == 1) and np.all((w2[4:] >= 0.05) & (w2[4:] <= 1))
    assert [pol.overrides_for(i).get("mixup_alpha") for i in (0, 1, 2)] == [0.2, 0.2, 0.2] and pol.max_iterations == 4


def test_default_policy_continues_the_previous_network_after_iteration_2():
    """`default`: iterations 1 and 2 train from scratch; iterations 3 and 4 (and every later round
    with --iterations N, the last step repeating) continue the previous iteration's network for 3
    epochs at a lower LR instead of 8 from scratch (about half a round's time each)."""
    from dataloupe.loop._loop import check_starts, iteration_overrides, resolve_start

    pol = load_policy("default")
    check_starts(pol, 5)  # no iteration asks for a start it cannot have
    assert [resolve_start(pol, "L", k) for k in range(1, 6)] == [None, None, "L-it2", "L-it3", "L-it4"]
    third = pol.overrides_for(2)
    assert (third["epochs"], third["lr"], third["scheduler"]) == (3, 0.0003, "cosine")
    assert pol.overrides_for(4) == third and pol.overrides_for(1)["epochs"] == 8
    # what the loop (and bench/weigh_pair.py) trains with: the loop-level value resolved to the run
    assert iteration_overrides(pol, "L", 3) == {**third, "continue_from": "L-it2"}
    assert "continue_from" not in iteration_overrides(pol, "L", 2)


def _pool_ctx(labels, origin, weight=None, seed=0):
    """Two blobs (a around +x, b around +y), 40 rows each; rows 0/1 and 40/41 carry given labels."""
    rng = np.random.default_rng(seed)
    e = np.concatenate([rng.normal([1, 0], 0.15, (40, 2)), rng.normal([0, 1], 0.15, (40, 2))]).astype(np.float32)
    rows = pa.table({"id": pa.array(np.arange(80, dtype=np.int64)), "label": pa.array(labels, pa.string()),
                     "weight": pa.array(np.ones(80, np.float32) if weight is None else weight)})
    metrics = pa.table({"id": np.arange(80, dtype=np.int64), "predicted": ["b"] * 80,
                        "confidence": np.full(80, .99, np.float32),
                        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), 2)})
    return RuleContext(["a", "b"], rows, metrics, {}, origin_labels=origin, iteration=2)


def test_relabel_propagated_is_seeded_by_the_given_labels_only():
    given = {i: ("a" if i in (0, 1) else "b" if i in (40, 41) else None) for i in range(80)}
    # the loop's earlier automatic labels call half the a-blob "b" (a confident mistake)
    labels = [given[i] or ("b" if 2 <= i < 22 or i >= 40 else "a") for i in range(80)]
    ctx = _pool_ctx(labels, given)
    from dataloupe.loop._rules import propagated_labels

    names, score = propagated_labels(ctx, k=5, temperature=0.1, seeds="labeled")
    assert (names[2:22] == "b").sum() > 10  # seeded by every label, the mistakes spread and stay
    names, score = propagated_labels(ctx, k=5, temperature=0.1, seeds="given")
    assert (names[:40] == "a").all() and (names[40:] == "b").all() and np.all(score > 0.5)

    out = get_rule("relabel_propagated")(ctx, k=5)
    assert [(op.label, op.ids.tolist()) for op in out.ops] == [("a", list(range(2, 22)))]
    # undefined rows get a label too; a given label is never changed, an excluded row keeps its own
    labels2 = [None if i in (30, 50) else lab for i, lab in enumerate(labels)]
    w = np.ones(80, np.float32)
    w[5] = 0
    out = get_rule("relabel_propagated")(_pool_ctx(labels2, given, w), k=5)
    got = {op.label: op.ids.tolist() for op in out.ops}
    assert got == {"a": [i for i in range(2, 22) if i != 5] + [30], "b": [50]}
    given_b = {**given, 0: "b"}  # a given label the embedding disputes stays as given
    out = get_rule("relabel_propagated")(_pool_ctx(["b"] + labels[1:], given_b), k=5)
    assert all(0 not in op.ids.tolist() for op in out.ops)
    assert get_rule("relabel_propagated")(_pool_ctx(labels, None)).ops == []  # origin unknown: no-op
    # one given class only: nothing to propagate
    assert get_rule("relabel_propagated")(_pool_ctx(labels, {i: ("a" if i < 2 else None) for i in range(80)})).ops == []
    # bad settings are refused with the valid ranges, before anything is computed
    for bad in ({"temperature": 0.0}, {"alpha": 1.0}, {"k": 0}, {"steps": 0}):
        with pytest.raises(DataloupeError, match="relabel_propagated needs"):
            get_rule("relabel_propagated")(ctx, **bad)
    with pytest.raises(DataloupeError, match="seeds must be labeled or given"):
        propagated_labels(ctx, seeds="all")


def test_relabel_propagated_can_weigh_rows_by_the_propagations_certainty():
    given = {i: ("a" if i in (0, 1) else "b" if i in (40, 41) else None) for i in range(80)}
    labels = [given[i] or ("a" if i < 40 else "b") for i in range(80)]
    w = np.ones(80, np.float32)
    w[60] = 0  # excluded: keeps weight 0
    ctx = _pool_ctx(labels, given, w)
    e = np.asarray(ctx.metrics["embedding"].combine_chunks().flatten()).reshape(80, 2).copy()
    bridge = [38, 39, 78, 79]  # four rows half-way between the blobs: the propagation is unsure of them
    angle = np.deg2rad(45 + np.linspace(-1, 1, 4))
    e[bridge] = np.c_[np.cos(angle), np.sin(angle)]
    metrics = ctx.metrics.set_column(3, "embedding", pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), 2))
    ctx = RuleContext(["a", "b"], ctx.rows, metrics, {}, origin_labels=given, iteration=2)
    plain = [(op.action, op.label, op.ids.tolist()) for op in get_rule("relabel_propagated")(ctx, k=8).ops]
    assert all(action == "set_label" for action, _, _ in plain)  # weights untouched by default
    ops = get_rule("relabel_propagated")(ctx, k=8, weigh=True, min_weight=0.1).ops
    assert [(op.action, op.label, op.ids.tolist()) for op in ops if op.action == "set_label"] == plain
    weight = {i: op.weight for op in ops if op.action == "set_weight" for i in op.ids.tolist()}
    assert not set(weight) & {0, 1, 40, 41, 60}  # given and excluded rows keep their weights
    assert all(weight[i] <= 0.15 for i in bridge) and all(0.1 <= v <= 1 for v in weight.values())
    assert np.mean([weight.get(i, 1.0) for i in set(range(80)) - set(bridge)]) > 0.9  # the blobs stay near 1
    assert all(round(v / 0.05) * 0.05 == pytest.approx(v) for v in weight.values())
    with pytest.raises(DataloupeError, match="min_weight"):
        get_rule("relabel_propagated")(ctx, weigh=True, min_weight=0)


def test_the_estimate_scores_relabel_propagated_on_every_hidden_validation_row():
    from dataloupe.loop._loop import estimate_auto_label_precision
    from dataloupe.loop._policy import Policy, RuleSpec

    given = {i: ("a" if i in (0, 1) else "b" if i in (40, 41) else None) for i in range(80)}
    ctx = _pool_ctx([given[i] or "b" for i in range(80)], given)
    e = np.array([[1, 0.05], [0.95, 0], [0, 1], [0.05, 1.0]], np.float32)
    val = pa.table({"id": np.arange(4, dtype=np.int64), "label": ["a", "b", "b", "b"],  # val row 1 is an "a" image
                    "predicted": ["b"] * 4, "confidence": np.full(4, .99, np.float32),
                    "embedding": pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), 2)})
    pol = Policy("p", "r", rules=(RuleSpec("auto_label", {"threshold": 0.9}),
                                  RuleSpec("relabel_propagated", {"k": 5}, from_iteration=2)))
    shadow = {0: "b", 1: "b"}  # earlier picks are replaced: the rule relabels them all
    est = estimate_auto_label_precision(pol, ctx, val, shadow)
    assert shadow == {0: "a", 1: "a", 2: "b", 3: "b"}
    assert est["coverage"] == 1.0 and est["cumulative_precision"] == 0.75
    # weighing adds set_weight edits (a validation row half-way between the blobs gets one); the
    # estimate still scores only the classes the rule gives
    e5 = np.vstack([e, [[0.7, 0.7]]]).astype(np.float32)
    val5 = pa.table({"id": np.arange(5, dtype=np.int64), "label": ["a", "b", "b", "b", "a"],
                     "predicted": ["b"] * 5, "confidence": np.full(5, .99, np.float32),
                     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(e5.ravel()), 2)})
    plain, weighed = (Policy("p", "r", rules=(pol.rules[0], RuleSpec("relabel_propagated", {"k": 40, **extra},
                                                                     from_iteration=2)))
                      for extra in ({}, {"weigh": True}))
    plain_shadow, weighed_shadow = {}, {}
    plain_est = estimate_auto_label_precision(plain, ctx, val5, plain_shadow)
    assert estimate_auto_label_precision(weighed, ctx, val5, weighed_shadow) == plain_est
    assert weighed_shadow == plain_shadow and None not in plain_shadow.values() and len(plain_shadow) == 5
    # before from_iteration, only auto_label's picks count (the network says b everywhere)
    est = estimate_auto_label_precision(pol, replace(ctx, iteration=1), val, {})
    assert est["cumulative_precision"] == 0.75 and est["coverage"] == 1.0
