"""Label-noise detection on Fashion-MNIST: cleanlab's find_label_issues vs our ranking.

For each noise level (10%, 30% of labels flipped to another class, seeded) one small CNN
is trained on the noisy labels of a 10,000-image subset, recording each sample's logit
margin per epoch (for AUM) at no extra forward pass. Its penultimate-layer embeddings are
cross-fitted (5-fold logistic regression) into out-of-sample probabilities. The same
probabilities go to cleanlab's ``find_label_issues`` (the baseline) and to
``dataloupe.analysis.find_label_issues`` (ours: + AUM + embedding-neighbour votes).
Precision, recall, F1 are scored against the known flips.

    PYTHONPATH=src python bench/label_noise.py [--n 10000] [--epochs 12] [--noise 0.1 0.3]
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def flip_labels(labels: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Flip exactly ``rate`` of the labels to a different class, uniformly at random."""
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    flip = rng.choice(len(labels), size=int(round(rate * len(labels))), replace=False)
    noisy[flip] = (labels[flip] + rng.integers(1, num_classes, size=len(flip))) % num_classes
    return noisy


def train_model(images: np.ndarray, labels: np.ndarray, *, epochs: int, seed: int):
    """Small CNN on noisy labels -> (embeddings (N, 128), margins (N, epochs), seconds)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x = torch.from_numpy(images).float().div(255).sub(0.286).div(0.353).unsqueeze(1)
    y = torch.from_numpy(labels).long()
    body = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
    )
    head = nn.Linear(128, 10)
    params = list(body.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    margins = np.zeros((len(x), epochs), dtype=np.float32)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        body.train(), head.train()
        for idx in torch.randperm(len(x), generator=gen).split(128):
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            logits = head(body(xb))
            loss = nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():  # AUM margin from the same forward pass
                given = logits.gather(1, y[idx, None]).squeeze(1)
                other = logits.scatter(1, y[idx, None], float("-inf")).max(1).values
                margins[idx.numpy(), epoch] = (given - other).numpy()
    body.eval()
    with torch.no_grad():
        emb = torch.cat([body(xb) for xb in x.split(1024)]).numpy()
    return emb, margins, time.perf_counter() - t0


def prf(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    tp = int((flagged & truth).sum())
    p = tp / max(int(flagged.sum()), 1)
    r = tp / max(int(truth.sum()), 1)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def prepare(n: int, rate: float, epochs: int, seed: int, cache: Path | None) -> dict:
    key = cache / f"fmnist_n{n}_r{rate}_e{epochs}_s{seed}.npz" if cache else None
    if key is not None and key.exists():
        return dict(np.load(key))
    images = read_idx(FMNIST / "train-images-idx3-ubyte.gz")
    clean = read_idx(FMNIST / "train-labels-idx1-ubyte.gz").astype(np.int64)
    sub = np.random.default_rng(seed).choice(len(images), size=n, replace=False)
    images, clean = images[sub], clean[sub]
    noisy = flip_labels(clean, rate, 10, seed + 1)
    emb, margins, seconds = train_model(images, noisy, epochs=epochs, seed=seed)
    out = dict(clean=clean, noisy=noisy, emb=emb, margins=margins, train_s=np.float64(seconds))
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        np.savez(key, **out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.1, 0.3])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=None, help="reuse trained outputs (dev)")
    args = ap.parse_args()

    from cleanlab.filter import find_label_issues as cl_find

    from dataloupe.analysis import crossfit_probs, find_label_issues

    rows = []
    for rate in args.noise:
        d = prepare(args.n, rate, args.epochs, args.seed, args.cache)
        truth = d["noisy"] != d["clean"]
        t0 = time.perf_counter()
        probs = crossfit_probs(d["emb"], d["noisy"], num_classes=10, folds=args.folds, seed=args.seed)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        base = cl_find(d["noisy"], probs, n_jobs=1)  # same single process as ours
        cl_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = find_label_issues(d["noisy"], probs, embeddings=d["emb"], aum=d["margins"].mean(1))
        our_s = time.perf_counter() - t0
        acc = float((probs.argmax(1) == d["clean"]).mean())
        for name, flagged, s in (("cleanlab find_label_issues", base, cl_s), ("dataloupe combined", ours.mask, our_s)):
            rows.append((rate, name, *prf(flagged, truth), int(flagged.sum()), int(truth.sum()), s))
        print(f"noise {rate:.0%}: train {float(d['train_s']):.1f}s, crossfit {fit_s:.1f}s, "
              f"out-of-sample acc vs clean labels {acc:.3f}", flush=True)
    print(f"\n{'noise':>5}  {'method':<28}{'prec':>6}{'recall':>7}{'F1':>7}{'flagged':>8}{'true':>6}{'sec':>7}")
    for rate, name, p, r, f, nf, nt, s in rows:
        print(f"{rate:>5.0%}  {name:<28}{p:>6.3f}{r:>7.3f}{f:>7.3f}{nf:>8d}{nt:>6d}{s:>7.2f}")
    for i in range(0, len(rows), 2):
        print(f"noise {rows[i][0]:.0%}: F1 gain {rows[i + 1][4] - rows[i][4]:+.3f} (target >= +0.050)")


if __name__ == "__main__":
    main()
