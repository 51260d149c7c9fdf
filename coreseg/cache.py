"""The one cache type: a bounded, thread-safe least-recently-used map.

Every in-memory cache of the project (image embeddings, the app's candidates, displays, probes and
people, the store's runs and masks) is one of these, so each has a size limit and none grows with
the number of users or requests.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most `size` items; a get or put makes an item the most recent, a put beyond `size` drops the
    least recent. `None` is never stored: a get that returns None is a miss, and putting None forgets the key."""

    def __init__(self, size: int):
        if int(size) < 1:
            raise ValueError(f"an LRU cache holds at least one item, not {size}")
        self.size = int(size)
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                return default
            self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            if value is None:          # None means "not cached": forget the key
                self._items.pop(key, None)
                return
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get_or_put(self, key: K, make: Callable[[], V]) -> V:
        """The cached value, else `make()` stored and returned (`make` runs outside the lock, so two
        threads missing at once may both make it; the later put wins)."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def pop(self, key: K) -> V | None:
        with self._lock:
            return self._items.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, key: K) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
