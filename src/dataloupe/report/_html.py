"""``write_report``: one self-contained HTML file per run (every image inlined).

Sections: summary, training curves, confusion matrix (validation), embedding map, then
galleries of the findings of ``runs/<run>/analysis.json``: label issues, outliers,
near-duplicates, leakage, pseudo-labels and each category of the error taxonomy.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from dataloupe._fileio import write_bytes_atomic
from dataloupe.analysis import finding_rows
from dataloupe.analysis._runio import load_metrics
from dataloupe.runs import read_analysis_at, read_history, read_run, run_dir, run_tables
from dataloupe.analysis._trust import model_trust
from dataloupe.project import DataloupeError, Project
from dataloupe.report._plots import confusion_png, curves_png, map_png

THUMB = 96  # thumbnail size, px
GALLERY = 24  # images per gallery

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
.sub{color:#666}.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{width:112px;font-size:11px;text-align:center;border:1px solid #eee;border-radius:4px;padding:4px}
.card img{width:96px;height:96px;object-fit:contain;image-rendering:pixelated;background:#f4f4f4}
.pair{display:flex;gap:2px;justify-content:center}.pair img{width:72px;height:72px}
.card.wide{width:170px}table{border-collapse:collapse}td,th{padding:2px 10px;border-bottom:1px solid #eee;text-align:left}
.bad{color:#b00}.good{color:#070}figure{margin:0}img.plot{max-width:100%}
.suggest{color:#555;font-style:italic}.tbl{color:#666}
.warn{background:#fdecec;border:1px solid #f3b4b4;color:#991b1b;padding:8px 12px;border-radius:6px;font-weight:600}
.trust{background:#eef6ee;border:1px solid #cfe3cf;color:#14532d;padding:6px 12px;border-radius:6px}
"""


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class _Thumbs:
    """id -> inline JPEG thumbnail, per table (paths from the table at the collected revision)."""

    def __init__(self, project: Project, run: str, tables: dict[str, str]):
        from dataloupe.tables import open_table

        self.paths: dict[str, dict[int, Path]] = {}
        self.roles = dict(tables)
        for name in tables.values():
            try:
                rev = load_metrics(project, run, name, columns=["table_revision"]).column("table_revision")[0].as_py()
                t = open_table(project, name, rev)
            except (DataloupeError, IndexError):
                continue
            rows = t.to_arrow(columns=["id", "path"])
            self.paths[name] = {int(i): (t, p) for i, p in
                                zip(rows.column("id").to_pylist(), rows.column("path").to_pylist())}

    def img(self, table: str, sid: int) -> str:
        """``table``: a table name or a run role (train/val)."""
        from PIL import Image

        found = self.paths.get(self.roles.get(table, table), {}).get(int(sid))
        try:
            if found is None:
                raise ValueError("no such sample")
            with Image.open(found[0].image_path(found[1])) as im:
                im = im.convert("RGB")
                im.thumbnail((THUMB, THUMB))
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=85)
            return f'<img src="{_data_uri(buf.getvalue(), "image/jpeg")}" alt="{table} #{sid}">'
        except (OSError, TypeError, ValueError, DataloupeError):
            return f'<div title="image unavailable">#{sid}<br>(no image)</div>'


def _card(body: str, caption: str, wide: bool = False) -> str:
    return f'<div class="card{" wide" if wide else ""}">{body}<div>{caption}</div></div>'


def _section(title: str, note: str, cards: list[str], total: int) -> str:
    more = f" (showing {len(cards)} of {total})" if total > len(cards) else ""
    body = "".join(cards) if cards else "<p class='sub'>none found</p>"
    return f"<h2>{html.escape(title)}</h2><p class='sub'>{html.escape(note)}{more}</p><div class='grid'>{body}</div>"


def _map_figure(project: Project, run: str, tables: dict[str, str], classes: list[str], issues: set) -> bytes | None:
    parts = []
    for role, name in tables.items():
        try:
            m = load_metrics(project, run, name)
        except DataloupeError:
            continue
        if "map_x" in m.column_names:
            xy = np.c_[m.column("map_x").to_numpy(), m.column("map_y").to_numpy()]
            how = "map (dataloupe reduce)"
        else:  # no map stored yet: a PCA projection of the embeddings, computed here
            from sklearn.decomposition import PCA

            arr = m.column("embedding").combine_chunks()
            emb = arr.values.to_numpy().reshape(len(arr), arr.type.list_size)
            xy = PCA(2, random_state=0).fit_transform(emb)
            how = "PCA of the embeddings (run `dataloupe reduce` for a PaCMAP map)"
        idx = {c: i for i, c in enumerate(classes)}
        labels = np.array([idx.get(v, -1) if v else -1 for v in m.column("label").to_pylist()])
        flag = np.array([(name, int(i)) in issues for i in m.column("id").to_pylist()])
        parts.append((role, xy, labels, flag, how))
    if not parts:
        return None
    role, xy, labels, flag, how = parts[0]  # the train table (val shares the map when reduced)
    return map_png(xy, labels, classes, issues=flag, title=f"{tables[role]}: {how}")


def write_report(project: Project, run: str, *, out: str | Path | None = None) -> Path:
    """Write the HTML report of ``run`` (default ``runs/<run>/report.html``) and return its path.

    Raises:
        DataloupeError: unknown run, or no ``analysis.json`` (with the command to run).

    Example:
        >>> write_report(Project.open(), "a")  # doctest: +SKIP
        PosixPath('.../runs/a/report.html')
    """
    info = read_run(project, run)
    folder = run_dir(project, run)
    found = read_analysis_at(folder)
    if not found:
        raise DataloupeError(f"run {run!r} has no analysis yet: run `dataloupe analyze {run}` first")
    classes = list(info.get("classes") or found.get("classes") or [])
    tables = run_tables(info)
    history = read_history(folder)
    thumbs = _Thumbs(project, run, tables)
    e = html.escape
    made = (f"ensemble of {', '.join(info.get('members', []))}" if info.get("kind") == "ensemble" else
            f"{info.get('base')} with a kNN memory" if info.get("kind") == "memory" else
            f"seed {info.get('seed')}, epochs {info.get('epochs_done')}/{info.get('epochs')}")
    parts = [f"<h1>dataloupe report: run {e(run)}</h1><p class='sub'>recipe {e(str(info.get('recipe')))}, "
             f"train {e(str(tables.get('train')))}@{info.get('train_revision')}, val {e(str(tables.get('val')))}"
             f"@{info.get('val_revision')}, {e(made)}, "
             f"version {e(str(info.get('version')))}, probabilities: {e(str(found.get('probabilities')))}</p>"]
    tax = found.get("taxonomy", {})
    if "top1" in tax:
        rows = [("val top-1", tax["top1"]), ("val top-5", tax.get("top5")),
                ("top-1, suspected label errors set aside", tax.get("top1_without_label_issues")),
                ("ReaL top-1", tax.get("real_top1"))]
        parts.append("<table>" + "".join(f"<tr><th>{k}</th><td>{v:.4f}</td></tr>" for k, v in rows if v is not None)
                     + "</table>")
    trust = _trust(project, run, info, found, tables, classes)
    parts.append(f"<p class='{'warn' if trust['weak'] else 'trust'}' id='trust'>{'⚠ ' if trust['weak'] else ''}"
                 f"{e(trust['message'])}</p>")
    counts = {k: (len(found[k]) if isinstance(found.get(k), list) else None) for k in
              ("label_issues", "outliers", "near_duplicates", "leakage", "clusters")}
    parts.append("<p>" + ", ".join(f"{k.replace('_', ' ')}: <b>{v}</b>" for k, v in counts.items() if v is not None)
                 + f", pseudo-labels: <b>{len(found.get('pseudo_labels', {}).get('items', []))}</b></p>")
    for title, png in (("Training curves", curves_png(history)), ):
        if png:
            parts.append(f"<h2>{title}</h2><img class='plot' src='{_data_uri(png)}'>")
    if tables.get("val"):
        try:
            m = load_metrics(project, run, tables["val"], columns=["label", "predicted"])
            idx = {c: i for i, c in enumerate(classes)}
            pairs = [(idx[a], idx[b]) for a, b in zip(m.column("label").to_pylist(), m.column("predicted").to_pylist())
                     if a in idx and b in idx]
            if pairs:
                lab, pred = np.array(pairs).T
                parts.append(f"<h2>Confusion matrix ({e(tables['val'])})</h2>"
                             f"<img class='plot' src='{_data_uri(confusion_png(lab, pred, classes))}'>")
        except DataloupeError:
            pass
    issue_keys = {(tables.get(r.table, r.table), r.id) for r in finding_rows(found, "label_issues")}
    png = _map_figure(project, run, tables, classes, issue_keys)
    if png:
        parts.append(f"<h2>Embedding map</h2><img class='plot' src='{_data_uri(png)}'>")
    parts += _galleries(found, tables, thumbs, trust)
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>dataloupe {e(run)}</title>"
           f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
    path = Path(out) if out else folder / "report.html"
    write_bytes_atomic(path, doc.encode())
    return path


def _trust(project: Project, run: str, info: dict, found: dict, tables: dict[str, str], classes: list[str]) -> dict:
    """The model's quality next to its findings (see :func:`model_trust`)."""
    labeled = None
    if tables.get("train"):
        try:
            labeled = sum(v is not None for v in load_metrics(project, run, tables["train"], columns=["label"])
                          .column("label").to_pylist())
        except DataloupeError:
            pass
    issues = len(finding_rows(found, "label_issues", {"train", tables.get("train")}))
    val = info.get("best_val_top1")
    return model_trust(val if isinstance(val, (int, float)) else None, len(classes) or 2,
                       labeled=labeled, label_issues=issues)


def _sim(rec: dict) -> str:
    return "exact" if rec["exact"] else f"{rec['similarity']:.3f}"


def _galleries(found: dict, tables: dict[str, str], thumbs: _Thumbs, trust: dict | None = None) -> list[str]:
    e = html.escape
    out = []

    def where(role, sid) -> str:  # ids are per table: always say which
        return f"<span class='tbl'>{e(str(tables.get(role, role)))}</span> #{sid}"

    items = found.get("label_issues", [])
    note = "given label, then the label the model suggests (score: higher = more likely wrong)"
    if trust and trust["weak"]:
        note += ". WARNING: " + trust["message"]
    out.append(_section("Label issues", note,
                        [_card(thumbs.img(r["table"], r["id"]),
                               f"{where(r['table'], r['id'])}<br>label <span class='bad'>{e(r['label'])}</span><br>"
                               f"model suggests <span class='suggest'>{e(str(r['suggested_label']))}</span><br>"
                               f"score {r['score']:.2f}")
                         for r in items[:GALLERY]], len(items)))
    rows = finding_rows(found, "outliers")
    out.append(_section("Outliers", "farthest from their nearest neighbours in embedding space",
                        [_card(thumbs.img(r.table, r.id), f"{where(r.table, r.id)}<br>{r.score:.3f}")
                         for r in rows[:GALLERY]], len(rows)))
    items = found.get("near_duplicates", [])
    out.append(_section("Near-duplicates", "pairs within a table (cosine similarity; exact = same file bytes)",
                        [_card(f"<div class='pair'>{thumbs.img(r['table'], r['ids'][0])}{thumbs.img(r['table'], r['ids'][1])}</div>",
                               f"{where(r['table'], r['ids'][0])} / #{r['ids'][1]}<br>{_sim(r)}",
                               wide=True) for r in items[:GALLERY]], len(items)))
    items = found.get("leakage", [])
    tr, va = tables.get("train", ""), tables.get("val", "")
    out.append(_section("Leakage (val ↔ train)", "validation images duplicated in the training table",
                        [_card(f"<div class='pair'>{thumbs.img(va, r['val_id'])}{thumbs.img(tr, r['train_id'])}</div>",
                               f"{where('val', r['val_id'])} / {where('train', r['train_id'])}<br>"
                               f"{_sim(r)}", wide=True)
                         for r in items[:GALLERY]], len(items)))
    pl = found.get("pseudo_labels", {})
    items = pl.get("items", [])
    out.append(_section("Pseudo-labels", f"undefined rows above their class threshold (target precision "
                        f"{pl.get('target_precision')} on labeled rows; global threshold {pl.get('global_threshold')})",
                        [_card(thumbs.img(tr, r["id"]), f"{where('train', r['id'])} {e(r['predicted'])}<br>p {r['confidence']:.2f}, "
                               f"agree {r['agreement']:.2f}" if r.get("agreement") is not None else
                               f"{where('train', r['id'])} {e(r['predicted'])}<br>p {r['confidence']:.2f}")
                         for r in items[:GALLERY]], len(items)))
    for name, cat in found.get("taxonomy", {}).get("categories", {}).items():
        ex = cat.get("examples") or [dict(id=i) for i in cat.get("example_ids", [])]
        out.append(_section(f"Validation errors: {name.replace('_', ' ')}", f"{cat.get('count', 0)} samples "
                            "(label -> predicted)",
                            [_card(thumbs.img(va, r["id"]), f"{where('val', r['id'])} <span class='bad'>{e(r.get('label', ''))}</span>"
                                   f" → {e(r.get('predicted', ''))}") for r in ex[:GALLERY]], cat.get("count", 0)))
    return out
