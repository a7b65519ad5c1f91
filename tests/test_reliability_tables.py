"""Issue 14, tables side: bad input is a one-line error and writes nothing; no data is lost.

Each test names the item of the issue it covers and fails on the code before the fix.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataloupe.project import DataloupeError, Project
from dataloupe.tables import (StaleRevisionError, edit_table, export_csv, import_csv, import_idx,
                              import_imagefolder, open_table)
from dataloupe.tables import _store

SRC = Path(__file__).resolve().parents[1] / "src"


def _write_idx(path: Path, arr: np.ndarray) -> Path:
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())
    return path


def _idx_pair(folder: Path, n: int, value: int, tag: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    x = np.full((n, 28, 28), value, np.uint8)
    y = (np.arange(n) % 3).astype(np.uint8)
    return _write_idx(folder / f"img-{tag}.gz", x), _write_idx(folder / f"lab-{tag}.gz", y)


def test_item1_idx_import_with_a_path_as_table_name_writes_nothing_outside(project, tmp_path):
    victim = tmp_path / "v"
    victim.mkdir()
    (victim / "000000.png").write_text("precious")
    images, labels = _idx_pair(tmp_path / "idx", 2, 7, "a")
    for name in (str(victim), "../../x", "../v", "d\n"):
        with pytest.raises(DataloupeError, match="invalid table name"):
            import_idx(project, images, labels, table=name, limit=1)
    assert (victim / "000000.png").read_text() == "precious"
    assert not (tmp_path / "x").exists() and not (project.root / "images").exists()


def test_item2_two_idx_imports_into_one_new_name_never_mix_pixels(project, tmp_path):
    pairs = {10: _idx_pair(tmp_path / "idx", 3000, 10, "dark"), 200: _idx_pair(tmp_path / "idx", 3000, 200, "light")}
    gate = threading.Barrier(2)
    outcome: dict[int, object] = {}

    def run(value: int) -> None:
        gate.wait()
        try:
            outcome[value] = import_idx(project, *pairs[value], table="same")
        except DataloupeError as e:
            outcome[value] = e

    threads = [threading.Thread(target=run, args=(v,)) for v in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [v for v, o in outcome.items() if not isinstance(o, Exception)]
    assert len(winners) == 1, outcome
    assert "already exists" in str(outcome[({10, 200} - set(winners)).pop()])
    t = open_table(project, "same")
    for rel in t.to_arrow(columns=["path"])["path"].to_pylist()[::97]:
        assert set(np.unique(np.asarray(Image.open(t.image_path(rel))))) == {winners[0]}, rel


def test_item4_where_must_be_one_whole_expression(project, digits_dir):
    import_imagefolder(project, digits_dir, table="d", unlabeled_dir="undefined")
    for bad in ("1=1; DROP TABLE x", "label = '0') OR (label = '1'", "label = '0' garbage", "(label = '0'"):
        with pytest.raises(DataloupeError, match="invalid predicate"):
            edit_table(project, "d", action="set_weight", weight=2.0, where=bad, message="m")
    assert open_table(project, "d").revision == 1  # nothing written
    ok = edit_table(project, "d", action="set_weight", weight=2.0, message="m",
                    where="(label = '0') OR (label = '1') -- both classes")
    assert ok.changed == 20


def test_item5_csv_paths_and_symlinks_out_of_the_root_are_skipped(project, tmp_path, digits_dir):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "in").mkdir(parents=True)
    outside.mkdir()
    src = next((digits_dir / "0").glob("*.png"))
    shutil.copy(src, root / "in" / "a.png")
    shutil.copy(src, outside / "x.png")
    os.symlink(outside / "x.png", root / "in" / "link.png")
    (root / "list.csv").write_text("path,label\nin/a.png,0\n../outside/x.png,0\nin/link.png,0\n")
    rep = import_csv(project, root / "list.csv", table="c", classes=["0"])
    assert rep.table.to_arrow()["path"].to_pylist() == ["in/a.png"]
    reasons = dict(rep.skipped)
    assert set(reasons) == {"../outside/x.png", "in/link.png"}
    assert all("outside the image root" in r for r in reasons.values())


def test_item5_training_data_and_the_cache_refuse_files_out_of_the_root(tmp_path, digits_dir):
    from dataloupe.data import build_cache, missing_files
    from dataloupe.data._samples import SampleSet

    root = tmp_path / "root"
    root.mkdir()
    src = next((digits_dir / "0").glob("*.png"))
    shutil.copy(src, root / "a.png")
    os.symlink(src, root / "link.png")  # a real image, but outside the root
    s = SampleSet(ids=np.array([0, 1]), labels=np.array([0, 0]), weights=np.ones(2, np.float32),
                  paths=["a.png", "link.png"], root=root, content_key="k")
    assert list(missing_files(s)) == [1]
    cache = build_cache(s, 16, tmp_path / "cache")
    assert list(cache.failed) == [1] and "outside the image root" in cache.failed[1]
    assert cache.images[1].max() == 0 and cache.images[0].max() > 0  # never read


def test_item6_strict_import_writes_nothing(project, digits_dir):
    (digits_dir / "0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataloupeError, match="--strict: nothing was written"):
        import_imagefolder(project, digits_dir, table="s", unlabeled_dir="undefined", strict=True)
    assert not (project.tables_dir / "s" / "revisions.json").exists()
    rep = import_imagefolder(project, digits_dir, table="s", unlabeled_dir="undefined")  # not strict: skipped
    assert [p for p, _ in rep.skipped] == ["0/broken.png"]


def test_item11_bad_csv_columns_and_names_are_one_line_errors(project, digits_dir, tmp_path):
    rel = "0/" + next((digits_dir / "0").glob("*.png")).name
    cases = {
        "weight.csv": (f"path,label,weight\n{rel},0,abc\n", "column 'weight' must hold float"),
        "dup.csv": (f"path,label,label\n{rel},0,0\n", "repeated column"),
        "rowid.csv": (f"path,label,_rowid\n{rel},0,3\n", "'_rowid' not allowed"),
    }
    for name, (text, msg) in cases.items():
        (digits_dir / name).write_text(text)
        with pytest.raises(DataloupeError, match=msg):
            import_csv(project, digits_dir / name, table="c", classes=["0"])
    assert not (project.tables_dir / "c" / "revisions.json").exists()
    with pytest.raises(DataloupeError, match="invalid table name"):
        import_imagefolder(project, digits_dir, table="d\n", unlabeled_dir="undefined")
    t = import_imagefolder(project, digits_dir, table="d", unlabeled_dir="undefined").table
    with pytest.raises(DataloupeError, match="invalid table name"):
        open_table(project, "d\n")
    with pytest.raises(DataloupeError, match="cannot write /proc"):
        export_csv(t, "/proc/x.csv")


def test_item11_ids_file_with_a_huge_number_is_a_one_line_error(cli, digits_dir, tmp_path):
    cli("table", "import", "imagefolder", digits_dir, "--table", "d", "--unlabeled-dir", "undefined")
    (tmp_path / "ids.txt").write_text("99999999999999999999999\n")
    r = cli("table", "edit", "d", "--ids-file", tmp_path / "ids.txt", "--exclude", "-m", "x", check=False)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "one integer id" in r.stderr
    r = cli("table", "export", "d", "--csv", "/proc/x.csv", check=False)
    assert r.returncode == 2 and r.stderr.startswith("error: cannot write /proc/x.csv")


def _in_small_tmpfs(tmp_path: Path, script: str, size: str = "12m") -> dict:
    """Run ``script`` (Python) with ``MNT`` = a fresh tmpfs of ``size`` in a private mount namespace."""
    if not shutil.which("unshare"):
        pytest.skip("unshare not available")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "s.py").write_text(script)
    env = dict(os.environ, PYTHONPATH=str(SRC), MNT=str(mnt), OMP_NUM_THREADS="1")
    cmd = f"mount -t tmpfs -o size={size} none {mnt} && exec {sys.executable} {tmp_path / 's.py'}"
    r = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], env=env, capture_output=True, text=True, timeout=900)
    if "mount" in r.stderr and r.returncode != 0 and "Traceback" not in r.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


FILL = """
def fill(folder):
    with open(os.path.join(folder, "fill"), "wb") as f:
        try:
            while True:
                f.write(b"\\0" * 65536)
                f.flush()
        except OSError:
            pass
"""


def test_item11_edit_on_a_full_disk_keeps_the_revision(tmp_path, digits_dir):
    out = _in_small_tmpfs(tmp_path, f"""
import json, os
from dataloupe.project import Project, DataloupeError
from dataloupe.tables import import_imagefolder, edit_table, open_table
{FILL}
p = Project.open(os.environ["MNT"] + "/proj")
import_imagefolder(p, {str(digits_dir)!r}, table="d", unlabeled_dir="undefined")
fill(os.environ["MNT"])
try:
    edit_table(p, "d", action="exclude", where="label = '0'", message="x")
    err = None
except DataloupeError as e:
    err = str(e)
t = open_table(p, "d")
n = t.summary()["excluded"]
os.remove(os.environ["MNT"] + "/fill")
again = edit_table(p, "d", action="exclude", where="label = '0'", message="x").table.revision
print(json.dumps({{"err": err, "revision": t.revision, "excluded": n, "again": again}}))
""")
    assert out["err"] and "disk full" in out["err"] and "revision 1 is still the latest" in out["err"]
    assert (out["revision"], out["excluded"], out["again"]) == (1, 0, 2)


def test_item12_cache_and_checkpoint_on_a_full_disk_say_so_and_leave_no_temp_files(tmp_path, digits_dir):
    out = _in_small_tmpfs(tmp_path, f"""
import json, os, pathlib
import numpy as np
from dataloupe.project import Project, DataloupeError
from dataloupe.tables import import_imagefolder, open_table
from dataloupe.data import build_cache, sample_set_from_table
from dataloupe.train._checkpoint import atomic_save
{FILL}
p = Project.open(os.environ["MNT"] + "/proj")
t = import_imagefolder(p, {str(digits_dir)!r}, table="d", unlabeled_dir="undefined").table
s = sample_set_from_table(t, t.classes)
dec = p.cache_dir / "decoded"
dec.mkdir(parents=True)
stale = dec / "old-64.u8.tmp999999999"  # left by a build that was killed (no such process)
stale.write_bytes(b"x" * 1000)
fill(os.environ["MNT"])
os.remove(os.environ["MNT"] + "/fill")
with open(os.environ["MNT"] + "/fill", "wb") as f:  # leave ~0.5 MB: too little for the cache
    f.write(b"\\0" * (os.statvfs(os.environ["MNT"]).f_bavail * os.statvfs(os.environ["MNT"]).f_frsize - 500_000))
res = {{}}
try:
    build_cache(s, 128, p.cache_dir)  # 48 x 128 x 128 x 3 = 2.4 MB
except DataloupeError as e:
    res["cache"] = str(e)
res["left"] = sorted(x.name for x in dec.iterdir())
fill(os.environ["MNT"])
try:
    atomic_save({{"w": np.zeros(1_000_000)}}, p.runs_dir / "r" / "best.pt")
except DataloupeError as e:
    res["ckpt"] = str(e)
res["ckpt_left"] = sorted(x.name for x in (p.runs_dir / "r").iterdir())
print(json.dumps(res))
""")
    assert "could not build the decoded cache" in out["cache"] and "disk full" in out["cache"]
    assert out["left"] == []  # neither this build's temp file nor the dead build's
    assert "could not write checkpoint" in out["ckpt"] and "disk full" in out["ckpt"]
    assert out["ckpt_left"] == []


def test_also_expected_revision_is_checked_under_the_table_lock(project, digits_dir):
    """Between the early check and the commit another writer lands: the edit must refuse (409)."""
    from dataloupe.ui._actions import ActionRequest, apply_action

    import_imagefolder(project, digits_dir, table="d", unlabeled_dir="undefined")
    tdir = project.tables_dir / "d"
    result: dict = {}

    def action() -> None:
        try:
            result["ok"] = apply_action(project, "d", ActionRequest("exclude", ids=[0, 1], expected_revision=1))
        except DataloupeError as e:
            result["err"] = e

    with _store.write_lock(tdir):  # another writer holds the table...
        th = threading.Thread(target=action)
        th.start()
        th.join(1.0)  # ...while the action has passed its early check and waits for the lock
        log = _store.read_log(tdir)
        rows = _store.read_rows(tdir, log[-1]["lance_version"])
        _store.commit(tdir, rows, message="other writer", changes={}, classes=log[-1]["classes"], log=log,
                      extra={"next_id": log[-1]["next_id"]})
    th.join()
    assert isinstance(result.get("err"), StaleRevisionError), result
    assert open_table(project, "d").revision == 2  # only the other writer's revision


def test_also_table_show_takes_name_at_tag(cli, digits_dir):
    cli("table", "import", "imagefolder", digits_dir, "--table", "cm", "--unlabeled-dir", "undefined")
    cli("table", "edit", "cm", "--where", "label = '0'", "--exclude", "-m", "x")
    cli("table", "tag", "cm", "baseline", "-r", "1")
    s = json.loads(cli("table", "show", "cm@baseline", "--json").stdout)
    assert (s["revision"], s["excluded"]) == (1, 0)
    assert json.loads(cli("table", "show", "cm@2", "--json").stdout)["excluded"] == 10
