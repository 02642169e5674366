"""A real PostgreSQL with pgvector for the gallery tests, from the PyPI package ``pgserver``.

    url = fresh_database(server)   # an empty database of its own per test

Tests that need it skip, saying why, where pgserver is not installed or cannot start here.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def start_postgres() -> Iterator[Any]:
    """The server, in a directory of its own: not under pytest's tmp_path, which a concurrent
    pytest run on the same machine may prune (it keeps only the last three runs)."""
    root = Path(tempfile.mkdtemp(prefix="imgsim-pg-"))
    # platformdirs warns "XDG_RUNTIME_DIR is not set" (containers, CI): not ours to fix.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pgserver
        except ImportError:
            pytest.skip("pgserver is not installed (pip install 'imgsim[dev]')")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(root, cleanup_mode="stop")
        server.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    except Exception as e:  # no binary for this platform, no shared memory, ...
        pytest.skip(f"pgserver could not start PostgreSQL with pgvector here: {e}")
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(server: Any) -> str:
    name = f"imgsim_{uuid.uuid4().hex[:12]}"
    server.psql(f"CREATE DATABASE {name};")
    base, _, query = server.get_uri().partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"
