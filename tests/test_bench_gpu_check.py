"""``bench/gpu.sh --smoke``: every section of the GPU check runs on this CPU and writes its summary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_gpu_check_smoke(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    r = subprocess.run([str(ROOT / "bench" / "gpu.sh"), "--smoke", "--out", str(tmp_path / "out"),
                        "--work", str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=400)
    summary = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    errors = {k: v["error"][-1500:] for k, v in summary.items() if isinstance(v, dict) and "error" in v}
    assert r.returncode == 0 and not errors, (r.stdout[-3000:], errors)
    assert summary["model"]["rows"][0]["images_per_s"] > 0
    paths = {row["path"]: row for row in summary["data"]["rows"]}
    assert paths["store, decode cpu workers"]["images_per_s"] > 0 and paths["cache (decoded uint8)"]["images_per_s"] > 0
    assert summary["ddp"]["processes"] == 2 and summary["ddp"]["collect_rows"] == summary["data"]["images"]["images"]
    if "skipped" not in summary["loop"]:
        assert 0 <= summary["loop"]["test_top1"] <= 1
    md = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "| model-only" in md and "DDP train" in md
    assert not list((tmp_path / "out").rglob("*.jpg"))  # images stay in the work folder
