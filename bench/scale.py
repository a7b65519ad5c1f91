"""ImageNet-size rows on this CPU: collect on every rank, then analyze 1.28M x 2048.

(1) collect: a synthetic table of 1,281,167 rows of tiny images (256 distinct 8 px PNGs,
    10 classes) and a tiny model (convnet-xxs, 8 px, one epoch on 1,000 rows); ``collect``
    under ``torchrun --nproc-per-node 2`` (gloo), every rank collecting its shard and
    writing its own fragments, the primary committing them. Peak RSS of each rank is
    recorded. Baseline, same run: the same collect on a table of 128,117 rows (a tenth):
    bounded memory means the same peak RSS.
(2) analyze: a synthetic run with 1,281,167 training + 50,000 validation rows, 10 classes,
    2048-d embeddings stored float16 (a Gaussian mixture, 10% labels flipped, 5% undefined,
    as bench/analysis_scale.py); ``load_inputs`` (streamed PCA to 256 dims for kNN) +
    ``analyze`` (each detector) + the writes ``analyze_run`` does, in its own process; wall
    and CPU seconds and peak RSS per stage, and recall@k of the kNN graph against exact
    search on 1,000 random rows.

    PYTHONPATH=src python bench/scale.py [--rows 1281167] [--skip-collect] [--skip-analyze] [--work DIR]
        [--collect-rows N [N ...]]   # collect at these table sizes instead of rows/10 and rows
        [--exact-limit N] [--reduce-above N]   # force the large-N analyze paths on fewer rows
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dataloupe.project import Project  # noqa: E402

CLASSES = [f"c{k}" for k in range(10)]


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def tiny_images(root: Path, n: int = 256) -> list[tuple[str, str]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        c = CLASSES[i % len(CLASSES)]
        (root / c).mkdir(parents=True, exist_ok=True)
        rel = f"{c}/{i:04d}.png"
        if not (root / rel).is_file():
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / rel)
        out.append((rel, c))
    return out


def make_table(project: Project, name: str, rows: int, files: list[tuple[str, str]], root: Path) -> None:
    from dataloupe.tables import create_table, list_tables

    if name in {t["name"] for t in list_tables(project)}:
        return
    idx = np.arange(rows) % len(files)
    paths = np.array([f for f, _ in files], dtype=object)[idx]
    labels = np.array([c for _, c in files], dtype=object)[idx]
    create_table(project, name, pa.table({"path": pa.array(paths, pa.string()), "label": pa.array(labels, pa.string())}),
                 classes=CLASSES, image_root=root)


def collect_worker(a) -> None:
    """One torchrun process: collect ``a.table`` for ``a.run``; write this rank's peak RSS."""
    from dataloupe.train._collect import collect
    from dataloupe.train._distributed import init_distributed, shutdown_distributed

    ctx = init_distributed("cpu")
    t0 = time.perf_counter()
    collect(Project.open(a.work / "project"), a.collect_run, a.table, ctx=ctx, batch_size=1024)
    sec = time.perf_counter() - t0
    (a.work / f"rss-{a.table}-rank{ctx.rank}.json").write_text(json.dumps({"rank": ctx.rank, "seconds": sec,
                                                                            "cpu_s": _cpu_s(),
                                                                            "peak_rss_gib": _rss_gib()}))
    shutdown_distributed(ctx)


def run_collect(a, project: Project) -> list[dict]:
    from dataloupe.train import train

    img = a.work / "img"
    files = tiny_images(img)
    make_table(project, "small", 1000, files, img)
    rows = []
    if not (project.runs_dir / "tiny" / "checkpoints" / "best.pt").is_file():
        train(project, "small", "small", "fashion-mnist", run="tiny", tty=False,
              overrides=["model=convnet-xxs", "image_size=8", "small_input=true", "epochs=1", "batch_size=100",
                         "collect=false", "rrc_scale=null", "hflip=0", "num_workers=0"])
    sizes = (("tenth", a.rows // 10), ("big", a.rows)) if not a.collect_rows else \
        tuple((f"rows{n}", n) for n in a.collect_rows)
    for name, n in sizes:
        t0 = time.perf_counter()
        make_table(project, name, n, files, img)
        made = time.perf_counter() - t0
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            __file__, "--collect-worker", "--work", str(a.work), "--collect-run", "tiny", "--table", name],
                           env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            sys.exit(f"collect failed:\n{r.stderr[-3000:]}")
        ranks = [json.loads((a.work / f"rss-{name}-rank{k}.json").read_text()) for k in range(2)]
        import lance

        count = lance.dataset(str(project.runs_dir / "tiny" / "metrics" / f"{name}.lance")).count_rows()
        assert count == n, (count, n)
        rows.append({"table": name, "rows": n, "table_s": made, "collect_wall_s": wall, "ranks": ranks})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _synthetic_metrics(path: Path, n: int, dim: int, seed: int, centres: np.ndarray, trained: bool,
                       chunk: int = 32_768) -> None:
    import lance

    k = len(CLASSES)

    def batches():
        rng = np.random.default_rng(seed)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            y = rng.integers(0, k, m)
            emb = (centres[y] + 1.2 * rng.standard_normal((m, dim), dtype=np.float32))
            logits = (emb @ centres.T) / np.sqrt(dim)
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            labels = y.copy()
            flip = rng.random(m) < 0.1
            labels[flip] = (labels[flip] + rng.integers(1, k, flip.sum())) % k
            undefined = rng.random(m) < 0.05
            names = np.array(CLASSES, dtype=object)[labels]
            names[undefined] = None
            aum = logits[np.arange(m), labels] - np.where(np.eye(k, dtype=bool)[labels], -np.inf, logits).max(1)
            cols = {
                "id": pa.array(np.arange(start, start + m, dtype=np.int64)),
                "table_revision": pa.array(np.ones(m, np.int64)),
                "split": pa.array(["train"] * m),
                "label": pa.array(names.tolist(), pa.string()),
                "predicted": pa.array(np.array(CLASSES, dtype=object)[probs.argmax(1)].tolist(), pa.string()),
                "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.astype(np.float32).ravel()), k),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float16).ravel()), dim),
                "aum": pa.array(aum.astype(np.float32) if trained else np.full(m, np.nan, np.float32)),
            }
            yield pa.record_batch(list(cols.values()), names=list(cols))

    first = next(batches())
    reader = pa.RecordBatchReader.from_batches(first.schema, batches())
    lance.write_dataset(reader, str(path), mode="overwrite", max_rows_per_file=1 << 20)


def _recall(emb: np.ndarray, idx: np.ndarray, k: int, queries: int = 1000) -> float:
    """recall@k of the kNN graph ``idx`` against exact search, on ``queries`` random rows."""
    import faiss

    from dataloupe.analysis import l2_normalize

    rows = np.sort(np.random.default_rng(7).choice(len(emb), size=min(queries, len(emb)), replace=False))
    base = faiss.IndexFlatIP(emb.shape[1])
    for start in range(0, len(emb), 1 << 16):  # normalised in chunks: no second full copy
        base.add(l2_normalize(emb[start:start + (1 << 16)]))
    _, exact = base.search(l2_normalize(emb[rows]), k + 1)
    hits = [len(set(e[e != r][:k]) & set(g[:k])) for r, e, g in zip(rows, exact, idx[rows])]
    return float(np.sum(hits) / (k * len(rows)))


def analyze_worker(a) -> None:
    """``analyze_run``'s work in stages (load, kNN graphs, each detector, writing): wall and
    CPU seconds, peak RSS and the 1-minute load average after each."""
    from dataloupe.analysis import _knn, analyze, list_detectors
    from dataloupe.analysis._runio import load_inputs, write_columns, write_json
    from dataloupe.runs import run_tables

    if a.exact_limit is not None:
        _knn.EXACT_LIMIT = a.exact_limit
    if a.reduce_above is not None:
        _knn.REDUCE_ABOVE = a.reduce_above
    project = Project.open(a.work / "project")
    stages = []

    def stage(name, fn):
        w, c = time.perf_counter(), _cpu_s()
        out = fn()
        stages.append({"stage": name, "wall_s": time.perf_counter() - w, "cpu_s": _cpu_s() - c,
                       "peak_rss_gib": _rss_gib(), "load1": os.getloadavg()[0]})
        print(json.dumps(stages[-1]), flush=True)
        return out

    inputs, info = stage("load (read, PCA)", lambda: load_inputs(project, "synthetic-2048", hashes=False))
    for role in ("train", "val"):
        stage(f"kNN graph {role}", lambda: getattr(inputs, role).neighbours(inputs.k))
    findings, columns = {}, {}
    for name in list_detectors():
        f, c = stage(f"detector {name}", lambda: analyze(inputs, detectors=[name]))
        findings.update(f)
        for role, cols in c.items():
            columns.setdefault(role, {}).update(cols)
    tables = run_tables(info)

    def write():
        write_json(project.runs_dir / "synthetic-2048" / "analysis.json", dict(**findings, run="synthetic-2048"))
        for role, cols in columns.items():
            write_columns(project, "synthetic-2048", tables[role], getattr(inputs, role).ids, cols)

    stage("write (analysis.json, cluster column)", write)
    total_wall, total_cpu = sum(s["wall_s"] for s in stages), sum(s["cpu_s"] for s in stages)
    t0 = time.perf_counter()
    recall = _recall(inputs.train.embeddings, inputs.train.neighbours(inputs.k)[1], inputs.k)
    out = {"stages": stages, "total_s": total_wall, "total_cpu_s": total_cpu, "peak_rss_gib": _rss_gib(),
           "recall_at_k": recall, "recall_check_s": time.perf_counter() - t0, "k": inputs.k,
           "knn_dims": int(inputs.train.embeddings.shape[1]),
           "label_issues": len(findings.get("label_issues", [])), "outliers": len(findings.get("outliers", []))}
    (a.work / "analyze.json").write_text(json.dumps(out))


def run_analyze(a, project: Project) -> dict:
    from dataloupe._fileio import write_json_atomic

    img = a.work / "img"
    files = tiny_images(img)
    make_table(project, "big", a.rows, files, img)
    make_table(project, "bigval", 50_000, files, img)
    folder = project.runs_dir / "synthetic-2048"
    (folder / "metrics").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    centres = np.random.default_rng(1).standard_normal((len(CLASSES), a.dim)).astype(np.float32)
    if not (folder / "metrics" / "big.lance").exists():
        _synthetic_metrics(folder / "metrics" / "big.lance", a.rows, a.dim, 2, centres, True)
        _synthetic_metrics(folder / "metrics" / "bigval.lance", 50_000, a.dim, 3, centres, False)
    gen_s = time.perf_counter() - t0
    write_json_atomic(folder / "run.json", {
        "run": "synthetic-2048", "status": "completed", "recipe": "synthetic", "train_table": "big",
        "train_revision": 1, "val_table": "bigval", "val_revision": 1, "classes": CLASSES, "seed": 0})
    extra = [f"--{o}={v}" for o, v in (("exact-limit", a.exact_limit), ("reduce-above", a.reduce_above))
             if v is not None]
    r = subprocess.run([sys.executable, __file__, "--analyze-worker", "--work", str(a.work), *extra],
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), capture_output=True, text=True)
    print(r.stdout, end="", flush=True)
    if r.returncode:
        sys.exit(f"analyze failed:\n{r.stderr[-3000:]}")
    out = json.loads((a.work / "analyze.json").read_text())
    out.update(generate_s=gen_s, rows=a.rows, val_rows=50_000, dim=a.dim,
               metrics_gib=sum(f.stat().st_size for f in (folder / "metrics").rglob("*") if f.is_file()) / 2**30)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_281_167)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "dataloupe-scale")
    ap.add_argument("--skip-collect", action="store_true")
    ap.add_argument("--skip-analyze", action="store_true")
    ap.add_argument("--collect-rows", type=int, nargs="+", default=None,
                    help="table sizes to collect (default: rows/10 and rows); when 1.28M is too slow for the machine,"
                         " two smaller sizes show whether peak RSS grows with rows")
    ap.add_argument("--exact-limit", type=int, default=None,
                    help="rows above which kNN is approximate (default: analysis._knn.EXACT_LIMIT); lower it to"
                         " profile the large-N path on fewer rows")
    ap.add_argument("--reduce-above", type=int, default=None,
                    help="N x D above which embeddings are PCA-reduced for kNN (default: analysis._knn.REDUCE_ABOVE)")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--collect-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--analyze-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--collect-run", default="tiny", help=argparse.SUPPRESS)  # not --run: torchrun takes it
    ap.add_argument("--table", default="big", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.collect_worker:
        return collect_worker(a)
    if a.analyze_worker:
        return analyze_worker(a)
    a.work.mkdir(parents=True, exist_ok=True)
    project = Project.open(a.work / "project")
    res = {"machine": f"{os.cpu_count()}-core {os.uname().machine}", "date": time.strftime("%Y-%m-%d")}
    if not a.skip_collect:
        res["collect"] = run_collect(a, project)
    if not a.skip_analyze:
        res["analyze"] = run_analyze(a, project)
    print(f"\n{'step':<52} {'rows':>10} {'seconds':>8} {'peak RSS per process (GiB)':>28}")
    for c in res.get("collect", []):
        rss = " / ".join(f"{r['peak_rss_gib']:.2f}" for r in c["ranks"])
        print(f"{'collect, 2 processes (gloo), rank 0 / rank 1':<52} {c['rows']:>10,} {c['collect_wall_s']:>8.1f}"
              f" {rss:>28}")
    if "analyze" in res:
        z = res["analyze"]
        for st in z["stages"]:
            print(f"{'  analyze: ' + st['stage']:<52} {z['rows']:>10,} {st['wall_s']:>8.1f} {st['peak_rss_gib']:>28.2f}"
                  f"   CPU {st['cpu_s']:.0f} s, load {st['load1']:.1f}")
        print(f"{'analyze 1 process (load + PCA-' + str(z['knn_dims']) + ' + all detectors + write)':<52} {z['rows']:>10,}"
              f" {z['total_s']:>8.1f} {z['peak_rss_gib']:>28.2f}   CPU {z['total_cpu_s']:.0f} s,"
              f" recall@{z['k']} {z['recall_at_k']:.3f}")
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
