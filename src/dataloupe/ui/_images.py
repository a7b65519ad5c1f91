"""Images by sample id: the file under the table's registered root, and cached thumbnails.

The browser never names a path. A sample id is looked up in the table's latest revision,
joined to the table's image root, resolved (following symlinks), and refused unless the
result is still inside the root — so ``../`` in a stored path or a symlink pointing out of
the root gets a 403, never the file.
"""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from dataloupe._fileio import write_bytes_atomic
from dataloupe._imagepath import OutsideRootError, image_file
from dataloupe.project import DataloupeError, Project
from dataloupe.tables import MAX_PIXELS, open_table

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".webp": "image/webp", ".gif": "image/gif", ".bmp": "image/bmp"}
THUMB_SIZES = (64, 96, 128, 256)


class ForbiddenPath(DataloupeError):
    """A stored path resolves outside the table's image root."""


class SampleNotFound(DataloupeError):
    """No row with this id in the table's latest revision."""


class UnreadableImage(DataloupeError):
    """The file exists but is not a decodable image (corrupt, truncated, or too many pixels)."""


class PathIndex:
    """id → relative path of each table's latest revision, rebuilt when a revision lands."""

    def __init__(self, project: Project):
        self.project = project
        self._cache: dict[str, tuple[int, np.ndarray, list | object, Path]] = {}
        self._lock = threading.Lock()

    def warm(self, table: str) -> None:
        """Load the table's id → path index now (errors surface on the next lookup)."""
        try:
            self.lookup(table, -1)
        except DataloupeError:
            pass

    def lookup(self, table: str, sample_id: int) -> tuple[Path, str]:
        """``(image root, relative path)`` of ``sample_id``; raises :class:`SampleNotFound`."""
        t = open_table(self.project, table)
        with self._lock:
            hit = self._cache.get(table)
            if hit is None or hit[0] != t.revision:
                rows = t.to_arrow(columns=["id", "path"])
                hit = (t.revision, rows["id"].to_numpy(), rows["path"].combine_chunks(), t.image_root)
                self._cache[table] = hit
        _, ids, paths, root = hit
        pos = int(np.searchsorted(ids, sample_id))
        if pos >= ids.size or ids[pos] != sample_id:
            raise SampleNotFound(f"table {table!r} has no sample with id {sample_id}")
        return root, paths[pos].as_py()


def safe_image_path(root: Path, rel: str) -> Path:
    """``root / rel`` resolved; raises :class:`ForbiddenPath` if it leaves ``root``."""
    try:
        full = image_file(root, rel)
    except OutsideRootError:
        raise ForbiddenPath("image path is outside the table's image root") from None
    if full.suffix.lower() not in IMAGE_TYPES:
        raise ForbiddenPath(f"not an image file type: {full.suffix or '(none)'}")
    if not full.is_file():
        raise SampleNotFound("image file is missing")
    return full


def thumbnail(project: Project, table: str, root: Path, rel: str, sample_id: int, size: int) -> Path:
    """Path of the cached thumbnail (JPEG, longest side ``size``), made on first request.

    Cached under ``cache/ui-thumbs/<table>/<size>/``; the file name carries a hash of the
    source path, size and mtime, so an image replaced on disk gets a new thumbnail.
    """
    if size not in THUMB_SIZES:
        raise DataloupeError(f"thumbnail size must be one of {THUMB_SIZES}, got {size}")
    src = safe_image_path(root, rel)
    st = src.stat()
    key = hashlib.sha1(f"{src}|{st.st_mtime_ns}|{st.st_size}".encode()).hexdigest()[:12]
    out = project.cache_dir / "ui-thumbs" / table / str(size) / f"{sample_id // 1000}" / f"{sample_id}-{key}.jpg"
    if out.is_file():
        return out
    try:
        with Image.open(src) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise UnreadableImage(f"image too large to show: {w}x{h} pixels (limit {MAX_PIXELS})")
            im.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster
            im = im.convert("RGB")
            im.thumbnail((size, size), Image.Resampling.BILINEAR)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"sample {sample_id}: not a readable image ({type(e).__name__})") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, buf.getvalue())
    return out
