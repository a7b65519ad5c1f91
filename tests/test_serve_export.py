"""Export: all three formats reload with their metadata and match the PyTorch checkpoint."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from _serve_fixtures import DIGIT_CLASSES, cm_images, digits_run, make_run, single_thread  # noqa: F401
from dataloupe.project import DataloupeError, Project
from dataloupe.serve import FORMATS, export_model, load_bundle, sidecar_path
from dataloupe.serve._bundle import load_checkpoint, model_from_checkpoint


def _reference(project_root, run, paths):
    """Logits of the run's checkpoint on ``paths``, preprocessed by the training recipe."""
    ckpt = load_checkpoint(project_root / "runs" / run / "checkpoints" / "best.pt")
    bundle = load_bundle(run, Project.open(project_root))
    x = np.stack([bundle.load_image(p) for p in paths])
    with torch.no_grad():
        logits = model_from_checkpoint(ckpt)(torch.from_numpy(x)).numpy()
    return x, logits, ckpt


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_roundtrip_matches_checkpoint(digits_run, tmp_path, fmt):
    root, samples = digits_run
    paths = [p for p, _ in samples]
    x, ref, ckpt = _reference(root, "digits", paths)
    info = export_model(Project.open(root), "digits", format=fmt, out=tmp_path / "out" / f"model.{fmt}")
    assert info["classes"] == DIGIT_CLASSES and info["format"] == fmt

    side = json.loads(sidecar_path(info["path"]).read_text())
    assert side["classes"] == DIGIT_CLASSES and side["image_size"] == 32
    assert side["mean"] == pytest.approx(ckpt["mean"]) and side["std"] == pytest.approx(ckpt["std"])
    assert side["sha256"] == hashlib.sha256(open(info["path"], "rb").read()).hexdigest()

    sidecar_path(info["path"]).unlink()  # metadata must also travel inside the file itself
    bundle = load_bundle(info["path"])
    assert bundle.classes == DIGIT_CLASSES and bundle.image_size == 32
    np.testing.assert_allclose(bundle.forward(x), ref, atol=1e-4, rtol=0)
    # and the trained model is right on its (easy) training digits, so class order survived
    pred = bundle.predict_proba(x).argmax(1)
    assert (pred == np.array([c for _, c in samples])).mean() >= 0.9


def test_onnx_matches_pytorch_on_digits_with_raw_onnxruntime(digits_run, tmp_path):
    root, samples = digits_run
    x, ref, _ = _reference(root, "digits", [p for p, _ in samples])
    out = tmp_path / "m.onnx"
    export_model(Project.open(root), "digits", format="onnx", out=out)
    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == DIGIT_CLASSES
    assert json.loads(props["dataloupe"])["preprocessing"].startswith("dataloupe.data.decode_image")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert got.shape == (len(samples), 2)
    assert np.abs(got - ref).max() <= 1e-4
    one = sess.run(None, {"input": x[:1]})[0]  # dynamic batch axis
    assert np.abs(one - ref[:1]).max() <= 1e-4


@pytest.mark.skipif(not cm_images(), reason="chihuahua-muffin images not present")
def test_onnx_matches_pytorch_on_chihuahua_muffin(tmp_path):
    samples = cm_images(per_class=4)
    make_run(tmp_path, "cm", samples, ["chihuahua", "muffin"], image_size=64, steps=2)
    x, ref, _ = _reference(tmp_path, "cm", [p for p, _ in samples])
    out = tmp_path / "cm.onnx"
    export_model(Project.open(tmp_path), "cm", format="onnx", out=out)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x})[0]
    diff = np.abs(got - ref).max()
    assert diff <= 1e-4, f"ONNX differs from PyTorch by {diff}"


def test_export_errors_are_loud(digits_run, tmp_path):
    root, _ = digits_run
    project = Project.open(root)
    with pytest.raises(DataloupeError, match="unknown export format 'keras'; known: state_dict, torchscript, onnx"):
        export_model(project, "digits", format="keras", out=tmp_path / "m")
    with pytest.raises(DataloupeError, match="no checkpoint for run 'nope'.*digits"):
        export_model(project, "nope", format="onnx", out=tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(DataloupeError, match="is a folder"):
        export_model(project, "digits", format="onnx", out=tmp_path)


def test_load_bundle_rejects_foreign_files(tmp_path):
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    with pytest.raises(DataloupeError, match="missing keys model, model_name"):
        load_bundle(junk)
    bad_onnx = tmp_path / "x.onnx"
    bad_onnx.write_bytes(b"not onnx at all")
    with pytest.raises(DataloupeError, match="not a loadable ONNX model"):
        load_bundle(bad_onnx)
    with pytest.raises(DataloupeError, match="model file not found"):
        load_bundle(tmp_path / "missing.onnx")


def test_onnx_without_embedded_metadata_uses_sidecar(digits_run, tmp_path):
    root, samples = digits_run
    out = tmp_path / "m.onnx"
    export_model(Project.open(root), "digits", format="onnx", out=out)
    proto = onnx.load(str(out))
    del proto.metadata_props[:]  # e.g. a tool that rewrote the graph and dropped them
    onnx.save(proto, str(out))
    bundle = load_bundle(out)
    assert bundle.classes == DIGIT_CLASSES and bundle.backend == "onnx"
    sidecar_path(out).unlink()
    with pytest.raises(DataloupeError, match="carries no dataloupe metadata and has no sidecar m.onnx.json"):
        load_bundle(out)
