"""The decoded uint8 cache: every image of a table decoded once, memory-mapped for reuse.

File layout under the project's ``cache/decoded/``: ``<content_key>-<size>.u8`` holds a
``(N, size, size, 3)`` uint8 array in id order, ``<content_key>-<size>.json`` its ids and
the rows that failed to decode (with the reason). The key is the table's content key (ids,
paths and image root), so a revision that only changes labels or weights reuses it, and
the pixels come from :func:`decode_image`, the function inference uses too.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataloupe._imagepath import OutsideRootError
from dataloupe._fileio import replace_file, write_failure
from dataloupe.project import DataloupeError
from dataloupe.data._decode import ImageDecodeError, decode_image
from dataloupe.data._samples import SampleSet


@dataclass(frozen=True)
class DecodedCache:
    """A read-only view of one decoded cache file.

    Attributes:
        images: ``(M, S, S, 3)`` uint8 memmap, rows in ``ids`` order.
        ids: ``(M,)`` int64, sorted.
        failed: ``{id: reason}`` for rows whose image could not be decoded (left black).
        path: the ``.u8`` file.
    """

    images: np.ndarray
    ids: np.ndarray
    failed: dict[int, str]
    path: Path

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """``(n,)`` cache rows of ``ids``; raises KeyError when one is missing."""
        rows = np.searchsorted(self.ids, ids)
        rows = np.clip(rows, 0, len(self.ids) - 1)
        if len(ids) and not np.array_equal(self.ids[rows], ids):
            raise KeyError("ids not in the decoded cache")
        return rows


def cache_bytes(n: int, size: int) -> int:
    """Bytes a decoded cache of ``n`` images at ``size`` px takes on disk."""
    return n * size * size * 3


def cache_path(cache_dir: Path, content_key: str, size: int) -> Path:
    return Path(cache_dir) / "decoded" / f"{content_key}-{size}.u8"


def _open(path: Path, size: int) -> DecodedCache | None:
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    ids = np.asarray(meta["ids"], dtype=np.int64)
    if path.stat().st_size != cache_bytes(len(ids), size):
        return None
    images = np.memmap(path, dtype=np.uint8, mode="r", shape=(len(ids), size, size, 3))
    return DecodedCache(images, ids, {int(k): v for k, v in meta["failed"].items()}, path)


def _allocate(tmp: Path, nbytes: int) -> None:
    """Reserve the whole file on disk first: writing through a memory map into a sparse file
    on a full disk kills the process with SIGBUS; a reservation fails with a message instead."""
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, nbytes)
        finally:
            os.close(fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataloupeError(f"could not build the decoded cache: it needs {nbytes / 1e6:.1f} MB in {tmp.parent}"
                             f" ({write_failure(tmp, e)}); free space, or train with loader=stream") from None


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete ``*.tmp<pid>`` files left by cache builds whose process is gone (e.g. killed)."""
    removed = []
    for p in Path(folder).glob("*.tmp*"):
        pid = p.name.rpartition(".tmp")[2]
        if pid.isdigit() and not _alive(int(pid)):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def build_cache(
    samples: SampleSet, size: int, cache_dir: Path, *, threads: int | None = None, progress=None
) -> DecodedCache:
    """Open the decoded cache of ``samples`` at ``size`` px, building it on first use.

    Decoding runs in a thread pool (PIL releases the GIL while decoding). The file is
    written under a temporary name and renamed when complete, so an interrupted build
    never leaves a half-written cache behind.

    Args:
        samples: the rows (all of them: labeled, undefined, excluded).
        size: output side in pixels.
        cache_dir: the project's ``cache/`` folder.
        threads: decoding threads (default: CPU count).
        progress: optional callable ``(done, total)``.

    Returns:
        the :class:`DecodedCache`.
    """
    path = cache_path(cache_dir, samples.content_key, size)
    found = _open(path, size)
    if found is not None and np.isin(samples.ids, found.ids).all():
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent)
    order = np.argsort(samples.ids, kind="stable")
    ids = samples.ids[order]
    n = len(ids)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    _allocate(tmp, cache_bytes(max(n, 1), size))
    images = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(max(n, 1), size, size, 3))
    failed: dict[int, str] = {}

    def work(j: int) -> None:
        i = order[j]
        try:
            images[j] = decode_image(samples.file(i), size)
        except (ImageDecodeError, OSError, OutsideRootError) as e:
            failed[int(ids[j])] = f"{samples.paths[i]}: {e}"
            images[j] = 0

    try:
        with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 2) as pool:
            for start in range(0, n, 4096):  # a bounded number of pending tasks (1.28M futures cost GBs)
                stop = min(n, start + 4096)
                list(pool.map(work, range(start, stop)))
                if progress is not None:
                    progress(stop, n)
        images.flush()
        del images
        if n == 0:
            tmp.write_bytes(b"")
        meta = {"ids": ids.tolist(), "size": size, "content_key": samples.content_key, "failed": failed}
        meta_tmp = path.with_name(f"{path.stem}.json.tmp{os.getpid()}")
        try:
            meta_tmp.write_text(json.dumps(meta))
        except OSError as e:
            meta_tmp.unlink(missing_ok=True)
            raise DataloupeError(f"could not write the decoded cache {path.with_suffix('.json')}"
                                 f" ({write_failure(path, e)})") from None
        replace_file(tmp, path)
        replace_file(meta_tmp, path.with_suffix(".json"))
    finally:
        tmp.unlink(missing_ok=True)
    result = _open(path, size)
    assert result is not None
    return result
