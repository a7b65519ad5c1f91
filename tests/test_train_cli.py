import json
import os
import signal
import subprocess
import time

from _train_helpers import FAST, cli, cli_env, make_digit_tables

from dataloupe.project import Project


def _setup(tmp_path):
    p = Project.open(tmp_path / "proj")
    make_digit_tables(p, tmp_path)
    return p


def test_train_runs_show_and_ls_json(tmp_path):
    p = _setup(tmp_path)
    env = cli_env(p.root)
    args = ["train", "--train", "dig-train", "--val", "dig-val@1", "--recipe", "fashion-mnist", *FAST, "epochs=1",
            "--run", "c"]
    r = subprocess.run(cli(*args), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "epoch=1" in r.stdout and "run c: completed" in r.stdout
    assert "ETA" in r.stderr and "img/s" in r.stderr  # plain progress lines when not on a TTY
    show = json.loads(subprocess.run(cli("runs", "show", "c", "--json"), env=env, capture_output=True, text=True,
                                     check=True).stdout)
    assert show["status"] == "completed" and show["epochs"] == 1 and 0 <= show["best_val_top1"] <= 1
    assert (show["train_table"], show["train_revision"], show["val_table"], show["val_revision"]) == (
        "dig-train", 1, "dig-val", 1)
    ls = json.loads(subprocess.run(cli("runs", "ls", "--json"), env=env, capture_output=True, text=True,
                                   check=True).stdout)
    assert [x["run"] for x in ls] == ["c"]
    bad = subprocess.run(cli("train", "--train", "dig-train", "--val", "dig-val", "--recipe", "fashion-mnist",
                             "epoch=1"), env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown recipe key(s) epoch; valid keys:" in bad.stderr
    missing = subprocess.run(cli("runs", "show", "nope", "--json"), env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "unknown run 'nope'; known runs: c" in missing.stderr


def test_sigkill_mid_epoch_then_resume_completes_without_gaps(tmp_path):
    p = _setup(tmp_path)
    env = cli_env(p.root)
    # small batches make epochs long enough to kill one half-way
    args = ["train", "--train", "dig-train", "--val", "dig-val", "--recipe", "fashion-mnist", *FAST, "epochs=6",
            "batch_size=4", "--run", "k"]
    proc = subprocess.Popen(cli(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    hist = p.runs_dir / "k" / "history.jsonl"
    last = p.runs_dir / "k" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while time.time() < deadline and not last.is_file():  # epoch 1 checkpointed: now inside epoch 2
        time.sleep(0.05)
    time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = [json.loads(x)["epoch"] for x in hist.read_text().splitlines()]
    assert 1 <= len(done_before) < 6
    r = subprocess.run(cli("train", "--run", "k", "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    epochs = [json.loads(x)["epoch"] for x in hist.read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]
    info = json.loads((p.runs_dir / "k" / "run.json").read_text())
    assert info["status"] == "completed" and info["epochs_done"] == 6 and info["resumed"]


def test_lr_find_prints_suggestion_and_writes_plot(tmp_path):
    p = _setup(tmp_path)
    plot = tmp_path / "lr.png"
    r = subprocess.run(cli("lr-find", "--train", "dig-train", "--recipe", "fashion-mnist", *FAST, "--steps", "30",
                           "--plot", str(plot)), env=cli_env(p.root), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lr = float(r.stdout.split("suggested lr:")[1].split()[0])
    assert 1e-7 <= lr <= 10 and plot.is_file() and plot.stat().st_size > 1000


def test_collect_command_writes_metrics_for_any_table_revision(tmp_path):
    import lance

    from dataloupe.tables import edit_table
    from dataloupe.train import load_recipe, train

    p = _setup(tmp_path)
    train(p, "dig-train", "dig-val", load_recipe("fashion-mnist", FAST + ["epochs=1"]), run="m", tty=False)
    edit_table(p, "dig-val", action="undefine", ids=[0, 1, 2], message="unlabel three")
    r = subprocess.run(cli("collect", "m", "--table", "dig-val@2"), env=cli_env(p.root), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    t = lance.dataset(str(p.runs_dir / "m" / "metrics" / "dig-val.lance")).to_table()
    assert t.num_rows == 160 and set(t.column("table_revision").to_pylist()) == {2}
    assert t.column("loss").null_count == 3 and t.column("correct").null_count == 3
    assert t.column("aum").null_count == 160  # never trained on
    assert t.schema.field("embedding").type.list_size == 32
    bad = subprocess.run(cli("collect", "nope"), env=cli_env(p.root), capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown run" in bad.stderr
