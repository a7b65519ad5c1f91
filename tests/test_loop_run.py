"""The loop end to end on a tiny real table with the real engine and analysis."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from dataloupe.loop import load_policy, run_loop
from dataloupe.project import DataloupeError
from dataloupe.tables import diff_revisions, open_table

from _train_helpers import make_digit_tables


def _policy(tmp_path, iterations=2):
    f = tmp_path / "tiny.yaml"
    f.write_text(f"""
recipe: chihuahua-muffin-resnet18
overrides: {{model: convnet-xxs, image_size: 16, batch_size: 32, lr: 0.01, rrc_scale: null, scheduler: cosine,
            hflip: 0, rotation: 0, color_jitter: null, log_every: 0.5}}
schedule: [{{epochs: 2}}, {{epochs: 3}}]
max_iterations: {iterations}
stop_when_no_change: false
rules:
  - {{rule: auto_label, threshold: 0.0, per_class: false}}
  - {{rule: flag_low_confidence, max_confidence: 0.5}}
""")
    return load_policy(str(f))


def test_loop_makes_one_revision_per_iteration_and_resumes(project, tmp_path):
    make_digit_tables(project, tmp_path, n_train=200, n_val=100, undefined=30)
    pol = _policy(tmp_path)
    logs = []
    res = run_loop(project, train="dig-train", val="dig-val", policy=pol, name="t",
                   iterations=1, log=logs.append)
    assert [r["iteration"] for r in res.iterations] == [1]
    row = res.iterations[0]
    assert set(row) >= {"iteration", "revision", "labeled", "undefined", "excluded", "val_top1",
                        "run", "minutes"}
    assert row["revision"] == 1 and row["undefined"] == 30 and 0 <= row["val_top1"] <= 1
    t = open_table(project, "dig-train")
    assert t.revision == 2 and t.entry["message"].startswith("loop t iteration 1: auto-label 30")
    assert diff_revisions(project, "dig-train", 1, 2).summary == {"labeled": 30}
    # the run's recipe came from the policy's schedule for iteration 1
    recipe = (project.runs_dir / "t-it1" / "recipe.yaml").read_text()
    assert "epochs: 2" in recipe
    with pytest.raises(DataloupeError, match="--resume"):
        run_loop(project, train="dig-train", val="dig-val", policy=pol, name="t", iterations=2)
    res = run_loop(project, train="dig-train", val="dig-val", policy=pol, name="t",
                   iterations=2, resume=True, log=logs.append)
    assert [r["iteration"] for r in res.iterations] == [1, 2]  # iteration 1 not redone
    assert res.iterations[1]["revision"] == 2 and res.iterations[1]["undefined"] == 0
    assert open_table(project, "dig-train").revision == 2  # nothing left to label: no revision
    assert "epochs: 3" in (project.runs_dir / "t-it2" / "recipe.yaml").read_text()
    saved = json.loads((project.root / "loops" / "t" / "summary.json").read_text())
    assert [r["run"] for r in saved["iterations"]] == ["t-it1", "t-it2"]
    assert (project.root / "loops" / "t" / "accuracy.png").stat().st_size > 0


def test_loop_refuses_a_schedule_that_reads_validation_loss(project, tmp_path):
    make_digit_tables(project, tmp_path, n_train=60, n_val=30, undefined=10)
    f = tmp_path / "plateau.yaml"
    f.write_text("recipe: chihuahua-muffin-resnet18\n"  # the starter recipe: ReduceLROnPlateau on val loss
                 "overrides: {model: convnet-xxs, image_size: 16}\n"
                 "schedule: [{epochs: 1, scheduler: cosine}, {epochs: 1}]\n"
                 "rules:\n  - {rule: auto_label, threshold: 0.0}\n")
    before = open_table(project, "dig-train").revision
    with pytest.raises(DataloupeError, match="iteration 2 would train with scheduler 'plateau'"):
        run_loop(project, train="dig-train", val="dig-val", policy=str(f), name="p")
    assert open_table(project, "dig-train").revision == before  # nothing trained, nothing edited
    assert not (project.root / "loops" / "p").exists()


def test_loop_cli_json_is_the_only_thing_on_stdout(cli, tmp_path):
    from dataloupe.project import Project

    make_digit_tables(Project.open(tmp_path / "cliproj"), tmp_path, n_train=100, n_val=50, undefined=20)
    _policy(tmp_path)
    r = cli("loop", "--train", "dig-train", "--val", "dig-val", "--policy", str(tmp_path / "tiny.yaml"),
            "--iterations", "1", "--json")
    out = json.loads(r.stdout)  # epoch lines went to stderr
    assert out["loop"] == "dig-train-tiny"  # the loop is named after the table and the policy file
    assert [row["iteration"] for row in out["iterations"]] == [1]
    row = out["iterations"][0]
    assert row["run"] == "dig-train-tiny-it1"
    assert 0 <= row["val_top1"] <= 1 and row["cpu_minutes"] > 0 and row["undefined"] == 20
    assert "epoch=" in r.stderr
    log = cli("table", "log", "dig-train").stdout
    assert "loop dig-train-tiny iteration 1: auto-label 20" in log


def test_loop_stops_when_val_top1_stops_improving_or_nothing_changes(project, tmp_path):
    from dataclasses import replace

    from dataloupe.train import train

    make_digit_tables(project, tmp_path, n_train=60, n_val=30, undefined=10)
    pol = replace(_policy(tmp_path, iterations=3), patience=1)
    seen = iter([0.8, 0.7, 0.9])  # iteration 2 is worse than 1: patience 1 stops there

    def scripted_val(*args, **kw):
        return {**train(*args, **kw), "best_val_top1": next(seen)}

    res = run_loop(project, train="dig-train", val="dig-val", policy=pol, name="pat", train_fn=scripted_val)
    assert len(res.iterations) == 2 and "did not improve for 1" in res.stopped

    quiet = replace(pol, patience=0, stop_when_no_change=True, rules=pol.rules[1:])  # only flags, no edits
    res = run_loop(project, train="dig-train", val="dig-val", policy=quiet, name="quiet")
    assert len(res.iterations) == 1 and res.stopped == "no rule changed anything"


def test_loop_pretrains_once_and_every_iteration_starts_from_it(project, tmp_path):
    make_digit_tables(project, tmp_path)
    pol = replace(_policy(tmp_path), pretrain={"method": "simclr", "model": "convnet-xxs", "image_size": 16,
                                               "epochs": 1, "batch_size": 32, "collect": False})
    res = run_loop(project, train="dig-train", val="dig-val", policy=pol, name="s")
    assert len(res.iterations) == 2
    ssl = json.loads((project.runs_dir / "s-ssl" / "run.json").read_text())
    assert ssl["kind"] == "pretrain" and ssl["status"] == "completed"
    assert [(t["table"], t["revision"]) for t in ssl["tables"]] == [("dig-train", 1)]  # labels ignored, val unread
    for k in (1, 2):
        info = json.loads((project.runs_dir / f"s-it{k}" / "run.json").read_text())
        assert info["pretrained"]["source"].startswith("run:s-ssl") and not info["pretrained"]["missing"]
    # resuming the loop does not pretrain again
    mtime = (project.runs_dir / "s-ssl" / "checkpoints" / "best.pt").stat().st_mtime
    run_loop(project, train="dig-train", val="dig-val", policy=pol, name="s", resume=True, iterations=2)
    assert (project.runs_dir / "s-ssl" / "checkpoints" / "best.pt").stat().st_mtime == mtime


def test_continue_from_previous_starts_an_iteration_from_the_last_model(project, tmp_path):
    make_digit_tables(project, tmp_path, n_train=60, n_val=30, undefined=10)
    pol = _policy(tmp_path)
    pol = replace(pol, schedule=(pol.schedule[0], {**pol.schedule[1], "continue_from": "previous"}))
    run_loop(project, train="dig-train", val="dig-val", policy=pol, name="cp")
    it2 = json.loads((project.runs_dir / "cp-it2" / "run.json").read_text())
    assert "cp-it1" in it2["continue_from"]["source"] and not it2["continue_from"]["missing"]
    first = replace(pol, schedule=({**pol.schedule[0], "continue_from": "previous"},))
    with pytest.raises(DataloupeError, match="first iteration"):
        run_loop(project, train="dig-train", val="dig-val", policy=first, name="cp0")
    assert not (project.runs_dir / "cp0-it1").exists()


def test_continue_from_judge_starts_an_iteration_from_the_previous_judges_fold_model(project, tmp_path):
    make_digit_tables(project, tmp_path, n_train=60, n_val=30, undefined=10)
    judges = ({"folds": 2, "iterations": [1], "overrides": {}}, {"folds": 2, "iterations": [1], "overrides": {"epochs": 1}})
    pol = _policy(tmp_path)
    pol = replace(pol, schedule=(pol.schedule[0], {**pol.schedule[1], "continue_from": "judge"}), crossfit=judges)
    run_loop(project, train="dig-train", val="dig-val", policy=pol, name="cj")
    it2 = json.loads((project.runs_dir / "cj-it2" / "run.json").read_text())
    report = it2["continue_from"]
    assert "cj-it1-j2-cf1" in report["source"]  # the last judge's first fold model
    assert report["loaded"] == report["total"] and not report["missing"] and report["head"] == "loaded"
    one = replace(pol, schedule=(pol.schedule[0], {**pol.schedule[1], "continue_from": "judge:1"}))
    run_loop(project, train="dig-train", val="dig-val", policy=one, name="cj1")
    assert "cj1-it1-cf1" in json.loads((project.runs_dir / "cj1-it2" / "run.json").read_text())["continue_from"]["source"]
    # refused before anything trains: no judge in the iteration before, an unknown judge, a judge told to
    # continue from a judge, and an iteration past the schedule whose previous iteration has no judge
    bad = {"first": (replace(pol, schedule=({**pol.schedule[0], "continue_from": "judge"},)), 1, "cross-fits no judge"),
           "j3": (replace(pol, schedule=(pol.schedule[0], {**pol.schedule[1], "continue_from": "judge:3"})), 2,
                  "judges are 1, 2"),
           "inside": (replace(pol, crossfit=(judges[0], {**judges[1], "overrides": {"continue_from": "judge"}})), 2,
                      "continue_from: null"),
           "inside-previous": (replace(pol, crossfit=(judges[0], {**judges[1], "overrides": {"continue_from": "previous"}})),
                               2, "continue_from: null"),
           "third": (pol, 3, "iteration 2 cross-fits no judge")}
    for name, (p, n, message) in bad.items():
        with pytest.raises(DataloupeError, match=message):
            run_loop(project, train="dig-train", val="dig-val", policy=p, name=f"bad-{name}", iterations=n)
        assert not (project.runs_dir / f"bad-{name}-it1").exists()


def test_an_ensemble_iteration_trains_its_members_from_the_judges_fold_models_and_reports_their_ensemble(
        project, tmp_path):
    make_digit_tables(project, tmp_path, n_train=60, n_val=30, undefined=10)
    judge = {"folds": 2, "iterations": [1], "overrides": {"epochs": 1}}
    pol = _policy(tmp_path)
    pol = replace(pol, schedule=(pol.schedule[0], {**pol.schedule[1], "continue_from": "judge"}), crossfit=judge,
                  ensemble={"members": 2, "iterations": [2]})
    memory = {"iterations": [2], "k": 5, "temperature": 0.1, "pool_fraction": 0.5, "weight": 1.0}
    res = run_loop(project, train="dig-train", val="dig-val", policy=replace(pol, knn=memory), name="en")
    runs = {m: json.loads((project.runs_dir / m / "run.json").read_text()) for m in ("en-it1", "en-it2-m1", "en-it2-m2",
                                                                                     "en-it2", "en-it2-knn")}
    assert not (project.runs_dir / "en-it1-m1").exists() and runs["en-it1"].get("kind") is None  # iteration 1: one model
    assert "en-it1-cf1" in runs["en-it2-m1"]["continue_from"]["source"]  # member i continues the judge's fold model i
    assert "en-it1-cf2" in runs["en-it2-m2"]["continue_from"]["source"]
    assert (runs["en-it2-m1"]["seed"], runs["en-it2-m2"]["seed"]) == (0, 1)
    assert runs["en-it2"]["kind"] == "ensemble" and runs["en-it2"]["members"] == ["en-it2-m1", "en-it2-m2"]
    # policy knn: the ensemble with a memory of its training rows is the iteration's run (iteration 1 keeps its model)
    assert runs["en-it2-knn"]["kind"] == "memory" and runs["en-it2-knn"]["base"] == "en-it2"
    assert runs["en-it2-knn"]["memory"]["k"] == 5 and not (project.runs_dir / "en-it1-knn").exists()
    assert res.iterations[0]["run"] == "en-it1"
    assert res.iterations[-1]["run"] == "en-it2-knn"
    assert res.iterations[-1]["val_top1"] == runs["en-it2-knn"]["best_val_top1"]
    assert (project.runs_dir / "en-it2-knn" / "analysis.json").is_file()  # rules read the shipped run's analysis
    # refused before anything trains: more members than the judge has fold models, and continuing from an ensemble
    three = replace(pol, ensemble={"members": 3, "iterations": [2]})
    prev = replace(pol, schedule=(pol.schedule[0], {**pol.schedule[1], "continue_from": "previous"}),
                   ensemble={"members": 2, "iterations": [1]})
    for name, p, message in (("three", three, "has 2 folds"), ("prev", prev, "is an ensemble")):
        with pytest.raises(DataloupeError, match=message):
            run_loop(project, train="dig-train", val="dig-val", policy=p, name=name)
        assert not (project.runs_dir / f"{name}-it1").exists() and not (project.runs_dir / f"{name}-it1-m1").exists()
    f = tmp_path / "bad.yaml"
    f.write_text("recipe: fashion-mnist\nensemble: {members: 1}\n")
    with pytest.raises(DataloupeError, match="members must be a number >= 2"):
        load_policy(str(f))


def test_policy_pretrain_keys_are_checked_before_anything_runs(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("recipe: fashion-mnist\npretrain: {method: simclr, epohcs: 2}\n")
    with pytest.raises(DataloupeError, match="epohcs"):
        load_policy(str(f))


def test_loop_cross_fits_the_labeled_rows_and_returns_implausible_labels_to_the_pool(project, tmp_path):
    from dataloupe.loop import RuleSpec
    from dataloupe.tables import edit_table

    make_digit_tables(project, tmp_path)
    t = open_table(project, "dig-train").to_arrow(columns=["id", "label"])
    ids = [i for i, lab in zip(t["id"].to_pylist(), t["label"].to_pylist()) if lab == "d1"][:6]
    edit_table(project, "dig-train", action="set_label", label="d7", ids=ids, message="six wrong labels")
    pol = replace(_policy(tmp_path, iterations=1), schedule=({"epochs": 15},),
                  crossfit={"folds": 3, "iterations": [1], "overrides": {}},
                  rules=(RuleSpec("crossfit_label_issues", {"max_label_prob": 0.5, "max_fraction": 0.2}),))
    res = run_loop(project, train="dig-train", val="dig-val", policy=pol, name="cf")
    for k in (1, 2, 3):
        info = json.loads((project.runs_dir / f"cf-it1-cf{k}" / "run.json").read_text())
        assert info["status"] == "completed" and info["num_train"] < 320  # each fold model misses a third
    d = diff_revisions(project, "dig-train", res.iterations[0]["revision"], res.iterations[0]["next_revision"])
    back = {c["id"] for c in d.changed.to_pylist() if c["label_a"] is not None and c["label_b"] is None}
    assert len(back & set(ids)) >= 4  # most wrong labels judged implausible by models that never saw them
    assert len(back) <= 0.2 * 320


def test_loop_asks_several_cross_fitted_judges_and_rules_see_their_mean(project, tmp_path, monkeypatch):
    import numpy as np

    from dataloupe.loop import RuleSpec
    from dataloupe.loop import _rules
    from dataloupe.tables import edit_table
    from dataloupe.train import load_recipe
    from dataloupe.train._crossfit import crossfit_labeled

    make_digit_tables(project, tmp_path)
    t = open_table(project, "dig-train").to_arrow(columns=["id", "label"])
    ids = [i for i, lab in zip(t["id"].to_pylist(), t["label"].to_pylist()) if lab == "d1"][:6]
    edit_table(project, "dig-train", action="set_label", label="d7", ids=ids, message="six wrong labels")
    pol = replace(_policy(tmp_path, iterations=1), schedule=({"epochs": 15},),
                  crossfit=({"folds": 2, "iterations": [1], "overrides": {}},
                            {"folds": 2, "iterations": [1], "overrides": {"epochs": 8, "seed": 1}}),
                  rules=(RuleSpec("crossfit_label_issues", {"max_label_prob": 0.5, "max_fraction": 0.2}),))
    seen = {}
    real = _rules.crossfit_label_issues

    def spy(ctx, **kw):
        seen.update(ctx.crossfit)
        return real(ctx, **kw)

    monkeypatch.setitem(_rules._RULES, "crossfit_label_issues", spy)
    res = run_loop(project, train="dig-train", val="dig-val", policy=pol, name="cj")
    for run, epochs in (("cj-it1-cf1", 15), ("cj-it1-cf2", 15), ("cj-it1-j2-cf1", 8), ("cj-it1-j2-cf2", 8)):
        info = json.loads((project.runs_dir / run / "run.json").read_text())
        assert info["status"] == "completed" and info["epochs"] == epochs
    ref = f"dig-train@{res.iterations[0]['revision']}"
    each = []
    for cf, prefix in zip(pol.crossfit, ("cj-it1", "cj-it1-j2")):  # finished fold runs are reused, not retrained
        recipe = load_recipe(pol.recipe, {**pol.overrides_for(0), **cf["overrides"]})
        got_ids, probs = crossfit_labeled(project, ref, "dig-val", recipe, folds=2, run_prefix=prefix,
                                          log=lambda _: None)
        each.append(dict(zip(got_ids.tolist(), probs)))
    assert sorted(seen) == sorted(each[0]) and len(seen) == 320
    assert all(np.allclose(seen[i], (each[0][i] + each[1][i]) / 2, atol=1e-6) for i in seen)  # the judges' mean
    assert any(not np.allclose(each[0][i], each[1][i], atol=1e-3) for i in seen)  # two different judges
    d = diff_revisions(project, "dig-train", res.iterations[0]["revision"], res.iterations[0]["next_revision"])
    back = {c["id"] for c in d.changed.to_pylist() if c["label_a"] is not None and c["label_b"] is None}
    assert len(back & set(ids)) >= 4


def test_validation_labels_never_reach_the_loops_edits(project, tmp_path):
    """Shuffle the validation labels: with `checkpoint: last` (validation picks nothing) and no
    patience, the loop makes exactly the same edits: validation labels only report."""
    import numpy as np
    import pyarrow as pa

    from dataloupe.loop import RuleSpec
    from dataloupe.tables import create_table

    make_digit_tables(project, tmp_path)
    for name, src in (("tr-a", "dig-train"), ("tr-b", "dig-train"), ("va-a", "dig-val"), ("va-b", "dig-val")):
        t = open_table(project, src)
        rows = t.to_arrow(columns=["path", "label"])
        labels = rows["label"].to_pylist()
        if name == "va-b":
            labels = list(np.random.default_rng(3).permutation(np.array(labels, dtype=object)))
        create_table(project, name, pa.table({"path": rows["path"], "label": pa.array(labels, pa.string())}),
                     classes=t.classes, image_root=t.image_root, split="val" if name.startswith("va") else "train")
    pol = replace(_policy(tmp_path, iterations=2), overrides={**_policy(tmp_path).overrides, "checkpoint": "last"},
                  patience=0, crossfit={"folds": 2, "iterations": [1], "overrides": {}},
                  rules=(RuleSpec("crossfit_label_issues", {"max_label_prob": 0.2}),
                         RuleSpec("auto_label", {"threshold": 0.5, "min_agreement": 0.5, "agreement_from": "embeddings",
                                                 "max_fraction": 0.5})))
    edits = []
    for train, val in (("tr-a", "va-a"), ("tr-b", "va-b")):
        run_loop(project, train=train, val=val, policy=pol, name=f"l-{train}")
        t = open_table(project, train).to_arrow(columns=["path", "label", "weight"])
        edits.append(sorted(zip(t["path"].to_pylist(), t["label"].to_pylist(), t["weight"].to_pylist()),
                            key=lambda r: r[0]))
        assert open_table(project, train).revision > 1
    assert edits[0] == edits[1]
