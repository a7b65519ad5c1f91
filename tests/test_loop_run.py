"""The loop end to end on a tiny real table with the real engine and analysis."""

from __future__ import annotations

import json

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
    pol = _policy(tmp_path)
    r = cli("loop", "--train", "dig-train", "--val", "dig-val", "--policy", str(tmp_path / "tiny.yaml"),
            "--iterations", "1", "--json")
    out = json.loads(r.stdout)  # epoch lines went to stderr
    assert [row["iteration"] for row in out["iterations"]] == [1] and pol.name == "tiny"
    row = out["iterations"][0]
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
