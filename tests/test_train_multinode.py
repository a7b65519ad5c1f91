"""Two "nodes" on 127.0.0.1: ``torchrun --nnodes 2`` with a c10d rendezvous, one process each,
train one epoch, then resume the run for a second epoch the same way (docs/train.md, Multi-node)."""

import json
import socket
import subprocess
import sys

import pytest
from _train_helpers import FAST, cli_env, make_digit_tables

from dataloupe.project import Project

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(env, args, rdzv_id):
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", rdzv_id,
           "-m", "dataloupe", *args]
    nodes = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [n.communicate(timeout=400) for n in nodes]
    for n, (out, err) in zip(nodes, outs):
        assert n.returncode == 0, err[-3000:]
    return outs


def test_two_nodes_train_and_resume(tmp_path):
    p = Project.open(tmp_path / "proj")
    make_digit_tables(p, tmp_path, n_train=160, n_val=80)
    env = cli_env(p.root)
    common = ["train", "--train", "dig-train", "--val", "dig-val", "--recipe", "fashion-mnist", *FAST]
    _two_nodes(env, [*common, "epochs=1", "--run-name", "mn"], "first")
    info = json.loads((p.runs_dir / "mn" / "run.json").read_text())
    assert info["hardware"]["world_size"] == 2 and info["epochs_done"] == 1
    _two_nodes(env, ["train", "--run-name", "mn", "--resume", "epochs=2"], "second")
    hist = [json.loads(x) for x in (p.runs_dir / "mn" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2]
    info = json.loads((p.runs_dir / "mn" / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs_done"] == 2 and info.get("resumed")
