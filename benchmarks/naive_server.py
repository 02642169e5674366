"""The tutorial way to serve the same model: the baseline the service must beat (issue 5).

    BENCH_MODEL_DIR=model_store/mnist BENCH_TORCH_THREADS=1 \
        uvicorn benchmarks.naive_server:create_app --factory --port 8001

One ``async def`` endpoint, as most FastAPI + PyTorch tutorials write it: read both uploads,
decode with PIL, convert and resize, ``torch.from_numpy``, run the TorchScript model on a batch
of 2 under ``torch.no_grad`` and compute the distance, all on the event loop. The model is loaded
with ``app.artifact.load``, so it is exactly the model the service runs. BENCH_TORCH_THREADS=0
keeps torch's default intra-op thread count (one per core).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, UploadFile
from PIL import Image

from app import artifact


def create_app() -> FastAPI:
    threads = int(os.environ.get("BENCH_TORCH_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    model = artifact.load(Path(os.environ["BENCH_MODEL_DIR"]), onnx=False)
    card, module = model.card, model.module
    app = FastAPI(title="naive imgsim")

    def to_tensor(data: bytes) -> torch.Tensor:
        img = Image.open(io.BytesIO(data)).convert(card.mode).resize(card.size)
        x = torch.from_numpy(np.array(img, dtype=np.uint8))  # (H, W) or (H, W, C)
        return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)  # (C, H, W)

    @app.post("/similarity")
    async def similarity(image_a: UploadFile, image_b: UploadFile) -> dict[str, float]:
        batch = torch.stack([to_tensor(await image_a.read()), to_tensor(await image_b.read())])
        with torch.no_grad():
            emb = module(batch)  # (2, D)
        distance = float(torch.dist(emb[0], emb[1]))
        return {"distance": distance, "similarity": card.calibration.probability(distance)}

    @app.get("/healthz")
    async def healthz() -> dict[str, int | str]:
        return {"status": "ok", "torch_threads": torch.get_num_threads()}

    return app
