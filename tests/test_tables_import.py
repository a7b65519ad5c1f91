"""Importers: image folders, CSV and IDX files, with bad files reported and skipped."""

from __future__ import annotations

import gzip
import json
import os
import struct

import numpy as np
import pytest

from dataloupe.project import DataloupeError
from dataloupe.tables import (export_csv, import_csv, import_idx, import_imagefolder,
                              open_table, read_idx)


def _add_bad_files(folder):
    good = next(folder.glob("*.png")).read_bytes()
    (folder / "zero.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    corrupt = bytearray(good)
    corrupt[40:80] = b"\x00" * 40
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    (folder / "notes.txt").write_text("not an image")
    os.symlink(folder / "does-not-exist.png", folder / "dangling.png")  # unreadable


def test_imagefolder_counts_classes_and_paths(project, digits_dir):
    rep = import_imagefolder(project, digits_dir, table="d", unlabeled_dir="undefined")
    s = rep.table.summary()
    assert (s["rows"], s["labeled"], s["undefined"], s["excluded"]) == (48, 30, 18, 0)
    assert s["classes"] == {"0": 10, "1": 10, "2": 10}
    assert rep.table.revision == 1 and rep.skipped == []
    t = rep.table.to_arrow()
    assert t["id"].to_pylist() == list(range(48))
    assert all(not p.startswith("/") for p in t["path"].to_pylist())
    assert {p.split("/")[0] for p in t.filter(t["label"].is_null())["path"].to_pylist()} == {"undefined"}
    assert set(t["width"].to_pylist()) == {16}


def test_imagefolder_class_order_and_unknown_folder(project, digits_dir):
    t = import_imagefolder(project, digits_dir, table="d", unlabeled_dir="undefined",
                           classes=["2", "1", "0"]).table
    assert t.classes == ["2", "1", "0"]
    with pytest.raises(DataloupeError, match="not among the classes"):
        import_imagefolder(project, digits_dir, table="e", unlabeled_dir="undefined",
                           classes=["0", "1"])
    with pytest.raises(DataloupeError, match="already exists"):
        import_imagefolder(project, digits_dir, table="d", unlabeled_dir="undefined")


def test_bad_files_are_skipped_with_reasons(project, digits_dir):
    _add_bad_files(digits_dir / "1")
    rep = import_imagefolder(project, digits_dir, table="d", unlabeled_dir="undefined")
    reasons = dict(rep.skipped)
    assert set(reasons) == {f"1/{n}" for n in
                            ("zero.png", "truncated.png", "corrupt.png", "notes.txt", "dangling.png")}
    assert "0 bytes" in reasons["1/zero.png"]
    assert "not found" in reasons["1/dangling.png"]
    assert "not a readable image" in reasons["1/notes.txt"]
    assert rep.table.summary()["rows"] == 48  # the good files all landed


def test_cli_import_reports_skips_and_strict_fails(cli, digits_dir):
    _add_bad_files(digits_dir / "0")
    r = cli("table", "import", "imagefolder", digits_dir, "--table", "d", "--unlabeled-dir", "undefined")
    assert "skipped 0/zero.png" in r.stderr and "5 file(s) skipped" in r.stderr
    r = cli("table", "import", "imagefolder", digits_dir, "--table", "s", "--unlabeled-dir",
            "undefined", "--strict", check=False)
    assert r.returncode == 2 and "--strict: nothing was written" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    show = json.loads(cli("table", "show", "d", "--json").stdout)
    assert show["rows"] == 48 and show["revision"] == 1
    # issue 14 item 6: a strict import that fails commits nothing
    names = [t["name"] for t in json.loads(cli("table", "ls", "--json").stdout)]
    assert names == ["d"]


def test_csv_import_export_roundtrip(project, digits_dir, tmp_path):
    csv = digits_dir / "list.csv"
    csv.write_text("path,label,weight,source\n0/0_000.png,0,1.0,a\n1/1_000.png,,0.5,b\n"
                   "2/2_000.png,2,0,c\nmissing.png,0,1,d\n")
    rep = import_csv(project, csv, table="c", classes=["0", "1", "2"])
    assert rep.skipped == [("missing.png", "file not found")]
    t = rep.table.to_arrow()
    assert t["label"].to_pylist() == ["0", None, "2"]
    assert t["weight"].to_pylist() == [1.0, 0.5, 0.0]
    assert t["source"].to_pylist() == ["a", "b", "c"]
    assert rep.table.image_root == digits_dir
    out = tmp_path / "out.csv"
    export_csv(rep.table, out)
    lines = out.read_text().splitlines()
    assert lines[0] == "id,path,label,weight,split,source"
    assert lines[2] == "1,1/1_000.png,,0.5,train,b"


def test_csv_bad_columns_and_unknown_labels(project, digits_dir):
    bad = digits_dir / "bad.csv"
    bad.write_text("file,class\n0/0_000.png,0\n")
    with pytest.raises(DataloupeError, match="no 'path' column"):
        import_csv(project, bad, table="c")
    csv = digits_dir / "l.csv"
    csv.write_text("path,label\n0/0_000.png,zebra\n")
    with pytest.raises(DataloupeError, match="unknown class"):
        import_csv(project, csv, table="c", classes=["0"])
    with pytest.raises(DataloupeError, match="unknown table"):
        open_table(project, "c")


def _write_idx(path, arr: np.ndarray, gz=True):
    head = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_idx_import(project, tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:50] * 16).clip(0, 255).astype(np.uint8)
    _write_idx(tmp_path / "img.gz", x)
    _write_idx(tmp_path / "lab.gz", d.target[:50].astype(np.uint8))
    assert read_idx(tmp_path / "img.gz").shape == (50, 8, 8)
    names = [f"digit{i}" for i in range(10)]
    rep = import_idx(project, tmp_path / "img.gz", tmp_path / "lab.gz", table="m", classes=names,
                     limit=40)
    t = rep.table
    assert t.summary()["rows"] == 40 and t.classes == names
    first = t.to_arrow().to_pylist()[0]
    from PIL import Image

    img = np.asarray(Image.open(t.image_root / first["path"]))
    assert np.array_equal(img, x[0]) and first["label"] == names[d.target[0]]
    _write_idx(tmp_path / "short", x, gz=False)
    raw = (tmp_path / "short").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-10])
    with pytest.raises(DataloupeError, match="truncated"):
        read_idx(tmp_path / "short")
