"""The shipped models against their targets (issue 4), on the real test folders.

Needs ../shared/data (or IMGSIM_DATASETS); skipped cleanly on a fresh clone without it.
The service half (shipped models answering /verify on committed example digits) needs no data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import artifact
from app.config import Settings
from app.main import create_app

ROOT = Path(__file__).parents[1]
STORE = ROOT / "model_store"
DATA_DIR = Path(os.environ.get("IMGSIM_DATASETS", ROOT.parent / "shared" / "data"))
TARGETS = {  # issue 4: balanced test pairs at the model's own threshold; training wall-clock
    "mnist": {"accuracy": 0.995, "roc_auc": 0.999, "eer": 0.005, "train_seconds": 5 * 60},
    "cifar10": {"accuracy": 0.92, "roc_auc": 0.975, "eer": 0.07, "train_seconds": 60 * 60},
}
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "MNIST" / "raw").is_dir() or not (DATA_DIR / "cifar10" / "test").is_dir(),
    reason=f"real data sets not found at {DATA_DIR} (set IMGSIM_DATASETS)",
)


def test_make_serve_store_answers_verify_on_two_digits():
    examples = ROOT / "examples"
    with TestClient(create_app(Settings(model_store=STORE, api_keys=""))) as client:
        assert client.get("/readyz").json()["models"] == {"mnist": "up", "cifar10": "up"}
        seven_a, seven_b, two = (
            (examples / f"{n}.png").read_bytes() for n in ("seven_a", "seven_b", "two")
        )
        same = client.post("/verify", files={"image_a": seven_a, "image_b": seven_b}).json()
        diff = client.post("/verify", files={"image_a": seven_a, "image_b": two}).json()
    assert same["model"] == "mnist" and same["same"] is True
    assert diff["same"] is False and diff["distance"] > same["distance"]


PRECISIONS = ("float32", "bfloat16")  # the service runs bfloat16 where the CPU has it
# How the service may run a model: TorchScript at either precision, or model.onnx (issue 18).
VARIANTS = (*PRECISIONS, "onnx", "onnx-int8")
ONNX_SECTIONS = {"onnx": "onnx", "onnx-int8": "onnx_int8"}  # engine -> card field


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict]:
    """`python -m training.evaluate` on each shipped model in each variant, once per session."""
    from training.evaluate import main as evaluate

    results = {}
    for name in TARGETS:
        for variant in VARIANTS:
            if variant in ONNX_SECTIONS and not _serves(name, variant):
                continue
            out = tmp_path_factory.mktemp(name) / f"metrics-{variant}.json"
            argv = [str(STORE / name), "--data-dir", str(DATA_DIR), "--json", str(out)]
            how = ["--engine", variant] if variant in ONNX_SECTIONS else ["--precision", variant]
            assert evaluate([*argv, *how]) == 0
            results[name, variant] = json.loads(out.read_text())
    return results


def _serves(name: str, engine: str) -> bool:
    section = getattr(artifact.read_card(STORE / name), ONNX_SECTIONS[engine])
    return section is not None and artifact.onnxruntime_available()


@pytest.mark.data
@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_card_metrics_are_what_evaluation_measures(name, evaluated):
    t = evaluated[name, "float32"]["test"]
    assert t["pairs"] == 10_000  # 5,000 test images, each in one same and one different pair
    card = artifact.read_card(STORE / name)
    for key in ("accuracy", "roc_auc", "eer", "precision_at_1"):
        assert card.metrics["test"][key] == pytest.approx(t[key], abs=1e-4), key


@pytest.mark.data
@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_shipped_model_meets_its_targets_on_the_test_folder(name, variant, evaluated):
    if (name, variant) not in evaluated:
        pytest.skip(f"{name} has no {variant} engine here")
    t = evaluated[name, variant]["test"]
    want = TARGETS[name]
    assert t["accuracy"] >= want["accuracy"], t
    assert t["roc_auc"] >= want["roc_auc"], t
    assert t["eer"] <= want["eer"], t
    card = artifact.read_card(STORE / name)
    assert card.metrics["train_seconds"] <= want["train_seconds"]
    assert (STORE / name / "model.pt").stat().st_size < 20 * 1024 * 1024


@pytest.mark.data
@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("engine", sorted(ONNX_SECTIONS))
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_onnx_card_metrics_are_what_evaluation_measures_on_that_engine(name, engine, evaluated):
    if (name, engine) not in evaluated:
        pytest.skip(f"{name} has no {engine} engine here")
    card = artifact.read_card(STORE / name)
    section = getattr(card, ONNX_SECTIONS[engine])
    if section.tolerance is not None:  # float32: held to model.pt per component
        assert section.max_abs_diff <= section.tolerance
    t = evaluated[name, engine]["test"]
    for key in ("accuracy", "roc_auc", "eer", "precision_at_1"):
        assert section.metrics["test"][key] == pytest.approx(t[key], abs=1e-4), key
    # issue 18's limits against the TorchScript reference (float32 ONNX: far inside them)
    assert card.metrics["test"]["accuracy"] - t["accuracy"] <= artifact.INT8_MAX_ACCURACY_DROP
    assert card.metrics["test"]["roc_auc"] - t["roc_auc"] <= artifact.INT8_MAX_AUC_DROP
