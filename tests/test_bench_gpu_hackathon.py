"""``bench/gpu_hackathon.py --smoke``: every stage of the GPU hackathon runs on this CPU and reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_hackathon_smoke(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_hackathon.py"), "--smoke", "--out",
                        str(tmp_path / "out"), "--work", str(tmp_path / "work")],
                       env=env, capture_output=True, text=True, timeout=400)
    report = json.loads((tmp_path / "out" / "gpu-hackathon.json").read_text())
    assert r.returncode == 0, r.stdout[-3000:]
    stages = report["stages"]
    assert list(stages) == ["baseline", "ssl-cal", "ssl", "ft", "ft-fixmatch", "fixmatch"]
    assert all(s["rc"] == 0 and s["epochs_done"] == 1 for s in stages.values())
    assert all(0 <= stages[k]["val_top1"] <= 1 for k in ("baseline", "ft", "ft-fixmatch", "fixmatch"))
    assert report["zero_label_pipeline_s"] > 0
    md = (tmp_path / "out" / "gpu-hackathon.md").read_text()
    assert "| ft-fixmatch |" in md and "FAILED" not in md
