"""The automated loop: train -> collect -> analyse -> apply the policy's rules as one
revision -> retrain, with a summary row per iteration. Killed loops resume.

State lives in ``<project>/loops/<name>/state.json`` (written atomically after each
step), so a resumed loop skips finished iterations, resumes an unfinished training run,
and never applies an iteration's edits twice (the revision message carries the marker
``loop <name> iteration <k>``).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from dataloupe._fileio import atomic_path, write_bytes_atomic, write_json_atomic
from dataloupe.loop._policy import Policy, crossfit_judges, load_policy
from dataloupe.loop._rules import RuleContext, get_rule
from dataloupe.project import DataloupeError, Project
from dataloupe.runs import read_history, read_run_at, run_dir
from dataloupe.tables import TableRef, apply_edits, open_table, rows_after_ops

SUMMARY_KEYS = ("iteration", "revision", "labeled", "undefined", "excluded", "val_top1",
                "val_top1_last", "run", "minutes", "cpu_minutes", "next_revision", "changes",
                "auto_label_estimate")


@dataclass
class LoopResult:
    """What a loop did: one dict per iteration (keys ``SUMMARY_KEYS``) and why it stopped."""

    name: str
    iterations: list[dict] = field(default_factory=list)
    stopped: str = ""
    folder: Path | None = None

    def to_dict(self) -> dict:
        return {"loop": self.name, "stopped": self.stopped, "iterations": self.iterations}


def loops_dir(project: Project) -> Path:
    d = project.root / "loops"
    d.mkdir(exist_ok=True)
    return d


def _save(folder: Path, state: dict) -> None:
    write_json_atomic(folder / "state.json", state)


def _marker(name: str, k: int) -> str:
    return f"loop {name} iteration {k}"


def check_validation_use(policy: Policy) -> None:
    """Refuse a policy whose training would read validation labels beyond picking checkpoints.

    The loop's honesty rule: validation labels pick the best checkpoint, may stop the loop
    (``patience``) and are reported; nothing else. ``scheduler: plateau`` lowers the LR when
    validation loss stalls, so it would steer every model the loop trains (and with it the
    automatic labels) by the validation labels.
    """
    from dataloupe.train._recipe import load_recipe  # noqa: PLC0415 (loop sits above train)

    for i in range(max(1, len(policy.schedule))):
        if load_recipe(policy.recipe, policy.overrides_for(i)).scheduler == "plateau":
            raise DataloupeError(
                f"policy {policy.name}: iteration {i + 1} would train with scheduler 'plateau', which "
                "lowers the LR when validation loss stalls; in the loop validation labels only pick "
                "checkpoints, stop the loop and report. Set scheduler: cosine (or onecycle, none) in "
                "the policy's overrides")
    check_starts(policy, max(1, len(policy.schedule), policy.max_iterations))


def _names_judge(value) -> bool:
    return isinstance(value, str) and (value == "judge" or value.startswith("judge:"))


def check_starts(policy: Policy, iterations: int) -> None:
    """Refuse, before anything trains, a ``continue_from: previous`` or ``judge`` that the first
    ``iterations`` cannot honour, or a loop-level value inside a judge's own overrides (set
    ``continue_from: null`` there when its keys come from the iteration's by a YAML merge)."""
    for j, cf in enumerate(crossfit_judges(policy), 1):
        value = cf.get("overrides", {}).get("continue_from")
        if value == "previous" or _names_judge(value):
            raise DataloupeError(f"policy {policy.name}: judge {j}'s overrides say continue_from: {value}; a judge "
                                 "starts from scratch or a named run (set continue_from: null in its overrides)")
    for k in range(1, iterations + 1):
        member_starts(policy, "loop", k)


def member_starts(policy: Policy, name: str, k: int) -> list[str | None]:
    """What each model iteration ``k`` trains starts from: one entry, or one per ensemble member
    (policy ``ensemble``): with ``continue_from: judge`` member ``i`` continues the judge's fold
    model ``i`` (two models that trained on different labels: more diverse than two seeds from
    one start), else every member starts where the iteration says."""
    start, folds = _start_and_folds(policy, name, k)
    value = policy.overrides_for(k - 1).get("continue_from")
    if value == "previous" and policy.members_for(k - 1) > 1:
        raise DataloupeError(f"policy {policy.name}: iteration {k} has continue_from: previous, but iteration {k - 1}"
                             " is an ensemble (several networks); continue from a judge or start from scratch")
    n = policy.members_for(k)
    if n == 1 or not _names_judge(value):
        return [start] * n
    if n > folds:
        raise DataloupeError(f"policy {policy.name}: iteration {k} ensembles {n} members from the judge's fold models,"
                             f" but that judge has {folds} folds")
    return [f"{start.removesuffix('-cf1')}-cf{i}" for i in range(1, n + 1)]


def iteration_overrides(policy: Policy, name: str, k: int) -> dict:
    """The recipe overrides iteration ``k`` of loop ``name`` trains with: the policy's, with a
    loop-level ``continue_from`` (``previous``, ``judge``) resolved to the run it names (an
    ensemble's first member's)."""
    overrides = policy.overrides_for(k - 1)
    start = member_starts(policy, name, k)[0]
    return {**overrides, "continue_from": start} if start else overrides


def resolve_start(policy: Policy, name: str, k: int) -> str | None:
    """The run iteration ``k`` of loop ``name`` starts from, for the loop-level ``continue_from``
    values: ``previous`` (iteration ``k - 1``'s model) and ``judge`` / ``judge:J`` (the first fold
    model of the previous iteration's judge ``J``, default its last: a model that has already
    trained on all but one fold of the labels and, for a consistency judge, on the pool).
    ``None`` when the iteration's ``continue_from`` is unset or already names a run."""
    return _start_and_folds(policy, name, k)[0]


def _start_and_folds(policy: Policy, name: str, k: int) -> tuple[str | None, int]:
    """:func:`resolve_start`'s run, and the number of fold models of the judge it names (else 1)."""
    value = policy.overrides_for(k - 1).get("continue_from")
    if value == "previous":
        if k == 1:
            raise DataloupeError(f"policy {policy.name}: continue_from: previous in the first iteration (there is "
                                 "no previous model); put it in a later schedule step")
        return f"{name}-it{k - 1}", 1
    if not _names_judge(value):
        return None, 1
    every = crossfit_judges(policy)
    ran = [j for j, cf in enumerate(every, 1) if k - 1 in cf["iterations"]]
    try:
        wanted = int(value[len("judge:"):]) if value != "judge" else (ran[-1] if ran else None)
    except ValueError:
        wanted = None
    if wanted not in ran:
        raise DataloupeError(
            f"policy {policy.name}: iteration {k} has continue_from: {value}, but "
            + (f"iteration {k - 1} cross-fits no judge" if not ran else
               f"iteration {k - 1}'s judges are {', '.join(map(str, ran))} (continue_from: judge:J)")
            + ": a judge's fold model is what it would start from")
    prefix = f"{name}-it{k - 1}" + ("" if wanted == 1 else f"-j{wanted}")
    return f"{prefix}-cf1", every[wanted - 1]["folds"]


def plan_edits(policy: Policy, ctx: RuleContext) -> tuple[list, list[tuple[str, int]], list[int]]:
    """Run the policy's rules in order: (edit ops, [(rule, steps)], flagged ids).

    Each rule sees the rows as the earlier rules left them (so, e.g., a row excluded by one
    rule is not re-weighted back in by a later one); all steps still make one revision.
    """
    ops, per_rule, flagged = [], [], []
    for spec in policy.rules:
        if ctx.iteration < spec.from_iteration:
            per_rule.append((spec.rule, 0))
            continue
        out = get_rule(spec.rule)(ctx, **spec.params)
        ops += out.ops
        flagged += out.flagged
        per_rule.append((spec.rule, len(out.ops)))
        if out.ops:
            ctx = dataclasses.replace(ctx, rows=rows_after_ops(ctx.rows, out.ops, ctx.classes))
    return ops, per_rule, flagged


_SHADOW_OFFSET = 1 << 40  # validation ids are shifted by this in the shadow context


def estimate_auto_label_precision(policy: Policy, ctx: RuleContext, val_metrics: pa.Table,
                                  shadow: dict | None = None) -> dict | None:
    """Estimate how right the policy's automatic labels are, on validation rows.

    The validation rows act as a hidden part of the pool: those not yet "shadow-labeled"
    join the undefined training rows, every ``auto_label`` rule runs as the loop runs it
    (same gate, same per-class cap, ranked together with the pool), and the validation rows
    it picks are scored against their real labels, then kept in ``shadow`` (id -> label,
    updated in place, saved in the loop state) so that later iterations, like the pool,
    only draw from what is left. The labels only score; they choose nothing.

    Returns ``{"precision", "labeled"}`` for this iteration's picks and
    ``{"cumulative_precision", "coverage"}`` for all picks so far (the estimate for the
    latest revision's automatic labels), plus ``rows``; None without an ``auto_label`` rule.
    Known biases: unless the recipe keeps its last epoch (``checkpoint: last``), the
    validation set also picks each run's checkpoint (optimistic); shadow rows are never
    trained on nor returned to the pool.
    """
    specs = [r for r in policy.rules if r.rule == "auto_label" and ctx.iteration >= r.from_iteration]
    relabel = [r for r in policy.rules if r.rule == "relabel_propagated" and ctx.iteration >= r.from_iteration]
    if not (specs or relabel) or val_metrics is None or not val_metrics.num_rows:
        return None
    shadow = {} if shadow is None else shadow
    truth = dict(zip(val_metrics["id"].to_pylist(), val_metrics["label"].to_pylist()))
    cols = [c for c in ("id", "predicted", "confidence", "embedding") if c in ctx.metrics.column_names
            and c in val_metrics.column_names]
    hidden = val_metrics.filter(pa.array([i not in shadow and truth[i] is not None
                                          for i in val_metrics["id"].to_pylist()]))
    rows, metrics = _with_hidden_rows(ctx, hidden, cols, weight=0.0)
    combined = RuleContext(ctx.classes, rows, metrics, ctx.findings, iteration=ctx.iteration)
    picked: dict[int, str] = {}
    for spec in specs:
        for op in get_rule("auto_label")(combined, **spec.params).ops:
            for i in op.ids.tolist():
                if i >= _SHADOW_OFFSET:
                    picked.setdefault(i - _SHADOW_OFFSET, op.label)
    if relabel and ctx.origin_labels is not None:
        # relabel_propagated gives every automatic label anew, so the latest revision's automatic
        # labels are its picks on the whole hidden part (validation rows join the graph unlabeled)
        picked = _propagated_picks(ctx, val_metrics, cols, truth, relabel[-1].params)
        shadow.clear()
    shadow.update(picked)
    labeled = sum(v is not None for v in truth.values())
    hits = sum(picked[i] == truth[i] for i in picked)
    all_hits = sum(shadow[i] == truth.get(i) for i in shadow)
    return {"precision": round(hits / len(picked), 4) if picked else None, "labeled": len(picked),
            "cumulative_precision": round(all_hits / len(shadow), 4) if shadow else None,
            "coverage": round(len(shadow) / max(1, labeled), 4), "rows": labeled}


def _with_hidden_rows(ctx: RuleContext, hidden: pa.Table, cols: list[str], *, weight: float
                      ) -> tuple[pa.Table, pa.Table]:
    """``(rows, metrics)``: the training rows plus validation rows ``hidden`` as undefined rows
    of weight ``weight`` (ids shifted by ``_SHADOW_OFFSET``; their labels are not copied)."""
    vid = pa.array(hidden["id"].to_numpy() + _SHADOW_OFFSET, pa.int64())
    vm = hidden.select(cols).set_column(0, "id", vid)
    metrics = pa.concat_tables([ctx.metrics.select(cols).cast(vm.schema), vm])
    rows = pa.table({"id": pa.concat_arrays([ctx.rows["id"].combine_chunks().cast(pa.int64()), vid]),
                     "label": pa.concat_arrays([ctx.rows["label"].combine_chunks().cast(pa.string()),
                                                pa.nulls(len(vid), pa.string())]),
                     "weight": pa.concat_arrays([ctx.rows["weight"].combine_chunks().cast(pa.float32()),
                                                 pa.array(np.full(len(vid), weight, np.float32))])})
    return rows, metrics


def _propagated_picks(ctx: RuleContext, val_metrics: pa.Table, cols: list[str], truth: dict, params: dict) -> dict:
    """``relabel_propagated``'s classes for every labeled validation row, the rows added to the
    graph as undefined training rows (id -> class)."""
    hidden = val_metrics.filter(pa.array([truth[i] is not None for i in val_metrics["id"].to_pylist()]))
    if not hidden.num_rows:
        return {}
    rows, metrics = _with_hidden_rows(ctx, hidden, cols, weight=1.0)
    combined = RuleContext(ctx.classes, rows, metrics, ctx.findings, origin_labels=ctx.origin_labels,
                           iteration=ctx.iteration)
    return {i - _SHADOW_OFFSET: op.label for op in get_rule("relabel_propagated")(combined, **params).ops
            if op.action == "set_label" for i in op.ids.tolist() if i >= _SHADOW_OFFSET}


def _edit_message(name: str, k: int, per_op: tuple, flagged: int) -> str:
    counts: dict[str, int] = {}
    for o in per_op:
        counts[o["name"]] = counts.get(o["name"], 0) + sum(o["changes"].values())
    parts = [f"{rule} {n}" for rule, n in counts.items()]
    if flagged:
        parts.append(f"flagged for review {flagged}")
    return f"{_marker(name, k)}: " + (", ".join(parts) or "no changes")


def run_loop(
    project: Project,
    *,
    train: str,
    val: str,
    policy: str | Policy,
    iterations: int | None = None,
    name: str | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    train_fn: Callable | None = None,
    analyze_fn: Callable | None = None,
) -> LoopResult:
    """Run the data-centric loop on table ``train`` (validated on ``val``).

    Args:
        train, val: table names (the loop edits ``train``'s latest revision).
        policy: shipped policy name, YAML path, or a :class:`Policy`.
        iterations: number of iterations (default: the policy's ``max_iterations``).
        name: loop name (default ``<train>-<policy>``); runs are ``<name>-it<k>``.
        resume: continue a loop of that name where it stopped.
        train_fn, analyze_fn: injection points for tests; default the engine's ``train``
            and the analysis stage's ``analyze_run``.

    Returns:
        The :class:`LoopResult` (also saved as ``loops/<name>/state.json``).
    """
    pol = policy if isinstance(policy, Policy) else load_policy(policy)
    check_validation_use(pol)
    if TableRef.parse(train).revision is not None:
        raise DataloupeError("the loop edits the latest revision: give the table name without @REV")
    n_iter = iterations or pol.max_iterations
    check_starts(pol, n_iter)
    name = name or f"{train}-{pol.name}"
    folder = loops_dir(project) / name
    if folder.exists() and (folder / "state.json").exists() and not resume:
        raise DataloupeError(f"loop {name!r} exists: pass --resume to continue it, or --name")
    folder.mkdir(parents=True, exist_ok=True)
    state = json.loads((folder / "state.json").read_text()) if resume and \
        (folder / "state.json").exists() else {"loop": name, "train": train, "val": val,
                                               "policy": pol.name, "iterations": []}
    if train_fn is None:
        from dataloupe.train import train as train_fn  # noqa: PLC0415 (loop sits above train)
    if analyze_fn is None:
        from dataloupe.analysis import analyze_run as analyze_fn  # noqa: PLC0415

    best, since_best = -1.0, 0
    for row in state["iterations"]:
        if row["val_top1"] is not None and row["val_top1"] > best:
            best, since_best = row["val_top1"], 0
        else:
            since_best += 1
    ssl = _pretrain_backbone(project, pol, train, name, state, log) if pol.pretrain else None
    stopped = ""
    for k in range(len(state["iterations"]) + 1, n_iter + 1):
        t0, c0 = time.time(), cpu_seconds()
        table = open_table(project, train)
        run = f"{name}-it{k}"
        state.setdefault("start_revision", int(table.revision))
        overrides = iteration_overrides(pol, name, k)
        starts = member_starts(pol, name, k)  # continue_from: previous / judge -> the run's name, per member
        if ssl:
            overrides = {"pretrained": f"run:{ssl}", **overrides}
        log(f"[loop {name}] iteration {k}/{n_iter}: training {run} on {train}@{table.revision} "
            f"({', '.join(f'{a}={b}' for a, b in overrides.items())})"
            + (f", {len(starts)} members ensembled" if len(starts) > 1 else ""))
        if len(starts) == 1:
            info = train_fn(project, f"{train}@{table.revision}", val, pol.recipe, overrides=overrides,
                            run=run, resume=(project.runs_dir / run).exists())
        else:
            info = _train_ensemble(project, pol, f"{train}@{table.revision}", val, overrides, run, starts, train_fn,
                                   log)
        memory = pol.knn_for(k)
        if memory:  # the trained run plus a kNN memory of its training rows becomes the iteration's run
            from dataloupe.train import memory_run  # noqa: PLC0415 (loop sits above train)

            shipped = f"{run}-knn"
            log(f"[loop {name}] adding a kNN memory to {run}: {shipped}")
            info = memory_run(project, shipped, run, force=True, **memory)
        else:
            shipped = run
        log(f"[loop {name}] analysing {shipped}")
        findings, metrics = analyze_fn(project, shipped, folds=pol.analyze_folds or None)
        latest = open_table(project, train)
        if latest.entry["message"].startswith(_marker(name, k)):
            res_rev, changes = latest.revision, latest.entry["changes"]  # applied before a kill
            estimate = None
        else:
            origin = open_table(project, train, state["start_revision"]).to_arrow(columns=["id", "label"])
            ctx = RuleContext(latest.classes, latest.to_arrow(), metrics, findings,
                              origin_labels=dict(zip(origin["id"].to_pylist(), origin["label"].to_pylist())),
                              crossfit=_crossfit(project, pol, k, overrides, f"{train}@{table.revision}", val, run,
                                                 log), iteration=k)
            ops, _, flagged = plan_edits(pol, ctx)
            shadow = {int(i): c for i, c in state.get("shadow_labels", {}).items()}
            estimate = estimate_auto_label_precision(pol, ctx, _val_metrics(project, shipped), shadow)
            state["shadow_labels"] = {str(i): c for i, c in shadow.items()}
            (folder / f"review-it{k}.json").write_text(json.dumps({"flagged": flagged}))
            if ops:
                res = apply_edits(project, train, ops,
                                  message=lambda per_op: _edit_message(name, k, per_op, len(flagged)))
                res_rev, changes = res.table.revision, res.changes
            else:
                res_rev, changes = latest.revision, {}
        s = table.summary()
        history = read_history(run_dir(project, run))
        row = {"iteration": k, "revision": table.revision, "labeled": s["labeled"],
               "undefined": s["undefined"], "excluded": s["excluded"],
               "val_top1": info.get("best_val_top1") if isinstance(info, dict) else None,
               "val_top1_last": history[-1].get("val_top1") if history else None,
               "run": shipped, "minutes": round((time.time() - t0) / 60, 2),
               "cpu_minutes": round((cpu_seconds() - c0) / 60, 2),
               "next_revision": res_rev, "changes": changes,
               "auto_label_estimate": estimate}
        state["iterations"].append(row)
        _save(folder, state)
        log(format_row(row))
        if row["val_top1"] is not None and row["val_top1"] > best:
            best, since_best = row["val_top1"], 0
        else:
            since_best += 1
        if pol.stop_when_no_change and not changes:
            stopped = "no rule changed anything"
            break
        if pol.patience and since_best >= pol.patience:
            stopped = f"val top-1 did not improve for {pol.patience} iteration(s)"
            break
    stopped = stopped or f"{len(state['iterations'])} iteration(s) done"
    state["stopped"] = stopped
    _save(folder, state)
    result = LoopResult(name, state["iterations"], stopped, folder)
    write_outputs(result)
    return result


def _train_ensemble(project: Project, pol: Policy, train_ref: str, val: str, overrides: dict, run: str,
                    starts: list, train_fn: Callable, log: Callable[[str], None]) -> dict:
    """Train the members ``<run>-m1`` ... (seeds ``seed``, ``seed + 1``, ...; member ``i`` from
    ``starts[i]``), then write run ``<run>``: their ensemble."""
    from dataloupe.train import ensemble_runs, load_recipe  # noqa: PLC0415 (loop sits above train)

    seed = load_recipe(pol.recipe, overrides).seed
    members = []
    for i, start in enumerate(starts, 1):
        member = f"{run}-m{i}"
        keys = {**overrides, "seed": seed + i - 1, **({"continue_from": start} if start else {})}
        if i > 1:
            log(f"[loop {run}] training ensemble member {member} (seed {seed + i - 1}"
                + (f", from {start})" if start else ")"))
        done = (project.runs_dir / member / "run.json").is_file() and \
            read_run_at(project.runs_dir / member).get("status") == "completed"
        if not done:  # a resumed loop keeps the members it finished
            train_fn(project, train_ref, val, pol.recipe, overrides=keys, run=member,
                     resume=(project.runs_dir / member).exists())
        members.append(member)
    log(f"[loop {run}] ensembling {', '.join(members)}")
    return ensemble_runs(project, run, members, force=True)


def _crossfit(project: Project, pol: Policy, k: int, overrides: dict, train_ref: str, val: str, run: str,
              log: Callable[[str], None]) -> dict | None:
    """id -> out-of-sample probabilities of the labeled rows iteration ``k`` trained on (policy
    ``crossfit``): with several judges, the mean of theirs (an ensemble of cross-fitted models)."""
    every = crossfit_judges(pol)
    judges = [(j, cf) for j, cf in enumerate(every, 1) if k in cf["iterations"]]
    if not judges:
        return None
    from dataloupe.train._crossfit import crossfit_labeled  # noqa: PLC0415 (loop sits above train)
    from dataloupe.train._recipe import load_recipe  # noqa: PLC0415

    total: dict = {}
    for j, cf in judges:
        recipe = load_recipe(pol.recipe, {**overrides, **cf["overrides"]})
        prefix = run if j == 1 else f"{run}-j{j}"  # runs <prefix>-cf<fold>
        log(f"[loop {run}] cross-fitting {cf['folds']} folds of the labeled rows of {train_ref}"
            + (f" (judge {j})" if len(every) > 1 else ""))
        ids, probs = crossfit_labeled(project, train_ref, val, recipe, folds=cf["folds"], run_prefix=prefix, log=log)
        for i, p in zip(ids.tolist(), probs):
            total[i] = total.get(i, 0.0) + p / len(judges)
    return total


def _pretrain_backbone(project: Project, pol: Policy, train: str, name: str, state: dict,
                       log: Callable[[str], None]) -> str:
    """Learn the loop's backbone once, before iteration 1, from every row of the training table at
    the loop's start (labels ignored; the validation table is never read); resumable."""
    from dataloupe.train import pretrain  # noqa: PLC0415 (loop sits above train)

    run = f"{name}-ssl"
    folder = project.runs_dir / run
    if (folder / "run.json").is_file() and read_run_at(folder).get("status") == "completed":
        return run
    state.setdefault("start_revision", int(open_table(project, train).revision))
    ref = f"{train}@{state['start_revision']}"
    log(f"[loop {name}] self-supervised pretraining {run} on {ref} "
        f"({', '.join(f'{a}={b}' for a, b in pol.pretrain.items())})")
    t0, c0 = time.time(), cpu_seconds()
    pretrain(project, [ref], dict(pol.pretrain), run=run, resume=(folder / "run.json").is_file())
    state["pretrain"] = {"run": run, "minutes": round((time.time() - t0) / 60, 2),
                         "cpu_minutes": round((cpu_seconds() - c0) / 60, 2)}
    _save(loops_dir(project) / name, state)
    return run


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) plus its finished children (loader workers)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def _val_metrics(project: Project, run: str) -> pa.Table | None:
    from dataloupe.analysis._runio import load_metrics  # noqa: PLC0415
    from dataloupe.runs import read_run  # noqa: PLC0415

    info = read_run(project, run)
    try:
        return load_metrics(project, run, info["val_table"],
                            columns=["id", "label", "predicted", "confidence", "embedding"])
    except DataloupeError:
        return None


def format_row(r: dict) -> str:
    pct = lambda v: "   -  " if v is None else f"{100 * v:6.2f}"  # noqa: E731
    est = r.get("auto_label_estimate") or {}
    est = {"precision": est.get("cumulative_precision", est.get("precision"))}
    return (f"{r['iteration']:>4} {r['revision']:>8} {r['labeled']:>8} {r['undefined']:>9} "
            f"{r['excluded']:>8} {pct(r['val_top1'])} {pct(r['val_top1_last'])} "
            f"{r['minutes']:>7.1f} {r['cpu_minutes']:>7.1f} {pct(est.get('precision')):>9}  {r['run']}")


HEADER = (f"{'iter':>4} {'revision':>8} {'labeled':>8} {'undefined':>9} {'excluded':>8} "
          f"{'best%':>6} {'last%':>6} {'minutes':>7} {'cpu-min':>7} {'est.prec%':>9}  run")


def summary_table(result: LoopResult) -> str:
    return "\n".join([HEADER, *(format_row(r) for r in result.iterations),
                      f"stopped: {result.stopped}",
                      "best%/last%: val top-1 at the best / last epoch; est.prec%: estimated precision of the"
                      " automatic labels so far (the rule replayed on validation rows, labels hidden)"])


def write_outputs(result: LoopResult) -> None:
    """Save the summary table (text + JSON) and a PNG of val top-1 per revision."""
    folder = result.folder
    write_bytes_atomic(folder / "summary.txt", (summary_table(result) + "\n").encode())
    write_bytes_atomic(folder / "summary.json", json.dumps(result.to_dict(), indent=1).encode())
    rows = [r for r in result.iterations if r["val_top1"] is not None]
    if not rows:
        return
    from matplotlib.figure import Figure  # its own Agg canvas: no pyplot, no global backend

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    xs = [f"r{r['revision']}" for r in rows]
    ax.plot(xs, [100 * r["val_top1"] for r in rows], "o-", label="best epoch")
    if all(r["val_top1_last"] is not None for r in rows):
        ax.plot(xs, [100 * r["val_top1_last"] for r in rows], "s--", alpha=.6, label="last epoch")
    for x, r in zip(xs, rows):
        ax.annotate(f"{100 * r['val_top1']:.1f}", (x, 100 * r["val_top1"]),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xlabel("training-table revision")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(f"loop {result.name}")
    ax.grid(alpha=.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(folder / "accuracy.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
