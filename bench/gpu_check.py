"""The whole GPU check in one command (run by ``bench/gpu.sh``); a CPU smoke run with ``--smoke``.

Sections, each in its own process with its own time limit (a failure is recorded, the
rest still run), all inside ``--budget`` seconds:

  env      torch / CUDA / GPUs / CPU cores;
  model    ResNet-50 at 224 px train steps on synthetic tensors already on the device (the
           ceiling): bf16 autocast, channels_last, ``torch.compile`` off and on;
  data     the real data path: a synthetic JPEG folder made here (>= 20k images at
           ImageNet-like sizes), imported as a table, then the engine's own ``build_setup``
           + ``train_one_epoch`` with ``loader=store`` (decode on the GPU and in CPU workers)
           and ``loader=cache``; images/s and the share of model-only;
  ddp      ``torchrun --nproc-per-node <all visible GPUs> -m dataloupe train`` on that table
           (images/s of the last epoch), then ``torchrun ... dataloupe collect`` (rows/s,
           every rank collecting its shard);
  loop     the chihuahua-muffin ``default`` loop end to end (bench/hackathon.py's ``default``
           variant), from ``--cm`` (default ``../shared/datasets/chihuahua-muffin`` or
           ``shared/datasets/chihuahua-muffin`` inside the tree).

Writes ``<out>/gpu-check.json`` and ``<out>/gpu-check.md`` (images, projects and runs go to
``--work``, never under ``<out>``).

    bench/gpu.sh                 # on the GPU machine: writes under $OUT
    bench/gpu.sh --smoke --out /tmp/gpu-smoke   # here, CPU, < 3 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

SECTIONS = ("env", "model", "data", "loop", "ddp")  # run in this order; the loop before DDP


def config(smoke: bool, cuda: bool) -> dict:
    """What each section runs. Full: the issue's sizes; smoke: tiny, CPU, same code paths."""
    if not smoke:
        return {"model": "resnet50", "size": 224, "batch": 256, "steps": 30, "warmup": 5, "images": 20_000,
                "classes": 100, "width": (400, 500), "height": (300, 400), "epochs": 2, "ddp_epochs": 2,
                "compile": [False, True], "loop_overrides": None,
                "timeouts": {"env": 60, "model": 120, "data": 180, "loop": 240, "ddp": 120}}
    return {"model": "resnet18", "size": 40, "batch": 16, "steps": 3, "warmup": 1, "images": 96, "classes": 4,
            "width": (80, 120), "height": (60, 90), "epochs": 2, "ddp_epochs": 1,
            "compile": [False], "loop_overrides": {"model": "convnet-xxs", "image_size": 32, "epochs": 1},
            "timeouts": {"env": 30, "model": 40, "data": 60, "ddp": 70, "loop": 80}}


def _write(out: Path, name: str, obj: dict) -> None:
    (out / "parts").mkdir(parents=True, exist_ok=True)
    (out / "parts" / f"{name}.json").write_text(json.dumps(obj, indent=1))


def _env(python: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ----------------------------------------------------------------------------- sections


def section_env(a, cfg) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "unknown (no git)"
    return {"torch": torch.__version__, "cuda": cuda, "cuda_version": torch.version.cuda, "gpus": gpus,
            "bf16": bool(cuda and torch.cuda.is_bf16_supported()), "cpus": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "smoke": a.smoke}


def _model_rate(model_name, size, batch, steps, warmup, device, compile_) -> dict:
    import torch
    import torch.nn.functional as F

    from dataloupe.models import create_model

    torch.manual_seed(0)
    cuda = device.type == "cuda"
    m = create_model(model_name, 1000, small_input=size <= 32).to(device)
    if cuda:
        m = m.to(memory_format=torch.channels_last)
    fwd = torch.compile(m) if compile_ else m
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    t_first = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            warm_s, t0 = time.perf_counter() - t_first, time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(fwd(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    return {"compile": compile_, "images_per_s": steps * batch / sec, "warmup_s": warm_s,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def section_model(a, cfg) -> dict:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for c in cfg["compile"]:
        try:
            rows.append(_model_rate(cfg["model"], cfg["size"], cfg["batch"], cfg["steps"], cfg["warmup"], device, c))
        except Exception as e:  # noqa: BLE001 - e.g. torch.compile without a working triton: keep the other rows
            rows.append({"compile": c, "error": f"{type(e).__name__}: {str(e)[:500]}"})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"model": cfg["model"], "size": cfg["size"], "batch": cfg["batch"], "device": str(device),
            "amp": "bf16" if device.type == "cuda" else "none", "channels_last": device.type == "cuda",
            "rows": rows}


def _synthetic_tables(a, cfg):
    from _synthetic import make_jpeg_folder

    from dataloupe.project import Project
    from dataloupe.tables import import_imagefolder, list_tables

    work = Path(a.work)
    made = make_jpeg_folder(work / "jpeg", cfg["images"], classes=cfg["classes"], width=cfg["width"],
                            height=cfg["height"])
    project = Project.open(work / "project")
    have = {t["name"] for t in list_tables(project)}
    if "syn" not in have:
        import_imagefolder(project, work / "jpeg", table="syn")
    return project, made


def _engine_rate(project, data, recipe, device, epochs: int) -> dict:
    """The engine's own setup and training epochs; images/s of the best epoch after the first."""
    import torch

    from dataloupe.train._distributed import DistContext
    from dataloupe.train._engine import build_setup
    from dataloupe.train._epoch import train_one_epoch

    cuda = device.type == "cuda"
    train_set = data.train.subset(data.train.trainable)
    t1 = time.perf_counter()
    s = build_setup(project, data, recipe, DistContext(device=device), train_set, train_set)  # val is not timed
    setup_s = time.perf_counter() - t1
    best = 0.0
    for epoch in range(1, epochs + 1):
        s.sampler.set_epoch(epoch)
        if cuda:
            torch.cuda.synchronize()
        out = train_one_epoch(s.model, s.train_loader, optimizer=s.optimizer, schedule=s.schedule,
                              opts=s.opts, num_samples=s.num_train, mix=s.mix)
        if cuda:
            torch.cuda.synchronize()
        if epoch > 1 or epochs == 1:
            best = max(best, out["count"] / out["seconds"])
    return {"images_per_s": best, "setup_s": setup_s, "workers": s.train_loader.num_workers}


def section_data(a, cfg) -> dict:
    import torch

    from dataloupe.train import load_recipe
    from dataloupe.train._inputs import load_train_data

    t0 = time.perf_counter()
    project, made = _synthetic_tables(a, cfg)
    prep_s = time.perf_counter() - t0
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    data = load_train_data(project, "syn", "syn")
    variants = [("store, decode gpu", ["loader=store", "decode=gpu"]),
                ("store, decode cpu workers", ["loader=store", "decode=cpu"]),
                ("cache (decoded uint8)", ["loader=cache"])]
    rows = []
    for name, extra in variants:
        if "decode=gpu" in extra and not cuda:
            rows.append({"path": name, "skipped": "no CUDA device"})
            continue
        for compile_ in cfg["compile"][:1] + ([True] if cuda and name.startswith("store, decode gpu") else []):
            r = load_recipe("imagenet-resnet50-stage1", [
                f"model={cfg['model']}", f"image_size={cfg['size']}", f"batch_size={cfg['batch']}",
                f"epochs={cfg['epochs']}", "collect=false", "autoaugment=null", "log_every=1e9",
                "random_erasing=0", f"compile={str(compile_).lower()}", *extra])
            try:
                rows.append(dict(_engine_rate(project, data, r, device, cfg["epochs"]), path=name, compile=compile_))
            except Exception as e:  # noqa: BLE001 - keep the other paths
                rows.append({"path": name, "compile": compile_, "error": f"{type(e).__name__}: {str(e)[:500]}"})
    return {"images": made, "prepare_s": prep_s, "rows": rows, "model": cfg["model"], "size": cfg["size"],
            "batch": cfg["batch"]}


def _torchrun(nproc: int, args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "dataloupe", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def section_ddp(a, cfg) -> dict:
    import torch

    project, _ = _synthetic_tables(a, cfg)
    cuda = torch.cuda.is_available()
    nproc = torch.cuda.device_count() if cuda else 2
    env = dict(_env(sys.executable), DATALOUPE_PROJECT=str(project.root), OMP_NUM_THREADS="1")
    run = f"ddp-{int(time.time())}"
    overrides = [f"model={cfg['model']}", f"image_size={cfg['size']}", f"batch_size={cfg['batch'] * nproc}",
                 f"epochs={cfg['ddp_epochs']}", "collect=false", "autoaugment=null", "random_erasing=0",
                 "log_every=1e9"]
    t0 = time.perf_counter()
    r = _torchrun(nproc, ["train", "--train", "syn", "--val", "syn", "--recipe", "imagenet-resnet50-stage1",
                          "--run-name", run, *overrides], env, a.section_timeout)
    train_s = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"torchrun train failed ({r.returncode}): {r.stderr[-2000:]}")
    hist = [json.loads(x) for x in (project.runs_dir / run / "history.jsonl").read_text().splitlines()]
    t0 = time.perf_counter()
    c = _torchrun(nproc, ["collect", run, "--table", "syn"], env, a.section_timeout)
    collect_s = time.perf_counter() - t0
    if c.returncode != 0:
        raise RuntimeError(f"torchrun collect failed ({c.returncode}): {c.stderr[-2000:]}")
    import lance

    rows = lance.dataset(str(project.runs_dir / run / "metrics" / "syn.lance")).count_rows()
    return {"processes": nproc, "backend": "nccl" if cuda else "gloo", "train_s": train_s,
            "images_per_s_last_epoch": hist[-1]["images_per_s"], "epochs": len(hist),
            "collect_s": collect_s, "collect_rows": rows, "collect_rows_per_s": rows / collect_s,
            "global_batch": cfg["batch"] * nproc}


def _cm_dir(a) -> Path | None:
    for cand in ([Path(a.cm)] if a.cm else []) + [ROOT.parent / "shared" / "datasets" / "chihuahua-muffin",
                                                  ROOT / "shared" / "datasets" / "chihuahua-muffin"]:
        if (cand / "train128").is_dir() and (cand / "test128").is_dir():
            return cand
    return None


def section_loop(a, cfg) -> dict:
    import yaml
    from hackathon import run_variant

    from dataloupe.project import Project

    data = _cm_dir(a)
    if data is None:
        return {"skipped": "chihuahua-muffin not found (pass --cm DIR, or copy ../shared/datasets/chihuahua-muffin "
                           "to shared/datasets/ inside the tree)"}
    policy = None
    iterations = None
    if cfg["loop_overrides"]:  # smoke: the default policy, one tiny iteration
        src = ROOT / "src" / "dataloupe" / "loop" / "policies" / "default.yaml"
        pol = yaml.safe_load(src.read_text())
        pol["overrides"] = dict(pol.get("overrides") or {}, **{k: v for k, v in cfg["loop_overrides"].items()
                                                              if k != "epochs"})
        pol["schedule"] = [{"epochs": cfg["loop_overrides"]["epochs"]}]
        pol["max_iterations"] = 1
        policy = str(Path(a.work) / "default-smoke.yaml")
        Path(policy).write_text(yaml.safe_dump(pol))
        iterations = 1
    project = Project.open(Path(a.work) / f"cm-project-{int(time.time())}")
    t0 = time.perf_counter()
    res = run_variant(project, data, "default", iterations, policy=policy)
    return {"data": str(data), "policy": "default" + (" (smoke: one tiny iteration)" if policy else ""),
            "seconds": time.perf_counter() - t0, "test_top1": res["test_top1"], "iterations": res["iterations"],
            "per_iteration": res["per_iteration"]}


# ----------------------------------------------------------------------------- driver


def _markdown(parts: dict, a) -> str:
    env = parts.get("env", {})
    lines = [f"# dataloupe GPU check ({'smoke, CPU' if a.smoke else 'full'})", "",
             f"- date: {env.get('date')}; commit {env.get('commit')}; torch {env.get('torch')} (CUDA "
             f"{env.get('cuda_version')}); GPUs: {', '.join(env.get('gpus') or []) or 'none'}; CPUs {env.get('cpus')}",
             f"- command: `bench/gpu.sh{' --smoke' if a.smoke else ''}`", "",
             "| section | measure | value |", "|---|---|---:|"]
    model = parts.get("model", {})
    base = None
    for r in model.get("rows", []):
        if "error" in r:
            lines.append(f"| model-only | compile {r['compile']} | error: {r['error'][:200]} |")
            continue
        base = base or r["images_per_s"]
        lines.append(f"| model-only {model['model']} {model['size']} px, batch {model['batch']}, amp "
                     f"{model['amp']}, channels_last {model['channels_last']} | compile {r['compile']} | "
                     f"{r['images_per_s']:,.0f} img/s |")
    data = parts.get("data", {})
    for r in data.get("rows", []):
        if "skipped" in r or "error" in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"error: {r['error'][:200]}"
            lines.append(f"| data path | {r['path']} | {why} |")
            continue
        share = f" ({100 * r['images_per_s'] / base:.0f}% of model-only)" if base else ""
        lines.append(f"| data path ({data['images']['images']:,} JPEGs, {data['images']['mean_kb']:.0f} KB) | "
                     f"{r['path']}, compile {r['compile']}, {r['workers']} workers | "
                     f"{r['images_per_s']:,.0f} img/s{share} |")
    ddp = parts.get("ddp", {})
    if "images_per_s_last_epoch" in ddp:
        lines.append(f"| DDP train ({ddp['processes']} × {ddp['backend']}, global batch {ddp['global_batch']}) | "
                     f"last epoch | {ddp['images_per_s_last_epoch']:,.0f} img/s |")
        lines.append(f"| collect, every rank ({ddp['processes']} processes) | {ddp['collect_rows']:,} rows | "
                     f"{ddp['collect_rows_per_s']:,.0f} rows/s |")
    loop = parts.get("loop", {})
    if "test_top1" in loop:
        lines.append(f"| chihuahua-muffin loop | {loop['policy']}, {loop['iterations']} iteration(s) | "
                     f"test128 top-1 {100 * loop['test_top1']:.2f}%, {loop['seconds']:.0f} s |")
    for name in SECTIONS:
        p = parts.get(name, {})
        if "error" in p or "skipped" in p:
            lines.append(f"| {name} | {'error' if 'error' in p else 'skipped'} | "
                         f"{(p.get('error') or p.get('skipped')).splitlines()[-1][:200]} |")
    lines.append("")
    lines.append(f"Total {parts.get('_total_s', 0):.0f} s.")
    return "\n".join(lines) + "\n"


def drive(a) -> int:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    import torch

    cfg = config(a.smoke, torch.cuda.is_available())
    start = time.perf_counter()
    parts: dict = {}
    failed = False
    for name in a.only or SECTIONS:
        left = a.budget - (time.perf_counter() - start)
        limit = min(cfg["timeouts"][name] * a.slack, left)
        if limit < 5:
            parts[name] = {"skipped": f"out of time budget ({a.budget} s)"}
            continue
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--section", name, "--out", str(out), "--work", a.work,
               "--section-timeout", str(limit)] + (["--smoke"] if a.smoke else []) + (["--cm", a.cm] if a.cm else [])
        (out / "parts").mkdir(parents=True, exist_ok=True)
        log_path = out / "parts" / f"{name}.log"
        part_path = out / "parts" / f"{name}.json"
        part_path.unlink(missing_ok=True)
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, env=_env(sys.executable), stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)  # its own group: a timeout ends its workers too
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = None
        if rc == 0 and part_path.is_file():
            parts[name] = json.loads(part_path.read_text())
        else:
            tail = log_path.read_text(errors="replace")[-3000:]
            why = f"timed out after {limit:.0f} s" if rc is None else f"exit {rc}"
            parts[name] = {"error": f"{why}: {tail}"}
        parts[name]["_seconds"] = time.perf_counter() - t0
        failed |= "error" in parts[name]
        print(f"[{name}] {parts[name]['_seconds']:.0f} s: "
              f"{'ERROR ' + parts[name]['error'][-300:] if 'error' in parts[name] else 'ok'}", flush=True)
    parts["_total_s"] = time.perf_counter() - start
    (out / "gpu-check.json").write_text(json.dumps(parts, indent=1))
    md = _markdown(parts, a)
    (out / "gpu-check.md").write_text(md)
    print(md)
    return 1 if failed else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run of every section (< 3 min)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "gpu-check-out"))
    ap.add_argument("--work", default=None, help="images, projects, runs (default: a temporary folder)")
    ap.add_argument("--cm", default=os.environ.get("DATALOUPE_CM_DIR"), help="chihuahua-muffin folder")
    ap.add_argument("--budget", type=float, default=None, help="seconds for everything (480 full, 170 smoke)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=None)
    ap.add_argument("--slack", type=float, default=1.0,
                    help="multiply every section's time limit (a slow or shared machine; pair with --budget)")
    ap.add_argument("--section", choices=SECTIONS, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--section-timeout", type=float, default=600, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.work = a.work or tempfile.mkdtemp(prefix="dataloupe-gpu-check-")
    a.budget = a.budget or (170 if a.smoke else 480)
    if a.section is None:
        sys.exit(drive(a))
    import torch

    cfg = config(a.smoke, torch.cuda.is_available())
    fn = globals()[f"section_{a.section}"]
    _write(Path(a.out), a.section, fn(a, cfg))


if __name__ == "__main__":
    main()
