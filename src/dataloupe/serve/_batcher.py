"""Dynamic batching for the server: an asyncio queue and one worker.

Requests put one preprocessed image on the queue and await a future. The worker takes the
first waiting image, then collects more until it has ``max_batch`` or ``max_wait_ms`` has
passed, runs one forward pass in a worker thread (the event loop keeps accepting requests
meanwhile) and resolves every future. ``max_batch=1`` turns batching off.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np


class QueueFullError(RuntimeError):
    """More requests are waiting than ``max_queue``; the caller should answer 503."""


class MicroBatcher:
    """Collects single inputs into batches for ``predict``.

    Args:
        predict: ``(N, ...) -> (N, K)`` array function, called from one worker thread.
        max_batch: most inputs per call (1 = no batching).
        max_wait_ms: how long the worker waits for more inputs after the first one.
        max_queue: most inputs waiting; beyond it :meth:`submit` raises QueueFullError.

    Example:
        >>> b = MicroBatcher(bundle.predict_proba, max_batch=16)  # doctest: +SKIP
        >>> await b.start(); probs = await b.submit(x)  # doctest: +SKIP
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 16,
                 max_wait_ms: float = 5.0, max_queue: int = 1024):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.max_queue = max_queue
        self.batches = 0  # forward passes run
        self.items = 0  # inputs predicted
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dataloupe-infer")
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._task = self._pool = None

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Predict one input ``x``; returns its output row ``(K,)``."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFullError(f"server busy: {self.max_queue} requests already waiting")
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((x, fut))
        return await fut

    def stats(self) -> dict:
        return {
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait_s * 1000.0,
            "batches": self.batches,
            "requests": self.items,
            "mean_batch": round(self.items / self.batches, 3) if self.batches else 0.0,
        }

    async def _collect(self) -> list:
        queue = self._queue
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(x, f) for x, f in batch if not f.done()]  # skip clients that went away
            if not live:
                continue
            try:
                out = await loop.run_in_executor(self._pool, self.predict, np.stack([x for x, _ in live]))
            except Exception as e:  # the model failed: every waiting request gets the error
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            self.batches += 1
            self.items += len(live)
            for (_, f), row in zip(live, out):
                if not f.done():
                    f.set_result(row)
