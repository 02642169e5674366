"""The optional ONNX engine (issue 18): export beside model.pt, check, load, choose, serve."""

from __future__ import annotations

import json
import math
import platform
import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from image_bytes import multipart_files
from towers import export_tower

from app import artifact, engines
from app.images import decode
from app.main import create_app
from app.registry import Registry

pytest.importorskip("onnxruntime")

from training.export_onnx import fixture_images  # noqa: E402  (needs the decoder only)


@pytest.fixture(scope="module")
def onnx_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two tiny towers of conftest, each with a checked model.onnx beside model.pt."""
    store = tmp_path_factory.mktemp("onnx_store")
    for name, channels, size, seed in (("mnist", 1, 28, 0), ("cifar10", 3, 32, 1)):
        card = export_tower(store / name, channels=channels, size=size, seed=seed)
        artifact.write_onnx(store / name, fixture_images(card), checked_on="tests/fixtures images")
    return store


@pytest.fixture
def onnx_copy(onnx_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(onnx_store, copy)
    return copy


def test_export_records_the_file_and_its_check_in_the_card(onnx_store):
    card = artifact.read_card(onnx_store / "cifar10")
    assert card.onnx is not None
    assert card.onnx.sha256 == artifact.sha256_file(onnx_store / "cifar10" / "model.onnx")
    assert 0 <= card.onnx.max_abs_diff <= card.onnx.tolerance == artifact.ONNX_ATOL
    fixtures = Path(__file__).parent / "fixtures"
    real = [
        *(fixtures / "mnist_small").rglob("*.png"),
        *(fixtures / "cifar10_small").rglob("*.jpg"),
    ]
    assert card.onnx.checked_images == len(real) > 10
    assert card.onnx.checked_on == "tests/fixtures images"
    assert card.sha256 == artifact.sha256_file(onnx_store / "cifar10" / "model.pt")  # untouched


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_onnx_engine_matches_torchscript_on_real_images_at_any_batch(onnx_store, name, photos):
    art = artifact.load(onnx_store / name)
    assert art.onnx is not None and art.onnx_error is None
    x = torch.stack(
        [decode(b, art.card.mode, art.card.size, 10**7) for bs in photos.values() for b in bs]
    )
    for batch in (x[:1], x[:7], x):  # the batch axis is dynamic
        with torch.inference_mode():
            want = art.module(batch)
        got = art.onnx(batch)
        assert got.dtype == torch.float32 and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=artifact.ONNX_ATOL)


def test_a_failed_check_leaves_no_onnx_file_and_the_card_unchanged(store_copy):
    before = (store_copy / "mnist" / "model.json").read_text()
    card = artifact.read_card(store_copy / "mnist")
    with pytest.raises(artifact.ArtifactError, match="differs from model.pt"):
        # No engine reproduces float32 to within a negative tolerance: the check must refuse.
        artifact.write_onnx(
            store_copy / "mnist", fixture_images(card), checked_on="x", tolerance=-1
        )
    assert not (store_copy / "mnist" / "model.onnx").exists()
    assert not (store_copy / "mnist" / "model.onnx.tmp").exists()
    assert (store_copy / "mnist" / "model.json").read_text() == before


def test_check_images_of_the_wrong_shape_are_refused(store_copy):
    with pytest.raises(artifact.ArtifactError, match="check images"):
        artifact.write_onnx(
            store_copy / "mnist", torch.zeros(3, 3, 28, 28, dtype=torch.uint8), checked_on="x"
        )


def test_a_card_from_before_the_onnx_engine_still_loads(store_copy):
    path = store_copy / "mnist" / "model.json"
    raw = json.loads(path.read_text())
    raw.pop("engine", None)
    raw.pop("onnx", None)
    path.write_text(json.dumps(raw))
    art = artifact.load(store_copy / "mnist")
    assert art.card.engine == "auto" and art.card.onnx is None
    assert art.onnx is None and art.onnx_error is None


def test_an_altered_onnx_file_costs_only_the_onnx_engine(onnx_copy):
    onnx_file = onnx_copy / "cifar10" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:-10] + b"0123456789")
    art = artifact.load(onnx_copy / "cifar10")
    assert art.onnx is None and "sha256" in (art.onnx_error or "")
    registry = Registry.load(onnx_copy)
    assert set(registry.models) == {"mnist", "cifar10"}  # model.pt still serves
    assert registry.models["cifar10"].onnx is None
    assert "sha256" in (registry.models["cifar10"].onnx_error or "")
    assert str(onnx_copy) not in (registry.models["cifar10"].onnx_error or "")


def test_a_missing_onnx_file_named_by_the_card_costs_only_the_onnx_engine(onnx_copy):
    (onnx_copy / "mnist" / "model.onnx").unlink()
    art = artifact.load(onnx_copy / "mnist")
    assert art.onnx is None and "missing" in (art.onnx_error or "")


def test_re_exporting_model_pt_removes_the_old_onnx_file(onnx_copy):
    export_tower(onnx_copy / "mnist", channels=1, size=28, seed=5)
    assert not (onnx_copy / "mnist" / "model.onnx").exists()
    assert artifact.read_card(onnx_copy / "mnist").onnx is None


@pytest.mark.parametrize(
    ("setting", "card_engine", "has_onnx", "expected"),
    [
        ("auto", "auto", True, ["torchscript", "onnx"]),
        ("auto", "onnx", True, ["onnx"]),
        ("auto", "torchscript", True, ["torchscript"]),
        ("torchscript", "onnx", True, ["torchscript"]),  # the server setting wins
        ("onnx", "torchscript", True, ["onnx"]),
        ("onnx", "auto", False, ["torchscript"]),  # no model.onnx: TorchScript, with a warning
        ("auto", "auto", False, ["torchscript"]),
    ],
)
def test_engine_candidates(onnx_copy, setting, card_engine, has_onnx, expected):
    served = Registry.load(onnx_copy).models["mnist"]
    served.card.engine = card_engine
    if not has_onnx:
        served.onnx = None
    assert engines.candidates(setting, served) == expected


def test_auto_times_both_engines_and_picks_the_faster(onnx_copy):
    served = Registry.load(onnx_copy).models["cifar10"]
    choice = engines.choose(served, "auto", "float32", batch=4)
    assert set(choice.timings_ms) == {"torchscript", "onnx"}
    assert all(t > 0 for ts in choice.timings_ms.values() for t in ts)
    assert choice.engine == min(choice.timings_ms, key=lambda e: sum(choice.timings_ms[e]))
    assert choice.forward is engines.forward_of(served, choice.engine)
    assert choice.precision == "float32"


def test_onnx_runs_in_float32_whatever_the_precision_setting(onnx_copy):
    served = Registry.load(onnx_copy).models["mnist"]
    choice = engines.choose(served, "onnx", "bfloat16", batch=4)
    assert choice.engine == "onnx" and choice.precision == "float32"
    assert choice.forward is served.onnx


def _models(client: TestClient) -> dict[str, dict]:
    r = client.get("/models")
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["models"]}


@pytest.mark.parametrize("setting", ["onnx", "torchscript", "auto"])
def test_the_service_answers_the_same_on_either_engine(make_settings, onnx_store, photos, setting):
    a, b = photos["cat"][0], photos["ship"][0]
    art = artifact.load(onnx_store / "cifar10", onnx=False)
    x = torch.stack([decode(i, "RGB", (32, 32), 10**7) for i in (a, b)])
    with torch.inference_mode():
        want = math.dist(*art.module(x).tolist())
    settings = make_settings(model_store=onnx_store, inference_engine=setting, cache_entries=0)
    with TestClient(create_app(settings)) as client:
        models = _models(client)
        r = client.post(
            "/similarity", files=multipart_files(image_a=a, image_b=b), data={"model": "cifar10"}
        )
    assert r.status_code == 200, r.text
    assert r.json()["distance"] == pytest.approx(want, abs=3 * artifact.ONNX_ATOL)
    for info in models.values():
        if setting == "auto":
            assert info["engine"] in {"torchscript", "onnx"}
        else:
            assert info["engine"] == setting
        # IMGSIM_INFERENCE_ENGINE=torchscript does not even load model.onnx
        want_engines = ["torchscript"] if setting == "torchscript" else ["torchscript", "onnx"]
        assert info["engines"] == want_engines
        assert info["precision"] == "float32"
        assert info["onnx"]["sha256"] == artifact.read_card(onnx_store / info["name"]).onnx.sha256


def test_models_shows_torchscript_for_a_model_without_onnx(client):
    for info in _models(client).values():
        assert info["engine"] == "torchscript" and info["engines"] == ["torchscript"]
        assert info["onnx"] is None


# --- int8 (static QDQ) -----------------------------------------------------------------------


def _metrics(accuracy: float, auc: float) -> dict:
    return {"test": {"pairs": 100, "accuracy": accuracy, "roc_auc": auc}}


@pytest.fixture(scope="module")
def int8_store(onnx_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """onnx_store's towers, cifar10 with a real int8 quantization of its model.onnx shipped."""
    pytest.importorskip("onnx")  # the quantizer needs it (the train extra)
    from training.export_onnx import quantize_int8

    store = tmp_path_factory.mktemp("int8_store")
    shutil.copytree(onnx_store, store, dirs_exist_ok=True)
    model_dir = store / "cifar10"
    card = artifact.read_card(model_dir)
    tmp = model_dir / "int8.tmp"
    how = quantize_int8(model_dir / "model.onnx", tmp, fixture_images(card))
    artifact.record_onnx_int8(
        model_dir,
        tmp,
        metrics=_metrics(0.90, 0.97),
        reference=_metrics(0.902, 0.972),  # within 0.3 points and 0.003 AUC
        quantization={**how, "max_abs_diff": 0.01},
    )
    return store


def test_int8_is_recorded_with_its_metrics_and_serves_close_to_float32(int8_store, photos):
    model_dir = int8_store / "cifar10"
    card = artifact.read_card(model_dir)
    assert card.onnx_int8 is not None and card.onnx_int8.precision == "int8"
    assert card.onnx_int8.sha256 == artifact.sha256_file(model_dir / "model.int8.onnx")
    assert card.onnx_int8.metrics["test"]["accuracy"] == 0.90
    assert card.onnx_int8.quantization["format"] == "QDQ"
    art = artifact.load(model_dir)
    assert art.onnx_int8 is not None
    x = torch.stack([decode(b, "RGB", (32, 32), 10**7) for bs in photos.values() for b in bs])
    with torch.inference_mode():
        want = art.module(x)
    got = art.onnx_int8(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert not torch.equal(got, want)  # it is quantized...
    assert float((got - want).abs().max()) < 0.2  # ...and still the same embeddings, roughly


@pytest.mark.parametrize(("accuracy", "auc"), [(0.898, 0.972), (0.902, 0.968)])
def test_int8_that_loses_too_much_is_not_shipped(onnx_copy, accuracy, auc):
    model_dir = onnx_copy / "mnist"
    tmp = model_dir / "int8.tmp"
    shutil.copy(model_dir / "model.onnx", tmp)
    with pytest.raises(artifact.ArtifactError, match="int8 loses"):
        artifact.record_onnx_int8(
            model_dir,
            tmp,
            metrics=_metrics(accuracy, auc),
            reference=_metrics(0.902, 0.972),
            quantization={"max_abs_diff": 0.0},
        )
    assert not tmp.exists() and not (model_dir / "model.int8.onnx").exists()
    assert artifact.read_card(model_dir).onnx_int8 is None


def test_the_service_serves_int8_when_asked_and_says_so(make_settings, int8_store, photos):
    settings = make_settings(model_store=int8_store, inference_engine="onnx-int8")
    with TestClient(create_app(settings)) as client:
        models = _models(client)
        r = client.post(
            "/similarity",
            files=multipart_files(image_a=photos["cat"][0], image_b=photos["cat"][1]),
            data={"model": "cifar10"},
        )
    assert r.status_code == 200, r.text
    assert models["cifar10"]["engine"] == "onnx-int8"
    assert models["cifar10"]["precision"] == "int8"
    assert models["cifar10"]["engines"] == ["torchscript", "onnx", "onnx-int8"]
    assert models["cifar10"]["onnx_int8"]["precision"] == "int8"
    # mnist has no int8 file: TorchScript, the contract
    assert models["mnist"]["engine"] == "torchscript"


def test_full_range_int8_is_refused_where_it_would_overflow(int8_store, tmp_path, monkeypatch):
    """An int8 file quantized with 8-bit weights (before reduce_range) is not loaded on an x86
    CPU without VNNI, and the reason is kept for /models; the exporter's 7-bit files load."""
    from app import precision

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the overflow is an x86 kernel's (16-bit sums without VNNI)")
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    model_dir = tmp_path / "cifar10"
    shutil.copytree(int8_store / "cifar10", model_dir)
    assert artifact.read_card(model_dir).onnx_int8.quantization["reduce_range"] is True
    assert artifact.load(model_dir).onnx_int8 is not None

    card = json.loads((model_dir / "model.json").read_text())
    del card["onnx_int8"]["quantization"]["reduce_range"]
    (model_dir / "model.json").write_text(json.dumps(card))
    art = artifact.load(model_dir)
    assert art.onnx_int8 is None and art.onnx is not None
    assert "without VNNI" in art.onnx_int8_error and "--int8" in art.onnx_int8_error

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    assert artifact.load(model_dir).onnx_int8 is not None
