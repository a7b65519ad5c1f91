"""A model bundle: a forward function plus the class names and preprocessing it needs.

A bundle is loaded from a run id (``runs/<run>/checkpoints/best.pt``) or from an exported
file in any of the three export formats; callers never care which.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dataloupe.data import decode_image
from dataloupe.models import amp_dtype
from dataloupe.project import DataloupeError, Project
from dataloupe.train._checkpoint import missing_keys

METADATA_KEY = "dataloupe"  # ONNX metadata_props key / TorchScript extra file stem
FORMATS = ("state_dict", "torchscript", "onnx")


@dataclass
class ModelBundle:
    """A ready-to-run classifier.

    Attributes:
        classes: class names, index = logit column.
        image_size: side of the square input in pixels.
        mean, std: per-channel normalisation (RGB, on [0, 1] pixels).
        forward: ``(N, 3, S, S) float32 -> logits (N, K) float32`` (numpy in and out).
        source: where it came from (run id or file path), for messages.
        backend: ``torch``, ``torchscript`` or ``onnx``.
        metadata: everything else that travelled with the model (run, epoch, val_top1...).
    """

    classes: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    forward: Callable[[np.ndarray], np.ndarray]
    source: str
    backend: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """``(S, S, 3) uint8`` from :func:`decode_image` -> ``(3, S, S) float32`` normalised."""
        return preprocess(image, self.mean, self.std)

    def load_image(self, source: str | Path | bytes) -> np.ndarray:
        """Decode a file path or encoded bytes to one ``(3, S, S)`` input (raises ImageDecodeError)."""
        return self.preprocess(decode_image(source, self.image_size))

    @property
    def tta_hflip(self) -> bool:
        """Whether the run evaluated on the mean of each image and its mirror (then so does serving)."""
        return bool(self.metadata.get("tta_hflip"))

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        """``(N, 3, S, S)`` inputs -> softmax probabilities ``(N, K)`` float32.

        The same forward pass as evaluation and ``collect`` (:func:`dataloupe.models.infer`):
        with ``tta_hflip`` the probabilities are the mean over the image and its horizontal
        mirror, as the run's validation top-1 was measured.
        """
        from dataloupe.models import infer  # noqa: PLC0415

        x = np.ascontiguousarray(batch, dtype=np.float32)
        return softmax(next(infer(self.forward, [x], tta=self.tta_hflip)))


def preprocess(image: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """Training's normalisation: uint8 HWC -> float [0, 1] -> ``(x - mean) / std`` CHW."""
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` logits, numerically stable, float32."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def top_k(probs: np.ndarray, classes: list[str], k: int) -> list[list[dict]]:
    """``(N, K)`` probabilities -> per row the ``k`` best ``{"label", "probability"}``, sorted."""
    k = max(1, min(k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [{"label": classes[j], "probability": float(row[j])} for j in idx]
        for row, idx in zip(probs, order)
    ]


def run_checkpoint_path(project: Project, run: str) -> Path:
    """``runs/<run>/checkpoints/best.pt``, with a loud error listing known runs."""
    path = project.runs_dir / run / "checkpoints" / "best.pt"
    if not path.is_file():
        known = sorted(p.name for p in project.runs_dir.iterdir() if (p / "checkpoints" / "best.pt").is_file())
        raise DataloupeError(
            f"no checkpoint for run {run!r} ({path} not found); runs with a best checkpoint: "
            f"{', '.join(known) or 'none'}"
        )
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load a dataloupe checkpoint (or exported state dict) and check the contract keys."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of all kinds: one user-facing message
        raise DataloupeError(f"{path} is not a dataloupe checkpoint: {e}") from e
    if not isinstance(ckpt, dict):
        raise DataloupeError(f"{path} is not a dataloupe checkpoint (holds {type(ckpt).__name__})")
    missing = missing_keys(ckpt)
    if missing:
        raise DataloupeError(f"{path} is not a dataloupe checkpoint: missing keys {', '.join(missing)}")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> torch.nn.Module:
    """Rebuild the :class:`~dataloupe.models.Classifier` of a checkpoint, in eval mode."""
    from dataloupe.models import create_model

    model = create_model(ckpt["model_name"], int(ckpt["num_classes"]), small_input=bool(ckpt["small_input"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def metadata_from_checkpoint(ckpt: dict, run: str | None = None) -> dict[str, Any]:
    """The JSON-able description that travels with an exported model."""
    from dataloupe import __version__

    return {
        "format_version": 1,
        "run": run,
        "model_name": ckpt["model_name"],
        "num_classes": int(ckpt["num_classes"]),
        "classes": [str(c) for c in ckpt["classes"]],
        "image_size": int(ckpt["image_size"]),
        "small_input": bool(ckpt["small_input"]),
        "mean": [float(v) for v in ckpt["mean"]],
        "std": [float(v) for v in ckpt["std"]],
        "epoch": ckpt.get("epoch"),
        "val_top1": ckpt.get("val_top1"),
        # the run evaluated each image with its mirror: predictions average both softmaxes
        # (load_bundle does; a raw ONNX/TorchScript user must too, to match val_top1)
        "tta_hflip": bool(ckpt.get("tta_hflip", False)),
        # the run's autocast setting (amp): serving a checkpoint with torch computes as the run evaluated
        "amp": str(ckpt.get("amp", "none")),
        "preprocessing": "dataloupe.data.decode_image(image, image_size) (RGB, short side -> "
        "image_size, centre crop) -> float32 /255 -> (x - mean) / std -> NCHW",
        "input": "float32 (N, 3, image_size, image_size)",
        "output": "logits (N, num_classes); softmax gives probabilities in `classes` order",
        "dataloupe_version": __version__,
    }


def _torch_forward(model: torch.nn.Module, amp: str = "none") -> Callable[[np.ndarray], np.ndarray]:
    """``model`` as a numpy forward on the CPU. A checkpoint's network runs as its run evaluated:
    NHWC (oneDNN's convolutions are faster in it: ~19% for ResNet-18) and the run's autocast
    setting ``amp`` (``native``: bf16 on a CPU with AMX or AVX512-BF16, 1.7-2.5x; bench/RESULTS.md)."""
    dtype = amp_dtype(amp, torch.device("cpu"))
    if isinstance(model, torch.nn.Module) and not isinstance(model, torch.jit.ScriptModule):
        model = model.to(memory_format=torch.channels_last)
        layout = torch.channels_last
    else:
        layout = torch.contiguous_format  # a traced graph keeps the layout it was traced with

    def forward(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).contiguous(memory_format=layout)
        with torch.inference_mode(), (torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()):
            return model(x).float().numpy()

    return forward


def _bundle(meta: dict, forward, source: str, backend: str) -> ModelBundle:
    return ModelBundle(
        classes=list(meta["classes"]),
        image_size=int(meta["image_size"]),
        mean=list(meta["mean"]),
        std=list(meta["std"]),
        forward=forward,
        source=source,
        backend=backend,
        metadata=meta,
    )


def sidecar_path(model_path: str | Path) -> Path:
    """Where the metadata JSON of an exported model lives: ``<file>.json``."""
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def _metadata(path: Path, embedded: str | bytes | None, what: str) -> dict:
    """The metadata embedded in the file, else its sidecar ``<file>.json``."""
    if embedded:
        return json.loads(embedded)
    side = sidecar_path(path)
    if side.is_file():
        return json.loads(side.read_text())
    raise DataloupeError(f"{path}: {what} carries no dataloupe metadata and has no sidecar {side.name}")


def _load_torchscript(path: Path) -> ModelBundle:
    extra = {f"{METADATA_KEY}.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
    raw = extra[f"{METADATA_KEY}.json"]
    meta = _metadata(path, raw, "TorchScript file")
    return _bundle(meta, _torch_forward(model), str(path), "torchscript")


def _load_onnx(path: Path) -> ModelBundle:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise DataloupeError(f"{path} is not a loadable ONNX model: {e}") from e
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    meta = _metadata(path, raw, "ONNX model")
    input_name = session.get_inputs()[0].name

    def forward(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: batch})[0]

    return _bundle(meta, forward, str(path), "onnx")


def _sniff(path: Path) -> str:
    """Tell the three export formats apart by content, not by the file name."""
    import zipfile

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        # TorchScript archives hold code/ and constants.pkl; torch.save archives hold data.pkl only.
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "state_dict"
    return "onnx"


def load_bundle(model: str | Path, project: Project | None = None) -> ModelBundle:
    """Load a model from an exported file (any format) or a run id.

    Args:
        model: a path to a ``.pt``/``.onnx`` export or checkpoint, or a run id looked up
            in ``project`` (``runs/<run>/checkpoints/best.pt``). An existing file wins.
        project: the project store for run ids (default: :meth:`Project.open`).

    Example:
        >>> b = load_bundle("cm-resnet18")          # doctest: +SKIP
        >>> b.predict_proba(b.load_image("dog.jpg")[None]).shape  # doctest: +SKIP
        (1, 2)
    """
    path = Path(model)
    if path.is_file():
        kind = _sniff(path)
        if kind == "torchscript":
            return _load_torchscript(path)
        if kind == "onnx":
            return _load_onnx(path)
        ckpt = load_checkpoint(path)
        return _bundle(metadata_from_checkpoint(ckpt, ckpt.get("run")),
                       _torch_forward(model_from_checkpoint(ckpt), ckpt.get("amp", "none")), str(path), "torch")
    if any(sep in str(model) for sep in ("/", "\\")) or path.suffix in (".pt", ".pth", ".onnx"):
        raise DataloupeError(f"model file not found: {model}")
    project = project or Project.open()
    ckpt = load_checkpoint(run_checkpoint_path(project, str(model)))
    return _bundle(metadata_from_checkpoint(ckpt, str(model)),
                   _torch_forward(model_from_checkpoint(ckpt), ckpt.get("amp", "none")), str(model), "torch")
