"""The review queue (``dataloupe.loop.review_queue``) and ``dataloupe review`` with an oracle file.

A real tiny table (sklearn digits as PNGs, 30 undefined rows, 40 flipped labels) and a real
logistic-regression run written to the metrics contract (tests/ui_synth.py).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from ui_synth import UNDEFINED, make_digits_table, write_digits_run

from dataloupe.loop import EXCLUDE, answer_from_oracle, apply_answers, list_strategies, review_queue
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import diff_revisions, open_table


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    p = Project.open(root / "proj")
    info = make_digits_table(p, root / "img")
    write_digits_run(p, "digits", info["features"], run="r1")
    return p, info, root


def _oracle(path, table, true, ids=None, drop=()):
    t = table.to_arrow(columns=["id", "path"])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i, pth in zip(t["id"].to_pylist(), t["path"].to_pylist()):
            if (ids is None or i in ids) and i not in drop:
                w.writerow([pth, str(true[i])])
    return path


def test_queue_holds_flagged_rows_in_strategy_order(digits):
    p, info, _ = digits
    q = review_queue(p, "digits", "r1", strategy="margin")
    items = q["items"]
    assert q["counts"]["undefined"] == UNDEFINED
    ids = [it["id"] for it in items]
    assert len(ids) == len(set(ids)) == q["total"]
    assert set(range(1700, 1700 + UNDEFINED)) <= set(ids)  # the unlabeled pool
    assert all(it["reasons"] for it in items)
    margins = [it["margin"] for it in items]
    assert margins == sorted(margins)  # smallest margin first
    ent = [it["entropy"] for it in review_queue(p, "digits", "r1", strategy="entropy")["items"]]
    assert ent == sorted(ent, reverse=True)
    dens = review_queue(p, "digits", "r1", strategy="density")
    assert {it["id"] for it in dens["items"]} == set(ids)
    r1 = [it["id"] for it in review_queue(p, "digits", "r1", strategy="random", seed=1)["items"]]
    assert sorted(r1) == sorted(ids) and r1 != ids
    assert set(list_strategies()) == {"margin", "entropy", "density", "cluster-margin", "typiclust",
                                      "typiclust-margin", "random"}
    cm = review_queue(p, "digits", "r1", strategy="cluster-margin")["items"]
    assert sorted(it["id"] for it in cm) == sorted(ids)
    with pytest.raises(DataloupeError, match="known: margin"):
        review_queue(p, "digits", "r1", strategy="nope")


def test_answers_are_one_revision_and_leave_the_queue(tmp_path, digits):
    p, info, root = digits
    # a copy of the project, so the module's table stays as built
    import shutil

    proj = tmp_path / "proj"
    shutil.copytree(p.root, proj)
    p2 = Project.open(proj)
    t = open_table(p2, "digits")
    answers = {1700: "3", 1701: None, 1702: EXCLUDE, 5: open_table(p2, "digits").to_arrow(
        columns=["label"], where="id = 5")["label"][0].as_py()}
    res = apply_answers(p2, "digits", answers, message="review by hand", expected_revision=t.revision)
    assert res["revision"] == t.revision + 1 and res["changed"] == 2  # 1700 labeled, 1702 excluded
    d = diff_revisions(p2, "digits", t.revision, res["revision"])
    assert d.summary["labeled"] == 1 and d.summary["excluded"] == 1
    q = review_queue(p2, "digits", "r1")
    assert not {1700, 1702} & {it["id"] for it in q["items"]}
    with pytest.raises(DataloupeError, match="unknown class"):
        apply_answers(p2, "digits", {1703: "cat"}, message="x")
    with pytest.raises(DataloupeError, match="reload"):
        apply_answers(p2, "digits", {1703: "1"}, message="x", expected_revision=t.revision)


def test_review_cli_answers_budget_from_oracle(cli, tmp_path, digits):
    import shutil

    p, info, root = digits
    shutil.copytree(p.root, cli.project_dir)
    p2 = Project.open(cli.project_dir)
    before = open_table(p2, "digits")
    q = review_queue(p2, "digits", "r1", strategy="margin", limit=20)
    asked = [it["id"] for it in q["items"]]
    missing = asked[:3]
    oracle = _oracle(tmp_path / "labels.csv", before, info["true"], drop=set(missing))
    r = cli("review", "--table", "digits", "--run", "r1", "--oracle", oracle, "--budget", "20", "--json")
    out = json.loads(r.stdout)
    assert set(out) == {"revision", "asked", "answered", "changed", "strategy"}
    assert out["asked"] == 20 and out["answered"] == 17 and out["strategy"] == "margin"
    assert out["revision"] == before.revision + 1
    after = open_table(p2, "digits")
    assert "margin" in after.entry["message"] and "17" in after.entry["message"]
    d = diff_revisions(p2, "digits", before.revision, after.revision).to_dict(limit=1000)
    changed = {r["id"]: r["label_b"] for r in d["changed"]}
    assert out["changed"] == len(changed)
    assert set(changed) <= set(asked[3:])  # exactly answered rows, to the file's labels
    assert all(lab == str(info["true"][i]) for i, lab in changed.items())
    wrong = [i for i in asked[3:] if before.to_arrow(columns=["label"], where=f"id = {i}")["label"][0].as_py()
             != str(info["true"][i])]
    assert set(changed) == set(wrong)
    # without --oracle the queue is printed; errors are one line
    r = cli("review", "--table", "digits", "--run", "r1", "--budget", "3")
    assert r.stdout.count("#") >= 3
    r = cli("review", "--table", "digits", "--run", "r1", "--oracle", tmp_path / "none.csv", "--budget", "3", check=False)
    assert r.returncode == 2 and "oracle file not found" in r.stderr
    # --recheck N: the first N rows asked are given labels; the answers fix the wrong ones
    noisy = {int(i) for i in info["noisy"]}
    r = cli("review", "--table", "digits", "--run", "r1", "--budget", "10", "--recheck", "5", "--json")
    q = json.loads(r.stdout)
    assert [it["reasons"][-1] == "recheck" for it in q["items"]][:6] == [True] * 5 + [False]
    mid = open_table(p2, "digits")
    r = cli("review", "--table", "digits", "--run", "r1", "--oracle", oracle, "--budget", "10", "--recheck", "5", "--json")
    out = json.loads(r.stdout)
    d = diff_revisions(p2, "digits", mid.revision, out["revision"]).to_dict(limit=1000)
    relabeled = {r["id"] for r in d["changed"] if r["label_a"] is not None}
    assert relabeled and relabeled <= noisy
    r = cli("review", "--table", "digits", "--run", "r1", "--budget", "2", "--recheck", "2")
    assert r.stdout.count("recheck]") == 2 and r.stdout.count(", suggested ") == 2
    r = cli("review", "--table", "digits", "--run", "r1", "--budget", "3", "--recheck", "-2", check=False)
    assert r.returncode == 2 and "--recheck must be >= 0" in r.stderr


def test_strategies_rank_uncertain_rows_first(digits):
    p, info, _ = digits
    q = review_queue(p, "digits", "r1", strategy="margin")
    m = np.array([it["margin"] for it in q["items"]])
    assert m[: len(m) // 4].mean() < m[-len(m) // 4:].mean()


def test_cluster_margin_spreads_every_prefix_over_the_clusters():
    """Two blobs; the 20 smallest margins all lie in blob A. Margin asks A only; cluster-margin
    alternates between the blobs while staying within the uncertain half."""
    from dataloupe.loop._review import cluster_margin_score, kmeans, margin_score

    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal([5, 0], 0.3, (40, 2)), rng.normal([0, 5], 0.3, (40, 2))])
    margin = np.concatenate([np.linspace(0.0, 0.2, 20), np.linspace(0.6, 0.9, 20), np.linspace(0.25, 0.5, 20),
                             np.linspace(0.91, 0.99, 20)])
    assert np.array_equal(np.bincount(kmeans(emb, 2, seed=0)), [40, 40])
    by_margin = np.argsort(-margin_score(margin, margin, None), kind="stable")
    by_cluster = np.argsort(-cluster_margin_score(margin, margin, emb, clusters=2), kind="stable")
    assert (by_margin[:10] < 40).all()  # blob A only
    first = by_cluster[:10]
    assert (first < 40).sum() == 5 and set(first[first >= 40]) <= set(range(40, 60))  # both blobs, uncertain rows
    assert sorted(by_cluster) == list(range(80))
    assert np.array_equal(cluster_margin_score(margin, margin, None), margin_score(margin, margin, None))
    # with predicted classes, the classes take turns: class 1 (blob B) is asked by the second row
    pred = (np.arange(80) >= 40).astype(int)
    by_class = np.argsort(-cluster_margin_score(margin, margin, emb, predicted=pred), kind="stable")
    assert by_class[0] < 40 and by_class[1] >= 40 and (by_class[:20] < 40).sum() == 10


def test_typiclust_asks_typical_rows_of_uncovered_clusters_first():
    """Three blobs (60, 40, 20 rows, apart in angle: the score works on unit-length rows); blob A already holds labeled rows. With a budget of 2,
    TypiClust asks the row nearest the centre of B, then of C; A only after B and C."""
    from dataloupe.loop._review import typiclust_margin_score, typiclust_score

    rng = np.random.default_rng(0)
    centres = np.array([[8.0, 0.0], [0.0, 8.0], [-8.0, -8.0]])
    sizes = [60, 40, 20]
    emb = np.concatenate([rng.normal(c, 1.0, (s, 2)) for c, s in zip(centres, sizes)])
    blob = np.repeat([0, 1, 2], sizes)
    labeled = rng.normal(centres[0], 1.0, (5, 2))
    margin = rng.random(len(emb))
    order = np.argsort(-typiclust_score(margin, margin, emb, budget=2, labeled_embedding=labeled, clusters=3),
                       kind="stable")
    assert sorted(order) == list(range(len(emb)))
    assert blob[order[0]] == 1 and blob[order[1]] == 2 and blob[order[2]] == 0  # uncovered, larger first
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    for r, b in zip(order[:2], (1, 2)):  # the most typical: smallest mean distance to its 20 nearest
        members = np.flatnonzero(blob == b)
        d = np.linalg.norm(unit[members, None] - unit[None, members], axis=-1)
        assert r == members[np.argmin(np.sort(d, axis=1)[:, 1:21].mean(1))]
    # without labeled rows the largest cluster starts; later rounds cycle the clusters
    order = np.argsort(-typiclust_score(margin, margin, emb, clusters=3), kind="stable")
    assert [blob[i] for i in order[:6]] == [0, 1, 2, 0, 1, 2]
    # the hybrid asks, within a cluster, the least sure of its most typical rows
    hyb = np.argsort(-typiclust_margin_score(margin, margin, emb, clusters=3), kind="stable")
    assert [blob[i] for i in hyb[:3]] == [0, 1, 2] and sorted(hyb) == list(range(len(emb)))
    assert margin[hyb[0]] <= np.median(margin[blob == 0])
    assert np.array_equal(typiclust_score(margin, margin, None), 1.0 - margin)  # no embeddings: margin


def test_typiclust_queue_covers_the_classes(digits):
    """On real digits (64-pixel features): from a cold start (nothing labeled, 1,000 rows in
    the pool) the first 10 TypiClust rows span at least 8 of the 10 classes (10 random rows
    span 6.5 on average); through
    ``review_queue`` the queue holds margin's rows and is sized to the budget (``limit``)."""
    from dataloupe.loop._review import typiclust_score

    p, info, _ = digits
    x, true = info["features"].astype(np.float32), np.asarray(info["true"])
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    pool = perm[:1000]
    flat = np.full(len(pool), 0.5)
    first = np.argsort(-typiclust_score(flat, flat, x[pool], budget=10), kind="stable")[:10]
    assert len(set(true[pool[first]].tolist())) >= 8
    q = review_queue(p, "digits", "r1", strategy="typiclust", limit=10)
    assert q["strategy"] == "typiclust" and len(q["items"]) == 10
    full = review_queue(p, "digits", "r1", strategy="typiclust")
    assert sorted(it["id"] for it in full["items"]) == sorted(
        it["id"] for it in review_queue(p, "digits", "r1", strategy="margin")["items"])


def test_density_is_the_mean_similarity_to_the_k_nearest_others():
    """``density`` weighs entropy by the mean cosine similarity to each row's k nearest *other*
    rows (brute force here). ``np.partition`` leaves its first k + 1 unordered (for large k it
    does not put the row itself first), so the row must be dropped as the largest, not as
    position 0."""
    from dataloupe.loop._review import density_score

    rng = np.random.default_rng(3)
    emb = rng.normal(size=(1000, 8))
    ent = rng.random(1000) + 0.1
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    for k in (10, 300):
        dens = np.sort(sim, axis=1)[:, -k:].mean(1)
        np.testing.assert_allclose(density_score(ent, ent, emb, k=k), ent * np.clip((dens + 1) / 2, 0, 1),
                                   rtol=1e-4)


def _copy_run_with_embedding(p, src, dst, table, emb_of_id):
    """Copy run ``src`` to ``dst`` with its ``table`` embeddings replaced (``emb_of_id``: id -> row)."""
    import shutil

    import lance
    import pyarrow as pa

    shutil.copytree(p.runs_dir / src, p.runs_dir / dst)
    path = p.runs_dir / dst / "metrics" / f"{table}.lance"
    t = lance.dataset(path).to_table()
    e = emb_of_id[t["id"].to_numpy()].astype(np.float32)
    col = pa.FixedSizeListArray.from_arrays(pa.array(e.ravel()), e.shape[1])
    t = t.set_column(t.schema.get_field_index("embedding"), "embedding", col)
    lance.write_dataset(t, path, mode="overwrite")


def test_queue_clusters_on_another_runs_embeddings(cli, digits):
    """``embeddings=RUN`` (``review --embeddings``): the cluster strategies read that run's
    embeddings (e.g. a pretrain run's), the confidences stay ``run``'s: the same queue as a run
    with ``run``'s probabilities and the other's embeddings; a run missing rows is refused."""
    p, info, _ = digits
    true = np.asarray(info["true"])
    rng = np.random.default_rng(0)
    classes = sorted(set(true.tolist()))
    onehot = np.eye(len(classes))[np.searchsorted(classes, true)]
    other = 3 * onehot + rng.normal(size=(len(true), 10)) * 0.3  # features that separate the classes
    if not (p.runs_dir / "ssl-e").exists():
        _copy_run_with_embedding(p, "r1", "ssl-e", "digits", other)
    for strat in ("typiclust", "density", "cluster-margin"):
        q = review_queue(p, "digits", "r1", strategy=strat, limit=40, embeddings="ssl-e")
        same = review_queue(p, "digits", "ssl-e", strategy=strat, limit=40)
        own = review_queue(p, "digits", "r1", strategy=strat, limit=40)
        assert [i["id"] for i in q["items"]] == [i["id"] for i in same["items"]]
        assert [i["id"] for i in q["items"]] != [i["id"] for i in own["items"]]
    # margin reads no embeddings: unchanged
    assert review_queue(p, "digits", "r1", strategy="margin", limit=40, embeddings="ssl-e")["items"] == \
        review_queue(p, "digits", "r1", strategy="margin", limit=40)["items"]
    # a run whose metrics miss rows of the table is refused, by name
    import lance

    path = p.runs_dir / "ssl-e" / "metrics" / "digits.lance"
    if not (p.runs_dir / "ssl-part").exists():
        import shutil

        shutil.copytree(p.runs_dir / "ssl-e", p.runs_dir / "ssl-part")
        part = p.runs_dir / "ssl-part" / "metrics" / "digits.lance"
        lance.write_dataset(lance.dataset(path).to_table().slice(0, 100), part, mode="overwrite")
    with pytest.raises(DataloupeError, match="ssl-part.*100 of the"):
        review_queue(p, "digits", "r1", strategy="typiclust", limit=10, embeddings="ssl-part")
    # the same through `dataloupe review --embeddings`; the refusal is one line, exit 2
    import shutil

    shutil.copytree(p.root, cli.project_dir)
    r = cli("review", "--table", "digits", "--run", "r1", "--strategy", "typiclust", "--budget", "10",
            "--embeddings", "ssl-e", "--json")
    want = review_queue(p, "digits", "r1", strategy="typiclust", limit=10, embeddings="ssl-e")
    assert [i["id"] for i in json.loads(r.stdout)["items"]] == [i["id"] for i in want["items"]]
    r = cli("review", "--table", "digits", "--run", "r1", "--strategy", "typiclust", "--budget", "10",
            "--embeddings", "ssl-part", check=False)
    assert r.returncode == 2 and "100 of the" in r.stderr


def test_recheck_opens_the_queue_with_the_most_doubted_given_labels(tmp_path, digits):
    import shutil

    p, info, _ = digits
    noisy = {int(i) for i in info["noisy"]} - set(range(1700, 1700 + UNDEFINED))
    q = review_queue(p, "digits", "r1", strategy="margin", recheck=40)
    head, rest = q["items"][:40], q["items"][40:]
    assert q["counts"]["recheck"] == 40 and q["total"] == len(q["items"])
    assert all(it["reasons"][-1] == "recheck" and it["label"] is not None for it in head)
    assert not any("recheck" in it["reasons"] for it in rest)
    scores = [it["score"] for it in head]
    assert scores == sorted(scores, reverse=True)  # most doubted first
    hits = [it for it in head if it["id"] in noisy]
    plain = review_queue(p, "digits", "r1", strategy="margin", limit=40)["items"]
    # the head holds most of the 40 flipped labels, far more than the margin order's first 40 asks
    assert len(hits) >= 25 and len(hits) > 2 * sum(it["id"] in noisy for it in plain)
    assert sum(it["suggested"] == str(info["true"][it["id"]]) for it in hits) >= 0.8 * len(hits)
    # the rest is the strategy's own order without the rows already asked
    head_ids = {it["id"] for it in head}
    full = [it["id"] for it in review_queue(p, "digits", "r1", strategy="margin")["items"]]
    assert [it["id"] for it in rest] == [i for i in full if i not in head_ids]
    with pytest.raises(DataloupeError, match="recheck must be >= 0"):
        review_queue(p, "digits", "r1", recheck=-1)
    # answered from an oracle: the flipped labels among the re-checked rows go back to the truth
    proj = tmp_path / "proj"
    shutil.copytree(p.root, proj)
    p2 = Project.open(proj)
    before = open_table(p2, "digits")
    oracle = _oracle(tmp_path / "labels.csv", before, info["true"])
    res = answer_from_oracle(p2, "digits", "r1", oracle, budget=50, strategy="margin", recheck=40)
    assert res["asked"] == 50 and res["answered"] == 50
    assert "40 given labels re-checked first" in open_table(p2, "digits").entry["message"]
    d = diff_revisions(p2, "digits", before.revision, res["revision"]).to_dict(limit=1000)
    fixed = {r["id"] for r in d["changed"] if r["label_a"] is not None}
    assert fixed == {it["id"] for it in hits}


def test_recheck_refuses_a_table_the_run_did_not_train_on(tmp_path, digits):
    import shutil

    from dataloupe.tables import create_table

    p, info, _ = digits
    proj = tmp_path / "proj"
    shutil.copytree(p.root, proj)
    p2 = Project.open(proj)
    rows = open_table(p2, "digits").to_arrow(columns=["path", "label"])
    create_table(p2, "digits-copy", rows, classes=list(open_table(p2, "digits").classes),
                 image_root=open_table(p2, "digits").image_root, message="a copy")
    from dataloupe.runs import run_dir

    shutil.copytree(run_dir(p2, "r1") / "metrics" / "digits.lance", run_dir(p2, "r1") / "metrics" / "digits-copy.lance")
    with pytest.raises(DataloupeError, match="re-checks the labels run 'r1' trained on"):
        review_queue(p2, "digits-copy", "r1", recheck=5)
