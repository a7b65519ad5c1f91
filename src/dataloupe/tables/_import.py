"""Importers (image folder, CSV, IDX) and CSV export.

Every image is fully decoded once at import; files that cannot be decoded are skipped
and reported with their reason, and the import still succeeds (callers may make it
strict).
"""

from __future__ import annotations

import csv
import gzip
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from PIL import Image

from dataloupe._imagepath import OutsideRootError, image_file
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import _store
from dataloupe.tables._store import check_table_name
from dataloupe.tables._edit import add_rows, create_table
from dataloupe.tables._table import Table, open_table

MAX_PIXELS = 64_000_000  # refuse decompression bombs at import


@dataclass
class ImportReport:
    """Result of an import: the table revision made and every file that was skipped."""

    table: Table
    imported: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def to_dict(self) -> dict:
        return {"table": self.table.name, "revision": self.table.revision,
                "imported": self.imported,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


def check_image(path: Path) -> tuple[int, int] | str:
    """Fully decode ``path``; return ``(width, height)`` or the reason it is unusable."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                return f"image too large ({w}x{h} pixels)"
            im.load()  # full decode: catches truncated and corrupt data
        return w, h
    except FileNotFoundError:
        return "file not found"
    except PermissionError:
        return "permission denied"
    except Image.DecompressionBombError:
        return "image too large (decompression bomb)"
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        return f"not a readable image ({type(e).__name__}: {str(e).splitlines()[0][:120]})"


def _check_inside(root: Path, rel: str) -> tuple[int, int] | str:
    try:
        return check_image(image_file(root, rel))
    except OutsideRootError:
        return f"outside the image root {root}"


def _check_all(root: Path, rels: list[str]) -> tuple[list[int], list[tuple[int, int]], list[tuple[str, str]]]:
    """Decode-check files in parallel (Pillow releases the GIL while decoding)."""
    workers = min(32, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda r: _check_inside(root, r), rels, chunksize=64))
    ok, sizes, skipped = [], [], []
    for i, (rel, res) in enumerate(zip(rels, results)):
        if isinstance(res, str):
            skipped.append((rel, res))
        else:
            ok.append(i)
            sizes.append(res)
    return ok, sizes, skipped


def default_split(folder: Path) -> str:
    """``test``/``val`` when the folder's name says so, else ``train``."""
    n = folder.name.lower()
    return "test" if "test" in n else "val" if "val" in n else "train"


def _finish(project: Project, name: str, rows: pa.Table, *, classes: list[str], root: Path,
            message: str, split: str, append: bool, skipped: list, strict: bool = False,
            before_commit=None) -> ImportReport:
    if strict and skipped:
        shown = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
        raise DataloupeError(f"{len(skipped)} file(s) could not be imported ({shown}"
                             f"{'; ...' if len(skipped) > 3 else ''}); --strict: nothing was written")
    if append:
        t = add_rows(project, name, rows, message=message, split=split)
    else:
        t = create_table(project, name, rows, classes=classes, image_root=root,
                         message=message, split=split, before_commit=before_commit)
    return ImportReport(t, rows.num_rows, skipped)


def _resolve_classes(project: Project, found: list[str], classes: list[str] | None,
                     classes_from: str | None, append_to: str | None) -> list[str]:
    if append_to:
        return open_table(project, append_to).classes
    if classes_from:
        return open_table(project, classes_from).classes
    return list(classes) if classes else sorted(found)


def import_imagefolder(
    project: Project, folder: str | os.PathLike, *, table: str,
    unlabeled_dir: str | None = None, classes: list[str] | None = None,
    classes_from: str | None = None, split: str | None = None, append: bool = False,
    message: str | None = None, strict: bool = False,
) -> ImportReport:
    """Import ``folder/<class>/**/file``; ``folder/<unlabeled_dir>/**`` gives undefined rows.

    Unreadable files (and symlinks that lead out of ``folder``) are skipped and listed;
    with ``strict`` any skipped file is an error and nothing is written.

    Example:
        >>> import_imagefolder(p, "train128", table="cm-train", unlabeled_dir="undefined")  # doctest: +SKIP
    """
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise DataloupeError(f"not a folder: {root}")
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if unlabeled_dir and unlabeled_dir not in subdirs:
        raise DataloupeError(f"unlabeled folder {unlabeled_dir!r} not found in {root}")
    found = [d for d in subdirs if d != unlabeled_dir]
    cls = _resolve_classes(project, found, classes, classes_from, table if append else None)
    extra = sorted(set(found) - set(cls))
    if extra:
        raise DataloupeError(f"folder(s) {', '.join(extra)} are not among the classes "
                             f"({', '.join(cls)}); pass --classes or --unlabeled-dir")
    rels, labels = [], []
    for d in [*found, *([unlabeled_dir] if unlabeled_dir else [])]:
        for p in sorted((root / d).rglob("*")):
            if (p.is_file() or p.is_symlink()) and not p.name.startswith("."):
                rels.append(PurePosixPath(p.relative_to(root)).as_posix())
                labels.append(None if d == unlabeled_dir else d)
    if not rels:
        raise DataloupeError(f"no files found under {root}")
    ok, sizes, skipped = _check_all(root, rels)
    wh = np.array(sizes, dtype=np.int32).reshape(-1, 2)
    rows = pa.table({"path": pa.array([rels[i] for i in ok], pa.string()),
                     "label": pa.array([labels[i] for i in ok], pa.string()),
                     "width": pa.array(wh[:, 0]), "height": pa.array(wh[:, 1])})
    return _finish(project, table, rows, classes=cls, root=root,
                   message=message or f"import imagefolder {root.name}",
                   split=split or default_split(root), append=append, skipped=skipped, strict=strict)


def import_csv(
    project: Project, csv_file: str | os.PathLike, *, table: str, root: str | None = None,
    classes: list[str] | None = None, classes_from: str | None = None,
    split: str | None = None, append: bool = False, message: str | None = None,
    strict: bool = False,
) -> ImportReport:
    """Import a CSV with columns ``path,label`` (+ optional ``weight``, ``split``, metadata).

    An empty label means undefined; paths are relative to ``root`` (default: the CSV's
    folder). A path that leads out of ``root`` (``../``, absolute, or through a symlink)
    is skipped with the reason, like an unreadable file.
    """
    csv_path = Path(csv_file).expanduser().resolve()
    if not csv_path.is_file():
        raise DataloupeError(f"CSV file not found: {csv_path}")
    img_root = Path(root).expanduser().resolve() if root else csv_path.parent
    try:
        t = pacsv.read_csv(csv_path, convert_options=pacsv.ConvertOptions(
            column_types={"path": pa.string(), "label": pa.string(), "split": pa.string()},
            strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataloupeError(f"cannot read {csv_path.name}: {str(e).splitlines()[0]}") from None
    twice = sorted({c for c in t.column_names if t.column_names.count(c) > 1})
    if twice:
        raise DataloupeError(f"{csv_path.name} has repeated column(s) {', '.join(twice)} in its header")
    for col in ("path", "label"):
        if col not in t.column_names:
            raise DataloupeError(f"{csv_path.name} has no {col!r} column (columns: "
                                 f"{', '.join(t.column_names)})")
    if "id" in t.column_names:
        t = t.drop_columns(["id"])  # ids are the table's to give
    paths = t["path"].to_pylist()
    rels, bad = [], []
    for i, p in enumerate(paths):
        if not p:
            bad.append((i, f"row {i + 2}", "empty path"))
            continue
        pp = Path(p)
        if pp.is_absolute():
            try:
                pp = pp.resolve().relative_to(img_root)
            except ValueError:
                bad.append((i, p, f"outside the image root {img_root}"))
                continue
        rels.append((i, PurePosixPath(pp).as_posix()))
    ok, sizes, skipped = _check_all(img_root, [r for _, r in rels])
    keep = [rels[j][0] for j in ok]
    rows = t.take(pa.array(keep, pa.int64())) if keep else t.slice(0, 0)
    rows = rows.set_column(rows.column_names.index("path"), "path",
                           pa.array([rels[j][1] for j in ok], pa.string()))
    labels = [x or None for x in rows["label"].to_pylist()]
    rows = rows.set_column(rows.column_names.index("label"), "label", pa.array(labels, pa.string()))
    found = sorted({x for x in labels if x})
    cls = _resolve_classes(project, found, classes, classes_from, table if append else None)
    skipped = [(p, r) for _, p, r in bad] + skipped
    return _finish(project, table, rows, classes=cls, root=img_root,
                   message=message or f"import csv {csv_path.name}",
                   split=split or "train", append=append, skipped=skipped, strict=strict)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (MNIST format, optionally gzipped) into a uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataloupeError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataloupeError(f"{path.name} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataloupeError(f"{path.name} is truncated: expected {int(np.prod(dims))} bytes "
                             f"of data, found {body.size}")
    return body.reshape(dims)


def import_idx(
    project: Project, images: str | os.PathLike, labels: str | os.PathLike, *, table: str,
    classes: list[str] | None = None, split: str = "train", limit: int | None = None,
    message: str | None = None,
) -> ImportReport:
    """Import MNIST-format IDX files (e.g. Fashion-MNIST) as PNG files + a table.

    Images are written as one PNG per sample under the project's ``images/<table>/``:
    every table then has the same shape (one row = one file under an image root), so the
    decoded cache, thumbnails, the dashboard and the inference server treat IDX data like
    any photo folder. 28x28 PNGs cost ~0.4 KB each and are written once.
    """
    check_table_name(table)  # before anything is written: the name becomes a folder
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataloupeError(f"IDX shapes do not match: images {x.shape}, labels {y.shape}")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    k = int(y.max()) + 1 if len(y) else 0
    names = list(classes) if classes else [str(i) for i in range(k)]
    if len(names) < k:
        raise DataloupeError(f"{len(names)} class names given but labels go up to {k - 1}")
    out = project.images_dir(table)
    if _store.has_table(project, table):
        raise DataloupeError(f"table {table!r} already exists")
    rels = [f"{i:06d}.png" for i in range(len(x))]

    def write(block: range) -> None:
        for i in block:
            Image.fromarray(x[i]).save(out / rels[i], optimize=False, compress_level=1)

    def write_all() -> None:  # under the new table's lock, after the name was found free
        out.mkdir(parents=True, exist_ok=True)
        # Blocks of 1,024 images per task: a future per 28 px image cost more than the PNG
        # itself (a thread pool ignores map's chunksize); the 70,000 of Fashion-MNIST took 50 s, now 25 s.
        blocks = [range(a, min(a + 1024, len(x))) for a in range(0, len(x), 1024)]
        try:
            with ThreadPoolExecutor(min(16, (os.cpu_count() or 1) * 2)) as pool:
                list(pool.map(write, blocks))
        except OSError as e:
            raise DataloupeError(f"cannot write the images of {table!r} under {out}: "
                                 f"{os.strerror(e.errno) if e.errno else e}") from None

    rows = pa.table({"path": pa.array(rels, pa.string()),
                     "label": pa.array([names[v] for v in y], pa.string()),
                     "source_index": pa.array(np.arange(len(x), dtype=np.int64))})
    return _finish(project, table, rows, classes=names, root=out,
                   message=message or f"import idx {Path(images).name}", split=split,
                   append=False, skipped=[], before_commit=write_all)


def export_csv(table: Table, path: str | os.PathLike) -> int:
    """Write ``id,path,label,weight,split`` (+ metadata) of one revision; returns row count.

    Undefined labels are written as empty fields; paths as stored (relative).
    """
    t = table.to_arrow()
    order = ["id", "path", "label", "weight", "split"]
    t = t.select(order + [c for c in t.column_names if c not in order])
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(t.column_names)
            for batch in t.to_batches(65536):
                cols = [c.to_pylist() for c in batch.columns]
                w.writerows(["" if v is None else v for v in row] for row in zip(*cols))
    except OSError as e:
        raise DataloupeError(f"cannot write {path}: {e.strerror or e}") from None
    return t.num_rows
