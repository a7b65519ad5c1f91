"""Load test of the inference server on loopback: batched vs one image per forward pass.

Starts ``dataloupe serve`` twice on a free 127.0.0.1 port -- once with dynamic batching
(``--max-batch B``), once with ``--max-batch 1`` (the baseline: one image per request per
forward pass) -- and drives each with N concurrent clients posting the same real image
for ``--duration`` seconds (or ``--max-requests``, whichever comes first). Prints
requests/s, p50/p99 latency, errors and the mean batch size the server formed.

    PYTHONPATH=src python bench/serve_load.py --clients 16 --duration 30

Without ``--model`` it benchmarks a freshly initialised resnet18 at 128 px (the same
architecture and compute as a chihuahua-muffin run; weights do not change the speed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CM_IMAGE_DIR = ROOT.parent / "shared" / "datasets" / "chihuahua-muffin" / "test128" / "muffin"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_project(folder: Path, image_size: int, amp: str = "none") -> tuple[Path, str]:
    """A project with run ``bench``: an untrained resnet18 checkpoint per the run contract, as if
    trained with the recipe key ``amp`` (serving computes as the run evaluated)."""
    import torch

    sys.path.insert(0, str(ROOT / "src"))
    from dataloupe.models import create_model

    run_dir = folder / "runs" / "bench" / "checkpoints"
    run_dir.mkdir(parents=True)
    model = create_model("resnet18", 2, small_input=False)
    torch.save({"model": model.state_dict(), "model_name": "resnet18", "num_classes": 2,
                "classes": ["chihuahua", "muffin"], "image_size": image_size, "small_input": False,
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "epoch": 0, "val_top1": 0.0, "amp": amp},
               run_dir / "best.pt")
    (folder / "runs" / "bench" / "run.json").write_text(json.dumps({"run": "bench", "status": "completed"}))
    return folder, "bench"


def _pick_image(path: str | None) -> Path:
    if path:
        return Path(path)
    if CM_IMAGE_DIR.is_dir():
        return sorted(CM_IMAGE_DIR.glob("*.jpg"))[0]
    from PIL import Image
    from sklearn.datasets import load_digits

    out = Path(tempfile.mkdtemp()) / "digit.png"
    Image.fromarray((load_digits().images[0] * 15).astype(np.uint8)).resize((128, 128)).save(out)
    return out


class Server:
    """``dataloupe serve`` in a subprocess on a loopback port (output to a log file)."""

    def __init__(self, model: str, project: Path | None, max_batch: int, max_wait_ms: float, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        if project is not None:
            env["DATALOUPE_PROJECT"] = str(project)
        cmd = [sys.executable, "-m", "dataloupe", "serve", model, "--host", "127.0.0.1", "--port", str(self.port),
               "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--log-level", "warning"]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise SystemExit("server did not start in time")

    def stats(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()["batching"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def _load(url: str, image: bytes, clients: int, duration: float, max_requests: int) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    budget = [max_requests]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            while time.perf_counter() < deadline and budget[0] > 0:
                budget[0] -= 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/predict", files={"file": ("img.jpg", image, "image/jpeg")})
                    ok = r.status_code == 200 and len(r.json()["predictions"]) > 0
                    key = None if ok else f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    key = type(e).__name__
                if key is None:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[key] = errors.get(key, 0) + 1

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - t_start
    lat = np.array(latencies) * 1000.0
    return {
        "requests": len(latencies), "errors": sum(errors.values()), "error_kinds": errors,
        "seconds": round(elapsed, 2), "req_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
    }


def run_mode(name, model, project, image, args, max_batch, log_dir) -> dict:
    server = Server(model, project, max_batch, args.max_wait_ms, log_dir / f"{name}.log")
    try:
        server.wait_ready()
        asyncio.run(_load(server.url, image, min(args.clients, 4), 2.0, 50))  # warm-up, not counted
        before = server.stats()
        result = asyncio.run(_load(server.url, image, args.clients, args.duration, args.max_requests))
        after = server.stats()
    finally:
        server.stop()
    batches = after["batches"] - before["batches"]
    result.update(mode=name, max_batch=max_batch, clients=args.clients,
                  mean_batch=round((after["requests"] - before["requests"]) / batches, 2) if batches else 0.0)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="run id or exported file (default: an untrained resnet18 at --image-size)")
    ap.add_argument("--project", type=Path, help="project folder for a run id")
    ap.add_argument("--image", help="image to post (default: a chihuahua-muffin test JPEG, else a digit PNG)")
    ap.add_argument("--image-size", type=int, default=128, help="input size of the default model, px")
    ap.add_argument("--amp", default="none", choices=("none", "native", "bf16"),
                    help="the default model's recipe key amp (native: bf16 on a CPU with AMX or AVX512-BF16)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per mode")
    ap.add_argument("--max-requests", type=int, default=100_000, help="stop a mode after this many requests")
    ap.add_argument("--max-batch", type=int, default=16, help="batch size limit of the batched mode")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="batch collection window, ms")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()

    image_path = _pick_image(args.image)
    image = image_path.read_bytes()
    with tempfile.TemporaryDirectory(prefix="dataloupe-serve-bench-") as tmp:
        tmp = Path(tmp)
        project, model = ((args.project, args.model) if args.model
                          else _make_project(tmp / "project", args.image_size, args.amp))
        rows = [run_mode("batched", model, project, image, args, args.max_batch, tmp),
                run_mode("baseline (no batching)", model, project, image, args, 1, tmp)]

    print(f"# serve_load: {platform.node()} {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"load avg {os.getloadavg()[0]:.1f}; model {model} ({args.image_size} px, amp {args.amp}), image {image_path.name}, "
          f"{args.clients} clients x {args.duration:.0f} s, max_wait {args.max_wait_ms} ms")
    head = f"{'mode':<24} {'max_batch':>9} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'mean batch':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['mode']:<24} {r['max_batch']:>9} {r['requests']:>9} {r['req_per_s']:>8.1f} "
              f"{r['p50_ms'] or 0:>8.1f} {r['p99_ms'] or 0:>8.1f} {r['errors']:>7} {r['mean_batch']:>10.2f}")
    base = rows[1]["req_per_s"]
    if base:
        print(f"batching speed-up: {rows[0]['req_per_s'] / base:.2f}x requests/s")
    if args.json:
        print(json.dumps(rows, indent=2))
    if any(r["errors"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
