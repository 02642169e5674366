"""app.registry (and /readyz, /models): broken models are refused, the others still serve."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
from fastapi.testclient import TestClient
from image_bytes import multipart_files, png

from app.main import create_app
from app.registry import ModelUnavailable, Registry, UnknownModel


def test_loads_every_model_and_defaults_to_mnist(model_store):
    registry = Registry.load(model_store)
    assert list(registry.models) == ["cifar10", "mnist"]
    assert registry.default == "mnist" and registry.failed == {}
    assert registry.get(None).name == "mnist"
    assert registry.get("cifar10").card.input.channels == 3


def test_default_without_mnist_is_the_first(store_copy):
    (store_copy / "mnist" / "model.json").unlink()
    assert Registry.load(store_copy).default == "cifar10"


def test_get_names_the_choices(model_store):
    registry = Registry.load(model_store)
    with pytest.raises(UnknownModel, match="unknown model 'x'; available: cifar10, mnist"):
        registry.get("x")


def test_sha256_mismatch_is_refused_and_others_serve(store_copy, caplog):
    weights = store_copy / "cifar10" / "model.pt"
    weights.write_bytes(weights.read_bytes() + b"tampered")
    with caplog.at_level(logging.ERROR, logger="app.registry"):
        registry = Registry.load(store_copy)
    assert list(registry.models) == ["mnist"]
    assert "does not match model.json" in registry.failed["cifar10"]
    assert str(store_copy) not in registry.failed["cifar10"]  # no server paths for clients
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "refusing model cifar10" in record.getMessage()
    with pytest.raises(ModelUnavailable, match="model 'cifar10' failed to load"):
        registry.get("cifar10")


def test_corrupt_model_is_refused(store_copy):
    weights = store_copy / "mnist" / "model.pt"
    weights.write_bytes(b"not a zip archive")
    card = json.loads((store_copy / "mnist" / "model.json").read_text())
    card["sha256"] = hashlib.sha256(b"not a zip archive").hexdigest()
    (store_copy / "mnist" / "model.json").write_text(json.dumps(card))
    registry = Registry.load(store_copy)
    assert "not a loadable TorchScript module" in registry.failed["mnist"]
    assert list(registry.models) == ["cifar10"]


def test_invalid_card_is_refused(store_copy):
    (store_copy / "mnist" / "model.json").write_text('{"name": "mnist"}')
    registry = Registry.load(store_copy)
    assert "invalid model card" in registry.failed["mnist"]
    assert list(registry.models) == ["cifar10"]


def test_readyz_and_models_report_the_refused_model(store_copy, make_settings):
    weights = store_copy / "cifar10" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-10])
    with TestClient(create_app(make_settings(model_store=store_copy))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["models"]["mnist"] == "up"
        assert "does not match" in ready.json()["models"]["cifar10"]
        models = client.get("/models").json()
        assert [m["name"] for m in models["models"]] == ["mnist"]
        assert models["failed"][0]["name"] == "cifar10"
        r = client.post(
            "/similarity",
            files=multipart_files(image_a=png(), image_b=png()),
            data={"model": "cifar10"},
        )
        assert r.status_code == 503
        assert r.json()["detail"].startswith("model 'cifar10' failed to load: cifar10/model.pt")
        r = client.post("/similarity", files=multipart_files(image_a=png(), image_b=png()))
        assert r.status_code == 200  # mnist still serves


def test_a_model_whose_warm_up_fails_is_refused(store_copy, make_settings):
    card_path = store_copy / "mnist" / "model.json"
    card = json.loads(card_path.read_text())
    card["embedding_dim"] = 99  # the module returns 16
    card_path.write_text(json.dumps(card))
    with TestClient(create_app(make_settings(model_store=store_copy))) as client:
        models = client.get("/readyz").json()["models"]
        assert models["cifar10"] == "up"
        assert models["mnist"].startswith("warm-up forward pass failed")
        assert "card says (99,)" in models["mnist"]


def test_no_model_at_all_is_not_ready(tmp_path, make_settings):
    with TestClient(create_app(make_settings(model_store=tmp_path))) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json() == {
            "status": "not ready",
            "models": {},
            "detail": "no model could be loaded",
        }
        r = client.post("/embed", files=multipart_files(image=png()))
        assert r.status_code == 503
        assert r.json() == {"detail": "no model is loaded"}
