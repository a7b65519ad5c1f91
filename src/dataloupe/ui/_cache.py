"""A tiny thread-safe LRU for values that are expensive to build (packed columns)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable


class LRU:
    """Keep the ``size`` most recently used values; builds each key at most once at a time."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[Any, threading.Lock] = {}

    def get_or_make(self, key, make: Callable[[], Any]):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            build_lock = self._building.setdefault(key, threading.Lock())
        with build_lock:  # a second request for the same key waits instead of rebuilding
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = make()
            with self._lock:
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
                self._building.pop(key, None)
        return value
