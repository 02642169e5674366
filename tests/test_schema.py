"""Property-based fuzzing of the OpenAPI schema with schemathesis: no 500s, answers conform.

Every operation gets up to 30 generated requests (derandomized: the same ones every run)
against the ASGI app, with its real lifespan and real models. Random bytes are not images, so
"schema-valid data must be accepted" is not a property of this API: that one check is left out.

The schema is built eagerly from ``app.openapi()``: schemathesis' fixture-based loader uses a
pytest internal that pytest 9 removed. The app's model store is filled by a fixture before the
first request starts the lifespan.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import positive_data_acceptance

from app.config import Settings
from app.main import create_app

pytestmark = pytest.mark.slow

STORE = Path(tempfile.mkdtemp(prefix="imgsim-fuzz-"))
APP = create_app(
    Settings(model_store=STORE, data_dir=STORE / "state", api_keys="", cors_origins=[])
)
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP  # calls go to the ASGI app in-process


@pytest.fixture(scope="module", autouse=True)
def fuzz_store(model_store: Path) -> Iterator[None]:
    shutil.copytree(model_store, STORE, dirs_exist_ok=True)
    yield
    shutdown_lifespans()  # schemathesis started the app's lifespan: stop its batchers
    shutil.rmtree(STORE, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case):
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
