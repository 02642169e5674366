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


def test_each_onnx_engine_is_run_as_the_service_runs_it():
    setups = ceiling_setups([1, 2], cores=2, engines=("torchscript", "onnx", "onnx-int8"))
    onnx = [s for s in setups if s.engine != "torchscript"]
    assert {(s.engine, s.threads, s.streams) for s in onnx} == {
        (e, 1, n) for e in ("onnx", "onnx-int8") for n in (1, 2)
    }
    assert InferenceSetup(1, 2, "float32", "onnx").label == "2 streams x 1 thread, onnx"
    assert ceiling_setups([1], cores=2) == ceiling_setups([1], cores=2, engines=("torchscript",))


def test_grid_runs_the_onnx_engine(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    from training.export_onnx import fixture_images

    card = export_tower(tmp_path / "m", channels=1, size=28, seed=0)
    artifact.write_onnx(tmp_path / "m", fixture_images(card), checked_on="fixtures")
    model = artifact.load(tmp_path / "m")
    setup = InferenceSetup(1, 1, "float32", "onnx")
    (point,) = inference_grid(model, [4], [setup], seconds=0.05)
    assert point.setup == setup and point.images_per_s > 0 and point.cpu_ms_per_image > 0
    with pytest.raises(ValueError, match="no onnx-int8 engine"):
        inference_grid(model, [4], [InferenceSetup(1, 1, "float32", "onnx-int8")], seconds=0.05)
