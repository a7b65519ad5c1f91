"""Progress: a tqdm bar (images/s, ETA) on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    """Per-epoch progress of one process (silent when ``enabled`` is False).

    Args:
        total: batches in the epoch.
        desc: label, e.g. ``epoch 3/10``.
        enabled: only the primary process reports.
        every: seconds between plain lines when not on a TTY.
        tty: force bar (True) or plain lines (False); default: ``stderr.isatty()``.
    """

    def __init__(self, total: int, desc: str, *, enabled: bool = True, every: float = 10.0,
                 tty: bool | None = None, images_per_batch: int = 1):
        self.total, self.desc, self.enabled, self.every = total, desc, enabled, every
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.start = self.last = time.perf_counter()
        self.done, self.images = 0, 0
        self.bar = None
        if enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True, file=sys.stderr)

    def update(self, images: int, loss) -> None:
        """One batch done; ``loss`` may be a device tensor (read only when shown)."""
        if not self.enabled:
            return
        self.done += 1
        self.images += images
        now = time.perf_counter()
        rate = self.images / max(now - self.start, 1e-9)
        if self.bar is not None:
            if now - self.last >= 0.5 or self.done == self.total:
                self.last = now
                self.bar.set_postfix(loss=f"{float(loss):.4f}", img_s=f"{rate:.0f}", refresh=False)
            self.bar.update(1)
        elif now - self.last >= self.every:
            self.last = now
            eta = (self.total - self.done) * (now - self.start) / max(self.done, 1)
            print(f"{self.desc} [{self.done}/{self.total}] loss {float(loss):.4f} {rate:.1f} img/s ETA {eta:.0f}s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.done:
            secs = time.perf_counter() - self.start
            rate = self.images / max(secs, 1e-9)
            print(f"{self.desc} [{self.done}/{self.total}] done in {secs:.1f}s, {rate:.1f} img/s"
                  " (ETA 0s)", file=sys.stderr, flush=True)
