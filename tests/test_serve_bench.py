"""bench/serve_load.py end to end, briefly (slow: it starts two servers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from _serve_fixtures import subprocess_env

BENCH = Path(__file__).resolve().parents[1] / "bench" / "serve_load.py"


@pytest.mark.slow
def test_serve_load_bench_runs_both_modes_without_errors():
    r = subprocess.run([sys.executable, str(BENCH), "--duration", "3", "--clients", "4", "--image-size", "32",
                        "--max-requests", "200", "--json"], env=subprocess_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "baseline (no batching)" in r.stdout and "batching speed-up" in r.stdout
    rows = json.loads(r.stdout[r.stdout.index("["):])
    assert [row["max_batch"] for row in rows] == [16, 1]
    assert all(row["errors"] == 0 and 0 < row["requests"] <= 200 for row in rows)
    assert rows[1]["mean_batch"] == 1.0
