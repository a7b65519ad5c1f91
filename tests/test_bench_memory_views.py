"""``bench/memory_views.py``: a memory's metrics from its base's kept views and from a second forward
pass agree, and a base without kept views is refused with what to do."""

import pytest
from _bench import load_bench
from _train_helpers import FAST, make_digit_tables

from dataloupe.project import Project
from dataloupe.train import load_recipe, train


def test_the_two_ways_give_the_same_metrics_and_a_run_without_views_is_refused(tmp_path):
    project = Project.open(tmp_path / "proj")
    make_digit_tables(project, tmp_path)
    for run, collect in (("b", "true"), ("nokept", "false")):
        recipe = load_recipe("fashion-mnist", FAST + ["tta_hflip=true", f"collect={collect}"])
        train(project, "dig-train", "dig-val", recipe, run=run, tty=False)
    bench = load_bench("memory_views")
    rows = bench.compare(project, "b", k=5, temperature=0.1, pool_fraction=0.5, weight=1.0)
    assert [r["way"] for r in rows] == ["views", "collect"] and rows[0]["val_top1"] == rows[1]["val_top1"]
    assert all(r["rows"] == 500 and r["same_prediction"] == 500 and r["max_abs_diff"] < 1e-5 for r in rows)
    with pytest.raises(SystemExit, match="no current kept views"):
        bench.compare(project, "nokept", k=5, temperature=0.1, pool_fraction=0.5, weight=1.0)
