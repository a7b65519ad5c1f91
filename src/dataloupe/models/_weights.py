"""Load pretrained weights loudly: every backbone tensor or a clear error, with a report.

Three kinds of source, told apart by what the file holds:

* a **dataloupe checkpoint** (``{"model": state_dict, "model_name", ...}``: a training run's
  ``best.pt``, or a pretraining run's backbone-only ``{"kind": "pretrain", ...}``), or a
  plain :class:`~dataloupe.models.Classifier` state dict (``backbone.*`` keys);
* a **timm** model's own state dict, loaded through timm (``timm.create_model(...,
  pretrained=True, pretrained_cfg_overlay=dict(file=...))``), so timm's checkpoint filters
  and classifier removal apply; ``"true"`` instead of a file asks timm to download the
  model's published weights (online only);
* a bare **torchvision / convnet** backbone state dict.

The classifier head is never required: it loads only when the file's head fits (same
shape and, when both are known, the same classes), else it is skipped and trained anew.
Every backbone tensor must load, else :class:`DataloupeError`.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from dataloupe.project import DataloupeError

HUB_SOURCES = ("true",)  # ``pretrained`` values that ask timm to download the model's own weights


@dataclass(frozen=True)
class WeightsReport:
    """What a load did. ``to_dict()`` is what the engine stores in ``run.json``.

    Attributes:
        source: the file (or ``timm:<name>`` for timm's download).
        loaded: backbone tensors loaded (state-dict entries, buffers included).
        total: backbone tensors in the model.
        missing: backbone keys the source lacks.
        mismatched: backbone keys the source holds with another shape.
        unexpected: source keys the model has no place for (the declared head excluded).
        head: ``loaded``, ``skipped (...)`` or ``new`` (the source has none).
        mean, std: the weights' own normalisation (RGB, 0..1), when the source says.
        input_size: the side in px the weights were made at, when the source says.
    """

    source: str
    loaded: int
    total: int
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    head: str = "new"
    mean: list[float] | None = None
    std: list[float] | None = None
    input_size: int | None = None

    @property
    def complete(self) -> bool:
        return self.loaded == self.total and not self.missing and not self.mismatched

    def summary(self) -> str:
        """One line, e.g. ``loaded 62/62 backbone tensors from x.pt; head skipped (1000 -> 3 classes)``."""
        line = f"loaded {self.loaded}/{self.total} backbone tensors from {self.source}; head {self.head}"
        if self.unexpected:
            line += f"; {len(self.unexpected)} unused key(s) ({_few(self.unexpected)})"
        if self.mean is not None:
            line += f"; weights' mean/std {_short(self.mean)}/{_short(self.std)}"
        if self.input_size:
            line += f" at {self.input_size} px"
        return line

    def to_dict(self) -> dict:
        return asdict(self)


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def _short(values) -> str:
    return "[" + ",".join(f"{v:.3g}" for v in values) + "]"


def _refuse(report: WeightsReport) -> DataloupeError:
    def few(keys):
        return _few([k.removeprefix("backbone.") for k in keys])

    parts = []
    if report.missing:
        parts.append(f"missing {len(report.missing)}: {few(report.missing)}")
    if report.mismatched:
        parts.append(f"wrong shape {len(report.mismatched)}: {few(report.mismatched)}")
    if report.unexpected:
        parts.append(f"unused {len(report.unexpected)}: {few(report.unexpected)}")
    return DataloupeError(f"pretrained weights {report.source} fit {report.loaded} of {report.total} backbone"
                          f" tensors ({'; '.join(parts)}); wrong model or file?")


def _read(path: Path):
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip / safetensors errors of all kinds: one user-facing line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataloupeError(f"cannot read pretrained weights {path}: not a PyTorch or safetensors weights file"
                             f" ({type(e).__name__}: {first[:120]})") from e


def _dataloupe_state(obj) -> tuple[dict, dict] | None:
    """``(state_dict, meta)`` of a dataloupe checkpoint or Classifier state dict, else None."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict) and ("model_name" in obj or "kind" in obj):
        return obj["model"], {k: v for k, v in obj.items() if k != "model"}
    if isinstance(obj, dict) and any(isinstance(k, str) and k.startswith("backbone.") for k in obj):
        return obj, {}
    return None


def _fit(model: nn.Module, state: dict, source: str, *, load_head: bool = True, skip_reason: str = "",
         head_if_absent: str = "new") -> tuple[WeightsReport, dict]:
    """Compare ``state`` (Classifier keys) with ``model``; returns the report and what to load."""
    own = model.state_dict()
    backbone = [k for k in own if k.startswith("backbone.")]
    heads = [k for k in own if not k.startswith("backbone.")]
    missing = [k for k in backbone if k not in state]
    mismatched = [k for k in backbone if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    use = {k: state[k] for k in backbone if k in state and k not in mismatched}
    head = head_if_absent
    if any(k in state for k in heads):
        fits = all(k in state and tuple(state[k].shape) == tuple(own[k].shape) for k in heads)
        if fits and load_head:
            use.update({k: state[k] for k in heads})
            head = "loaded"
        else:
            rows = state["head.weight"].shape[0] if "head.weight" in state else "?"
            head = f"skipped ({skip_reason or f'{rows} -> {model.head.out_features} classes'})"
    unexpected = sorted(k for k in state if k not in own)
    loaded = len(use) - (len(heads) if head == "loaded" else 0)
    return WeightsReport(source, loaded, len(backbone), missing, mismatched, unexpected, head), use


def _apply(model: nn.Module, report: WeightsReport, use: dict) -> WeightsReport:
    if not report.complete:
        err = _refuse(report)
        if report.mismatched and getattr(model, "small_input", False):
            err = DataloupeError(f"{err} (small_input=true gives the model its own small stem, which pretrained"
                                 " stem weights do not fit: set small_input=false to keep the standard stem)")
        raise err
    result = model.load_state_dict(use, strict=False)
    left = [k for k in result.missing_keys if k.startswith("backbone.")]
    if left or result.unexpected_keys:  # cannot happen after _fit; a guard against drift
        raise DataloupeError(f"pretrained weights {report.source}: load left {_few(left)} unset")
    return report


def _with_meta(report: WeightsReport, *, mean=None, std=None, input_size=None, **changes) -> WeightsReport:
    return WeightsReport(**dict(report.to_dict(), mean=[float(v) for v in mean] if mean else None,
                                std=[float(v) for v in std] if std else None,
                                input_size=int(input_size) if input_size else None, **changes))


def _load_dataloupe(model, state: dict, meta: dict, source: str, classes) -> WeightsReport:
    name, small = getattr(model, "model_name", None), getattr(model, "small_input", None)
    if meta.get("model_name") and name and meta["model_name"] != name:
        raise DataloupeError(f"pretrained weights {source} are for model {meta['model_name']!r}, not {name!r};"
                             f" set model={meta['model_name']} or use other weights")
    if meta.get("small_input") is not None and small is not None and bool(meta["small_input"]) != bool(small):
        want = bool(meta["small_input"])
        raise DataloupeError(f"pretrained weights {source} were made with small_input={str(want).lower()} but"
                             f" this model has small_input={str(bool(small)).lower()}; set"
                             f" small_input={str(want).lower()}")
    same = classes is None or meta.get("classes") is None or list(meta["classes"]) == list(classes)
    report, use = _fit(model, state, source, load_head=same, skip_reason="" if same else "other classes")
    report = _with_meta(report, mean=meta.get("mean"), std=meta.get("std"), input_size=meta.get("image_size"))
    return _apply(model, report, use)


def _head_rows(state: dict, names) -> int | None:
    rows = [state[f"{c}.weight"].shape[0] for c in names if f"{c}.weight" in state]
    return int(rows[0]) if rows else None


def _load_backbone_state(model, state: dict, source: str) -> WeightsReport:
    """A bare torchvision / convnet backbone state dict (no ``backbone.`` prefix)."""
    declared = tuple(getattr(model, "source_head", ()))
    head = {f"{c}.{p}" for c in declared for p in ("weight", "bias")} & set(state)
    rows = _head_rows(state, declared)
    body = {f"backbone.{k}": v for k, v in state.items() if k not in head}
    report, use = _fit(model, body, source, head_if_absent=f"skipped ({rows} classes in the file)" if head else "new")
    return _apply(model, report, use)


# --- timm: its own loading path, then checked against the file -------------------------------------------

def _timm_filter(net):
    """The checkpoint filter timm applies for this architecture (``checkpoint_filter_fn`` of its module)."""
    import timm

    arch = (getattr(net, "pretrained_cfg", None) or {}).get("architecture")
    try:
        module = sys.modules.get(timm.models.model_entrypoint(arch).__module__) if arch else None
    except (RuntimeError, KeyError):
        module = None
    return getattr(module, "checkpoint_filter_fn", None)


def _timm_reference(net, path: Path) -> dict:
    """The file's state dict as timm hands it to ``load_state_dict`` (timm's reader, then its filter)."""
    import timm

    state = timm.models.load_state_dict(str(path))
    filt = _timm_filter(net)
    if filt is None:
        return state
    try:
        return filt(dict(state), net)
    except TypeError:  # filters of one argument, as timm allows
        return filt(dict(state))


def _timm_net(name: str, path: Path | None):
    """A timm backbone (``num_classes=0``) whose weights timm itself loaded.

    With ``path``, timm reads the local file (``pretrained_cfg_overlay=dict(file=...)``);
    without, timm downloads the model's published weights and loads them strictly with
    their own head, which is then removed (``reset_classifier(0)``).
    """
    import timm

    try:
        if path is None:
            net = timm.create_model(name, pretrained=True)
            net.reset_classifier(0)
        else:
            # source="" keeps timm from preferring the hub to the file (hf-hub: names)
            net = timm.create_model(name, pretrained=True, num_classes=0,
                                    pretrained_cfg_overlay=dict(file=str(path), source=""))
    except Exception as e:  # timm raises RuntimeError / KeyError / OSError on weights it cannot use
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        where = path if path is not None else f"timm:{name} (download)"
        raise DataloupeError(f"pretrained weights {where} do not load into {name} ({type(e).__name__}"
                             f"{': ' + first if first else ''}); wrong model or file?") from e
    return net


def _load_timm(model, name: str, path: Path | None) -> WeightsReport:
    import timm

    net = _timm_net(name, path)
    own = net.state_dict()
    cfg = net.pretrained_cfg or {}
    declared = cfg.get("classifier") or ()
    declared = (declared,) if isinstance(declared, str) else tuple(declared)
    if path is None:  # timm loaded strictly (head included), then removed the head
        got, unexpected, head = own, [], "skipped (removed by timm)"
    else:  # what timm really loaded: the tensors equal to the (filtered) file's of the same name
        ref = _timm_reference(net, path)
        head_keys = {f"{c}.{p}" for c in declared for p in ("weight", "bias")} & set(ref)
        got = {k: v for k, v in own.items()
               if k in ref and tuple(ref[k].shape) == tuple(v.shape) and torch.equal(v, ref[k].to(v.dtype))}
        unexpected = sorted(k for k in ref if k not in own and k not in head_keys)
        rows = _head_rows(ref, declared)
        head = f"skipped ({rows} classes in the file)" if head_keys else "new"
    report, use = _fit(model, {f"backbone.{k}": v for k, v in got.items()}, str(path or f"timm:{name}"),
                       head_if_absent=head)
    data = timm.data.resolve_model_data_config(net)
    report = _with_meta(report, mean=data["mean"], std=data["std"], input_size=data["input_size"][-1],
                        unexpected=unexpected)
    return _apply(model, report, use)


def load_pretrained(model: nn.Module, source: str | Path, *, classes: list[str] | None = None) -> WeightsReport:
    """Load weights into a :class:`~dataloupe.models.Classifier`; every backbone tensor or an error.

    Args:
        model: a classifier from :func:`~dataloupe.models.create_model`.
        source: a local file: a dataloupe checkpoint (training or pretraining run), a
            Classifier state dict, a timm state dict (loaded through timm) or a torchvision /
            convnet backbone state dict; or ``"true"`` for a timm model's published weights,
            downloaded by timm (online only).
        classes: the classes the head will predict; a checkpoint's head loads only when its
            ``classes`` are the same (and its shape fits), else it is skipped.

    Returns:
        The :class:`WeightsReport` (loaded / missing / unexpected keys, the weights' mean/std).

    Raises:
        DataloupeError: the file is missing or unreadable, is for another model or
            ``small_input``, or any backbone tensor is missing or of another shape.

    Example:
        >>> m = create_model("convnet-xxs", 3)  # doctest: +SKIP
        >>> load_pretrained(m, "runs/a/checkpoints/best.pt").summary()  # doctest: +SKIP
        'loaded 27/27 backbone tensors from runs/a/checkpoints/best.pt; head loaded'
    """
    name = getattr(model, "model_name", None)
    timm_name = name if getattr(model, "is_timm", False) else None
    if str(source).lower() in HUB_SOURCES:
        if timm_name is None:
            raise DataloupeError(f"pretrained={source} downloads a timm model's published weights, but {name!r}"
                                 " is not a timm model; give a local weights file or run:NAME")
        return _load_timm(model, timm_name, None)
    path = Path(source)
    if not path.is_file():
        raise DataloupeError(f"pretrained weights not found: {path}")
    obj = _read(path)
    found = _dataloupe_state(obj)
    if found is not None:
        return _load_dataloupe(model, found[0], found[1], str(path), classes)
    if timm_name is not None:
        return _load_timm(model, timm_name, path)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataloupeError(f"pretrained weights {path} hold no state dict of tensors")
    return _load_backbone_state(model, obj, str(path))
