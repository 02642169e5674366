"""Service configuration: one ``Settings``, read from ``IMGSIM_*`` environment variables.

    IMGSIM_MODEL_STORE=model_store IMGSIM_API_KEYS=/run/secrets/imgsim_keys python -m app

``create_app(settings)`` takes it as an argument, so tests build their own ``Settings(...)``
instead of touching the environment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.artifact import EngineSetting
from app.precision import PrecisionSetting

# A model this slow per image is worth a worker per core (see Settings.inference_workers).
SPLIT_MIN_FORWARD_MS = 2.0


def usable_cores() -> int:
    """Cores this process may run on (a cpuset-limited container sees its own), not the host's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMGSIM_", extra="ignore")

    # Models
    model_store: Path = Path("model_store")  # holds <name>/{model.pt, model.json}
    default_model: str | None = None  # used when a request names none; None: "mnist", else first
    # State the service writes (threshold profiles, galleries); a volume in containers.
    data_dir: Path = Path("data")

    # Request limits
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0)  # per image part
    max_image_pixels: int = Field(40_000_000, gt=0)  # width*height, read from the header
    max_parts: int = Field(70, gt=0)  # multipart files per request (and text fields, separately)
    max_candidates: int = Field(64, gt=0)  # /similarity/one-to-many candidates
    max_matrix_images: int = Field(64, ge=2)  # /similarity/matrix images

    # Micro-batching, per model
    batch_max_size: int = Field(32, gt=0)  # images per forward pass
    batch_max_wait_ms: float = Field(2.0, ge=0)  # only waited for when the last batch was full
    queue_max: int = Field(256, gt=0)  # images waiting; beyond it 503 + Retry-After
    request_timeout_s: float = Field(10.0, gt=0)  # decode + queue + inference; then 503

    # Inference: each model gets `inference_workers` threads taking batches off its queue, each
    # running the forward pass on `torch_threads` cores. One thread per worker on purpose: on a
    # busy 2-core box a two-thread torch (OpenMP) team waits at every barrier for the core the
    # event loop holds, where two single-threaded workers just share the cores (A/B runs on
    # this project's 2-core machine, cifar10 at concurrency 32: 268 vs 235 pairs/s).
    # 0 workers = auto: cores / (processes x torch_threads) for a model whose one-image forward
    # takes at least SPLIT_MIN_FORWARD_MS, else 1; for a tiny model the hand-offs between
    # workers cost more than the second core gives back (mnist: 610 pairs/s with 1, 456 with 2).
    torch_threads: int = Field(1, gt=0)
    inference_workers: int = Field(0, ge=0)
    # Number format of the forward pass (app/precision.py): "auto" = bfloat16 on a CPU that
    # computes it natively (the cifar10 tower 1.4-1.8x as fast at batch 32-64, the same test
    # accuracy), else float32.
    inference_precision: PrecisionSetting = "auto"
    # What runs the forward pass (app/engines.py): "torchscript" (model.pt, the reference),
    # "onnx" (model.onnx on ONNX Runtime's CPU provider, where the model has one and
    # onnxruntime is installed) or "auto": the model card's `engine`, and where that is "auto"
    # too, whichever of the two is faster on this machine, timed at warm-up.
    inference_engine: EngineSetting = "auto"
    decode_threads: int = Field(2, gt=0)  # PIL releases the GIL while decoding
    cache_entries: int = Field(4096, ge=0)  # embeddings kept, LRU; 0 turns the cache off

    # Security
    # "k1,k2", '["k1", "k2"]' or a file with one key per line; "" = no auth
    api_keys: SecretStr = SecretStr("")
    cors_origins: Annotated[list[str], NoDecode] = []  # "https://a,https://b"; [] = CORS off

    # Process (used by `python -m app`)
    log_json: bool = True  # one JSON object per log line
    log_level: str = "INFO"
    host: str = "127.0.0.1"  # containers: IMGSIM_HOST=0.0.0.0
    port: int = Field(8000, gt=0, lt=65536)
    workers: int = Field(1, gt=0)  # uvicorn processes; each loads every model

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                return json.loads(value)
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @model_validator(mode="after")
    def _one_request_fits_the_queue(self) -> Settings:
        # A request queues all its images at once; more than queue_max could never be served.
        largest = max(self.max_matrix_images, self.max_candidates + 1)
        if self.queue_max < largest:
            raise ValueError(
                f"queue_max ({self.queue_max}) must be >= {largest}, the largest request"
            )
        return self

    def inference_workers_for(self, forward_ms: float) -> int:
        """Inference workers for a model whose one-image forward pass takes ``forward_ms``."""
        if self.inference_workers:
            return self.inference_workers
        if forward_ms < SPLIT_MIN_FORWARD_MS:
            return 1
        return max(1, usable_cores() // (self.workers * self.torch_threads))

    def api_key_set(self) -> frozenset[str]:
        """The accepted API keys: a JSON list, a file with one key per line, or comma-separated."""
        raw = self.api_keys.get_secret_value().strip()
        if not raw:
            return frozenset()
        if raw.startswith("["):
            keys = json.loads(raw)
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise ValueError("IMGSIM_API_KEYS: a JSON value must be a list of strings")
        elif "," not in raw and Path(raw).is_file():
            keys = [k for k in Path(raw).read_text().splitlines() if not k.startswith("#")]
        else:
            keys = raw.split(",")
        return frozenset(k.strip() for k in keys if k.strip())
