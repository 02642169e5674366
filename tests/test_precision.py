"""app.precision: which number format "auto" picks, from the CPU's own flags, and which a
model's card allows."""

from __future__ import annotations

import logging

import pytest
import torch
from fastapi.testclient import TestClient
from image_bytes import multipart_files, png
from towers import export_tower

from app import artifact
from app.images import decode as decode_image
from app.main import create_app
from app.precision import autocast, cpu_flags, for_card, resolve


def decode(data: bytes, mode: str, size: tuple[int, int]) -> torch.Tensor:
    return decode_image(data, mode, size, max_pixels=10**6)


ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n\n"
OLD_XEON = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n\n"


def test_cpu_flags_come_from_the_flags_line():
    assert {"avx512_bf16", "avx2"} <= cpu_flags(ZEN4)
    assert "avx512_bf16" not in cpu_flags(OLD_XEON)
    assert cpu_flags("no flags here") == frozenset()


def test_auto_picks_bfloat16_only_where_the_cpu_computes_it():
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert resolve("auto", cpu_flags(ZEN4)) == ("bfloat16" if native else "float32")
    assert resolve("auto", cpu_flags(OLD_XEON)) == "float32"  # emulated bf16 is slower
    assert resolve("auto", frozenset({"amx_bf16"})) == ("bfloat16" if native else "float32")


@pytest.mark.parametrize("setting", ["float32", "bfloat16"])
def test_an_explicit_setting_is_kept(setting):
    assert resolve(setting, cpu_flags(OLD_XEON)) == setting


def test_autocast_runs_matmuls_in_bfloat16_and_float32_untouched():
    a = torch.randn(8, 8)
    with autocast("bfloat16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast("float32"):
        assert (a @ a).dtype == torch.float32


def by_precision(float32: float, bfloat16: float) -> dict:
    """Card metrics in the shape training writes: pair accuracy per serving precision."""
    return {
        "by_precision": {
            "float32": {"pair_accuracy": float32},
            "bfloat16": {"pair_accuracy": bfloat16},
        }
    }


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        (by_precision(0.99, 0.986), "bfloat16"),  # 0.4 points: within the bound
        (by_precision(0.99, 0.984), "float32"),  # 0.6 points: refused
        (by_precision(0.90, 0.95), "bfloat16"),  # better is fine
        ({}, "bfloat16"),  # nothing recorded: as configured
        ({"by_precision": {"float32": {"pair_accuracy": 0.9}}}, "bfloat16"),
        ({"by_precision": "garbage"}, "bfloat16"),
    ],
)
def test_for_card_refuses_a_precision_that_loses_more_than_half_a_point(metrics, expected):
    precision, why = for_card("bfloat16", metrics)
    assert precision == expected
    assert (why is None) == (expected == "bfloat16")
    assert for_card("float32", metrics) == ("float32", None)


def test_a_model_whose_card_records_a_bad_bfloat16_accuracy_is_served_in_float32(
    tmp_path, make_settings, caplog
):
    # Same weights, two cards: one says bfloat16 costs it 49.7 points, the other 0.1.
    export_tower(
        tmp_path / "collapsed", channels=1, size=28, seed=0, metrics=by_precision(0.997, 0.5)
    )
    export_tower(tmp_path / "fine", channels=1, size=28, seed=0, metrics=by_precision(0.997, 0.996))
    settings = make_settings(
        model_store=tmp_path,
        inference_precision="bfloat16",
        cache_entries=0,  # same version
    )
    with caplog.at_level(logging.WARNING, logger="app.main"), TestClient(create_app(settings)) as c:
        models = {m["name"]: m for m in c.get("/models").json()["models"]}
        files = multipart_files(image_a=png(mode="L"), image_b=png(mode="L", seed=1))
        answers = {
            name: c.post("/similarity", files=files, data={"model": name}).json()["distance"]
            for name in models
        }
    assert models["collapsed"]["precision"] == "float32"
    assert "49.70 points below float32's 99.70%" in models["collapsed"]["precision_note"]
    assert models["fine"]["precision"] == "bfloat16" and models["fine"]["precision_note"] is None
    # The float32 model answers exactly as the module does in float32; bf16 rounds differently.
    x = torch.stack(
        [decode(png(mode="L"), "L", (28, 28)), decode(png(mode="L", seed=1), "L", (28, 28))]
    )
    module = artifact.load(tmp_path / "collapsed").module
    with torch.inference_mode():
        a, b = module(x)
    assert answers["collapsed"] == pytest.approx(float((a - b).norm()), abs=1e-6)
    assert answers["fine"] != answers["collapsed"]  # the same weights, run in bfloat16
    fallbacks = [r.getMessage() for r in caplog.records if "falling back" in r.getMessage()]
    assert len(fallbacks) == 1 and fallbacks[0].startswith("model collapsed: its card records")
