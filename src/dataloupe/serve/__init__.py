"""Inference: export a run's model, predict images, serve a demo page and a JSON API.

Example:
    >>> from dataloupe.serve import load_bundle, predict_files
    >>> bundle = load_bundle("a")              # a run id or an exported file  # doctest: +SKIP
    >>> predict_files(bundle, ["muffin.jpg"])  # doctest: +SKIP
"""

from dataloupe.serve._app import ServeConfig, create_app, run_server
from dataloupe._netsafety import is_loopback, resolve_token
from dataloupe.serve._batcher import MicroBatcher
from dataloupe.serve._bundle import FORMATS, ModelBundle, load_bundle, preprocess, sidecar_path, softmax, top_k
from dataloupe.serve._export import export_model
from dataloupe.serve._predict import predict_files

__all__ = [
    "FORMATS",
    "MicroBatcher",
    "ModelBundle",
    "ServeConfig",
    "create_app",
    "export_model",
    "is_loopback",
    "load_bundle",
    "predict_files",
    "preprocess",
    "resolve_token",
    "run_server",
    "sidecar_path",
    "softmax",
    "top_k",
]
