"""How many image decodes the inference server runs at once, and how many pixels they hold.

Decoding costs memory in proportion to an image's pixels, not its file size: a 243 KB
PNG of 7999x7999 RGBA pixels takes ~0.5 GB while it decodes. The server reads each
upload's pixel count from its header first (cheap), then waits for room: at most
``max_decodes`` decodes and ``max_pixels`` pixels in flight. A request that finds no room
within ``wait_s`` is answered 503 (busy), so memory stays bounded whatever the clients send.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class BudgetBusy(Exception):
    """No room for this decode within the wait; the message says what was full."""


class DecodeBudget:
    """Counts decodes and pixels in flight; used from the event loop only (no locking needed).

    Example:
        >>> budget = DecodeBudget(max_decodes=4, max_pixels=128_000_000, wait_s=2.0)
        >>> async def handle(pixels):                          # doctest: +SKIP
        ...     async with budget.hold(pixels):
        ...         ...  # decode in a worker thread
    """

    def __init__(self, *, max_decodes: int, max_pixels: int, wait_s: float):
        if max_decodes < 1 or max_pixels < 1 or wait_s < 0:
            raise ValueError("max_decodes and max_pixels must be >= 1 and wait_s >= 0")
        self.max_decodes, self.max_pixels, self.wait_s = max_decodes, max_pixels, wait_s
        self.decodes = 0
        self.pixels = 0
        self.refused = 0
        self._changed: asyncio.Condition | None = None

    def _fits(self, pixels: int) -> bool:
        return self.decodes < self.max_decodes and self.pixels + pixels <= self.max_pixels

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int):
        """Hold room for one decode of ``pixels`` pixels; raises :class:`BudgetBusy` after ``wait_s``."""
        if pixels > self.max_pixels:
            raise ValueError(f"{pixels} pixels exceed the server's decode budget of {self.max_pixels}")
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            deadline = time.monotonic() + self.wait_s
            while not self._fits(pixels):
                left = deadline - time.monotonic()
                if left <= 0:
                    self.refused += 1
                    raise BudgetBusy(f"server busy: {self.decodes} image decodes holding {self.pixels / 1e6:.0f}"
                                     " Mpx in flight; retry shortly")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
            self.decodes += 1
            self.pixels += pixels
        try:
            yield
        finally:
            async with self._changed:
                self.decodes -= 1
                self.pixels -= pixels
                self._changed.notify_all()

    def stats(self) -> dict:
        return {"decodes_in_flight": self.decodes, "pixels_in_flight": self.pixels,
                "max_decodes": self.max_decodes, "max_pixels": self.max_pixels, "refused_busy": self.refused}
