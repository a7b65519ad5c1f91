"""Batches for training and evaluation: from the decoded cache, the training store or the files.

Both paths yield ``(images (B, 3, S, S) uint8, labels (B,) int64, positions (B,) int64)``
where ``positions`` index the :class:`SampleSet` the loader was built on (or the
concatenation of several, one per table, each read from its own cache). A multi-view
transform makes ``images`` a list of view batches (self-supervised pretraining). Float
conversion, normalisation and MixUp/CutMix happen on the batch in the engine (on the
GPU when there is one). With the store decoding on the GPU, ``images`` is an
:class:`~dataloupe.data._store.EncodedBatch` that the engine decodes on the device.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dataloupe.data._augment import augment_batch
from dataloupe.data._cache import DecodedCache, build_cache, cache_bytes
from dataloupe._imagepath import OutsideRootError
from dataloupe.data._decode import ImageDecodeError, decode_image
from dataloupe.data._samples import SampleSet
from dataloupe.data._store import EncodedBatch, ImageStore, build_store, locality_order


class WeightedEpochSampler(Sampler[int]):
    """Draw one epoch of sample positions, honouring weights, split across processes.

    Every process draws the same global order (seeded by ``seed + epoch``) and takes
    positions ``rank::num_replicas``, so the global batch at each step is the same for
    any number of processes. Uniform weights give a permutation (each sample once);
    otherwise ``num_samples`` draws with replacement, probability proportional to the
    weight (``WeightedRandomSampler`` semantics). Zero weights are never drawn.

    Args:
        weights: ``(N,)`` non-negative sampling weights.
        num_replicas: number of processes.
        rank: this process.
        seed: base seed.
        num_samples: draws per epoch over all processes (default ``N``).
        blocks: ``(N,)`` storage block of each position (training store fragment): when given,
            the global order visits blocks in random order, shuffled within ``buffer``
            positions (sequential reads; see :func:`locality_order`).
        buffer: positions per in-buffer shuffle.
    """

    def __init__(self, weights: np.ndarray, *, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 num_samples: int | None = None, blocks: np.ndarray | None = None, buffer: int = 8192):
        w = np.asarray(weights, dtype=np.float64)
        if len(w) == 0 or not (w > 0).any():
            raise ValueError("no sample has a positive weight")
        self.weights = torch.as_tensor(w)
        self.uniform = bool(np.all(w == w[0]))
        self.num_samples = int(num_samples or len(w))
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.blocks, self.buffer = blocks, buffer

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> torch.Tensor:
        """``(ceil(num_samples / W) * W,)`` positions for all processes, this epoch."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.uniform and self.num_samples == len(self.weights):
            order = torch.randperm(len(self.weights), generator=g)
        else:
            order = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=g)
        if self.blocks is not None:
            order = locality_order(order, self.blocks, self.buffer, g)
        total = math.ceil(len(order) / self.num_replicas) * self.num_replicas
        if total > len(order):
            order = torch.cat([order, order[: total - len(order)]])
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)


class _CachedImages(Dataset):
    def __init__(self, cache: DecodedCache, samples: SampleSet, transform):
        self.images, self.rows = cache.images, cache.rows_of(samples.ids)
        self.labels, self.transform = torch.as_tensor(samples.labels), transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, positions: list[int]):
        pos = np.asarray(positions, dtype=np.int64)
        rows = self.rows[pos]
        order = np.argsort(rows, kind="stable")  # read the memmap in file order
        arr = np.empty((len(pos),) + self.images.shape[1:], dtype=np.uint8)
        arr[order] = self.images[rows[order]]
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
        x = augment_batch(x, self.transform)
        return x, self.labels[pos], torch.as_tensor(pos)


class _StreamedImages(Dataset):
    def __init__(self, samples: SampleSet, size: int, transform):
        self.samples, self.paths, self.size = samples, samples.paths, size
        self.labels, self.transform = torch.as_tensor(samples.labels), transform

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, i: int) -> np.ndarray:
        try:
            return decode_image(self.samples.file(i), self.size)
        except (ImageDecodeError, OSError, OutsideRootError) as e:
            print(f"warning: skipped pixels of {self.paths[i]} (black image used): {e}", file=sys.stderr)
            return np.zeros((self.size, self.size, 3), dtype=np.uint8)

    def __getitems__(self, positions: list[int]):
        pos = np.asarray(positions, dtype=np.int64)
        arr = np.stack([self._decode(int(i)) for i in pos])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
        x = augment_batch(x, self.transform)
        return x, self.labels[pos], torch.as_tensor(pos)


class _StoredImages(Dataset):
    """Rows of the training store: read in store order, decoded in the worker (cpu) or on the device (gpu)."""

    def __init__(self, store: ImageStore, samples: SampleSet, size: int, transform, decode: str):
        self.path, self.rows, self.size = str(store.path), store.rows_of(samples.ids), size
        self.labels, self.transform, self.decode = torch.as_tensor(samples.labels), transform, decode
        self._ds = None  # opened lazily in each worker process

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self):
        return dict(self.__dict__, _ds=None)

    def read(self, positions: np.ndarray) -> list[bytes]:
        """Encoded bytes of ``positions``, read in store order (one ``take`` per batch)."""
        import lance

        if self._ds is None:
            self._ds = lance.dataset(self.path)
        rows = self.rows[positions]
        order = np.argsort(rows, kind="stable")
        got = self._ds.take(rows[order].tolist(), columns=["jpeg"]).column("jpeg").to_pylist()
        out: list[bytes] = [b""] * len(rows)
        for j, b in zip(order.tolist(), got):
            out[j] = b
        return out

    def __getitems__(self, positions: list[int]):
        pos = np.asarray(positions, dtype=np.int64)
        data = self.read(pos)
        if self.decode == "gpu":
            enc = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
            return EncodedBatch(enc, self.size), self.labels[pos], torch.as_tensor(pos)
        arr = np.stack([decode_image(b, self.size) for b in data])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
        x = augment_batch(x, self.transform)
        return x, self.labels[pos], torch.as_tensor(pos)


class _ConcatImages(Dataset):
    """Several image datasets (one per table) as one: positions index their concatenation."""

    def __init__(self, parts: list[Dataset]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitems__(self, positions: list[int]):
        pos = np.asarray(positions, dtype=np.int64)
        which = np.searchsorted(self.offsets, pos, side="right") - 1
        picked, xs, ys = [], [], []
        for j, part in enumerate(self.parts):
            sel = np.flatnonzero(which == j)
            if len(sel):
                x, y, _ = part.__getitems__((pos[sel] - self.offsets[j]).tolist())
                picked.append(sel)
                xs.append(x)
                ys.append(y)
        back = torch.as_tensor(np.argsort(np.concatenate(picked), kind="stable"))  # restore the sampler's order
        if isinstance(xs[0], list):  # multi-view: a list of view batches per part
            x = [torch.cat([v[i] for v in xs])[back] for i in range(len(xs[0]))]
        else:
            x = torch.cat(xs)[back]
        return x, torch.cat(ys)[back], torch.as_tensor(pos)


def _identity(batch):
    return batch


@dataclass(frozen=True)
class LoaderPlan:
    """How batches are made.

    Attributes:
        mode: ``cache`` (decoded uint8 memmap), ``store`` (encoded training store) or ``stream`` (loose files).
        num_workers: DataLoader workers per process.
        decode: ``cpu`` (in the workers) or ``gpu`` (store only: ``decode_jpeg`` on the device).
    """

    mode: str
    num_workers: int
    decode: str = "cpu"


def plan_loader(num_images: int, image_size: int, *, loader: str = "auto", cache_max_gb: float = 8.0,
                num_workers: int | None = None, cuda: bool = False, world_size: int = 1,
                decode: str = "auto", per_image_transform: bool = True, large: str = "stream") -> LoaderPlan:
    """Choose the path: ``auto`` caches decoded pixels when they fit ``cache_max_gb``, else ``large``.

    ``large`` is ``store`` for training (the store is built once and read every epoch) and
    ``stream`` for a single pass (evaluation, collection), which would not repay building it.

    ``decode`` (store only): ``auto`` decodes on the GPU when training on CUDA and no
    per-image transform has to run in the loader (``per_image_transform``), else in the workers.

    Example:
        >>> plan_loader(1_281_167, 224, large="store").mode
        'store'
    """
    mode = loader
    if mode == "auto":
        mode = "cache" if cache_bytes(num_images, image_size) <= cache_max_gb * 2**30 else large
    if decode == "auto":
        decode = "gpu" if (mode == "store" and cuda and not per_image_transform) else "cpu"
    if decode == "gpu" and not (mode == "store" and cuda):
        raise ValueError("decode=gpu needs loader=store on a CUDA device")
    if num_workers is None:
        cpus = max(1, (os.cpu_count() or 1) // world_size)
        if mode == "cache" or decode == "gpu":
            num_workers = min(8, cpus) if cuda else 0
        else:
            num_workers = min(8, cpus) if cuda else max(1, min(4, cpus - 1))
    return LoaderPlan(mode, num_workers, decode)


def open_cache(samples: SampleSet, size: int, cache_dir: Path, *, primary: bool = True,
               barrier: Callable[[], None] | None = None, progress=None) -> DecodedCache:
    """Build (on the primary process) and open the decoded cache, all processes in step."""
    if primary:
        cache = build_cache(samples, size, cache_dir, progress=progress)
    if barrier is not None:
        barrier()
    if not primary:
        cache = build_cache(samples, size, cache_dir)
    return cache


def open_store(samples: SampleSet, cache_dir: Path, *, short_side: int, quality: int = 90, primary: bool = True,
               barrier: Callable[[], None] | None = None, progress=None) -> ImageStore:
    """Build (on the primary process) and open the training store, all processes in step."""
    if primary:
        store = build_store(samples, cache_dir, short_side=short_side, quality=quality, progress=progress)
    if barrier is not None:
        barrier()
    if not primary:
        store = build_store(samples, cache_dir, short_side=short_side, quality=quality)
    return store


def _images(samples: SampleSet, plan: LoaderPlan, image_size: int, cache, transform) -> Dataset:
    if plan.mode == "store":
        if not isinstance(cache, ImageStore):
            raise ValueError("the store path needs an ImageStore")
        if plan.decode == "gpu" and transform is not None:
            raise ValueError("decode=gpu cannot run a per-image transform in the loader")
        return _StoredImages(cache, samples, image_size, transform, plan.decode)
    if plan.mode == "cache":
        if cache is None:
            raise ValueError("the cached path needs a DecodedCache")
        return _CachedImages(cache, samples, transform)
    return _StreamedImages(samples, image_size, transform)


def make_loader(samples: SampleSet | Sequence[SampleSet], plan: LoaderPlan, *, image_size: int, batch_size: int,
                cache: DecodedCache | ImageStore | Sequence[DecodedCache | ImageStore | None] | None = None,
                transform=None,
                sampler: Sampler | None = None, drop_last: bool = False, seed: int = 0,
                pin_memory: bool = False, persistent: bool = True) -> DataLoader:
    """A DataLoader over ``samples`` (positions from ``sampler``; sequential when None).

    ``persistent`` keeps the workers between passes (training loaders, read every epoch);
    whoever makes such a loader stops them with :func:`close_loaders` when done. A loader
    read once (collection, prediction) passes ``persistent=False``: its workers end with
    the pass.

    ``samples`` may be a list of sample sets (several tables) with a matching list of
    caches: positions then index their concatenation, and each set is read from its own
    decoded cache. With ``plan.mode == "store"``, ``cache`` is the :class:`ImageStore`.

    Example:
        >>> plan = plan_loader(len(s), 64)  # doctest: +SKIP
        >>> loader = make_loader(s, plan, image_size=64, batch_size=32, cache=build_cache(s, 64, d))  # doctest: +SKIP
    """
    if isinstance(samples, SampleSet):
        dataset = _images(samples, plan, image_size, cache, transform)
    else:
        caches = list(cache) if cache is not None else [None] * len(samples)
        if len(caches) != len(samples):
            raise ValueError("one cache per sample set is needed")
        if plan.decode == "gpu":
            raise ValueError("decode=gpu reads one sample set only")
        dataset = _ConcatImages([_images(s, plan, image_size, c, transform) for s, c in zip(samples, caches)])
    g = torch.Generator().manual_seed(seed)
    # Lance's runtime does not survive fork(): store workers start fresh processes
    spawn = plan.mode == "store" and plan.num_workers > 0
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=drop_last,
        num_workers=plan.num_workers, collate_fn=_identity, pin_memory=pin_memory, generator=g,
        persistent_workers=persistent and plan.num_workers > 0, prefetch_factor=4 if plan.num_workers > 0 else None,
        multiprocessing_context="spawn" if spawn else None,
    )


def close_loaders(*loaders) -> None:
    """Stop the persistent workers of ``loaders`` now (None entries and stopped loaders are skipped).

    Left alive, they are stopped at interpreter exit by PyTorch's exit hook, which joins each
    worker with a 5-second timeout because nobody told it to stop; with pinned memory on a
    GPU this held a finished ``dataloupe train`` for over 80 seconds (pytorch/pytorch#81794).
    DataLoader has no public close, so this calls its live iterator's own shutdown, the
    path its ``__del__`` takes.
    """
    for loader in loaders:
        it = getattr(loader, "_iterator", None)
        if it is not None:
            if hasattr(it, "_shutdown_workers"):  # single-process iterators have no workers
                it._shutdown_workers()
            loader._iterator = None


class ShardSampler(Sampler[int]):
    """Sequential positions ``rank::num_replicas`` (evaluation: every sample exactly once overall)."""

    def __init__(self, n: int, *, num_replicas: int = 1, rank: int = 0):
        self.n, self.num_replicas, self.rank = n, num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))
