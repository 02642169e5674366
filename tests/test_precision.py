"""app.precision: which number format "auto" picks, from the CPU's own flags."""

from __future__ import annotations

import pytest
import torch

from app.precision import autocast, cpu_flags, resolve

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
