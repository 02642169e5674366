"""app.config: IMGSIM_* environment variables, lists and keys in the forms operators write."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings


def test_defaults(monkeypatch):
    for name in list(__import__("os").environ):
        if name.startswith("IMGSIM_"):
            monkeypatch.delenv(name)
    s = Settings()
    assert s.model_store == Path("model_store") and s.default_model is None
    assert s.max_upload_bytes == 10 * 1024 * 1024 and s.max_image_pixels == 40_000_000
    assert s.torch_threads == 1 and s.inference_workers == 0 and s.workers == 1
    assert s.inference_precision == "auto" and s.log_json is True
    assert s.api_key_set() == frozenset() and s.cors_origins == []


def test_environment(monkeypatch):
    monkeypatch.setenv("IMGSIM_MODEL_STORE", "/srv/models")
    monkeypatch.setenv("IMGSIM_MAX_CANDIDATES", "8")
    monkeypatch.setenv("IMGSIM_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("IMGSIM_API_KEYS", "k1,k2")
    s = Settings()
    assert s.model_store == Path("/srv/models") and s.max_candidates == 8
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.api_key_set() == {"k1", "k2"}


def test_json_lists(monkeypatch):
    monkeypatch.setenv("IMGSIM_CORS_ORIGINS", '["https://a.example"]')
    monkeypatch.setenv("IMGSIM_API_KEYS", '["key1", "key2"]')  # docker-compose.yml's form
    s = Settings()
    assert s.cors_origins == ["https://a.example"]
    assert s.api_key_set() == {"key1", "key2"}


def test_keys_never_show_in_repr():
    s = Settings(api_keys="super-secret")
    assert "super-secret" not in repr(s) and "super-secret" not in str(s.model_dump())


@pytest.mark.parametrize("field,value", [("max_upload_bytes", 0), ("batch_max_size", -1)])
def test_nonsense_is_refused(field, value):
    with pytest.raises(ValidationError):
        Settings(**{field: value})


def test_the_queue_must_hold_the_largest_request():
    with pytest.raises(ValidationError, match="queue_max"):
        Settings(queue_max=32, max_matrix_images=64)


def test_inference_workers_a_core_each_for_a_slow_model_one_for_a_tiny_one():
    from app.config import SPLIT_MIN_MFLOPS, usable_cores

    cores = usable_cores()
    slow, tiny = SPLIT_MIN_MFLOPS * 2, SPLIT_MIN_MFLOPS / 2
    assert Settings(workers=1).inference_workers_for(slow) == cores
    assert Settings(workers=1).inference_workers_for(tiny) == 1
    assert Settings(workers=cores * 2).inference_workers_for(slow) == 1  # never 0
    assert Settings(workers=1, torch_threads=cores).inference_workers_for(slow) == 1
    assert Settings(inference_workers=3).inference_workers_for(tiny) == 3  # set by hand: as is


def test_inference_precision_is_one_of_three():
    assert Settings(inference_precision="bfloat16").inference_precision == "bfloat16"
    with pytest.raises(ValidationError):
        Settings(inference_precision="float16")
