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
    assert s.torch_threads == 0 and s.workers == 1 and s.log_json is True
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


def test_torch_threads_default_to_cores_per_worker():
    import os

    cores = os.cpu_count() or 1
    assert Settings(workers=1).effective_torch_threads() == cores
    assert Settings(workers=cores * 2).effective_torch_threads() == 1
    assert Settings(torch_threads=3, workers=2).effective_torch_threads() == 3
