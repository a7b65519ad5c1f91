"""Policies: YAML files naming a recipe, its per-iteration schedule, stop rules and
ordered edit rules. Shipped policies live in ``loop/policies/``; a path works too.
"""

from __future__ import annotations

import inspect

from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

import yaml

from dataloupe.loop._rules import get_rule
from dataloupe.project import DataloupeError


@dataclass(frozen=True)
class RuleSpec:
    """One ordered rule of a policy: a registered rule name and its parameters."""

    rule: str
    params: dict = field(default_factory=dict)
    from_iteration: int = 1  # the rule runs after this iteration and later ones (e.g. label only from a good model)


@dataclass(frozen=True)
class Policy:
    """A loop policy.

    Attributes:
        name: policy name (file stem).
        recipe: training recipe name or path.
        overrides: recipe overrides applied in every iteration (``key: value``).
        schedule: per-iteration overrides; iteration i uses entry ``min(i, len-1)``.
        rules: ordered edit rules, applied after each iteration's analysis as ONE revision.
        max_iterations: default number of iterations (``--iterations`` overrides).
        stop_when_no_change: stop once no rule changes anything.
        patience: stop after this many iterations without a better val top-1 (0 = never).
        analyze_folds: cross-fitting folds for label-issue probabilities (0 = off).
        pretrain: self-supervised pretraining keys (``dataloupe pretrain``; ``method`` etc.):
            when set, the loop first learns a backbone from every row of the training table
            (labels ignored) and every iteration starts from it (``pretrained: run:<loop>-ssl``).
        crossfit: ``{folds, iterations, overrides}``: after training the listed iterations
            (1-based; default ``[1]``), train ``folds`` more models each without one fold of the
            labeled rows, so rules (``crossfit_label_issues``) judge every labeled row by a model
            that never saw it; ``overrides`` apply to those fold models. A list of such maps
            asks several judges (e.g. the labels-only recipe and a consistency recipe); rules see
            the mean of their out-of-sample probabilities.
        ensemble: ``{members, iterations}``: in the listed iterations (1-based; default every
            one) the loop trains ``members`` models, ``<run>-m1`` ... (training seeds ``seed``,
            ``seed + 1``, ...; with ``continue_from: judge`` member ``i`` starts from the judge's
            fold model ``i``), and the iteration's run ``<run>`` is their ensemble (the members'
            logits averaged; ``dataloupe ensemble``): what rules, the report and serving read.
        knn: ``{iterations, k, temperature, pool_fraction, weight}``: in the listed iterations
            (1-based; default every one) the iteration's run ``<run>`` (one model or the
            ensemble) gets a kNN memory of its training rows (``dataloupe knn``: labeled rows and
            the most confident ``pool_fraction`` of the undefined ones), and ``<run>-knn``
            becomes the iteration's run: what rules, the report and serving read.
    """

    name: str
    recipe: str
    overrides: dict = field(default_factory=dict)
    schedule: tuple = ()
    rules: tuple = ()
    max_iterations: int = 3
    stop_when_no_change: bool = True
    patience: int = 0
    analyze_folds: int = 0
    pretrain: dict | None = None
    crossfit: dict | tuple | None = None  # one judge, or several (see crossfit_judges)
    ensemble: dict | None = None  # {members: K, iterations: [..] or None (every iteration)}
    knn: dict | None = None  # {iterations, k, temperature, pool_fraction, weight}: a kNN memory on the run

    def knn_for(self, k: int) -> dict | None:
        """The memory settings (``k``, ``temperature``, ``pool_fraction``, ``weight``) of iteration
        ``k`` (1-based), or None when it keeps its run as trained."""
        if not self.knn or (self.knn["iterations"] is not None and k not in self.knn["iterations"]):
            return None
        return {key: v for key, v in self.knn.items() if key != "iterations"}

    def overrides_for(self, iteration: int) -> dict:
        """Recipe overrides of iteration ``iteration`` (0-based)."""
        step = self.schedule[min(iteration, len(self.schedule) - 1)] if self.schedule else {}
        return {**self.overrides, **step}

    def members_for(self, k: int) -> int:
        """How many models iteration ``k`` (1-based) trains and ensembles (1: one model, no ensemble)."""
        if not self.ensemble or (self.ensemble["iterations"] is not None and k not in self.ensemble["iterations"]):
            return 1
        return self.ensemble["members"]


def list_policies() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("dataloupe.loop").joinpath("policies").iterdir()
                  if p.name.endswith(".yaml"))


def load_policy(name_or_path: str) -> Policy:
    """Load a shipped policy by name or a YAML file by path; unknown keys are errors."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text, name = path.read_text(), path.stem
    else:
        res = resources.files("dataloupe.loop").joinpath("policies").joinpath(f"{name_or_path}.yaml")
        if not res.is_file():
            raise DataloupeError(f"unknown policy {name_or_path!r}; shipped: "
                                 f"{', '.join(list_policies())} (or a path to a .yaml file)")
        text, name = res.read_text(), name_or_path
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise DataloupeError(f"policy {name}: invalid YAML: {e}") from None
    valid = {f.name for f in fields(Policy)} - {"name"}
    unknown = sorted(set(raw) - valid)
    if unknown:
        raise DataloupeError(f"policy {name}: unknown key(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(valid))}")
    if "recipe" not in raw:
        raise DataloupeError(f"policy {name}: needs a 'recipe'")
    rules = []
    for i, r in enumerate(raw.get("rules") or []):
        if not isinstance(r, dict) or "rule" not in r:
            raise DataloupeError(f"policy {name}: rule {i + 1} needs a 'rule' key")
        params = {k: v for k, v in r.items() if k not in ("rule", "from_iteration")}
        start = r.get("from_iteration", 1)
        if not isinstance(start, int) or start < 1:
            raise DataloupeError(f"policy {name}: rule {i + 1}: from_iteration must be a number >= 1")
        fn = get_rule(r["rule"])  # unknown rule names fail here, listing the known ones
        allowed = rule_parameters(fn)
        bad = sorted(set(params) - allowed)
        if bad:
            raise DataloupeError(f"policy {name}: rule {r['rule']!r} has no parameter(s) "
                                 f"{', '.join(bad)}; valid: {', '.join(sorted(allowed))}")
        rules.append(RuleSpec(r["rule"], params, start))
    sched = raw.get("schedule") or []
    if not isinstance(sched, list) or not all(isinstance(s, dict) for s in sched):
        raise DataloupeError(f"policy {name}: 'schedule' must be a list of key: value maps")
    return Policy(name=name, recipe=str(raw["recipe"]), overrides=dict(raw.get("overrides") or {}),
                  schedule=tuple(sched), rules=tuple(rules),
                  max_iterations=int(raw.get("max_iterations", 3)),
                  stop_when_no_change=bool(raw.get("stop_when_no_change", True)),
                  patience=int(raw.get("patience", 0)),
                  analyze_folds=int(raw.get("analyze_folds", 0)),
                  pretrain=_pretrain_keys(name, raw.get("pretrain")),
                  crossfit=_crossfit_keys(name, raw.get("crossfit")),
                  ensemble=_ensemble_keys(name, raw.get("ensemble")),
                  knn=_knn_keys(name, raw.get("knn")))


def _knn_keys(name: str, value) -> dict | None:
    if value is None:
        return None
    from dataloupe.train._memory import DEFAULTS, check_memory_settings  # noqa: PLC0415

    if not isinstance(value, dict) or set(value) - {"iterations", *DEFAULTS}:
        raise DataloupeError(f"policy {name}: 'knn' takes iterations, {', '.join(DEFAULTS)}")
    its = value.get("iterations")
    if its is not None and (not isinstance(its, list) or not all(isinstance(i, int) and i >= 1 for i in its)):
        raise DataloupeError(f"policy {name}: knn iterations must be a list of numbers >= 1")
    settings = {**DEFAULTS, **{k: v for k, v in value.items() if k != "iterations"}}
    try:
        check_memory_settings(**settings)
    except DataloupeError as e:
        raise DataloupeError(f"policy {name}: {e}") from None
    return {"iterations": its, **settings}


def _crossfit_keys(name: str, value) -> dict | tuple[dict, ...] | None:
    """One judge (a map) or several (a list of maps: their out-of-sample probabilities are averaged)."""
    if value is None:
        return None
    if isinstance(value, list):
        if not value or not all(isinstance(v, dict) for v in value):
            raise DataloupeError(f"policy {name}: 'crossfit' as a list needs one or more maps (judges)")
        return tuple(_crossfit_keys(name, v) for v in value)
    if not isinstance(value, dict) or set(value) - {"folds", "iterations", "overrides"}:
        raise DataloupeError(f"policy {name}: 'crossfit' takes folds, iterations and overrides (or a list of them)")
    folds, its = int(value.get("folds", 5)), value.get("iterations", [1])
    if folds < 2 or not isinstance(its, list) or not all(isinstance(i, int) and i >= 1 for i in its):
        raise DataloupeError(f"policy {name}: crossfit needs folds >= 2 and iterations as a list of numbers >= 1")
    return {"folds": folds, "iterations": its, "overrides": dict(value.get("overrides") or {})}


def _ensemble_keys(name: str, value) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"members", "iterations"}:
        raise DataloupeError(f"policy {name}: 'ensemble' takes members and iterations")
    members, its = value.get("members", 2), value.get("iterations")
    if not isinstance(members, int) or members < 2:
        raise DataloupeError(f"policy {name}: ensemble members must be a number >= 2, got {members!r}")
    if its is not None and (not isinstance(its, list) or not all(isinstance(i, int) and i >= 1 for i in its)):
        raise DataloupeError(f"policy {name}: ensemble iterations must be a list of numbers >= 1")
    return {"members": members, "iterations": its}


def crossfit_judges(policy: Policy) -> tuple[dict, ...]:
    """The policy's cross-fitting judges (``crossfit`` as one map or a list of them)."""
    if not policy.crossfit:
        return ()
    return tuple(policy.crossfit) if isinstance(policy.crossfit, (list, tuple)) else (policy.crossfit,)


def _pretrain_keys(name: str, value) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise DataloupeError(f"policy {name}: 'pretrain' must be a map of pretraining keys (method, epochs, ...)")
    from dataloupe.train import load_pretrain_config  # noqa: PLC0415 (checked here: a typo fails before any run)

    load_pretrain_config(None, dict(value))
    return dict(value)


def rule_parameters(fn) -> set[str]:
    """The parameters a policy may set for rule ``fn``: every named parameter after the context
    (a decorated rule is read through ``functools.wraps``; ``*args``/``**kwargs`` name none)."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
