"""Shared fixtures for the service tests: a real model store with two tiny real towers.

The towers are ordinary nn.Modules exported with app.artifact.write(), the same path training
takes, so the service under test loads genuine TorchScript and checks genuine sha256s.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from towers import export_tower

from app.config import Settings
from app.main import create_app

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mnist: 1x28x28, cifar10: 3x32x32."""
    store = tmp_path_factory.mktemp("model_store")
    export_tower(store / "mnist", channels=1, size=28, seed=0)
    export_tower(store / "cifar10", channels=3, size=32, seed=1)
    return store


@pytest.fixture
def store_copy(model_store: Path, tmp_path: Path) -> Path:
    """A private copy of the store, for tests that break a model."""
    copy = tmp_path / "store"
    shutil.copytree(model_store, copy)
    return copy


@pytest.fixture
def make_settings(model_store: Path, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        # float32: these tests compare answers with the model run directly, exactly;
        # tests/test_precision.py covers bfloat16 serving.
        values: dict[str, object] = {
            "model_store": model_store,
            "data_dir": tmp_path / "data",  # galleries.db: never the working directory's
            "api_keys": "",
            "cors_origins": [],
            "inference_precision": "float32",
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="session")
def digits() -> dict[str, list[bytes]]:
    """Real MNIST digits (PNG) by class, from tests/fixtures/mnist_small."""
    root = FIXTURES / "mnist_small"
    return {d.name: [p.read_bytes() for p in sorted(d.glob("*.png"))[:3]] for d in root.iterdir()}


@pytest.fixture(scope="session")
def photos() -> dict[str, list[bytes]]:
    """Real CIFAR-10 images (JPEG) by class, from tests/fixtures/cifar10_small."""
    root = FIXTURES / "cifar10_small"
    return {d.name: [p.read_bytes() for p in sorted(d.glob("*.jpg"))[:3]] for d in root.iterdir()}
