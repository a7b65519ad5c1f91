"""Concurrent writers and processes killed mid-commit never lose or corrupt a revision."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pytest

from dataloupe.tables import create_table, diff_revisions, open_table

from conftest import SRC


def _env():
    return dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def _synthetic(project, name, n):
    rows = pa.table({"path": pa.array([f"c{i % 3}/{i:07d}.jpg" for i in range(n)]),
                     "label": pa.array([f"c{i % 3}" for i in range(n)])})
    return create_table(project, name, rows, classes=["c0", "c1", "c2"], image_root="/")


def test_two_writers_at_the_same_moment_both_land(project):
    _synthetic(project, "t", 2000)
    script = textwrap.dedent("""
        import sys, time
        from dataloupe.project import Project
        from dataloupe.tables import edit_table
        root, lo, go = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
        while time.time() < go:
            time.sleep(0.001)
        p = Project.open(root)
        for k in range(5):
            edit_table(p, "t", action="exclude", where=f"id = {lo + k}", message=f"w{lo}-{k}")
    """)
    go = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", script, str(project.root), str(lo), str(go)],
                              env=_env()) for lo in (0, 100)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    t = open_table(project, "t")
    assert t.revision == 11
    excluded = t.to_arrow(where="weight = 0")["id"].to_pylist()
    assert sorted(excluded) == [0, 1, 2, 3, 4, 100, 101, 102, 103, 104]
    msgs = {e["message"] for e in t.log()}
    assert {f"w{lo}-{k}" for lo in (0, 100) for k in range(5)} <= msgs


def test_conflict_error_when_lock_is_held(project):
    from dataloupe.project import DataloupeError
    from dataloupe.tables import _store, edit_table

    _synthetic(project, "t", 10)
    with _store.write_lock(_store.table_dir(project, "t")):
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            from dataloupe.project import Project
            from dataloupe.tables import _store, edit_table
            _store.LOCK_TIMEOUT_S = 0.5
            try:
                edit_table(Project.open({str(project.root)!r}), "t", action="exclude",
                           where="id = 1", message="blocked")
            except _store.TableConflictError as e:
                print("CONFLICT", e)
        """)], env=_env(), stdout=subprocess.PIPE, text=True)
        out = holder.communicate(timeout=60)[0]
    assert "CONFLICT" in out and "retry" in out
    assert open_table(project, "t").revision == 1
    edit_table(project, "t", action="exclude", where="id = 1", message="retry works")
    assert open_table(project, "t").revision == 2


def test_sigkill_between_lance_commit_and_log_keeps_previous_revision(project):
    _synthetic(project, "t", 5000)
    before = open_table(project, "t").to_arrow()
    script = textwrap.dedent(f"""
        import os, signal
        from dataloupe.project import Project
        from dataloupe._storage import Location
        from dataloupe.tables import edit_table
        real = Location.write_json_atomic
        def die(loc, obj):
            if loc.name == "revisions.json":
                os.kill(os.getpid(), signal.SIGKILL)  # the worst moment: data written, log not
            real(loc, obj)
        Location.write_json_atomic = die
        edit_table(Project.open({str(project.root)!r}), "t", action="delete", where="id < 4000",
                   message="doomed")
    """)
    r = subprocess.run([sys.executable, "-c", script], env=_env())
    assert r.returncode == -signal.SIGKILL
    t = open_table(project, "t")
    assert t.revision == 1 and t.to_arrow().equals(before)
    from dataloupe.tables import edit_table

    edit_table(project, "t", action="exclude", where="id < 10", message="after the crash")
    t = open_table(project, "t")
    assert t.revision == 2 and t.summary()["excluded"] == 10 and t.num_rows == 5000
    assert open_table(project, "t", 1).to_arrow().equals(before)


@pytest.mark.parametrize("delay", [0.15, 0.35, 0.6, 0.9])
def test_sigkill_at_random_moments_of_an_edit_loop(project, delay):
    _synthetic(project, "t", 200_000)
    script = textwrap.dedent(f"""
        from dataloupe.project import Project
        from dataloupe.tables import edit_table
        p = Project.open({str(project.root)!r})
        for k in range(1000):
            edit_table(p, "t", action="set_weight", weight=float(k % 7 + 1),
                       where=f"id % 10 = {{k % 10}}", message=f"loop {{k}}")
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env())
    time.sleep(1.5 + delay)  # interpreter start-up, then somewhere inside an edit
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    t = open_table(project, "t")
    rows = t.to_arrow()
    assert rows.num_rows == 200_000 and rows["id"].to_pylist() == list(range(200_000))
    # every revision in the log is readable and consistent with its recorded changes
    for e in t.log()[1:]:
        d = diff_revisions(project, "t", e["revision"] - 1, e["revision"])
        assert d.summary == e["changes"]
    from dataloupe.tables import edit_table

    res = edit_table(project, "t", action="exclude", where="id < 5", message="still writable")
    assert res.table.revision == t.revision + 1
