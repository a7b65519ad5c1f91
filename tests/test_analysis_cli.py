"""CLI over a run's metrics: analyze, reduce, runs export, report, findings -> edits.

The run is built against the metrics contract (docs/architecture.md): a real tiny table
of digit images, a real linear model on PCA features, and AUM from a small MLP's
training margins, written as the Lance metrics table ``collect`` writes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"
N_TRAIN, N_UNDEF, N_VAL = 700, 100, 300


def _fixed(values):
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values, np.float32).ravel()),
                                             values.shape[1])


def _write_metrics(project, run, table, classes, ids, labels, probs, emb, aum):
    import lance

    pred = probs.argmax(1)
    names = np.array(classes, dtype=object)
    lab = labels >= 0
    loss = np.where(lab, -np.log(np.clip(probs[np.arange(len(ids)), np.clip(labels, 0, None)], 1e-12, 1)), np.nan)
    top = np.sort(probs, 1)
    cols = {
        "id": pa.array(ids, pa.int64()), "table_revision": pa.array(np.full(len(ids), table.revision), pa.int64()),
        "split": pa.array([table.name.split("-")[-1]] * len(ids)),
        "label": pa.array([names[i] if i >= 0 else None for i in labels], pa.string()),
        "predicted": pa.array(names[pred].tolist(), pa.string()),
        "confidence": pa.array(top[:, -1].astype(np.float32)),
        "margin": pa.array((top[:, -1] - top[:, -2]).astype(np.float32)),
        "entropy": pa.array((-(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1)).astype(np.float32)),
        "loss": pa.array(loss.astype(np.float32), mask=~lab), "correct": pa.array(pred == labels, mask=~lab),
        "probs": _fixed(probs), "embedding": _fixed(emb),
        "aum": pa.array(aum.astype(np.float32), mask=np.isnan(aum)), "forgetting": pa.nulls(len(ids), pa.int32()),
    }
    path = project.runs_dir / run / "metrics" / f"{table.name}.lance"
    path.parent.mkdir(parents=True, exist_ok=True)
    lance.write_dataset(pa.table(cols), str(path))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Project with tables dg-train (10% wrong folders, undefined rows, one exact duplicate
    file) and dg-val (one copy of a train image), and run ``a`` with collected metrics."""
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    from dataloupe.project import Project
    from dataloupe.tables import import_imagefolder, open_table

    root = tmp_path_factory.mktemp("analysis_cli")
    d = load_digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(d.target))
    noisy = d.target.copy()
    tr = order[:N_TRAIN]
    flip = tr[rng.choice(N_TRAIN, size=N_TRAIN // 10, replace=False)]
    noisy[flip] = (noisy[flip] + rng.integers(1, 10, size=len(flip))) % 10
    folders = {"train": root / "train", "val": root / "val"}
    files = {}
    for part, rows in (("train", order[:N_TRAIN + N_UNDEF]), ("val", order[N_TRAIN + N_UNDEF:N_TRAIN + N_UNDEF + N_VAL])):
        for j, i in enumerate(rows):
            sub = "undefined" if part == "train" and j >= N_TRAIN else f"d{noisy[i] if part == 'train' else d.target[i]}"
            f = folders[part] / sub / f"{i:04d}.png"
            f.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((d.images[i] * 15).astype(np.uint8)).resize((16, 16)).convert("RGB").save(f)
            files[int(i)] = f
    # exact duplicate inside train, and a train image leaked into val (same bytes)
    shutil.copy(files[int(tr[0])], folders["train"] / f"d{noisy[tr[0]]}" / "dup.png")
    shutil.copy(files[int(tr[1])], folders["val"] / f"d{d.target[tr[1]]}" / "leak.png")
    project = Project.open(root / "proj")
    classes = [f"d{c}" for c in range(10)]
    import_imagefolder(project, folders["train"], table="dg-train", unlabeled_dir="undefined", classes=classes)
    import_imagefolder(project, folders["val"], table="dg-val", classes=classes)

    def arrays(table):
        rows = table.to_arrow(columns=["id", "path", "label"])
        x = np.stack([np.asarray(Image.open(table.image_root / p).convert("L"), np.float32).ravel() / 255
                      for p in rows.column("path").to_pylist()])
        lab = np.array([classes.index(v) if v else -1 for v in rows.column("label").to_pylist()])
        return rows.column("id").to_numpy(), x, lab, rows.column("path").to_pylist()

    t_train, t_val = open_table(project, "dg-train"), open_table(project, "dg-val")
    ids_tr, x_tr, y_tr, paths_tr = arrays(t_train)
    ids_va, x_va, y_va, _ = arrays(t_val)
    pca = PCA(24, random_state=0).fit(x_tr)
    e_tr, e_va = pca.transform(x_tr), pca.transform(x_va)
    lab = y_tr >= 0
    clf = LogisticRegression(max_iter=300, C=0.1).fit(e_tr[lab], y_tr[lab])
    mlp = MLPClassifier((32,), random_state=0, learning_rate_init=0.01)
    margins = []
    for _ in range(6):
        mlp.partial_fit(e_tr[lab], y_tr[lab], classes=np.arange(10))
        lp = np.log(np.clip(mlp.predict_proba(e_tr[lab]), 1e-12, 1))
        given = lp[np.arange(lab.sum()), y_tr[lab]]
        lp[np.arange(lab.sum()), y_tr[lab]] = -np.inf
        margins.append(given - lp.max(1))
    aum = np.full(len(ids_tr), np.nan)
    aum[lab] = np.mean(margins, 0)
    run_dir = project.runs_dir / "a"
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps(dict(
        run="a", status="completed", recipe="test", train_table="dg-train", train_revision=t_train.revision,
        val_table="dg-val", val_revision=t_val.revision, classes=classes, seed=0, epochs=6, epochs_done=6)))
    (run_dir / "history.jsonl").write_text("".join(json.dumps(dict(
        epoch=e, train_loss=2 / e, train_top1=0.5 + e / 20, val_loss=2.2 / e, val_top1=0.5 + e / 25)) + "\n"
        for e in range(1, 7)))
    _write_metrics(project, "a", t_train, classes, ids_tr, y_tr, clf.predict_proba(e_tr), e_tr, aum)
    _write_metrics(project, "a", t_val, classes, ids_va, y_va, clf.predict_proba(e_va), e_va, np.full(len(ids_va), np.nan))
    names = [Path(p).name for p in paths_tr]
    wrong_ids = {int(ids_tr[j]) for j, n in enumerate(names) if n != "dup.png" and int(n[:4]) in set(flip.tolist())}
    return dict(root=root / "proj", wrong_ids=wrong_ids, classes=classes)


@pytest.fixture
def proj(base, tmp_path):
    dst = tmp_path / "proj"
    shutil.copytree(base["root"], dst)
    return dst


def dl(proj, *args, check=True):
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", DATALOUPE_PROJECT=str(proj))
    r = subprocess.run([sys.executable, "-m", "dataloupe", *map(str, args)], env=env, capture_output=True,
                       text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def metrics_columns(proj, table):
    import lance

    return lance.dataset(str(proj / "runs" / "a" / "metrics" / f"{table}.lance")).schema.names


def test_analyze_json_finds_the_planted_problems(proj, base):
    out = json.loads(dl(proj, "analyze", "a", "--json", "--folds", "5").stdout)
    assert {"label_issues", "outliers", "near_duplicates", "leakage", "clusters", "pseudo_labels", "taxonomy"} <= set(out)
    assert json.loads((proj / "runs" / "a" / "analysis.json").read_text()) == out
    found = {r["id"] for r in out["label_issues"] if r["table"] == "train"}
    tp = len(found & base["wrong_ids"])
    assert tp / len(base["wrong_ids"]) > 0.6 and tp / len(found) > 0.6
    assert any(r["exact"] and r["table"] == "train" for r in out["near_duplicates"])
    assert any(r["exact"] for r in out["leakage"])
    assert out["pseudo_labels"]["items"] and out["taxonomy"]["top1"] > 0.8
    # pseudo-labels of undefined rows: right against the digits' true classes (file name = digit index)
    from sklearn.datasets import load_digits

    from dataloupe.project import Project
    from dataloupe.tables import open_table

    rows = open_table(Project.open(proj), "dg-train").to_arrow(columns=["id", "path"])
    path = dict(zip(rows.column("id").to_pylist(), rows.column("path").to_pylist()))
    truth = load_digits().target
    hits = [r["predicted"] == f"d{truth[int(Path(path[r['id']]).stem)]}" for r in out["pseudo_labels"]["items"]]
    assert len(hits) >= 5 and np.mean(hits) >= 0.95
    assert "cluster" in metrics_columns(proj, "dg-train") and "cluster" in metrics_columns(proj, "dg-val")
    # findings become edits through the table API
    r = dl(proj, "table", "edit", "dg-train", "--ids-from-analysis", "a:label_issues", "--exclude", "-m", "drop issues", "--json")
    assert json.loads(r.stdout)["changed"] == len(found)
    r = dl(proj, "table", "edit", "dg-train", "--run", "a", "--where", "label IS NULL AND confidence > 0.9",
           "--set-label-from", "predicted", "-m", "auto-label", "--json")
    assert json.loads(r.stdout)["changed"] > 0


def test_bad_inputs_write_nothing(proj):
    from dataloupe.analysis import analyze_run
    from dataloupe.project import DataloupeError, Project

    p = Project.open(proj)
    real = proj.parent / "real.json"
    real.write_text(json.dumps([[0]] * 5))
    with pytest.raises(DataloupeError, match="has 5 entries"):
        analyze_run(p, "a", real_labels=real)
    real.write_text('{"not": "a list"}')
    with pytest.raises(DataloupeError, match="must be a JSON list"):
        analyze_run(p, "a", real_labels=real)
    with pytest.raises(DataloupeError, match="classes missing from a fold"):
        analyze_run(p, "a", folds=1000)
    with pytest.raises(DataloupeError, match="unknown run"):
        analyze_run(p, "zz")
    assert not (proj / "runs" / "a" / "analysis.json").exists()
    assert "cluster" not in metrics_columns(proj, "dg-train")
    shutil.rmtree(proj / "runs" / "a" / "metrics" / "dg-val.lance")
    r = dl(proj, "analyze", "a", check=False)  # the CLI: one line, exit 2, the command to run
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "dataloupe collect a --table dg-val" in r.stderr
    assert not (proj / "runs" / "a" / "analysis.json").exists()


def test_real_labels_accuracy(proj):
    import lance

    m = lance.dataset(str(proj / "runs" / "a" / "metrics" / "dg-val.lance")).to_table(columns=["id", "label"]).sort_by("id")
    real = [[int(v[1:])] for v in m.column("label").to_pylist()]
    real[0] = []
    f = proj.parent / "real.json"
    f.write_text(json.dumps(real))
    out = json.loads(dl(proj, "analyze", "a", "--json", "--real-labels", f).stdout)["taxonomy"]
    assert out["real_scored"] == len(real) - 1 and abs(out["real_top1"] - out["top1"]) < 0.01


def test_export_csv_and_reduce(proj, base):
    f = proj.parent / "a.csv"
    dl(proj, "runs", "export", "a", "--csv", f)
    rows = list(csv.DictReader(f.open()))
    assert len(rows) == N_TRAIN + N_UNDEF + 1 + N_VAL + 1
    assert list(rows[0])[:6] == ["id", "split", "label", "predicted", "confidence", "loss"]
    assert [k for k in rows[0] if k.startswith("prob_")] == [f"prob_{c}" for c in base["classes"]]
    p = np.array([[float(r[f"prob_{c}"]) for c in base["classes"]] for r in rows])
    assert np.allclose(p.sum(1), 1, atol=1e-3)
    assert all(r["loss"] == "" for r in rows if r["label"] == "")
    r = dl(proj, "runs", "export", "a", "--csv", f, "--table", "dg-train@7", check=False)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "7" in r.stderr  # no such revision
    from dataloupe.project import Project
    from dataloupe.tables import edit_table

    edit_table(Project.open(proj), "dg-train", action="exclude", ids=[0], message="new revision")
    r = dl(proj, "runs", "export", "a", "--csv", f, "--table", "dg-train@2", check=False)
    assert r.returncode == 2 and "not @2" in r.stderr and "dataloupe collect a --table dg-train@2" in r.stderr


@pytest.mark.slow
def test_reduce_cli(proj):
    dl(proj, "reduce", "a", "--method", "pacmap", "--dims", "3")
    assert {"map_x", "map_y", "map_z"} <= set(metrics_columns(proj, "dg-val"))
    dl(proj, "reduce", "a", "--method", "umap", "--dims", "2")
    assert {"map_x", "map_y"} <= set(metrics_columns(proj, "dg-val")) and "map_z" not in metrics_columns(proj, "dg-train")
    assert "2 or 3" in dl(proj, "reduce", "a", "--dims", "5", check=False).stderr


def test_reduce_run_api(proj):
    import lance

    from dataloupe.analysis import reduce_run
    from dataloupe.project import Project

    out = reduce_run(Project.open(proj), "a", method="pacmap", dims=2)
    assert out["rows"] == {"dg-train": N_TRAIN + N_UNDEF + 1, "dg-val": N_VAL + 1}
    m = lance.dataset(str(proj / "runs" / "a" / "metrics" / "dg-val.lance")).to_table(columns=["map_x", "map_y"])
    assert np.isfinite(m.column("map_x").to_numpy()).all() and "map_z" not in metrics_columns(proj, "dg-train")


def test_report_is_self_contained(proj):
    dl(proj, "analyze", "a")
    r = dl(proj, "report", "a")
    path = proj / "runs" / "a" / "report.html"
    assert str(path) in r.stdout
    doc = path.read_text()
    assert "http://" not in doc and "https://" not in doc and "src='/" not in doc and 'src="/' not in doc
    for section in ("Training curves", "Confusion matrix", "Embedding map", "Label issues", "Outliers",
                    "Near-duplicates", "Leakage", "Pseudo-labels", "Validation errors: model error"):
        assert section in doc
    assert doc.count("data:image/jpeg;base64,") > 20 and doc.count("data:image/png;base64,") >= 3
    assert "(no image)" not in doc


def test_report_without_analysis_says_what_to_run(proj):
    r = dl(proj, "report", "a", check=False)
    assert r.returncode == 2 and "dataloupe analyze a" in r.stderr
    assert not (proj / "runs" / "a" / "report.html").exists()


def test_analyze_run_api_returns_findings_and_train_metrics(proj):
    from dataloupe.analysis import analyze_run
    from dataloupe.project import Project

    findings, metrics = analyze_run(Project.open(proj), "a")
    assert "cluster" in metrics.column_names and metrics.num_rows == N_TRAIN + N_UNDEF + 1
    assert {r["table"] for r in findings["label_issues"]} <= {"train", "val"}
    assert findings["tables"] == {"train": "dg-train", "val": "dg-val"} and findings["probabilities"] == "model"
    # the model trained on dg-train: label issues there use cross-fitted probabilities
    assert findings["label_issue_probabilities"] == {"train": "crossfit-5", "val": "out-of-sample"}
    assert all(set(r) >= {"val_id", "train_id", "similarity", "exact"} for r in findings["leakage"])
