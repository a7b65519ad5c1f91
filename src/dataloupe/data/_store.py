"""The training store: every image pre-resized once and kept encoded (JPEG) in a Lance dataset.

The idea of FFCV's ``.beton`` file on the format the tables already use. For data too large
for the decoded uint8 cache (ImageNet: 1.28M images would need 193 GB at 224 px) the store
keeps each image re-encoded with its short side at ``short_side`` (default: the training
size), so a training epoch reads ~20 KB per image in large sequential runs instead of
opening a loose file of ~110 KB and decoding twice the pixels.

File layout under the project's ``cache/store/``: ``<content_key>-s<short_side>-q<quality>.lance``
with columns ``id`` int64 (sorted), ``jpeg`` binary, ``width``, ``height`` int32, one fragment
per ``rows_per_fragment`` rows; a ``.json`` beside it lists the rows that failed to decode.
Store row ``r`` holds the ``r``-th smallest id, so a row is found by ``searchsorted``.

Decoding happens in the DataLoader workers on the CPU (``decode="cpu"``: the same
:func:`decode_image` as inference, on the stored bytes) or on the GPU
(``decode="gpu"``: the loader yields :class:`EncodedBatch` and the engine decodes it with
``torchvision.io.decode_jpeg(..., device="cuda")``, batched).
"""

from __future__ import annotations

import io
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from dataloupe._fileio import atomic_path, publish_dir, write_bytes_atomic
from dataloupe.data._decode import ImageDecodeError, _open
from dataloupe.data._samples import SampleSet

ROWS_PER_FRAGMENT = 2048  # rows; the unit of shuffling order (fragment order is random each epoch)


def store_path(cache_dir: Path, content_key: str, short_side: int, quality: int) -> Path:
    return Path(cache_dir) / "store" / f"{content_key}-s{short_side}-q{quality}.lance"


@dataclass(frozen=True)
class ImageStore:
    """A read-only view of one training store.

    Attributes:
        path: the ``.lance`` folder.
        ids: ``(M,)`` int64 sorted; store row ``r`` holds ``ids[r]``.
        short_side: px of the stored images' short side.
        failed: ``{id: reason}`` for rows whose source could not be decoded (stored black).
        rows_per_fragment: rows per Lance fragment (the shuffling block).
    """

    path: Path
    ids: np.ndarray
    short_side: int
    failed: dict[int, str]
    rows_per_fragment: int

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """``(n,)`` store rows of ``ids``; raises KeyError when one is missing."""
        rows = np.clip(np.searchsorted(self.ids, ids), 0, max(len(self.ids) - 1, 0))
        if len(ids) and not np.array_equal(self.ids[rows], ids):
            raise KeyError("ids not in the training store")
        return rows

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())


def _resize_encode(source: Path, short_side: int, quality: int) -> tuple[bytes, int, int]:
    img = _open(source)
    try:
        if img.format == "JPEG":
            img.draft("RGB", (short_side, short_side))
        img = img.convert("RGB")
        w, h = img.size
        scale = short_side / min(w, h)
        if scale < 1:  # never upscale: a small source stays as it is
            w, h = max(short_side, round(w * scale)), max(short_side, round(h * scale))
            img = img.resize((w, h), Image.BILINEAR, reducing_gap=None)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        return buf.getvalue(), w, h
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"not a readable image: {e}") from e


def _black(short_side: int, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (short_side, short_side)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _open_store(path: Path) -> ImageStore | None:
    meta_path = path.with_suffix(".json")
    if not (path.is_dir() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    ids = np.load(path.with_suffix(".ids.npy"))
    return ImageStore(path, ids, int(meta["short_side"]), {int(k): v for k, v in meta["failed"].items()},
                      int(meta["rows_per_fragment"]))


def build_store(samples: SampleSet, cache_dir: Path, *, short_side: int = 224, quality: int = 90,
                rows_per_fragment: int = ROWS_PER_FRAGMENT, threads: int | None = None,
                progress=None) -> ImageStore:
    """Open the training store of ``samples``, building it on first use.

    Each source image is decoded, its short side reduced to ``short_side`` (never enlarged)
    and re-encoded as JPEG at ``quality``, in a thread pool, streamed into Lance one chunk
    at a time (memory independent of the number of rows). Written under a temporary name
    and renamed when complete.

    Example:
        >>> store = build_store(samples, project.cache_dir, short_side=256)  # doctest: +SKIP
    """
    path = store_path(cache_dir, samples.content_key, short_side, quality)
    found = _open_store(path)
    if found is not None and np.isin(samples.ids, found.ids).all():
        return found
    import lance

    path.parent.mkdir(parents=True, exist_ok=True)
    order = np.argsort(samples.ids, kind="stable")
    ids = samples.ids[order]
    failed: dict[int, str] = {}
    schema = pa.schema([("id", pa.int64()), ("jpeg", pa.large_binary()), ("width", pa.int32()),
                        ("height", pa.int32())])
    black = _black(short_side, quality)

    def work(j: int):
        i = order[j]
        try:
            return _resize_encode(samples.root / samples.paths[i], short_side, quality)
        except (ImageDecodeError, OSError) as e:
            failed[int(ids[j])] = f"{samples.paths[i]}: {e}"
            return black, short_side, short_side

    def batches(pool):
        n = len(ids)
        for start in range(0, n, rows_per_fragment):
            stop = min(n, start + rows_per_fragment)
            out = list(pool.map(work, range(start, stop)))
            yield pa.record_batch([pa.array(ids[start:stop]), pa.array([o[0] for o in out], pa.large_binary()),
                                   pa.array([o[1] for o in out], pa.int32()),
                                   pa.array([o[2] for o in out], pa.int32())], schema=schema)
            if progress is not None:
                progress(stop, n)

    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 2) as pool:
            reader = pa.RecordBatchReader.from_batches(schema, batches(pool))
            lance.write_dataset(reader, str(tmp), schema=schema, max_rows_per_file=rows_per_fragment)
        with atomic_path(path.with_suffix(".ids.npy")) as ids_tmp, open(ids_tmp, "wb") as f:
            np.save(f, ids)
        meta = {"short_side": short_side, "quality": quality, "rows_per_fragment": rows_per_fragment,
                "content_key": samples.content_key, "rows": int(len(ids)), "failed": failed}
        publish_dir(tmp, path)
        write_bytes_atomic(path.with_suffix(".json"), json.dumps(meta).encode())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = _open_store(path)
    assert result is not None
    return result


@dataclass
class EncodedBatch:
    """Encoded images of one batch, decoded on the device by :meth:`decode`.

    Attributes:
        data: ``B`` 1-D uint8 tensors (JPEG bytes).
        size: output side in pixels.
    """

    data: list
    size: int

    def __len__(self) -> int:
        return len(self.data)

    def decode(self, device: torch.device) -> torch.Tensor:
        """``(B, 3, size, size)`` uint8 on ``device``: short side -> size, centre crop (as decode_image)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        imgs = decode_jpeg(self.data, mode=ImageReadMode.RGB, device=device)
        return torch.stack([_short_side_crop(x, self.size) for x in imgs])


def _short_side_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    _, h, w = x.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = torch.nn.functional.interpolate(x[None].float(), size=(nh, nw), mode="bilinear", antialias=True,
                                            align_corners=False)[0].round_().clamp_(0, 255).to(torch.uint8)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top:top + size, left:left + size]


def fragment_blocks(store: ImageStore, samples: SampleSet) -> np.ndarray:
    """``(N,)`` int64: the store fragment of each row of ``samples`` (the shuffling block)."""
    return store.rows_of(samples.ids) // store.rows_per_fragment


def locality_order(order: torch.Tensor, blocks: np.ndarray, buffer: int, generator: torch.Generator) -> torch.Tensor:
    """Reorder sampled positions for sequential reads: blocks in random order, shuffled within a buffer.

    Positions are grouped by ``blocks[position]`` (store fragment), the groups visited in a
    random order, and then each run of ``buffer`` consecutive positions is shuffled (the
    in-buffer shuffle of streaming loaders). The multiset of positions is unchanged.
    """
    nb = int(blocks.max()) + 1 if len(blocks) else 1
    rank = torch.randperm(nb, generator=generator)
    key = rank[torch.as_tensor(blocks)[order]].double() + torch.rand(len(order), generator=generator, dtype=torch.float64)
    grouped = order[torch.argsort(key)]
    out = grouped.clone()
    for s in range(0, len(grouped), buffer):
        chunk = grouped[s:s + buffer]
        out[s:s + len(chunk)] = chunk[torch.randperm(len(chunk), generator=generator)]
    return out
