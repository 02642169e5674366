"""benchmarks.inprocess: the model ceiling's ways of running a model, on a tiny real tower."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from towers import export_tower

from app import artifact
from app.precision import resolve
from benchmarks.inprocess import InferenceSetup, ceiling_setups, inference_grid


def test_setups_cover_threads_streams_and_the_native_precision():
    setups = ceiling_setups([1, 2], cores=2)
    precisions = ["float32"] + (["bfloat16"] if resolve("auto") == "bfloat16" else [])
    assert {s.precision for s in setups} == set(precisions)
    for p in precisions:
        assert InferenceSetup(1, 1, p) in setups and InferenceSetup(2, 1, p) in setups
        assert InferenceSetup(1, 2, p) in setups  # one single-threaded stream per core
    assert all(s.streams == 1 for s in ceiling_setups([1], cores=1))
    assert InferenceSetup(1, 2, "bfloat16").label == "2 streams x 1 thread, bfloat16"


@pytest.mark.parametrize("setup", [InferenceSetup(1), InferenceSetup(1, 2, "bfloat16")])
def test_grid_runs_every_cell_and_restores_the_thread_count(tmp_path: Path, setup):
    export_tower(tmp_path / "m", channels=1, size=28, seed=0)
    model = artifact.load(tmp_path / "m")
    before = torch.get_num_threads()
    points = inference_grid(model, [1, 4], [setup], seconds=0.05)
    assert [(p.setup, p.batch) for p in points] == [(setup, 1), (setup, 4)]
    assert all(p.images_per_s > 0 and p.pairs_per_s == p.images_per_s / 2 for p in points)
    assert all(p.cpu_ms_per_image > 0 for p in points)
    assert torch.get_num_threads() == before
