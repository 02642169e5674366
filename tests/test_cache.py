"""app.cache: LRU bounds, and a re-sent image costs no decode and no forward pass."""

from __future__ import annotations

import torch
from image_bytes import multipart_files, png

from app.cache import EmbeddingCache
from app.metrics import Metrics


def test_lru_keeps_the_most_recent_entries():
    cache = EmbeddingCache(max_entries=2)
    a, b, c = (torch.full((4,), float(i)) for i in range(3))
    cache.put(("v", "a"), a)
    cache.put(("v", "b"), b)
    assert cache.get(("v", "a"), "m") is a  # a is now the most recent
    cache.put(("v", "c"), c)
    assert cache.get(("v", "b"), "m") is None
    assert cache.get(("v", "a"), "m") is a and cache.get(("v", "c"), "m") is c
    assert len(cache) == 2


def test_keys_include_the_model_version():
    cache = EmbeddingCache(max_entries=8)
    cache.put(("v1", "digest"), torch.zeros(4))
    assert cache.get(("v2", "digest"), "m") is None


def test_zero_entries_turns_it_off():
    cache = EmbeddingCache(max_entries=0)
    cache.put(("v", "a"), torch.zeros(4))
    assert cache.get(("v", "a"), "m") is None


def test_hits_and_misses_are_counted():
    metrics = Metrics()
    cache = EmbeddingCache(max_entries=2, metrics=metrics)
    cache.get(("v", "a"), "mnist")
    cache.put(("v", "a"), torch.zeros(4))
    cache.get(("v", "a"), "mnist")
    sample = metrics.registry.get_sample_value
    assert sample("imgsim_cache_misses_total", {"model": "mnist"}) == 1
    assert sample("imgsim_cache_hits_total", {"model": "mnist"}) == 1


class CountingForward:
    """Wraps the real TorchScript module; counts the images it is asked to embed."""

    def __init__(self, module) -> None:
        self.module = module
        self.images = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.module(x)


def test_a_resent_image_is_served_from_the_cache(client, digits):
    batcher = client.app.state.registry.get("mnist").batcher
    counting = CountingForward(batcher.forward)
    batcher.forward = counting
    sample = client.app.state.metrics.registry.get_sample_value
    hits = lambda: sample("imgsim_cache_hits_total", {"model": "mnist"}) or 0  # noqa: E731
    decodes = lambda: sample("imgsim_decode_seconds_count", {"model": "mnist"}) or 0  # noqa: E731

    first = client.post("/embed", files=multipart_files(image=digits["6"][0]))
    assert counting.images == 1
    hits_before, decodes_before = hits(), decodes()
    again = client.post("/embed", files=multipart_files(image=digits["6"][0]))
    assert again.json() == first.json()
    assert counting.images == 1  # no new forward pass
    assert decodes() == decodes_before  # no new decode
    assert hits() == hits_before + 1


def test_cache_is_per_model(client):
    image = png(seed=7)
    a = client.post("/embed", files=multipart_files(image=image), data={"model": "mnist"})
    b = client.post("/embed", files=multipart_files(image=image), data={"model": "cifar10"})
    assert a.json()["model"] == "mnist" and b.json()["model"] == "cifar10"
    assert a.json()["embedding"] != b.json()["embedding"]


def test_repeats_within_one_request_run_once(client, digits):
    batcher = client.app.state.registry.get("mnist").batcher
    counting = CountingForward(batcher.forward)
    batcher.forward = counting
    image = digits["2"][2]
    r = client.post("/similarity/matrix", files=multipart_files(images=[image, image, image]))
    assert r.status_code == 200
    assert counting.images == 1


def test_distinct_uploads_keep_their_order_and_repeats_map_to_one():
    from app.embedding import _distinct

    a, b, c = b"\x89PNG-a", b"\x89PNG-b", b"longer-blob"
    unique, where = _distinct([a, c, b, a, c])
    assert unique == [a, c, b] and where == [0, 1, 2, 0, 1]
