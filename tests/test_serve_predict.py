"""Batch prediction: library and the ``predict`` / ``export`` commands."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from _serve_fixtures import DIGIT_CLASSES, cli_cmd, digits_run, single_thread, subprocess_env  # noqa: F401
from dataloupe.project import Project
from dataloupe.serve import load_bundle, predict_files


def _bad_files(folder, good_png):
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes.png"
    text.write_text("this is not an image\n")
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    truncated = folder / "truncated.png"
    data = good_png.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    return {"text": text, "empty": empty, "truncated": truncated, "missing": folder / "missing.png"}


def test_predict_files_batches_and_reports_bad_files(digits_run, tmp_path):
    root, samples = digits_run
    bundle = load_bundle("digits", Project.open(root))
    bad = _bad_files(tmp_path, samples[0][0])
    paths = [samples[0][0], bad["text"], samples[-1][0], bad["empty"], bad["truncated"], bad["missing"]]
    paths += [p for p, _ in samples[1:-1]]
    got = predict_files(bundle, paths, top_k_count=5, batch_size=3)
    assert [r["image"] for r in got] == [str(p) for p in paths]
    errors = {r["image"]: r["error"] for r in got if "error" in r}
    assert set(errors) == {str(p) for p in bad.values()}
    assert errors[str(bad["empty"])] == "empty file (0 bytes)"
    assert errors[str(bad["missing"])] == "file not found"
    assert "not a readable image" in errors[str(bad["text"])]
    assert "not a readable image" in errors[str(bad["truncated"])]
    ok = [r for r in got if "predictions" in r]
    assert len(ok) == len(samples)
    for r in ok:
        probs = [p["probability"] for p in r["predictions"]]
        assert len(probs) == 2  # top-5 capped at K
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
    # batch size changes nothing
    one = predict_files(bundle, paths, batch_size=1)
    for a, b in zip(got, one):
        if "predictions" in a:
            assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
            np.testing.assert_allclose([p["probability"] for p in a["predictions"]],
                                       [p["probability"] for p in b["predictions"]], atol=1e-5)
    # the trained model gets its easy training digits right
    truth = {str(p): DIGIT_CLASSES[c] for p, c in samples}
    right = sum(r["predictions"][0]["label"] == truth[r["image"]] for r in ok)
    assert right >= 0.9 * len(ok)


def test_cli_export_then_predict_run_or_file(digits_run, tmp_path):
    root, samples = digits_run
    env = subprocess_env(root)
    images = [str(p) for p, _ in samples[:2]] + [str(samples[-1][0])]
    by_model = {}
    exported = {}
    for fmt in ("onnx",):  # every format's reload is covered in test_serve_export
        out = tmp_path / f"m-{fmt}.bin"  # the loader sniffs the format; the name says nothing
        r = subprocess.run(cli_cmd("export", "digits", "--format", fmt, "--out", str(out), "--json"),
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["path"] == str(out) and info["format"] == fmt and out.is_file()
        exported[fmt] = out
    for model in ["digits", *map(str, exported.values())]:
        r = subprocess.run(cli_cmd("predict", model, *images, "--top-k", "1", "--json"),
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["failed"] == 0 and [x["image"] for x in doc["results"]] == images
        by_model[model] = [x["predictions"] for x in doc["results"]]
        assert all(len(p) == 1 for p in by_model[model])
    ref = by_model["digits"]
    for model, preds in by_model.items():
        assert [p[0]["label"] for p in preds] == [p[0]["label"] for p in ref], model
        np.testing.assert_allclose([p[0]["probability"] for p in preds],
                                   [p[0]["probability"] for p in ref], atol=1e-4)


def test_cli_predict_bad_image_and_unknown_model(digits_run, tmp_path):
    root, samples = digits_run
    env = subprocess_env(root)
    bad = _bad_files(tmp_path, samples[0][0])
    r = subprocess.run(cli_cmd("predict", "digits", str(samples[0][0]), str(bad["text"])),
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith(f"{samples[0][0]}: zero ") and "%" in lines[0]
    assert lines[1].startswith(f"{bad['text']}: error: not a readable image")
    assert "1 of 2 images could not be read" in r.stderr
    r = subprocess.run(cli_cmd("predict", "nope", str(samples[0][0])), env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "no checkpoint for run 'nope'" in r.stderr and "digits" in r.stderr


def test_a_checkpoint_is_served_as_its_run_evaluated_amp_and_memory_format(digits_run, tmp_path):
    import torch

    from dataloupe.serve._bundle import load_checkpoint, model_from_checkpoint, run_checkpoint_path

    root, samples = digits_run
    ckpt = load_checkpoint(run_checkpoint_path(Project.open(root), "digits"))
    plain = load_bundle("digits", Project.open(root))
    assert plain.metadata["amp"] == "none"  # checkpoints without the key: float32, as before
    batch = np.stack([plain.load_image(p) for p, _ in samples[:16]])
    fp32 = plain.predict_proba(batch)
    # the same weights in a plain NCHW float32 model: NHWC serving changes no prediction
    model = model_from_checkpoint(ckpt)
    with torch.no_grad():
        logits = model(torch.from_numpy(batch)).numpy()
    ref = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(fp32, ref / ref.sum(1, keepdims=True), atol=1e-5)
    torch.save({**ckpt, "amp": "bf16"}, tmp_path / "bf16.pt")  # a run trained with amp=bf16
    bf16 = load_bundle(tmp_path / "bf16.pt")
    assert bf16.metadata["amp"] == "bf16"
    got = bf16.predict_proba(batch)
    assert 1e-5 < np.abs(got - fp32).max() < 0.05  # computed in bf16: close, not the same numbers
    assert (got.argmax(1) == fp32.argmax(1)).mean() >= 0.9
