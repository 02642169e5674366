"""Service configuration: one ``Settings``, read from ``IMGSIM_*`` environment variables.

    IMGSIM_MODEL_STORE=model_store IMGSIM_API_KEYS=/run/secrets/imgsim_keys python -m app

``create_app(settings)`` takes it as an argument, so tests build their own ``Settings(...)``
instead of touching the environment.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.artifact import EngineSetting
from app.precision import PrecisionSetting

# A model this costly per image is worth a worker per core (see Settings.inference_workers).
# Between the shipped ones: mnist 39 MFLOP (one worker), cifar10 473 (with its flip TTA).
SPLIT_MIN_MFLOPS = 100.0


def usable_cores(root: Path = Path("/")) -> int:
    """Cores this process may keep busy: its CPU affinity (a cpuset-limited container sees its
    own), capped by its cgroup's CPU quota (`docker run --cpus`, a Kubernetes CPU limit), whose
    CPUs the host's core count knows nothing about. ``root`` is where /proc and /sys are found
    (tests pass a fake tree)."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is None:
        return cores
    # Rounded down: a worker beyond the quota does not add CPU time, it makes the kernel throttle
    # the whole process for the rest of each 100 ms period (latency spikes at 1.5 CPUs, 2 workers).
    return max(1, min(cores, math.floor(quota)))


def cgroup_cpu_quota(root: Path = Path("/")) -> float | None:
    """CPUs per period this process's cgroups allow (the tightest of its cgroup and their
    parents), from cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``;
    None when no quota is set or the files cannot be read."""
    try:
        memberships = (root / "proc/self/cgroup").read_text().splitlines()
        mountinfo = (root / "proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    # /proc/self/cgroup: "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1), one line per hierarchy.
    v2_path: str | None = None
    v1_paths: dict[str, str] = {}
    for line in memberships:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2_path = path
        for controller in controllers.split(","):
            v1_paths[controller] = path
    quotas = []
    for line in mountinfo:
        # "36 25 0:30 /docker/abc /sys/fs/cgroup/cpu ro,nosuid - cgroup cgroup rw,cpu,cpuacct"
        fields, _, fs = line.partition(" - ")
        fields_list, fs_list = fields.split(), fs.split()
        if len(fields_list) < 5 or len(fs_list) < 3:
            continue
        mount_root, mount_point = fields_list[3], fields_list[4]
        if fs_list[0] == "cgroup2" and v2_path is not None:
            quotas.append(_walk_quota(root, mount_root, mount_point, v2_path, _read_cpu_max))
        elif fs_list[0] == "cgroup" and "cpu" in fs_list[2].split(",") and "cpu" in v1_paths:
            quotas.append(_walk_quota(root, mount_root, mount_point, v1_paths["cpu"], _read_cfs))
    found = [q for q in quotas if q is not None]
    return min(found) if found else None


def _walk_quota(
    root: Path, mount_root: str, mount_point: str, cgroup: str, read: Callable[[Path], float | None]
) -> float | None:
    """The tightest quota from the process's cgroup directory up to the mount point. Inside a
    container the mount's root is the container's own cgroup (mountinfo's 4th field), so the
    path in /proc/self/cgroup is taken relative to it."""
    rel = os.path.relpath(cgroup, mount_root)
    top = root / mount_point.lstrip("/")
    directory = top if rel == "." or rel.startswith("..") else top / rel
    if not directory.is_dir():  # another cgroup namespace's view: the mount is all we can see
        directory = top
    found = []
    while True:
        quota = read(directory)
        if quota is not None:
            found.append(quota)
        if directory == top or top not in directory.parents:
            break
        directory = directory.parent
    return min(found) if found else None


def _read_cpu_max(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]  # "max 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _read_cfs(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())  # -1: no quota
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMGSIM_", extra="ignore")

    # Models
    model_store: Path = Path("model_store")  # holds <name>/{model.pt, model.json}
    default_model: str | None = None  # used when a request names none; None: "mnist", else first
    # State the service writes (threshold profiles, galleries); a volume in containers.
    data_dir: Path = Path("data")

    # Galleries (docs/galleries.md): "" = SQLite at data_dir/galleries.db; or
    # "postgresql://user:pass@host/db" (pgvector), which replicas can share.
    gallery_url: str = ""
    # A gallery of this many images or more is searched approximately (faiss HNSW in memory,
    # pgvector HNSW in PostgreSQL), then re-ranked exactly; below it, one exact matrix product.
    gallery_ann_min_images: int = Field(50_000, gt=0)
    # pgvector's HNSW candidate list (hnsw.ef_search) for an identify: larger finds more of the
    # true nearest subjects, slower (recall against latency: benchmarks/RESULTS.md, galleries).
    gallery_ef_search: int = Field(200, ge=10, le=1000)

    # Request limits
    max_upload_bytes: int = Field(10 * 1024 * 1024, gt=0)  # per image part
    max_image_pixels: int = Field(40_000_000, gt=0)  # width*height, read from the header
    max_parts: int = Field(70, gt=0)  # multipart files per request (and text fields, separately)
    max_candidates: int = Field(64, gt=0)  # /similarity/one-to-many candidates
    max_matrix_images: int = Field(64, ge=2)  # /similarity/matrix images
    # Pixels (as declared by the headers, after a JPEG's draft scaling) that one request may
    # have decoded in total: five images at max_image_pixels. One matrix of 64 40 MP images was
    # 70 s of CPU and 1.9 GB (issue 12); beyond it the request gets 413 naming this setting.
    max_request_pixels: int = Field(200_000_000, gt=0)
    # Request bodies held in memory (or spooled to /tmp, RAM in a container) across all requests
    # at once, counted as they are read; beyond it 503 + Retry-After. A request alone is always
    # admitted up to its own cap (files x max_upload_bytes), so the largest one still works.
    upload_budget_bytes: int = Field(256 * 1024 * 1024, gt=0)

    # Connections (docs/security.md). Used by `python -m app`, which runs uvicorn's httptools
    # server with these limits (app/connections.py); the header ones and the body timeouts are ours.
    max_header_bytes: int = Field(32 * 1024, ge=1024)  # request line + headers; then 431/close
    header_timeout_s: float = Field(10.0, gt=0)  # to send the request line and all headers
    body_idle_timeout_s: float = Field(10.0, gt=0)  # longest pause between two body chunks
    body_timeout_s: float = Field(60.0, gt=0)  # to send a whole upload (10 MB at 1.4 Mbit/s)
    keep_alive_s: int = Field(5, gt=0)  # an idle keep-alive connection is closed after this
    max_connections: int = Field(512, gt=0)  # open connections per process; then 503
    # POST /calibrate: a zip of pairs.csv + images. Each image is also held to max_upload_bytes;
    # the caps bound memory against zip bombs (declared sizes are checked, then enforced on read).
    max_calibrate_zip_bytes: int = Field(50 * 1024 * 1024, gt=0)  # the upload itself
    max_calibrate_entries: int = Field(2000, gt=0)  # files in the zip
    max_calibrate_pairs: int = Field(5000, gt=0)  # rows of pairs.csv
    max_calibrate_total_bytes: int = Field(100 * 1024 * 1024, gt=0)  # uncompressed images read
    min_calibrate_pairs_per_label: int = Field(5, gt=0)  # same and different pairs, each
    # /similarity/sets: images per set (two sets per request). Embedded in chunks that fit
    # queue_max, so unlike the routes above a set need not fit the queue in one go.
    max_set_images: int = Field(256, ge=2)

    # Micro-batching, per model
    batch_max_size: int = Field(32, gt=0)  # images per forward pass
    batch_max_wait_ms: float = Field(2.0, ge=0)  # only waited for when the last batch was full
    queue_max: int = Field(256, gt=0)  # images waiting; beyond it 503 + Retry-After
    request_timeout_s: float = Field(10.0, gt=0)  # decode + queue + inference; then 503

    # Inference: each model gets `inference_workers` threads taking batches off its queue, each
    # running the forward pass on `torch_threads` cores. One torch thread per worker: on a busy
    # box a torch (OpenMP) team waits at every barrier for the core the event loop holds, where
    # single-threaded workers just share the cores (measurements: docs/serving.md).
    # 0 workers = auto: cores / (processes x torch_threads) for a model whose one-image forward
    # pass costs at least SPLIT_MIN_MFLOPS (counted once at start-up, so the same model gets
    # the same count on every start), else 1: for a small model the hand-offs between workers
    # cost more than a second core gives back.
    torch_threads: int = Field(1, gt=0)
    inference_workers: int = Field(0, ge=0)
    # Number format of the forward pass (app/precision.py): "auto" = bfloat16 on a CPU that
    # computes it natively, else float32; a model whose card records a bfloat16 accuracy loss
    # over 0.5 points runs in float32 regardless.
    inference_precision: PrecisionSetting = "auto"
    # What runs the forward pass (app/engines.py): "torchscript" (model.pt, the reference),
    # "onnx" (model.onnx on ONNX Runtime's CPU provider, where the model has one and
    # onnxruntime is installed) or "auto": the model card's `engine`, and where that is "auto"
    # too, whichever of the two is faster on this machine, timed at warm-up.
    inference_engine: EngineSetting = "auto"
    decode_threads: int = Field(2, gt=0)  # PIL releases the GIL while decoding
    # Images waiting for a decode thread across requests (app/embedding.py DecodePool); a
    # request whose images do not fit gets 503 + Retry-After at once.
    decode_queue_max: int = Field(256, gt=0)
    # The c=1 fast path (docs/serving-engine.md): a request of at most 2 distinct images, each
    # at most this many bytes, for a model whose one-image forward pass measured at warm-up at
    # most inline_max_forward_ms, sent while that model and the decode pool are idle, is decoded
    # and embedded on the event loop itself, skipping three thread hand-offs. 0 turns it off.
    inline_max_bytes: int = Field(64 * 1024, ge=0)
    inline_max_forward_ms: float = Field(2.0, ge=0)
    cache_entries: int = Field(4096, ge=0)  # embeddings kept, LRU; 0 turns the cache off
    # Drift monitor (app/drift.py): running embedding statistics per model cover the last
    # window to 2x window images; 0 turns it off.
    drift_window_images: int = Field(10_000, ge=0)

    # Security
    # "k1,k2", '["k1", "k2"]' or a file with one key per line; "" = no auth
    api_keys: SecretStr = SecretStr("")
    # Keys that may also read /metrics (same formats as api_keys). With any key configured,
    # /metrics is for these only: its counters (cache hits) would tell one client about another's
    # uploads. No keys at all: /metrics is open, like the rest.
    admin_keys: SecretStr = SecretStr("")
    cors_origins: Annotated[list[str], NoDecode] = []  # "https://a,https://b"; [] = CORS off

    # Process (used by `python -m app`)
    log_json: bool = True  # one JSON object per log line
    log_level: str = "INFO"
    # Log records waiting for the writer thread; beyond it records are dropped and counted (a
    # stderr nobody reads must not grow the process), and the exit flush waits at most this long.
    log_queue_max: int = Field(10_000, gt=0)
    log_flush_timeout_s: float = Field(2.0, gt=0)
    host: str = "127.0.0.1"  # containers: IMGSIM_HOST=0.0.0.0
    port: int = Field(8000, gt=0, lt=65536)
    # uvicorn processes, each loading every model; 0 = auto: one per usable core
    # (`python -m app --workers auto`). Shared and per-worker state: docs/serving.md.
    workers: int = Field(1, ge=0)

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
        for name in ("queue_max", "decode_queue_max"):
            if getattr(self, name) < largest:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must be >= {largest}, the largest request"
                )
        return self

    def inference_workers_for(self, mflops: float) -> int:
        """Inference workers for a model whose one-image forward pass costs ``mflops``."""
        if self.inference_workers:
            return self.inference_workers
        if mflops < SPLIT_MIN_MFLOPS:
            return 1
        return max(1, usable_cores() // (self.worker_processes() * self.torch_threads))

    def worker_processes(self) -> int:
        """Serving processes: ``workers``, or with 0 (auto) one per usable core."""
        return self.workers or usable_cores()

    def api_key_set(self) -> frozenset[str]:
        """The accepted API keys: a JSON list, a file with one key per line, or comma-separated."""
        return _parse_keys(self.api_keys, "IMGSIM_API_KEYS")

    def admin_key_set(self) -> frozenset[str]:
        """Keys that may read /metrics (and call everything else)."""
        return _parse_keys(self.admin_keys, "IMGSIM_ADMIN_KEYS")


def _parse_keys(secret: SecretStr, variable: str) -> frozenset[str]:
    raw = secret.get_secret_value().strip()
    if not raw:
        return frozenset()
    if raw.startswith("["):
        keys = json.loads(raw)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"{variable}: a JSON value must be a list of strings")
    elif "," not in raw and Path(raw).is_file():
        keys = [k for k in Path(raw).read_text().splitlines() if not k.startswith("#")]
    else:
        keys = raw.split(",")
    return frozenset(k.strip() for k in keys if k.strip())
