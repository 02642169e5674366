"""The number format a model's forward pass runs in: float32, or bfloat16 where the CPU has it.

    precision = resolve("auto")          # "bfloat16" on a CPU with native bf16, else "float32"
    with autocast(precision):
        emb = module(x)                  # still float32 (N, D) out: the contract does not change

Under bfloat16 autocast the convolutions and matmuls run in bf16 with float32 accumulation, on
oneDNN's native bf16 kernels (AVX512-BF16 or AMX). On this project's 2-core EPYC the model
ceiling grid of benchmarks/RESULTS.md has the cifar10 tower 1.4-1.8x and the mnist tower
1.3-1.6x as fast as in float32 at batch 32-64; the embeddings move by a few 1e-3, and
tests/test_shipped_models.py checks that both shipped models still meet their accuracy targets
served this way. Without native support oneDNN emulates bf16, slower than float32, so "auto"
only picks it where the instructions exist.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["float32", "bfloat16"]
PrecisionSetting = Literal["auto", "float32", "bfloat16"]

# CPU flags (Linux /proc/cpuinfo names) of instructions that compute in bfloat16 natively.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags, from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = _CPUINFO.read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def resolve(setting: PrecisionSetting, flags: frozenset[str] | None = None) -> Precision:
    """``auto`` -> bfloat16 when the CPU computes it natively (and torch can), else float32."""
    if setting != "auto":
        return setting
    flags = cpu_flags() if flags is None else flags
    native = bool(flags & NATIVE_BF16_FLAGS) and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bfloat16" if native else "float32"


def autocast(precision: Precision) -> AbstractContextManager[object]:
    """The context a forward pass runs in; float32 is plain (no autocast at all)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")
