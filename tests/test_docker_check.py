"""deploy/docker_check.py where no engine can be started: CI says so and passes, `make
docker-check` by hand fails. (Where an engine runs, `make docker-check` itself is the test.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "docker_check.py"


def run_check(path: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": str(path)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--docker-local", str(path / "absent.sh"), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def engine_down(tmp_path: Path) -> Path:
    """A PATH whose `docker` is installed but reaches no engine, as `docker info` does then."""
    docker = tmp_path / "docker"
    docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    docker.chmod(0o755)
    return tmp_path


@pytest.mark.parametrize("has_docker", [False, True])
def test_without_an_engine_ci_passes_and_says_so(tmp_path, engine_down, has_docker):
    path = engine_down if has_docker else tmp_path / "empty"
    path.mkdir(exist_ok=True)
    proc = run_check(path, "--skip-without-engine")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reason = "`docker info` fails" if has_docker else "no docker command"
    assert "SKIPPED: no Docker engine could be started" in proc.stdout and reason in proc.stdout
    assert "passed" not in proc.stdout  # no count that would read as tests that ran


def test_without_an_engine_by_hand_it_fails(engine_down):
    proc = run_check(engine_down)
    assert proc.returncode == 1 and "FAIL: no Docker engine" in proc.stdout, proc.stdout
