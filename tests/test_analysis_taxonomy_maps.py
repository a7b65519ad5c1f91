"""Taxonomy, ReaL accuracy and its bad inputs, and maps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dataloupe.analysis import error_taxonomy, load_real_labels, reduce, topk_accuracy
from dataloupe.project import DataloupeError


def test_taxonomy_categories_and_accuracies():
    rng = np.random.default_rng(0)
    k, n = 5, 400
    labels = rng.integers(0, k, n)
    probs = np.full((n, k), 0.02)
    probs[np.arange(n), labels] = 0.92
    # 30 errors 0 -> 1 (a confusable pair), 3 ambiguous, 4 flagged label errors, 3 scattered
    zeros = np.flatnonzero(labels == 0)[:30]
    probs[zeros] = [0.05, 0.85, 0.04, 0.03, 0.03]
    amb = np.flatnonzero(labels == 2)[:3]
    probs[amb] = [0.02, 0.02, 0.45, 0.49, 0.02]
    wrong_lab = np.flatnonzero(labels == 3)[:4]
    probs[wrong_lab] = [0.9, 0.04, 0.02, 0.02, 0.02]
    scattered = [np.flatnonzero(labels == 4)[0], np.flatnonzero(labels == 1)[0], np.flatnonzero(labels == 2)[5]]
    probs[scattered[0]] = [0.02, 0.9, 0.02, 0.04, 0.02]
    probs[scattered[1]] = [0.02, 0.02, 0.04, 0.02, 0.9]
    probs[scattered[2]] = [0.04, 0.02, 0.02, 0.02, 0.9]
    issues = np.zeros(n, bool)
    issues[wrong_lab] = True
    t = error_taxonomy(labels, probs, label_issue_mask=issues)
    c = t["categories"]
    assert sorted(c["label_error"]) == sorted(wrong_lab.tolist())
    assert sorted(c["ambiguous"]) == sorted(amb.tolist())
    assert set(zeros.tolist()) <= set(c["confusable_pair"]) and (0, 1) in t["confusable_pairs"]
    assert sorted(c["model_error"]) == sorted(scattered)
    assert t["errors"] == 40 and t["top1"] == pytest.approx(1 - 40 / n)
    assert t["top1_without_label_issues"] == pytest.approx(1 - 36 / (n - 4))
    assert t["top5"] == 1.0 and topk_accuracy(labels, probs, 1) == t["top1"]
    # ReaL: the 4 "label errors" are accepted by their reassessed label
    real = [[int(l)] for l in labels]
    for i in wrong_lab:
        real[i].append(0)
    real[amb[0]] = []  # no valid label: not scored
    t = error_taxonomy(labels, probs, label_issue_mask=issues, real_labels=real)
    assert t["real_scored"] == n - 1 and t["real_top1"] == pytest.approx((n - 40 + 4) / (n - 1))


@pytest.mark.parametrize(
    "content, match",
    [("[[0], [1]]", "has 2 entries"), ('{"a": 1}', "must be a JSON list"), ("[[0], [9], [1]]", "must be a JSON list"),
     ("[[0], 1, [1]]", "must be a JSON list"), ("not json", "cannot read")],
)
def test_real_labels_bad_files(tmp_path, content, match):
    f = tmp_path / "real.json"
    f.write_text(content)
    with pytest.raises(DataloupeError, match=match):
        load_real_labels(f, num_samples=3, num_classes=5)
    f.write_text(json.dumps([[0], [], [1, 2]]))
    assert load_real_labels(f, num_samples=3, num_classes=5) == [[0], [], [1, 2]]


def test_reduce_shares_one_map_and_rejects_bad_options():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = d.data[:1200], d.target
    train, (val,) = reduce(x, method="pacmap", dims=2, apply=[d.data[1200:]])
    assert train.shape == (1200, 2) and val.shape == (597, 2)
    # same-class points land near their class centroid on the shared map
    cent = np.stack([train[y[:1200] == c].mean(0) for c in range(10)])
    nearest = np.argmin(((val[:, None] - cent[None]) ** 2).sum(-1), 1)
    assert (nearest == y[1200:]).mean() > 0.8
    with pytest.raises(DataloupeError, match="known: pacmap, umap"):
        reduce(x, method="tsne")
    with pytest.raises(DataloupeError, match="2 or 3"):
        reduce(x, dims=4)
