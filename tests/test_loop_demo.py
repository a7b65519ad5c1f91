"""`dataloupe demo` end to end on tiny IDX files (sklearn digits written in Fashion-MNIST's format)."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
from PIL import Image

from dataloupe.loop._demo import FASHION_FILES, fashion_mnist_demo
from dataloupe.project import DataloupeError
from dataloupe.tables import open_table


def _write_idx(path, arr: np.ndarray) -> None:
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


def _fake_fashion(folder, n_train=400, n_test=150):
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.stack([np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((28, 28)))
                     for im in d.images])
    folder.mkdir()
    split = {"train": slice(0, n_train), "test": slice(1000, 1000 + n_test)}
    for img_name, lab_name, which in FASHION_FILES.values():
        _write_idx(folder / f"{img_name}.gz", imgs[split[which]])
        _write_idx(folder / f"{lab_name}.gz", d.target[split[which]])
    return folder


def test_demo_runs_the_loop_scores_it_and_writes_the_report(project, tmp_path):
    src = _fake_fashion(tmp_path / "fm")
    pol = tmp_path / "demo.yaml"
    pol.write_text("""
recipe: fashion-mnist
overrides: {model: convnet-xxs, image_size: 16, batch_size: 32, lr: 0.02, epochs: 3, log_every: 0.5}
max_iterations: 2
stop_when_no_change: false
rules:
  - {rule: auto_label, threshold: 0.0, min_agreement: 0.0, agreement_from: embeddings, max_fraction: 0.5}
""")
    logs = []
    r = fashion_mnist_demo(project, fashion_dir=src, per_class=5, flip=0.1, pool=100, val_size=60,
                           policy=str(pol), name="d", log=logs.append)
    assert open_table(project, "fmnist-train").num_rows == 400 and open_table(project, "fmnist-test").num_rows == 150
    assert [row["iteration"] for row in r.loop.iterations] == [1, 2] and r.flipped == 5
    assert r.score["pool"] == 100 and r.score["auto_labeled"] == open_table(project, "d-train").summary()["labeled"] - 50
    assert r.score["auto_labeled"] > 0 and 0 <= r.score["precision"] <= 1
    assert r.report is not None and r.report.stat().st_size > 0
    assert r.loop.iterations[0]["auto_label_estimate"]["rows"] == 60  # scored on the hidden val labels
    # a second call re-shows the finished loop instead of starting over
    again = fashion_mnist_demo(project, fashion_dir=src, per_class=5, pool=100, val_size=60, policy=str(pol),
                               name="d", log=logs.append)
    assert [row["run"] for row in again.loop.iterations] == ["d-it1", "d-it2"]
    # measured against the baseline (labels given only) and the oracle (every true label)
    assert 0 < r.baseline <= 1 and 0 < r.oracle <= 1
    # iteration 1 is exactly the baseline's recipe on the first revision: reused, not trained twice
    it1 = json.loads((project.runs_dir / "d-it1" / "run.json").read_text())
    assert r.baseline == it1["best_val_top1"] and not (project.runs_dir / "d-baseline").exists()
    assert any("not trained twice" in m for m in logs)
    j = again.to_json()
    assert set(j) >= {"seed", "baseline", "oracle", "loop", "gap_closed", "auto_label_precision",
                      "auto_label_coverage", "minutes"}
    assert j["loop"] == r.loop.iterations[-1]["val_top1"] and j["baseline"] == r.baseline
    if r.oracle > r.baseline:
        assert j["gap_closed"] == pytest.approx((j["loop"] - r.baseline) / (r.oracle - r.baseline))
    oracle = open_table(project, "d-oracle").to_arrow(columns=["label", "truth_id"])
    truth = open_table(project, "fmnist-train").to_arrow(columns=["id", "label"])
    tmap = dict(zip(truth["id"].to_pylist(), truth["label"].to_pylist()))
    assert oracle.num_rows == 150 and oracle["label"].to_pylist() == [tmap[i] for i in oracle["truth_id"].to_pylist()]


def test_demo_seed_draws_another_scenario(project, tmp_path):
    from dataloupe.loop._scenario import few_labels_scenario

    src = _fake_fashion(tmp_path / "fm")
    from dataloupe.loop._demo import import_fashion_mnist

    import_fashion_mnist(project, src, log=lambda m: None)
    a = few_labels_scenario(project, "fmnist-train", train="a", per_class=5, pool=100, seed=0)
    b = few_labels_scenario(project, "fmnist-train", train="b", per_class=5, pool=100, seed=7)
    lab = lambda t: open_table(project, t).to_arrow(columns=["truth_id", "label"])  # noqa: E731
    assert lab("a")["truth_id"].to_pylist() != lab("b")["truth_id"].to_pylist()
    assert a.flipped_ids != b.flipped_ids or lab("a")["label"] != lab("b")["label"]


def test_demo_cli_json_with_a_seed(tmp_path):
    import json
    import os
    import subprocess
    import sys

    src = _fake_fashion(tmp_path / "fm")
    pol = tmp_path / "demo.yaml"
    pol.write_text("""
recipe: fashion-mnist
overrides: {model: convnet-xxs, image_size: 16, batch_size: 32, lr: 0.02, epochs: 2, log_every: 0.5}
max_iterations: 1
schedule:
  - {unlabeled_weight: 0.5, unlabeled_threshold: 0.0}
rules:
  - {rule: auto_label, threshold: 0.0, min_agreement: 0.0, max_fraction: 0.5}
""")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "dataloupe", "demo", "--seed", "7", "--json", "--fashion-dir",
                          str(src), "--per-class", "5", "--pool", "80", "--val-size", "50", "--oracle-epochs", "2",
                          "--policy", str(pol), "--project", str(tmp_path / "p")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    j = json.loads(out.stdout)  # stdout holds only the JSON
    assert j["seed"] == 7 and 0 < j["baseline"] <= 1 and 0 < j["oracle"] <= 1 and 0 < j["loop"] <= 1
    assert 0 <= j["auto_label_coverage"] <= 1 and j["minutes"] > 0
    assert (tmp_path / "p" / "loops" / "demo-s7").is_dir()
    # its iteration 1 trains on the pool too, so it is not the baseline: that one is trained apart
    assert (tmp_path / "p" / "runs" / "demo-s7-baseline" / "run.json").is_file()


def test_demo_says_how_to_get_fashion_mnist(project, tmp_path):
    with pytest.raises(DataloupeError, match="dataset-fashion-mnist"):
        fashion_mnist_demo(project, fashion_dir=tmp_path / "nothing-here")
