"""The image-embedding cache, keyed by pixel hash + model version: encode once, decode per click."""
from __future__ import annotations

import hashlib

import numpy as np

from coreseg.cache import LRU


def pixel_key(image: np.ndarray, model_version: str) -> str:
    digest = hashlib.sha256()
    digest.update(f"{image.dtype}{image.shape}{model_version}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


class EmbeddingCache(LRU):
    """The project's one LRU type (`coreseg.cache.LRU`) holding at most `size` embeddings
    (64×64×256 fp32 = 4 MB each), thread-safe."""

    @property
    def max_items(self) -> int:
        return self.size
