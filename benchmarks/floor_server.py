"""The HTTP floor: the same two-file multipart upload, no image work at all (issue 5).

    uvicorn benchmarks.floor_server:create_app --factory --port 8002

Reads both parts and answers a constant JSON body. What it sustains is the most any image
service can do through FastAPI + uvicorn on this machine with this load generator; the gap
between it and the service is decoding, inference and the service's own bookkeeping.
"""

from __future__ import annotations

from fastapi import FastAPI, UploadFile

ANSWER = {"distance": 0.5, "similarity": 0.5}


def create_app() -> FastAPI:
    app = FastAPI(title="HTTP floor")

    @app.post("/similarity")
    async def similarity(image_a: UploadFile, image_b: UploadFile) -> dict[str, float]:
        await image_a.read()
        await image_b.read()
        return ANSWER

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
