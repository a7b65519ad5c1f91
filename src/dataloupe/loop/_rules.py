"""Policy rules: turn a run's findings into edit steps on the training table.

Each rule is a function ``(ctx, **params) -> RuleOutput`` registered by name. Rules read
only the training table, the run's per-sample metrics on it and the findings of
``dataloupe analyze`` — never validation labels (those only pick checkpoints and report).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from dataloupe.project import DataloupeError
from dataloupe.tables import EditOp


@dataclass
class RuleContext:
    """What a rule may look at.

    Attributes:
        classes: class names in the run's order.
        rows: the training table's latest rows (``id``, ``label``, ``weight``, ...).
        metrics: the run's per-sample metrics on that table (``id``, ``predicted``,
            ``confidence``, ``loss``, ``aum``, ``cluster``, ...), joinable on ``id``.
        findings: the ``analyze`` findings dict (``label_issues``, ``pseudo_labels``, ...).
    """

    classes: list[str]
    rows: pa.Table
    metrics: pa.Table
    findings: dict
    origin_labels: dict | None = None  # id -> label when the loop started (None: unknown)
    crossfit: dict | None = None  # id -> (K,) out-of-sample probabilities of labeled rows (policy `crossfit`)
    iteration: int = 1  # the loop iteration whose model the rules read (1-based)

    def embeddings(self) -> np.ndarray:
        """``(N, D)`` float32 run embeddings aligned with ``rows`` (NaN rows where missing)."""
        m = self.metrics
        if "embedding" not in m.column_names:
            raise DataloupeError("rule needs the run's embeddings (metrics column 'embedding')")
        col = m["embedding"].combine_chunks()
        d = col.type.list_size
        vals = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, d)
        pos = {int(i): k for k, i in enumerate(m["id"].to_pylist())}
        out = np.full((self.rows.num_rows, d), np.nan, np.float32)
        for r, i in enumerate(self.rows["id"].to_pylist()):
            k = pos.get(int(i))
            if k is not None:
                out[r] = vals[k]
        return out

    def column(self, name: str) -> np.ndarray:
        """A metrics column aligned with ``rows`` (NaN/None where the run has no value)."""
        m = self.metrics
        if name not in m.column_names:
            raise DataloupeError(f"rule needs metrics column {name!r}; the run has "
                                 f"{', '.join(m.column_names)}")
        pos = {int(i): k for k, i in enumerate(m["id"].to_pylist())}
        vals = m[name].to_numpy(zero_copy_only=False)
        ids = self.rows["id"].to_numpy()
        numeric = vals.dtype.kind in "biuf"
        out = np.full(len(ids), np.nan) if numeric else np.full(len(ids), None, dtype=object)
        have = np.array([i in pos for i in ids.tolist()], bool)
        out[have] = vals[[pos[i] for i in ids[have].tolist()]]
        return out

    def labels(self) -> np.ndarray:
        return np.array(self.rows["label"].to_pylist(), dtype=object)

    def weights(self) -> np.ndarray:
        return self.rows["weight"].to_numpy()

    def train_rows(self, kind: str) -> list:
        """The training-table rows finding ``kind`` names (:class:`dataloupe.analysis.FindingRow`)."""
        from dataloupe.analysis import finding_rows  # noqa: PLC0415 (loop sits above analysis)

        return finding_rows(self.findings, kind, {"train"})


@dataclass
class RuleOutput:
    """Edit steps a rule proposes, plus ids it flags for a person to review (no edit)."""

    ops: list[EditOp] = field(default_factory=list)
    flagged: list[int] = field(default_factory=list)


RuleFn = Callable[..., RuleOutput]
_RULES: dict[str, RuleFn] = {}


def rule(name: str) -> Callable[[RuleFn], RuleFn]:
    """Register ``fn(ctx, **params) -> RuleOutput`` as policy rule ``name``.

    A policy may set exactly the rule's named parameters (checked with
    ``inspect.signature`` when the policy loads).

    Example (a plug-in rule; a policy then lists ``- rule: flag_nothing`` with ``limit: 3``)::

        from dataloupe.loop import RuleOutput, rule

        @rule("flag_nothing")
        def flag_nothing(ctx, *, limit: int = 0):
            return RuleOutput()
    """

    def deco(fn: RuleFn) -> RuleFn:
        _RULES[name] = fn
        return fn

    return deco


def list_rules() -> list[str]:
    return sorted(_RULES)


def get_rule(name: str) -> RuleFn:
    if name not in _RULES:
        raise DataloupeError(f"unknown rule {name!r}; known: {', '.join(list_rules())}")
    return _RULES[name]


def _by_class(ids: np.ndarray, labels: np.ndarray, name: str) -> list[EditOp]:
    ops = []
    for c in sorted(set(labels.tolist())):
        sel = ids[labels == c]
        if len(sel):
            ops.append(EditOp("set_label", ids=sel, label=str(c), name=name))
    return ops


def neighbour_agreement(ctx: RuleContext, query: np.ndarray, predicted: np.ndarray, *,
                        k: int = 10) -> np.ndarray:
    """Similarity-weighted share of each query row's ``k`` nearest labeled neighbours (cosine,
    on the run's embeddings) whose label is the row's predicted class; NaN without neighbours.

    Voters are the training rows that are labeled with weight > 0 (never validation rows).
    """
    from dataloupe.analysis import knn, neighbour_votes  # noqa: PLC0415 (loop sits above analysis)

    emb = ctx.embeddings()
    labels, w = ctx.labels(), ctx.weights()
    voters = np.flatnonzero((labels != None) & (w > 0) & ~np.isnan(emb[:, 0]))  # noqa: E711
    out = np.full(len(query), np.nan)
    if not len(voters) or not len(query):
        return out
    sims, idx = knn(emb[voters], k=min(k, len(voters)), queries=emb[query])
    # class indices; a label outside the run's classes still votes, for an extra class no prediction names
    index = {c: i for i, c in enumerate(ctx.classes)}
    other = len(index)
    votes = neighbour_votes(idx, sims, np.array([index.get(v, other) for v in labels[voters]], np.int64),
                            num_classes=other + 1)
    total = votes.sum(1)
    pred = np.array([index.get(p, other) for p in predicted], np.int64)
    agree = np.where(pred < other, votes[np.arange(len(query)), pred], 0.0)
    np.divide(agree, total, out=out, where=total > 0)
    return out


def propagated_labels(ctx: RuleContext, *, k: int = 10, alpha: float = 0.9, temperature: float | None = None,
                      seeds: str = "labeled", steps: int = 100, certainty: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Label propagation on the run's embeddings (Zhou et al., 2004: scikit-learn's
    ``LabelSpreading``, ``F <- alpha S F + (1 - alpha) Y`` for ``steps`` steps) on a cosine k-NN
    graph of the training rows — never validation rows.

    Args:
        k: neighbours per row in the graph.
        alpha: how much of each step's mass comes from the neighbours (the rest from the seeds).
        temperature: None: scikit-learn's unweighted k-NN graph; a number ``T``: edges weighted
            ``exp((cos - 1) / T)`` (the kNN memory's own weighting) and made symmetric.
        seeds: ``labeled``: every labeled row with weight > 0 seeds its class; ``given``: only the
            rows whose label is still the one they had when the loop started (``origin_labels``;
            no automatic label seeds, so the network's mistakes do not propagate).
        steps: propagation steps.
        certainty: an ``(N,)`` float array filled in place with ``1 - H(p) / log K`` of each row's
            propagated class distribution ``p`` (1: all mass on one class, 0: uniform; NaN where
            no mass arrives), the per-row weight of Iscen et al. (2019).

    Returns:
        ``(class names (N,) object, score (N,))`` aligned with ``rows``: the propagated class
        and its share of the propagated mass (None / NaN where no mass arrives). A second,
        different teacher: it reads the data's neighbourhood structure, not the network's head.
    """
    from sklearn.semi_supervised import LabelSpreading  # noqa: PLC0415

    if seeds not in ("labeled", "given"):
        raise DataloupeError(f"propagation seeds must be labeled or given, not {seeds!r}")
    emb = ctx.embeddings()
    have = ~np.isnan(emb[:, 0])
    labels, w = ctx.labels(), ctx.weights()
    if seeds == "given":
        origin = ctx.origin_labels or {}
        ids = ctx.rows["id"].to_pylist()
        labels = np.array([lab if lab is not None and origin.get(int(i)) == lab else None
                           for i, lab in zip(ids, labels)], dtype=object)
    index = {c: i for i, c in enumerate(ctx.classes)}
    y = np.array([index.get(lab, -1) if lab is not None and wt > 0 else -1 for lab, wt in zip(labels, w)])
    names = np.full(len(labels), None, dtype=object)
    score = np.full(len(labels), np.nan)
    seeded = have & (y >= 0)
    if certainty is not None:
        certainty[:] = np.nan
    if len(np.unique(y[seeded])) < 2:
        return names, score
    x = emb[have] / np.maximum(np.linalg.norm(emb[have], axis=1, keepdims=True), 1e-12)
    kk = min(k, int(have.sum()) - 1)
    kernel = "knn" if temperature is None else _weighted_knn_graph(kk, float(temperature))
    ls = LabelSpreading(kernel=kernel, n_neighbors=kk, alpha=alpha, max_iter=steps, tol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter reached: a fixed number of steps, as in the papers
        ls.fit(x, y[have])
    dist = np.nan_to_num(ls.label_distributions_)
    classes = np.array([ctx.classes[c] for c in ls.classes_], dtype=object)
    reached = dist.sum(1) > 0
    sel = np.flatnonzero(have)[reached]
    names[sel] = classes[dist[reached].argmax(1)]
    score[sel] = dist[reached].max(1)
    if certainty is not None:  # 1 - entropy / log(K) of the propagated distribution (Iscen et al., 2019)
        p = dist[reached] / dist[reached].sum(1, keepdims=True)
        ent = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(1)
        certainty[sel] = 1.0 - ent / np.log(max(2, len(ctx.classes)))
    return names, score


def _weighted_knn_graph(k: int, temperature: float) -> Callable[[np.ndarray, np.ndarray], object]:
    """A ``LabelSpreading`` kernel: the symmetric k-NN affinity ``W + W^T`` with
    ``W_ij = exp((cos_ij - 1) / T)`` for the ``k`` nearest ``j`` of ``i`` (itself excluded).
    scikit-learn's own ``knn`` kernel has unweighted, one-way edges; no library builds this one."""
    from scipy import sparse  # noqa: PLC0415

    from dataloupe.analysis import knn  # noqa: PLC0415 (loop sits above analysis)

    def kernel(x: np.ndarray, _y: np.ndarray):
        sims, idx = knn(x, k=k)
        ok = idx >= 0
        rows = np.broadcast_to(np.arange(len(x))[:, None], idx.shape)[ok]
        w = sparse.coo_matrix((np.exp((sims[ok].astype(np.float64) - 1.0) / temperature), (rows, idx[ok])),
                              shape=(len(x), len(x)))
        return (w + w.T).tocoo()

    return kernel


@rule("auto_label")
def auto_label(ctx: RuleContext, *, threshold: float | str = "auto", per_class: bool = True,
               min_agreement: float | None = None, agreement_from: str = "findings", neighbours: int = 10,
               max_fraction: float = 1.0, cap_per_class: bool = True) -> RuleOutput:
    """Label undefined rows whose prediction is confident enough.

    ``threshold="auto"`` uses the thresholds ``analyze`` chose on labeled training rows
    (per class when ``per_class``); a number is a global confidence threshold.
    ``min_agreement`` also requires that share of embedding neighbours to agree, taken from
    the ``pseudo_labels`` finding (``agreement_from: findings``) or computed here among the
    ``neighbours`` nearest labeled training rows (``agreement_from: embeddings``).
    ``max_fraction`` caps, per predicted class, the share of the undefined rows predicted as
    that class that are labeled in one iteration (most confident first): the loop then grows
    its labels gradually, curriculum style, and each class keeps its share of the pool. With
    ``cap_per_class: false`` the cap is one share of the whole undefined pool, the best-ranked
    rows whatever their class (easy classes then fill more of it; precision is higher).
    ``agreement_from: propagation`` asks a second teacher instead: label propagation over the
    run's embeddings from the labeled rows (:func:`propagated_labels`); a row qualifies only
    where the propagated class is the network's prediction (and its propagated score reaches
    ``min_agreement`` when given), and rows are ranked by that score rather than by the
    network's confidence.
    """
    if agreement_from not in ("findings", "embeddings", "propagation"):
        raise DataloupeError("auto_label: agreement_from must be findings, embeddings or propagation, not "
                             f"{agreement_from!r}")
    pl = ctx.findings.get("pseudo_labels") or {}
    items = pl.get("items", []) if isinstance(pl, dict) else []
    labels = ctx.labels()
    ids = ctx.rows["id"].to_numpy()
    # Candidates: every undefined row the run predicted (not only those analyze listed).
    pred, conf = ctx.column("predicted"), ctx.column("confidence").astype(float)
    undefined = np.flatnonzero((labels == None) & (pred != None) & ~np.isnan(conf))  # noqa: E711
    if threshold == "auto":
        table = pl.get("class_thresholds", {}) if per_class else {}
        t = np.array([table.get(c, np.inf) if per_class else pl.get("global_threshold", np.inf)
                      for c in pred[undefined]], float)
        t = np.where(np.isnan(t.astype(float)), np.inf, t)
    else:
        t = np.full(len(undefined), float(threshold))
    keep = conf[undefined] >= t
    rank = conf
    if agreement_from == "propagation":
        prop, pscore = propagated_labels(ctx, k=neighbours)
        keep &= prop[undefined] == pred[undefined]
        if min_agreement is not None:
            keep &= np.nan_to_num(pscore[undefined], nan=0.0) >= min_agreement
        rank = np.nan_to_num(pscore, nan=0.0)
    elif min_agreement is not None:
        if agreement_from == "embeddings":
            agree = neighbour_agreement(ctx, undefined, pred[undefined], k=neighbours)
        else:
            by_id = {int(it["id"]): it.get("agreement") for it in items}
            agree = np.array([by_id.get(int(i)) or 0.0 for i in ids[undefined]], float)
        keep &= np.nan_to_num(agree, nan=0.0) >= min_agreement
    if not cap_per_class and max_fraction < 1:
        cand = undefined[keep]
        cand = cand[np.argsort(-rank[cand], kind="stable")][:int(np.ceil(max_fraction * len(undefined)))]
        return RuleOutput(_by_class(np.sort(ids[cand]).astype(np.int64), pred[np.sort(cand)], "auto-label"))
    ops = []
    for c in sorted({str(x) for x in pred[undefined]}):
        of_class = pred[undefined] == c
        cand = undefined[of_class & keep]
        cap = int(np.ceil(max_fraction * of_class.sum())) if max_fraction < 1 else len(cand)
        cand = cand[np.argsort(-rank[cand], kind="stable")][:cap]
        if len(cand):
            ops.append(EditOp("set_label", ids=np.sort(ids[cand]).astype(np.int64), label=c, name="auto-label"))
    return RuleOutput(ops)


@rule("undefine_disputed")
def undefine_disputed(ctx: RuleContext, *, min_confidence: float = 0.9, label_issues: bool = False) -> RuleOutput:
    """Return to the pool the rows the loop labeled itself that the newest model, trained on
    them, confidently assigns to another class (a model rarely contradicts its own training
    labels, so this is strong evidence the automatic label was wrong); with
    ``label_issues``, also those ``analyze`` flags as label issues (training dynamics,
    out-of-sample probabilities, neighbours). Labels that were there when the loop started
    are left alone (``exclude_label_issues`` handles those). Undefining, rather than
    excluding, removes the doubtful label from the table; a later, better model may label
    the row again.
    """
    if ctx.origin_labels is None:
        return RuleOutput()
    labels = ctx.labels()
    pred, conf = ctx.column("predicted"), ctx.column("confidence").astype(float)
    ids = ctx.rows["id"].to_numpy()
    auto = np.array([ctx.origin_labels.get(int(i)) is None for i in ids]) & (labels != None)  # noqa: E711
    bad = auto & (pred != None) & (pred != labels) & (np.nan_to_num(conf) >= min_confidence)  # noqa: E711
    if label_issues:
        flagged = {r.id for r in ctx.train_rows("label_issues")}
        bad |= auto & np.isin(ids, np.fromiter(flagged, np.int64, len(flagged)))
    return RuleOutput([EditOp("undefine", ids=ids[bad], name="undefine disputed auto-labels")] if bad.any() else [])


@rule("relabel_propagated")
def relabel_propagated(ctx: RuleContext, *, k: int = 20, temperature: float = 0.1, alpha: float = 0.9,
                       steps: int = 60, weigh: bool = False, min_weight: float = 0.05) -> RuleOutput:
    """Give every row that had no label when the loop started — labeled by the loop since, or
    still undefined — the class propagated from the labels given at the start over the newest
    model's embedding (:func:`propagated_labels` with ``seeds: given``, edges weighted like the
    kNN vote). The earlier automatic labels taught the network its embedding, but none of
    them seeds the propagation, so a wrong automatic label is not passed on: only the given
    labels and the data's neighbourhoods decide. Given labels are never touched; excluded rows
    (weight 0) keep theirs.

    Measured (bench/RESULTS.md, twenty-second session, chihuahua-muffin): after the student
    (iteration 2 of ``default``) this changes ~200 of 4,533 pool labels, and a third network
    trained on them reaches 89.86% / 88.09% with the vote (seeds 0 / 1) from 88.77% / 88.09%.

    ``weigh: true`` also sets each such row's weight (how often training draws it) to the
    propagation's certainty ``1 - H(p) / log K`` (Iscen et al., 2019), at least ``min_weight``
    and rounded to 0.05, so the rows whose class is in doubt — where the wrong labels gather —
    are drawn less; given rows keep theirs. Measured (twenty-fourth and twenty-fifth sessions,
    bench/RESULTS.md): over the student's embedding the certainty-weighted labels are 92.7% right
    against 87.5% unweighted (seed 0), and over three trainings of the third network it gains
    +0.82 points alone (up in all three) and +0.31 with the vote; ``default`` weighs.
    """
    if not (isinstance(k, int) and k >= 1 and isinstance(steps, int) and steps >= 1 and temperature > 0
            and 0 < alpha < 1 and 0 < min_weight <= 1):
        raise DataloupeError(f"relabel_propagated needs k >= 1, steps >= 1, temperature > 0, 0 < alpha < 1 and "
                             f"0 < min_weight <= 1; got k={k!r}, steps={steps!r}, temperature={temperature!r}, "
                             f"alpha={alpha!r}, min_weight={min_weight!r}")
    if ctx.origin_labels is None:
        return RuleOutput()
    certainty = np.full(ctx.rows.num_rows, np.nan)
    prop, _ = propagated_labels(ctx, k=k, alpha=alpha, temperature=temperature, seeds="given", steps=steps,
                                certainty=certainty)
    labels, w = ctx.labels(), ctx.weights()
    ids = ctx.rows["id"].to_numpy().astype(np.int64)
    auto = np.array([ctx.origin_labels.get(int(i)) is None for i in ids])
    change = auto & (w > 0) & (prop != None) & (prop != labels)  # noqa: E711
    ops = _by_class(ids[change], prop[change], "relabel by propagation") if change.any() else []
    if weigh:
        # one edit per weight step (0.05), not one per row
        new_w = np.clip(np.round(np.nan_to_num(certainty, nan=1.0) / 0.05) * 0.05, min_weight, 1.0)
        moved = auto & (w > 0) & (prop != None) & ~np.isclose(new_w, w)  # noqa: E711
        for v in sorted(set(np.round(new_w[moved], 4).tolist())):
            ops.append(EditOp("set_weight", ids=ids[moved & np.isclose(new_w, v)], weight=float(v),
                              name="weigh by propagation certainty"))
    return RuleOutput(ops)


@rule("exclude_label_issues")
def exclude_label_issues(ctx: RuleContext, *, min_score: float = 0.0, weight: float = 0.0,
                         max_fraction: float = 1.0) -> RuleOutput:
    """Exclude (``weight=0``) or down-weight training rows flagged as likely mislabeled.

    ``max_fraction`` caps the rows set aside per iteration at that share of the labeled,
    trainable rows (highest scores first), so a weak early model cannot empty the set.
    """
    recs = sorted((r for r in ctx.train_rows("label_issues") if float(r.score or 0) >= min_score),
                  key=lambda r: -float(r.score or 0))
    active = int(np.sum((ctx.labels() != None) & (ctx.weights() > 0)))  # noqa: E711
    cap = int(np.floor(max_fraction * active)) if max_fraction < 1 else len(recs)
    ids = np.array([r.id for r in recs[:cap]], np.int64)
    if not len(ids):
        return RuleOutput()
    if weight == 0:
        return RuleOutput([EditOp("exclude", ids=ids, name="exclude label issues")])
    return RuleOutput([EditOp("set_weight", ids=ids, weight=weight, name="down-weight label issues")])


@rule("relabel_label_issues")
def relabel_label_issues(ctx: RuleContext, *, min_score: float = 0.0,
                         min_confidence: float = 0.9) -> RuleOutput:
    """Relabel flagged rows to the suggested class when the model is confident of it."""
    conf = dict(zip(ctx.metrics["id"].to_pylist(), ctx.metrics["confidence"].to_pylist()))
    given = dict(zip(ctx.rows["id"].to_pylist(), ctx.rows["label"].to_pylist()))
    recs = [r for r in ctx.train_rows("label_issues")
            if float(r.score or 0) >= min_score and (conf.get(r.id) or 0) >= min_confidence
            and r.suggested_label not in (None, given.get(r.id))]
    ids = np.array([r.id for r in recs], np.int64)
    labels = np.array([r.suggested_label for r in recs], dtype=object)
    return RuleOutput(_by_class(ids, labels, "relabel label issues"))


@rule("crossfit_label_issues")
def crossfit_label_issues(ctx: RuleContext, *, max_label_prob: float = 0.1, action: str = "undefine",
                          max_fraction: float = 0.25) -> RuleOutput:
    """Set aside labeled rows that models which never trained on them find implausible.

    Uses the out-of-sample probabilities of the policy's ``crossfit`` step (each labeled row
    judged by a network trained without it): a row whose own label gets probability below
    ``max_label_prob`` is returned to the pool (``action: undefine``, so consistency training
    can still learn from its pixels) or excluded (``action: exclude``). At most
    ``max_fraction`` of the labeled rows go per iteration, least plausible first.
    """
    if action not in ("undefine", "exclude"):
        raise DataloupeError(f"crossfit_label_issues: action must be undefine or exclude, not {action!r}")
    if not ctx.crossfit:
        return RuleOutput()
    labels, w = ctx.labels(), ctx.weights()
    ids = ctx.rows["id"].to_numpy()
    index = {c: i for i, c in enumerate(ctx.classes)}
    cand, prob = [], []
    for r in np.flatnonzero((labels != None) & (w > 0)):  # noqa: E711
        p = ctx.crossfit.get(int(ids[r]))
        if p is not None and labels[r] in index and p[index[labels[r]]] < max_label_prob:
            cand.append(r)
            prob.append(p[index[labels[r]]])
    if not cand:
        return RuleOutput()
    cap = int(max_fraction * int(np.sum((labels != None) & (w > 0))))  # noqa: E711
    order = np.argsort(prob, kind="stable")[:cap]
    sel = np.sort(ids[np.asarray(cand)[order]]).astype(np.int64)
    if not len(sel):
        return RuleOutput()
    return RuleOutput([EditOp(action, ids=sel, name=f"{action} cross-fitted label issues")])


@rule("exclude_high_loss")
def exclude_high_loss(ctx: RuleContext, *, quantile: float = 0.99, weight: float = 0.0) -> RuleOutput:
    """Exclude/down-weight labeled rows whose loss is above the given quantile of losses."""
    loss = ctx.column("loss").astype(float)
    lab = ~np.isnan(loss) & (ctx.weights() > 0)
    if lab.sum() < 10:
        return RuleOutput()
    cut = np.quantile(loss[lab], quantile)
    ids = ctx.rows["id"].to_numpy()[lab & (loss > cut)]
    if not len(ids):
        return RuleOutput()
    if weight == 0:
        return RuleOutput([EditOp("exclude", ids=ids, name="exclude high loss")])
    return RuleOutput([EditOp("set_weight", ids=ids, weight=weight, name="down-weight high loss")])


@rule("undefine_outliers")
def undefine_outliers(ctx: RuleContext, *, labeled_only: bool = True) -> RuleOutput:
    """Mark embedding-space outliers undefined (they stop being trained on)."""
    labels = dict(zip(ctx.rows["id"].to_pylist(), ctx.rows["label"].to_pylist()))
    ids = np.array([r.id for r in ctx.train_rows("outliers")
                    if r.id in labels and (labels[r.id] is not None or not labeled_only)], np.int64)
    return RuleOutput([EditOp("undefine", ids=ids, name="undefine outliers")] if len(ids) else [])


@rule("label_pure_clusters")
def label_pure_clusters(ctx: RuleContext, *, min_purity: float = 0.95,
                        min_confidence: float = 0.9, min_labeled: int = 5) -> RuleOutput:
    """Give a cluster's undefined members its majority label when the cluster is pure and confident."""
    cluster = ctx.column("cluster")
    conf = ctx.column("confidence").astype(float)
    labels = ctx.labels()
    ids = ctx.rows["id"].to_numpy()
    out_ids, out_labels = [], []
    cluster = cluster.astype(float)
    for c in sorted({int(x) for x in cluster[~np.isnan(cluster)] if x >= 0}):
        members = cluster == c
        lab = members & (labels != None)  # noqa: E711 (object array)
        if lab.sum() < min_labeled:
            continue
        vals, counts = np.unique(labels[lab].astype(str), return_counts=True)
        purity = counts.max() / counts.sum()
        if purity < min_purity or np.nanmean(conf[members]) < min_confidence:
            continue
        undef = members & (labels == None)  # noqa: E711
        out_ids += ids[undef].tolist()
        out_labels += [vals[counts.argmax()]] * int(undef.sum())
    return RuleOutput(_by_class(np.array(out_ids, np.int64), np.array(out_labels, dtype=object),
                                "label pure clusters"))


@rule("flag_low_confidence")
def flag_low_confidence(ctx: RuleContext, *, max_confidence: float = 0.6) -> RuleOutput:
    """List rows the model is unsure of for a person to review (makes no edit)."""
    conf = ctx.column("confidence").astype(float)
    return RuleOutput(flagged=ctx.rows["id"].to_numpy()[conf < max_confidence].tolist())


@rule("cap_imbalance")
def cap_imbalance(ctx: RuleContext, *, max_ratio: float = 1.5) -> RuleOutput:
    """Down-weight over-represented classes so no class outweighs the rarest by > ``max_ratio``."""
    labels, w = ctx.labels(), ctx.weights()
    active = (labels != None) & (w > 0)  # noqa: E711
    if not active.any():
        return RuleOutput()
    names, counts = np.unique(labels[active].astype(str), return_counts=True)
    floor = counts.min() * max_ratio
    ops = []
    for c, n in zip(names, counts):
        if n > floor:
            sel = active & (labels == c) & np.isclose(w, 1.0)
            ids = ctx.rows["id"].to_numpy()[sel]
            ops.append(EditOp("set_weight", ids=ids, weight=round(float(floor / n), 4),
                              name="cap imbalance"))
    return RuleOutput(ops)
