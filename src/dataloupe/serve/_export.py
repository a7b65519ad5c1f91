"""Export a run's best checkpoint as a state dict, TorchScript or ONNX file.

Every export embeds its metadata (class names, image size, mean/std, provenance) in the
file itself and also writes it next to the file as ``<out>.json`` for other tools.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path

import torch

from dataloupe._fileio import write_bytes_atomic
from dataloupe.train._checkpoint import SERVING_KEYS
from dataloupe.project import DataloupeError, Project
from dataloupe.serve._bundle import (
    FORMATS,
    METADATA_KEY,
    load_checkpoint,
    metadata_from_checkpoint,
    model_from_checkpoint,
    run_checkpoint_path,
    sidecar_path,
)

ONNX_OPSET = 17


def _state_dict_bytes(ckpt: dict, meta: dict) -> bytes:
    # The contract's checkpoint keys minus training state: loadable with weights_only=True.
    out = {k: ckpt[k] for k in SERVING_KEYS if k in ckpt}
    out["run"] = meta["run"]
    buf = io.BytesIO()
    torch.save(out, buf)
    return buf.getvalue()


def _torchscript_bytes(model: torch.nn.Module, example: torch.Tensor, meta: dict) -> bytes:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarning on the return_embedding flag; jit deprecation
        traced = torch.jit.trace(model, (example,))
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})
    return buf.getvalue()


def _onnx_bytes(model: torch.nn.Module, example: torch.Tensor, meta: dict) -> bytes:
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), buf, dynamo=False, opset_version=ONNX_OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    del proto.metadata_props[:]
    for key, value in ((METADATA_KEY, json.dumps(meta)), ("classes", json.dumps(meta["classes"]))):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_model(project: Project, run: str, *, format: str, out: str | Path) -> dict:
    """Export ``run``'s best checkpoint.

    Args:
        project: the project store holding ``runs/<run>``.
        run: the run id.
        format: ``state_dict``, ``torchscript`` or ``onnx``.
        out: the file to write (its folder is created); the metadata goes to ``<out>.json``.

    Returns:
        ``{"run", "format", "path", "metadata_path", "bytes", "sha256", "classes", "image_size"}``.

    Example:
        >>> export_model(Project.open(), "a", format="onnx", out="/tmp/a.onnx")  # doctest: +SKIP
    """
    if format not in FORMATS:
        raise DataloupeError(f"unknown export format {format!r}; known: {', '.join(FORMATS)}")
    ckpt = load_checkpoint(run_checkpoint_path(project, run))
    meta = metadata_from_checkpoint(ckpt, run)
    meta["export_format"] = format
    out = Path(out).expanduser().resolve()
    if out.is_dir():
        raise DataloupeError(f"--out {out} is a folder; give a file path")
    out.parent.mkdir(parents=True, exist_ok=True)
    if format == "state_dict":
        data = _state_dict_bytes(ckpt, meta)
    else:
        model = model_from_checkpoint(ckpt)
        example = torch.zeros(2, 3, meta["image_size"], meta["image_size"])
        data = (_torchscript_bytes if format == "torchscript" else _onnx_bytes)(model, example, meta)
    write_bytes_atomic(out, data)
    side = sidecar_path(out)
    sha = hashlib.sha256(data).hexdigest()
    write_bytes_atomic(side, (json.dumps({**meta, "file": out.name, "sha256": sha}, indent=2) + "\n").encode())
    return {
        "run": run, "format": format, "path": str(out), "metadata_path": str(side),
        "bytes": len(data), "sha256": sha, "classes": meta["classes"], "image_size": meta["image_size"],
    }
