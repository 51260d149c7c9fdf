"""The one cache type (coreseg.cache.LRU) and the model concurrency setting (CoreSegPredictor slots)."""
import threading
import time

import numpy as np
import pytest
import torch

from coreseg.cache import LRU
from coreseg.config import AppConfig, ModelConfig, ReasonerConfig, SegmenterConfig
from coreseg.embedding_cache import EmbeddingCache
from coreseg.modeling.core_seg import CoreSeg
from coreseg.predictor import CoreSegPredictor
from tiny_models import TINY_VIT


def test_lru_is_bounded_and_drops_the_least_recent():
    cache = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1          # a is now the most recent
    cache.put("c", 3)                   # drops b, not a
    assert len(cache) == 2 and "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    assert cache.get("b") is None and cache.get("b", "miss") == "miss"
    cache.put("a", None)                # None is "not cached"
    assert "a" not in cache and len(cache) == 1
    assert cache.get_or_put("d", lambda: 4) == 4 and cache.get_or_put("d", lambda: 5) == 4
    assert cache.pop("d") == 4 and cache.pop("d") is None
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError):
        LRU(0)
    assert isinstance(EmbeddingCache(3), LRU) and EmbeddingCache(3).max_items == 3


def test_lru_under_threads_never_exceeds_its_size():
    cache = LRU(50)

    def work(offset):
        for i in range(2000):
            cache.put((offset, i), i)
            cache.get((offset, i // 2))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50


@pytest.fixture(scope="module")
def model():
    """A real CoreSeg with a tiny SAM (a fast encoder, so the threads' model calls are cheap)."""
    torch.manual_seed(0)
    reasoner = ReasonerConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_new_tokens=8)
    segmenter = SegmenterConfig(kind="sam", image_size=256, vit=TINY_VIT, pixel_scale="imagenet")
    return CoreSeg.build(ModelConfig(reasoner=reasoner, segmenter=segmenter), pretrained_segmenter=False).eval()


def _images(n):
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8) for _ in range(n)]


def _encode_in_threads(predictor, images, inside):
    """Encode each image in its own thread; `inside()` runs within every real encoder call."""
    segmenter = predictor.model.segmenter
    real = segmenter.encode

    def encode(image):
        inside()
        return real(image)

    segmenter.encode = encode
    errors = []

    def run(image):
        try:
            predictor.embedding(image)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    try:
        threads = [threading.Thread(target=run, args=(im,)) for im in images]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        del segmenter.encode
    return errors


def test_two_model_slots_let_two_calls_run_at_once(model):
    predictor = CoreSegPredictor(model, "two-slots", trained=False, concurrency=2)
    both_inside = threading.Barrier(2, timeout=20)   # passes only when two encodes run at the same time
    errors = _encode_in_threads(predictor, _images(2), both_inside.wait)
    assert errors == [] and len(predictor.cache) == 2


def test_one_model_slot_serialises_model_calls(model):
    predictor = CoreSegPredictor(model, "one-slot", trained=False, concurrency=1)
    lock, active, peak = threading.Lock(), [0], [0]

    def inside():
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.3)                 # long enough for the other thread to try
        with lock:
            active[0] -= 1

    errors = _encode_in_threads(predictor, _images(2), inside)
    assert errors == [] and len(predictor.cache) == 2 and peak[0] == 1


def test_concurrency_setting_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CORESEG_MODEL_CONCURRENCY", "3")
    assert AppConfig.from_env().model_concurrency == 3
    with pytest.raises(ValueError, match="at least 1"):
        CoreSegPredictor(None, "none", concurrency=0)
