"""The review queue: the rows a person should look at next, in active-learning order.

Candidates are the training table's rows (weight > 0) that the loop would hand to a person:
undefined rows (the pool to label), rows ``flag_low_confidence`` flags, label issues of the
run's analysis, and rows a loop iteration flagged (``loops/<name>/review-it<k>.json``).
They are ordered by an acquisition score computed from the run's per-sample metrics:

* ``margin``  — smallest top-1 − top-2 probability first (least confident between two classes);
* ``entropy`` — highest predictive entropy first;
* ``density`` — entropy × information density (mean cosine similarity to the k nearest
  candidates in embedding space), so typical uncertain rows come before odd ones;
* ``cluster-margin`` — per predicted class, the least confident half by margin, clustered in
  embedding space (k-means) and taken round-robin over the clusters, the classes taking
  turns, so every prefix of the queue is unsure, spread over the data and near the classes'
  shares (Citovsky et al. 2021, class-balanced); the rest follow by margin;
* ``typiclust`` — typical first, for the cold start (TypiClust, Hacohen et al. 2022): the
  candidates and the labeled rows are clustered into (labeled + budget) k-means clusters in
  embedding space, and the densest (most typical) candidate of each cluster is asked, the
  clusters holding the fewest labeled rows first, larger ones before smaller; the queue is
  sized to the budget (``limit``), so different budgets are not prefixes of one order;
* ``typiclust-margin`` — the same clusters, but within each the least confident of its most
  typical rows (a hybrid: coverage first, uncertainty inside a cluster);
* ``random``  — a seeded shuffle (the baseline every strategy is measured against).

A person (the dashboard) or an oracle file (``dataloupe review``) answers rows of the queue;
all answers become ONE table revision. Everything returned is plain data.

Example:
    >>> q = review_queue(p, "cm-train", "run-1", strategy="margin")   # doctest: +SKIP
    >>> q["items"][0]["id"], q["items"][0]["reasons"]                  # doctest: +SKIP
    (412, ['undefined'])
    >>> answer_from_oracle(p, "cm-train", "run-1", "labels.csv", budget=200)  # doctest: +SKIP
    {'revision': 7, 'asked': 200, 'answered': 200, 'changed': 188, 'strategy': 'margin', ...}
"""

from __future__ import annotations

import heapq
import json
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import pyarrow as pa

from dataloupe.project import DataloupeError, Project
from dataloupe.tables import EditOp, apply_edits, open_table

REASONS = ("undefined", "low_confidence", "label_issue", "loop_flagged")
# An answer: a class name, None (undefined) or EXCLUDE (weight 0).
EXCLUDE = "__exclude__"

_STRATEGIES: dict[str, Callable[..., np.ndarray]] = {}
_NEEDS_EMBEDDING: set[str] = set()
_NEEDS_PREDICTED: set[str] = set()
_NEEDS_BUDGET: set[str] = set()
_NEEDS_LABELED: set[str] = set()


def strategy(name: str, *, embedding: bool = False, predicted: bool = False, budget: bool = False,
             labeled: bool = False):
    """Register an acquisition score ``(margin (N,), entropy (N,), embedding (N, D) | None, *, seed)
    -> scores (N,)``; higher is asked first. ``embedding``: the score reads the run's embeddings;
    ``predicted``: it also takes ``predicted=`` (N,) class codes of the model's predictions;
    ``budget``: it takes ``budget=`` (how many rows will be asked; None when the whole queue is
    wanted); ``labeled``: it takes ``labeled_embedding=`` (M, D), the embeddings of the labeled
    rows outside the queue (None without embeddings)."""
    def deco(fn):
        _STRATEGIES[name] = fn
        for flag, reg in ((embedding, _NEEDS_EMBEDDING), (predicted, _NEEDS_PREDICTED), (budget, _NEEDS_BUDGET),
                          (labeled, _NEEDS_LABELED)):
            if flag:
                reg.add(name)
        return fn
    return deco


def list_strategies() -> list[str]:
    return list(_STRATEGIES)


def get_strategy(name: str) -> Callable[..., np.ndarray]:
    if name not in _STRATEGIES:
        raise DataloupeError(f"unknown review strategy {name!r}; known: {', '.join(_STRATEGIES)}")
    return _STRATEGIES[name]


@strategy("margin")
def margin_score(margin: np.ndarray, entropy: np.ndarray, embedding: np.ndarray | None, *, seed: int = 0) -> np.ndarray:
    return 1.0 - np.nan_to_num(margin.astype(np.float64), nan=0.0)


@strategy("entropy")
def entropy_score(margin: np.ndarray, entropy: np.ndarray, embedding: np.ndarray | None, *, seed: int = 0) -> np.ndarray:
    return np.nan_to_num(entropy.astype(np.float64), nan=0.0)


@strategy("density", embedding=True)
def density_score(margin: np.ndarray, entropy: np.ndarray, embedding: np.ndarray | None, *, seed: int = 0,
                  k: int = 10, beta: float = 1.0) -> np.ndarray:
    """Information density (Settles & Craven 2008): entropy × (mean similarity to k neighbours)^beta."""
    ent = entropy_score(margin, entropy, embedding)
    if embedding is None or len(embedding) < 2:
        return ent
    x = embedding.astype(np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    kk = min(k, len(x) - 1)
    dens = np.empty(len(x), np.float64)
    step = max(1, (1 << 24) // len(x))  # (step, N) similarity blocks: at most 64 MB each
    for s in range(0, len(x), step):
        sim = x[s:s + step] @ x.T
        # the kk + 1 most similar, unordered (np.partition sorts only position kk): drop self, the largest
        part = -np.partition(-sim, kk, axis=1)[:, :kk + 1]
        dens[s:s + step] = (part.sum(1) - part.max(1)) / kk
    return ent * np.clip((dens + 1) / 2, 0, 1) ** beta


@strategy("cluster-margin", embedding=True, predicted=True)
def cluster_margin_score(margin: np.ndarray, entropy: np.ndarray, embedding: np.ndarray | None, *, seed: int = 0,
                         keep: float = 0.5, clusters: int | None = None,
                         predicted: np.ndarray | None = None) -> np.ndarray:
    """Cluster-Margin (Citovsky et al. 2021) as one order, balanced over the predicted classes.

    Within each predicted class (``predicted`` (N,) codes; one group without it), the ``keep``
    share with the smallest margin is clustered (k-means on unit-length embeddings, sqrt(rows)
    clusters unless ``clusters``) and taken one row per cluster in turn, smallest cluster first
    and each cluster's smallest margin first. The classes then take turns. Margin alone fills
    the first hundreds of places with the most confused classes (on the Fashion-MNIST demo,
    Shirt 111 and Trouser 26 of 593 labeled rows after 400 answers), and a model trained on
    such a skewed set loses accuracy on balanced data; this keeps every prefix unsure and spread
    over the data, and near the *predicted* classes' shares (a weak model's predictions balance
    the true classes only in part: bench/RESULTS.md). The other rows follow by margin.
    """
    base = margin_score(margin, entropy, embedding)
    n = len(base)
    if embedding is None or n < 4:
        return base
    groups = np.zeros(n, np.int64) if predicted is None else np.asarray(predicted)
    seqs, taken = [], np.zeros(n, bool)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        rows = rows[np.argsort(-base[rows], kind="stable")]
        top = rows[:max(1, int(np.ceil(keep * len(rows))))]
        k = clusters or int(np.clip(round(np.sqrt(len(top))), 1, 200))
        lab = kmeans(embedding[top], k, seed=seed) if len(top) > 1 else np.zeros(1, np.int64)
        parts = sorted((top[lab == c] for c in np.unique(lab)), key=len)  # each in margin order
        seqs.append([q[j] for j in range(max(map(len, parts))) for q in parts if j < len(q)])
        taken[top] = True
    seqs.sort(key=lambda q: -base[q[0]])  # the class with the least sure row starts
    seq = [q[j] for j in range(max(map(len, seqs))) for q in seqs if j < len(q)]
    score = np.empty(n, np.float64)
    score[np.array(seq)] = 2.0 * n - np.arange(len(seq))
    rest = np.flatnonzero(~taken)
    rest = rest[np.argsort(-base[rest], kind="stable")]
    score[rest] = float(n) - np.arange(len(rest))
    return score


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, iters: int = 15) -> np.ndarray:
    """Cluster ids (N,) of the rows of ``x`` (N, D): k-means++ seeding and Lloyd steps on
    unit-length rows (cosine geometry), seeded."""
    x = x.astype(np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(n)]]
    d2 = np.full(n, np.inf, np.float32)
    for _ in range(1, k):
        d2 = np.minimum(d2, ((x - centers[-1]) ** 2).sum(1))
        tot = float(d2.sum())
        centers.append(x[rng.choice(n, p=d2 / tot)] if tot > 0 else x[rng.integers(n)])
    c = np.stack(centers)
    lab = np.zeros(n, np.int64)
    for _ in range(iters):
        lab = np.argmax(x @ c.T, axis=1)  # nearest centre on the sphere
        new = np.stack([x[lab == j].mean(0) if np.any(lab == j) else c[j] for j in range(k)])
        if np.allclose(new, c):
            break
        c = new
    return lab


@strategy("typiclust", embedding=True, budget=True, labeled=True)
def typiclust_score(margin: np.ndarray, entropy: np.ndarray, embedding: np.ndarray | None, *, seed: int = 0,
                    budget: int | None = None, labeled_embedding: np.ndarray | None = None,
                    clusters: int | None = None, max_clusters: int = 1000, neighbours: int = 20,
                    min_size: int = 5, pick: str = "typical", typical_share: float = 0.5) -> np.ndarray:
    """TypiClust (Hacohen et al. 2022) as one order: typical rows of uncovered clusters first.

    The candidates and the labeled rows (``labeled_embedding``) are clustered by k-means on
    unit-length embeddings into ``clusters`` clusters (default: labeled + ``budget``, the
    paper's choice, at most ``max_clusters`` so a large labeled table keeps k-means to
    seconds; ``budget`` defaults to sqrt(candidates)). A row's typicality is the inverse
    mean distance to its ``neighbours`` nearest rows of its cluster. Round one takes one
    candidate per cluster — the most typical (``pick="typical"``), or the smallest margin among
    the ``typical_share`` most typical (``pick="margin"``) — clusters with the fewest labeled
    rows first, then the largest; clusters under ``min_size`` rows come last (the paper drops
    them: their typicality is noise). Later rounds take each cluster's next row the same way.

    Uncertainty sampling with a weak model (200 labels, 59–69% on the Fashion-MNIST demo) fills
    the first answers with the confused classes and skews the labeled set; a typical-first
    order avoids most of that skew (on the demo it matches random order at 400 answers and
    leads at 50, but does not reach random's 400-answer accuracy with 200: bench/RESULTS.md).
    """
    n = len(margin)
    base = margin_score(margin, entropy, embedding)
    if embedding is None or n < 2:
        return base
    from sklearn.cluster import KMeans, MiniBatchKMeans  # noqa: PLC0415

    lab_emb = np.zeros((0, embedding.shape[1]), np.float32) if labeled_embedding is None else labeled_embedding
    x = np.concatenate([embedding, lab_emb]).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    b = budget if budget else int(np.ceil(np.sqrt(n)))
    k = int(np.clip(clusters or min(len(lab_emb) + b, max_clusters), 1, len(x)))
    if k == 1:
        lab = np.zeros(len(x), np.int64)
    elif k <= 50:
        lab = KMeans(k, n_init=1, random_state=seed).fit_predict(x)
    else:  # as in the paper: many clusters, mini-batch k-means keeps it to seconds
        lab = MiniBatchKMeans(k, n_init=3, batch_size=4096, random_state=seed).fit_predict(x)
    cand_lab, n_labeled = lab[:n], np.bincount(lab[n:], minlength=k)
    sizes = np.bincount(lab, minlength=k)
    seqs, keys = [], []
    # rows grouped by cluster with one sort (a scan per cluster would cost k passes over N)
    by = np.argsort(lab, kind="stable")
    ends = np.cumsum(sizes)
    for c in np.unique(cand_lab):
        members = by[ends[c] - sizes[c]:ends[c]]
        rows = members[members < n]  # the candidates come first in x
        typ = _typicality(x[rows], x[members], neighbours)
        order = rows[np.argsort(-typ, kind="stable")]
        if pick == "margin":  # each round: the least confident of the most typical rows left
            order = _margin_within_typical(order, base, typical_share)
        seqs.append(order)
        keys.append((sizes[c] < min_size, n_labeled[c], -sizes[c]))
    seqs = [seqs[i] for i in sorted(range(len(seqs)), key=lambda i: keys[i])]
    seq = [q[j] for j in range(max(map(len, seqs))) for q in seqs if j < len(q)]
    score = np.empty(n, np.float64)
    score[np.array(seq)] = float(n) - np.arange(len(seq))
    return score


@strategy("typiclust-margin", embedding=True, budget=True, labeled=True)
def typiclust_margin_score(margin: np.ndarray, entropy: np.ndarray, embedding: np.ndarray | None, *,
                           seed: int = 0, **kw) -> np.ndarray:
    """:func:`typiclust_score` with ``pick="margin"``: coverage first, uncertainty inside a cluster."""
    return typiclust_score(margin, entropy, embedding, seed=seed, pick="margin", **kw)


def _typicality(rows: np.ndarray, members: np.ndarray, neighbours: int) -> np.ndarray:
    """Inverse mean Euclidean distance of each of ``rows`` to its nearest ``members`` (``rows`` are
    among ``members``; the row itself is left out)."""
    kk = min(neighbours, len(members) - 1)
    if kk < 1:
        return np.ones(len(rows))
    out = np.empty(len(rows), np.float64)
    sq = (members * members).sum(1)
    step = max(1, (1 << 22) // len(members))  # (step, members) distance blocks: at most 16 MB each
    for s in range(0, len(rows), step):
        a = rows[s:s + step]
        d = np.sqrt(np.maximum((a * a).sum(1)[:, None] + sq[None, :] - 2.0 * (a @ members.T), 0.0))
        # the kk + 1 nearest, unordered; the row itself is the nearest (distance ~0) and is left out
        part = np.partition(d, kk, axis=1)[:, :kk + 1]
        out[s:s + step] = 1.0 / ((part.sum(1) - part.min(1)) / kk + 1e-8)
    return out


def _margin_within_typical(order: np.ndarray, base: np.ndarray, share: float) -> np.ndarray:
    """Re-order a cluster's rows (most typical first): repeatedly, of the ``share`` most typical
    rows left, the one with the highest ``base`` (least confident) goes next.

    The window (``ceil(share * left)`` rows) only ever gains the next row in typicality order or
    loses the row just picked, so a heap keyed by ``base`` holds it: O(m log m), not O(m^2)."""
    out, heap, end = [], [], 0
    for left in range(len(order), 0, -1):
        while len(heap) < max(1, int(np.ceil(share * left))):
            heapq.heappush(heap, (-base[order[end]], end))  # ties: the more typical row first
            end += 1
        out.append(order[heapq.heappop(heap)[1]])
    return np.array(out, np.int64)


@strategy("random")
def random_score(margin: np.ndarray, entropy: np.ndarray, embedding: np.ndarray | None, *, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(len(margin))


def _loop_flagged(project: Project, table: str) -> set[int]:
    """Ids flagged for review by loop iterations on ``table`` (``review-it<k>.json``)."""
    out: set[int] = set()
    root = project.root / "loops"
    if not root.is_dir():
        return out
    for state in root.glob("*/state.json"):
        try:
            st = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        if str(st.get("train", "")).split("@")[0] != table:
            continue
        for f in state.parent.glob("review-it*.json"):
            try:
                out.update(int(i) for i in json.loads(f.read_text()).get("flagged", []))
            except (OSError, ValueError, TypeError):
                continue
    return out


def _label_issues(project: Project, run: str, table: str, info: dict) -> dict[int, str | None]:
    from dataloupe.analysis import finding_rows  # noqa: PLC0415 (loop sits above analysis)
    from dataloupe.runs import read_analysis_at, run_dir, table_roles  # noqa: PLC0415

    found = read_analysis_at(run_dir(project, run))
    return {r.id: r.suggested_label for r in finding_rows(found, "label_issues", table_roles(info, table))}


def review_queue(project: Project, table: str, run: str, *, strategy: str = "margin",
                 reasons: tuple[str, ...] = REASONS, max_confidence: float = 0.6, seed: int = 0,
                 limit: int | None = None, embeddings: str | None = None, recheck: int = 0) -> dict:
    """The review queue of ``table`` under ``run``'s model, best first.

    Rows whose label or weight changed since the revision the run trained on are left out:
    someone already answered them. ``embeddings``: another run whose collected embeddings
    of ``table`` the embedding strategies (density, clusters, typicality) read instead of
    ``run``'s, e.g. a ``dataloupe pretrain`` run (features learnt from every row, not from a
    classifier trained on the few labels); ``run`` still gives the confidences.

    ``recheck``: the queue opens with the ``recheck`` given labels the evidence doubts most
    (``analysis.label_suspicion``: cross-fitted probabilities, neighbour votes, AUM of the
    rows ``run`` trained on; reason ``"recheck"``, ``suggested`` = the class it prefers),
    then the strategy's order of the rest, which is told the budget left. A wrong given
    label misleads every model trained on it; answering one is worth more than a new label.

    Returns:
        ``{"table", "revision", "run", "strategy", "total", "counts": {reason: n},
        "classes", "items": [{"id", "path", "label", "predicted", "confidence", "margin",
        "entropy", "score", "reasons", "suggested"}]}`` (``items`` cut to ``limit``).
    """
    from dataloupe.analysis._runio import load_metrics  # noqa: PLC0415
    from dataloupe.runs import read_run  # noqa: PLC0415

    score_fn = get_strategy(strategy)
    bad = set(reasons) - set(REASONS)
    if bad:
        raise DataloupeError(f"unknown review reason(s) {sorted(bad)}; known: {', '.join(REASONS)}")
    info = read_run(project, run)
    if info.get("kind") == "pretrain":
        raise DataloupeError(f"run {run!r} is a pretrain run: the review queue needs a classifier's probabilities")
    t = open_table(project, table)
    rows = t.to_arrow(columns=["id", "path", "label", "weight"])
    m = load_metrics(project, run, table)
    names = set(m.column_names)
    ids = rows["id"].to_numpy()
    mid = m["id"].to_numpy()
    common, ti, mi = np.intersect1d(ids, mid, assume_unique=True, return_indices=True)
    label = np.array(rows["label"].to_pylist(), dtype=object)[ti]
    weight = rows["weight"].to_numpy(zero_copy_only=False)[ti]
    paths = np.array(rows["path"].to_pylist(), dtype=object)[ti]

    def col(name, default=np.nan):
        if name not in names:
            return np.full(len(mi), default, np.float64)
        return m[name].cast(pa.float64()).fill_null(np.nan).to_numpy()[mi]

    conf, margin, entropy = col("confidence"), col("margin"), col("entropy")
    predicted = np.array(m["predicted"].to_pylist(), dtype=object)[mi]
    emb = None
    if strategy in _NEEDS_EMBEDDING and embeddings is not None:
        emb = _embeddings_of(project, embeddings, table, common)
    elif strategy in _NEEDS_EMBEDDING and "embedding" in names:
        arr = m["embedding"].combine_chunks()
        emb = arr.values.to_numpy(zero_copy_only=False).reshape(len(arr), arr.type.list_size)[mi]

    issues = _label_issues(project, run, table, info) if "label_issue" in reasons else {}
    flagged = _loop_flagged(project, table) if "loop_flagged" in reasons else set()
    why = {
        "undefined": np.array([v is None for v in label]),
        "low_confidence": (conf < max_confidence) & np.array([v is not None for v in label]),
        "label_issue": np.isin(common, np.fromiter(issues, np.int64, len(issues))),
        "loop_flagged": np.isin(common, np.fromiter(flagged, np.int64, len(flagged))),
    }
    cand = np.zeros(len(common), bool)
    for r in reasons:
        cand |= why[r]
    cand &= weight > 0
    answered = _changed_since(t, info.get("train_revision") if info.get("train_table") == table else None, common)
    cand &= ~answered
    if recheck < 0:
        raise DataloupeError(f"--recheck must be >= 0, got {recheck}")
    rechecked: dict[int, tuple[float, str]] = {}  # position in ``common`` -> (doubt, suggested class)
    if recheck and len(common):
        from dataloupe.analysis import label_suspicion  # noqa: PLC0415 (loop sits above analysis)

        sus = label_suspicion(project, run)
        if sus["table"] != table:
            raise DataloupeError(f"--recheck re-checks the labels run {run!r} trained on (table {sus['table']!r}); "
                                 f"the queue is of table {table!r}")
        pos = np.minimum(np.searchsorted(common, sus["ids"]), len(common) - 1)  # ``common`` is sorted
        open_ = np.array([v is not None for v in label]) & (weight > 0) & ~answered  # still as the run saw it
        for j in np.flatnonzero(common[pos] == sus["ids"]):  # most doubted first
            if open_[pos[j]]:
                rechecked[int(pos[j])] = (float(sus["scores"][j]), sus["suggested"][j])
                if len(rechecked) == recheck:
                    break
    head = np.fromiter(rechecked, np.int64, len(rechecked))
    cand[head] = False
    idx = np.flatnonzero(cand)
    extra = {}
    if strategy in _NEEDS_PREDICTED:
        extra["predicted"] = np.unique(predicted[idx].astype(str), return_inverse=True)[1]
    if strategy in _NEEDS_BUDGET:
        extra["budget"] = None if limit is None else max(1, limit - len(head))
    if strategy in _NEEDS_LABELED:
        lab_rows = np.flatnonzero(~cand & (weight > 0) & np.array([v is not None for v in label]))
        extra["labeled_embedding"] = emb[lab_rows] if emb is not None else None
    score = score_fn(margin[idx], entropy[idx], emb[idx] if emb is not None else None, seed=seed, **extra)
    order = np.concatenate([head, idx[np.argsort(-score, kind="stable")]])
    score_of = dict(zip(idx.tolist(), score.tolist()))
    score_of.update({i: d for i, (d, _) in rechecked.items()})
    keep = order if limit is None else order[:limit]
    items = [{"id": int(common[i]), "path": paths[i], "label": label[i], "predicted": predicted[i],
              "confidence": _f(conf[i]), "margin": _f(margin[i]), "entropy": _f(entropy[i]),
              "score": _f(score_of[i]),
              "reasons": [r for r in reasons if why[r][i]] + (["recheck"] if i in rechecked else []),
              "suggested": rechecked[i][1] if i in rechecked else issues.get(int(common[i]))} for i in keep.tolist()]
    counts = {r: int((why[r] & cand).sum()) for r in reasons}
    if recheck:
        counts["recheck"] = len(head)
    return {"table": table, "revision": t.revision, "run": run, "strategy": strategy, "total": int(len(order)),
            "counts": counts, "classes": list(t.classes), "items": items}


def _embeddings_of(project: Project, run: str, table: str, ids: np.ndarray) -> np.ndarray:
    """``(len(ids), D)`` embeddings of ``table``'s rows ``ids`` from ``run``'s metrics; a clear
    error when the run has none or misses some of the rows."""
    from dataloupe.analysis._runio import load_metrics  # noqa: PLC0415

    e = load_metrics(project, run, table)
    if "embedding" not in e.column_names:
        raise DataloupeError(f"run {run!r} has no embeddings for table {table!r}: collect them with "
                             f"`dataloupe collect {run} --table {table}`")
    eid = e["id"].to_numpy()
    pos = np.searchsorted(eid, ids)
    ok = (pos < len(eid)) & (eid[np.minimum(pos, len(eid) - 1)] == ids)
    if not ok.all():
        raise DataloupeError(f"run {run!r} has embeddings for {int(ok.sum())} of the {len(ids)} rows of table "
                             f"{table!r} the queue reads: collect them again on the table's latest revision "
                             f"(`dataloupe collect {run} --table {table}`)")
    arr = e["embedding"].combine_chunks()
    return arr.values.to_numpy(zero_copy_only=False).reshape(len(arr), arr.type.list_size)[pos].astype(np.float32)


def _f(v) -> float | None:
    v = float(v)
    return None if np.isnan(v) else round(v, 6)


def _changed_since(t, revision: int | None, ids: np.ndarray) -> np.ndarray:
    """Mask over ``ids``: label or weight differs between ``revision`` and ``t`` (or row is new)."""
    if revision is None or int(revision) == t.revision:
        return np.zeros(len(ids), bool)
    try:
        old = t.at(int(revision)).to_arrow(columns=["id", "label", "weight"])
    except DataloupeError:
        return np.zeros(len(ids), bool)
    cur = t.to_arrow(columns=["id", "label", "weight"])
    before = {int(i): (lab, w) for i, lab, w in zip(old["id"].to_pylist(), old["label"].to_pylist(), old["weight"].to_pylist())}
    now = {int(i): (lab, w) for i, lab, w in zip(cur["id"].to_pylist(), cur["label"].to_pylist(), cur["weight"].to_pylist())}
    return np.array([before.get(int(i)) != now.get(int(i)) for i in ids])


def apply_answers(project: Project, table: str, answers: dict[int, str | None], *, message: str,
                  expected_revision: int | None = None) -> dict:
    """Write answers (id → class, None = undefined, :data:`EXCLUDE`) as ONE revision.

    Confirmations (an answer equal to the row's label) change nothing.

    Returns:
        ``{"revision", "previous_revision", "committed", "answered", "changed", "changes"}``.
    """
    t = open_table(project, table)
    if expected_revision is not None and expected_revision != t.latest_revision:
        raise DataloupeError(f"table {table!r} is at revision {t.latest_revision}, not {expected_revision}; "
                             "reload the queue first")
    unknown = sorted({v for v in answers.values() if v is not None and v != EXCLUDE and v not in t.classes})
    if unknown:
        raise DataloupeError(f"unknown class(es) {', '.join(map(repr, unknown))}; classes: {', '.join(t.classes)}")
    have = t.to_arrow(columns=["id"])["id"].to_numpy()
    missing = sorted(set(answers) - set(have.tolist()))
    if missing:
        raise DataloupeError(f"{len(missing)} id(s) are not in table {table!r} (e.g. {', '.join(map(str, missing[:5]))})")
    labeled = {i: v for i, v in answers.items() if v is not None and v != EXCLUDE}
    ops, extra = [], None
    if labeled:
        extra = pa.table({"id": pa.array(list(labeled), pa.int64()), "answer": pa.array(list(labeled.values()), pa.string())})
        ops.append(EditOp("set_label", ids=np.array(list(labeled), np.int64), set_label_from="answer", name="label"))
    undef = [i for i, v in answers.items() if v is None]
    if undef:
        ops.append(EditOp("undefine", ids=np.array(undef, np.int64), name="undefine"))
    excl = [i for i, v in answers.items() if v == EXCLUDE]
    if excl:
        ops.append(EditOp("exclude", ids=np.array(excl, np.int64), name="exclude"))
    if not ops:
        return {"revision": t.latest_revision, "previous_revision": t.latest_revision, "committed": False,
                "answered": 0, "changed": 0, "changes": {}}
    res = apply_edits(project, table, ops, message=message, extra=extra)
    return {"revision": res.table.revision, "previous_revision": t.latest_revision, "committed": res.committed,
            "answered": len(answers), "changed": res.changed, "changes": res.changes}


def read_oracle(path: str | Path) -> dict[str, str | None]:
    """``path,label`` CSV (paths relative to the table's root, as ``table import csv`` reads them)
    → {POSIX path: label or None}."""
    import pyarrow.csv as pacsv  # noqa: PLC0415

    p = Path(path).expanduser()
    if not p.is_file():
        raise DataloupeError(f"oracle file not found: {p}")
    try:
        t = pacsv.read_csv(p, convert_options=pacsv.ConvertOptions(
            column_types={"path": pa.string(), "label": pa.string()}, strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataloupeError(f"cannot read {p.name}: {str(e).splitlines()[0]}") from None
    for c in ("path", "label"):
        if c not in t.column_names:
            raise DataloupeError(f"{p.name} has no {c!r} column (columns: {', '.join(t.column_names)})")
    return {PurePosixPath(a).as_posix(): (b or None) for a, b in zip(t["path"].to_pylist(), t["label"].to_pylist()) if a}


def answer_from_oracle(project: Project, table: str, run: str, oracle: str | Path, *, budget: int,
                       strategy: str = "margin", seed: int = 0, message: str | None = None,
                       embeddings: str | None = None, recheck: int = 0) -> dict:
    """Answer the first ``budget`` rows of the review queue from an oracle CSV, as ONE revision.

    ``recheck``: the first rows asked are the ``recheck`` most doubted given labels (see
    :func:`review_queue`); they count in ``budget``.

    This is how a person is simulated. Queue rows missing from the file are skipped and
    counted (``skipped_missing``); rows whose file label is not a class are counted in
    ``skipped_unknown_class``.

    Returns:
        ``{"revision", "asked", "answered", "changed", "strategy", "previous_revision",
        "skipped_missing", "skipped_unknown_class", "queue_total"}``.
    """
    if budget < 1:
        raise DataloupeError(f"--budget must be >= 1, got {budget}")
    truth = read_oracle(oracle)
    q = review_queue(project, table, run, strategy=strategy, seed=seed, limit=budget, embeddings=embeddings,
                     recheck=min(recheck, budget))
    classes = set(q["classes"])
    answers: dict[int, str | None] = {}
    missing = unknown = 0
    for it in q["items"]:
        key = PurePosixPath(it["path"]).as_posix()
        if key not in truth:
            missing += 1
            continue
        lab = truth[key]
        if lab is not None and lab not in classes:
            unknown += 1
            continue
        answers[it["id"]] = lab
    on = f"run {run}" + (f", embeddings of {embeddings}" if embeddings else "") + (
        f", {q['counts']['recheck']} given labels re-checked first" if recheck else "")
    msg = message or f"review {strategy}: {len(answers)} answers from {Path(oracle).name} ({on})"
    res = apply_answers(project, table, answers, message=msg, expected_revision=q["revision"])
    return {"revision": res["revision"], "asked": len(q["items"]), "answered": len(answers),
            "changed": res["changed"], "strategy": strategy, "previous_revision": res["previous_revision"],
            "skipped_missing": missing, "skipped_unknown_class": unknown, "queue_total": q["total"]}
