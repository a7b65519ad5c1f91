"""Edits, revisions, diff, revert, tags, and refusing bad edits without writing anything."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dataloupe.project import DataloupeError
from dataloupe.tables import (diff_revisions, edit_table, import_imagefolder, open_table,
                              revert_table, set_classes, set_root, tag_table)


@pytest.fixture
def table(project, digits_dir):
    return import_imagefolder(project, digits_dir, table="d", unlabeled_dir="undefined").table


def test_each_edit_makes_one_revision_and_old_revisions_stay(project, table):
    r = edit_table(project, "d", action="exclude", where="label = '1'", message="drop ones")
    assert r.table.revision == 2 and r.changed == 10 and r.changes == {"excluded": 10}
    r = edit_table(project, "d", action="set_label", label="2", where="label IS NULL AND id < 35",
                   message="label some")
    assert r.table.revision == 3 and r.changes == {"labeled": 5}
    r = edit_table(project, "d", action="undefine", ids=[0, 1], message="unsure")
    assert r.changes == {"undefined": 2}
    r = edit_table(project, "d", action="delete", where="id >= 44", message="del")
    assert r.changes == {"deleted": 4} and r.table.num_rows == 44
    r = edit_table(project, "d", action="set_weight", weight=0.5, where="label = '0'", message="w")
    assert r.changes == {"reweighted": 8}
    r = edit_table(project, "d", action="include", where="weight = 0", message="back")
    assert r.changes == {"included": 10}
    latest = open_table(project, "d")
    assert latest.revision == 7 and [e["revision"] for e in latest.log()] == list(range(1, 8))
    first = open_table(project, "d", 1)
    assert first.summary()["excluded"] == 0 and first.num_rows == 48
    assert open_table(project, "d", 2).summary()["excluded"] == 10


def test_noop_edit_makes_no_revision(project, table):
    r = edit_table(project, "d", action="exclude", where="label = '1' AND label = '2'", message="x")
    assert not r.committed and r.matched == 0 and open_table(project, "d").revision == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(action="set_label", label="cat", where="id < 3"), "unknown class"),
    (dict(action="exclude", where="label === '1'"), "invalid predicate"),
    (dict(action="exclude", where="colour = 'red'"), "invalid predicate"),
    (dict(action="exclude", ids=[1, 999]), "not in the table"),
    (dict(action="exclude"), "select rows"),
    (dict(action="set_weight", weight=-1.0, where="id < 3"), "weight"),
    (dict(action="explode", where="id < 3"), "unknown action"),
])
def test_bad_edits_write_nothing(project, table, kwargs, match):
    with pytest.raises(DataloupeError, match=match):
        edit_table(project, "d", message="bad", **kwargs)
    assert open_table(project, "d").revision == 1
    assert len(open_table(project, "d").log()) == 1


def test_unknown_table_and_revision(project, table):
    with pytest.raises(DataloupeError, match="unknown table 'nope'"):
        open_table(project, "nope")
    with pytest.raises(DataloupeError, match="no revision 5"):
        open_table(project, "d", 5)
    with pytest.raises(DataloupeError, match="no tag"):
        open_table(project, "d", "best")


def test_diff_revert_and_tags(project, table):
    edit_table(project, "d", action="set_label", label="0", where="label = '1' AND id < 13",
               message="relabel")
    edit_table(project, "d", action="delete", ids=[40, 41], message="del")
    d = diff_revisions(project, "d", 1, 3)
    assert d.summary == {"relabeled": 3, "deleted": 2}
    assert sorted(d.changed["id"].to_pylist()) == [10, 11, 12]
    assert d.changed["label_a"].to_pylist() == ["1"] * 3 and d.changed["label_b"].to_pylist() == ["0"] * 3
    assert d.removed["id"].to_pylist() == [40, 41] and d.added.num_rows == 0
    back = diff_revisions(project, "d", 3, 1)
    assert back.summary == {"relabeled": 3, "added": 2}
    t = revert_table(project, "d", 1)
    assert t.revision == 4 and t.entry["reverted_to"] == 1
    assert t.to_arrow().equals(open_table(project, "d", 1).to_arrow())
    assert diff_revisions(project, "d", 1, 4).summary == {}
    tag_table(project, "d", "clean", 1)
    assert open_table(project, "d", "clean").revision == 1
    with pytest.raises(DataloupeError, match="already names"):
        tag_table(project, "d", "clean", 2)
    # ids are never reused, even after delete + revert
    from dataloupe.tables import add_rows
    import pyarrow as pa

    t = add_rows(project, "d", pa.table({"path": ["0/0_000.png"], "label": ["0"]}), message="add")
    assert t.to_arrow()["id"].to_pylist()[-1] == 48


def test_set_root_and_classes(project, table, digits_dir, tmp_path):
    moved = tmp_path / "moved"
    digits_dir.rename(moved)
    t = set_root(project, "d", moved)
    assert t.image_root == moved and (t.image_path(t.to_arrow()["path"][0].as_py())).is_file()
    assert open_table(project, "d", 1).image_root == moved  # not versioned: where files are
    with pytest.raises(DataloupeError, match="not a folder"):
        set_root(project, "d", tmp_path / "nowhere")
    t = set_classes(project, "d", ["2", "1", "0", "3"], message="add class 3")
    assert t.classes == ["2", "1", "0", "3"] and open_table(project, "d", 1).classes == ["0", "1", "2"]
    with pytest.raises(DataloupeError, match="unknown class"):
        set_classes(project, "d", ["0", "1"], message="drop a class in use")


def test_edit_with_joined_metrics(project, table):
    import pyarrow as pa

    ids = np.arange(48)
    extra = pa.table({"id": ids, "confidence": np.linspace(0, 1, 48).astype(np.float32),
                      "predicted": pa.array(["2"] * 48), "label": pa.array(["x"] * 48)})
    r = edit_table(project, "d", action="set_label", where="label IS NULL AND confidence > 0.9",
                   extra=extra, set_label_from="predicted", message="auto-label")
    # ids 30..47 are undefined; confidence > 0.9 holds for ids 43..47
    assert r.changes == {"labeled": 5}
    t = open_table(project, "d").to_arrow()
    assert t.filter(pa.compute.greater_equal(t["id"], 43))["label"].to_pylist() == ["2"] * 5


def test_cli_edit_log_show_export(cli, digits_dir, tmp_path):
    cli("table", "import", "imagefolder", digits_dir, "--table", "d", "--unlabeled-dir", "undefined")
    ids = tmp_path / "ids.txt"
    ids.write_text("0\n1\n# comment\n2\n")
    cli("table", "edit", "d", "--ids-file", ids, "--exclude", "-m", "three")
    cli("table", "edit", "d", "--where", "label = '2'", "--set-label", "1", "-m", "merge")
    log = json.loads(cli("table", "log", "d", "--json").stdout)
    assert [e["revision"] for e in log] == [1, 2, 3]
    assert {"revision", "message", "created", "parent", "changes"} <= set(log[1])
    assert log[1]["changes"] == {"excluded": 3} and log[2]["parent"] == 2
    assert json.loads(cli("table", "show", "d", "--revision", "1", "--json").stdout)["excluded"] == 0
    s = json.loads(cli("table", "show", "d", "--json").stdout)
    assert s["excluded"] == 3 and s["classes"] == {"0": 10, "1": 20, "2": 0}
    d = json.loads(cli("table", "diff", "d", "1", "3", "--json").stdout)
    assert d["summary"] == {"excluded": 3, "relabeled": 10}
    r = cli("table", "edit", "d", "--where", "label = '1'", "--set-label", "9", "-m", "x", check=False)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: unknown class '9'")
    assert len(r.stderr.strip().splitlines()) == 1
    out = tmp_path / "x.csv"
    cli("table", "export", "d", "--csv", out, "--revision", "1")
    assert len(out.read_text().splitlines()) == 49
    ls = json.loads(cli("table", "ls", "--json").stdout)
    assert ls[0]["name"] == "d" and ls[0]["revision"] == 3


def test_several_ops_make_one_revision_in_order(project, table):
    from dataloupe.tables import EditOp, apply_edits

    res = apply_edits(project, "d", [
        EditOp("set_label", label="0", where="label IS NULL AND id < 33", name="auto-label"),
        EditOp("exclude", where="label = '0'", name="drop zeros"),  # sees the new labels
        EditOp("undefine", ids=[20], name="unsure"),
    ], message="iteration 1")
    assert res.table.revision == 2 and len(res.table.log()) == 2
    assert [(o["name"], o["matched"]) for o in res.per_op] == [("auto-label", 3), ("drop zeros", 13),
                                                               ("unsure", 1)]
    assert res.changes == {"labeled": 3, "undefined": 1, "excluded": 13}
    from dataloupe.project import DataloupeError
    from dataloupe.tables import EditOp as Op

    with pytest.raises(DataloupeError, match="unknown class"):
        apply_edits(project, "d", [Op("exclude", ids=[1]), Op("set_label", label="z", ids=[2])],
                    message="bad second op")
    assert open_table(project, "d").revision == 2
