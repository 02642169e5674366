"""TorchServe handler for the peer row of ``make bench`` (benchmarks/torchserve.py), issue 18.

Runs inside TorchServe's Python workers, so it imports neither app/ nor benchmarks/: what a
competent engineer would write for TorchServe. Per batch of requests (multipart bodies with
``image_a`` and ``image_b``, the same bytes /similarity gets): Pillow decode, convert to the
card's mode, resize bilinear to its size (JPEG draft as the service does), one forward pass of
model.pt over all 2N images, under bfloat16 autocast where the CPU has native bf16, euclidean
distance, the card's threshold. None of the service's hostile-input checks, keys, metrics or logs.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}

_state: dict[str, Any] = {}


def _native_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if
                  line.startswith("flags")), [])  # fmt: skip
    return bool(NATIVE_BF16_FLAGS & set(flags))


def initialize(context: Any) -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "1")))
    model_dir = Path(context.system_properties["model_dir"])
    card = json.loads((model_dir / "model.json").read_text())
    module = torch.jit.load(str(model_dir / "model.pt"), map_location="cpu").eval()
    _state.update(
        module=module,
        mode="L" if card["input"]["channels"] == 1 else "RGB",
        size=(card["input"]["width"], card["input"]["height"]),
        threshold=float(card["threshold"]),
        bf16=os.environ.get("BENCH_PRECISION", "auto") != "float32" and _native_bf16(),
    )


def _decode(data: bytes | bytearray) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    size = _state["size"]
    if img.format == "JPEG":
        img.draft(None, (max(size), max(size)))
    img = img.convert(_state["mode"])
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    pixels = np.asarray(img, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[dict[str, Any]] | None:
    if not _state:
        initialize(context)
    if data is None:  # TorchServe's call at load time: initialise only
        return None
    images = [_decode(row[key]) for row in data for key in ("image_a", "image_b")]
    x = torch.from_numpy(np.stack(images))  # (2N, C, H, W) uint8
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=_state["bf16"]):
        emb = _state["module"](x).float()  # (2N, D)
    d = (emb[0::2] - emb[1::2]).norm(dim=1).tolist()  # (N,)
    return [{"distance": v, "same": v <= _state["threshold"]} for v in d]
