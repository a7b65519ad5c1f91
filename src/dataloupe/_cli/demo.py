"""``dataloupe demo``: the README's main job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dataloupe._cli.common import ProjectOpt, project_from
from dataloupe.project import DataloupeError
from dataloupe.tables import import_idx, list_tables, open_table

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {"fmnist-train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "train"),
                 "fmnist-test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "test")}


def _find(folder: Path, stem: str) -> Path | None:
    for cand in (folder / f"{stem}.gz", folder / stem):
        if cand.is_file():
            return cand
    return None


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        fashion_dir: Annotated[Optional[Path], typer.Option(help="Folder with the Fashion-MNIST IDX files.")] = None,
        project: ProjectOpt = None,
    ) -> None:
        """Import Fashion-MNIST into versioned tables and show them."""
        p = project_from(project)
        folder = fashion_dir or FASHION_DIR
        existing = {t["name"] for t in list_tables(p)}
        for name, (img, lab, split) in FASHION_FILES.items():
            if name in existing:
                continue
            xi, yl = _find(folder, img), _find(folder, lab)
            if xi is None or yl is None:
                raise DataloupeError(
                    f"Fashion-MNIST not found in {folder}: install it with "
                    "`sudo apt-get install dataset-fashion-mnist` (Debian) or pass --fashion-dir "
                    "DIR holding the four IDX files")
            typer.echo(f"importing {xi.name} -> table {name} ...")
            import_idx(p, xi, yl, table=name, classes=FASHION_CLASSES, split=split)
        for name in FASHION_FILES:
            s = open_table(p, name).summary()
            typer.echo(f"\n{name} (revision {s['revision']}, {s['rows']} rows, {s['labeled']} "
                       f"labeled, {s['undefined']} undefined, {s['excluded']} excluded)")
            for c, n in s["classes"].items():
                typer.echo(f"  {c:<12} {n:>6}")
        typer.echo(f"\nproject: {p.root}\nnext: dataloupe table ls --project {p.root}")
