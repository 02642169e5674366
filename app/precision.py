"""The number format a model's forward pass runs in: float32, or bfloat16 where the CPU has it.

    precision = resolve("auto")          # "bfloat16" on a CPU with native bf16, else "float32"
    with autocast(precision):
        emb = module(x)                  # still float32 (N, D) out: the contract does not change

Under bfloat16 autocast the convolutions and matmuls run in bf16 with float32 accumulation, on
oneDNN's native bf16 kernels (AVX512-BF16 or AMX). Without native support oneDNN emulates bf16,
slower than float32, so "auto" only picks it where the instructions exist. Speed and accuracy
measurements are in docs/serving.md.

A model may still be refused bfloat16: when its card records, per precision, the pair accuracy
its exported tower reached on the test pairs (``metrics["by_precision"][p]["pair_accuracy"]``,
a fraction) and bfloat16 lost more than ``MAX_ACCURACY_DROP`` against float32, the service runs
that model in float32 and logs why (:func:`for_card`). A small model trained on little data can
sit so close to its threshold that bf16 rounding flips its verdicts.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

import torch

Precision = Literal["float32", "bfloat16"]
PrecisionSetting = Literal["auto", "float32", "bfloat16"]

# CPU flags (Linux /proc/cpuinfo names) of instructions that compute in bfloat16 natively.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_CPUINFO = Path("/proc/cpuinfo")
# Pair accuracy (a fraction) a lower precision may lose against float32 before it is refused:
# 0.5 points, the issue-13 bound; within it the verdicts are the same model's.
MAX_ACCURACY_DROP = 0.005


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


# x86 instructions that sum int8 products straight into 32 bits (VNNI, AMX). Without them ONNX
# Runtime's uint8 x int8 kernels add pairs of products in 16 bits, which saturate unless the
# weights were quantized to 7 bits (reduce_range): the shipped cifar10 int8 file of issue 18,
# made without it, scored 63% pair accuracy instead of 93% on an AVX2-only EPYC.
EXACT_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_saturates(flags: frozenset[str] | None = None, machine: str | None = None) -> bool:
    """Whether full-range int8 weights can overflow ONNX Runtime's int8 kernels on this CPU."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "x86", "i686"):
        return False  # Arm's int8 kernels (SDOT/UDOT or widening multiplies) do not saturate
    flags = cpu_flags() if flags is None else flags
    return not flags & EXACT_INT8_FLAGS


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


def for_card(wanted: Precision, metrics: Mapping[str, Any]) -> tuple[Precision, str | None]:
    """The precision to run a model in, and why it is not ``wanted`` (None when it is).

    ``metrics`` is the model card's; without both float32's and ``wanted``'s recorded pair
    accuracy the card says nothing against ``wanted``, which is kept.
    """
    if wanted == "float32":
        return wanted, None
    try:
        by_precision = metrics["by_precision"]
        reference = float(by_precision["float32"]["pair_accuracy"])
        accuracy = float(by_precision[wanted]["pair_accuracy"])
    except (KeyError, TypeError, ValueError):
        return wanted, None
    drop = reference - accuracy
    if drop > MAX_ACCURACY_DROP:
        return "float32", (
            f"its card records {wanted} pair accuracy {accuracy:.2%}, {drop * 100:.2f} points "
            f"below float32's {reference:.2%} (at most {MAX_ACCURACY_DROP * 100:g} allowed)"
        )
    return wanted, None
