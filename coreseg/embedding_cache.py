"""A bounded LRU of image embeddings keyed by pixel hash + model version: encode once, decode per click."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
import torch


def pixel_key(image: np.ndarray, model_version: str) -> str:
    digest = hashlib.sha256()
    digest.update(f"{image.dtype}{image.shape}{model_version}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """Thread-safe LRU holding at most `max_items` embeddings (64×64×256 fp32 = 4 MB each)."""

    def __init__(self, max_items: int = 16):
        self.max_items = max_items
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: torch.Tensor) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
