"""Run the service with uvicorn, configured from Settings (IMGSIM_* variables) or flags.

    python -m app                              # IMGSIM_HOST / IMGSIM_PORT / IMGSIM_WORKERS
    python -m app --host 0.0.0.0 --port 8000 --workers 2
    python -m app --workers auto               # one worker process per usable core

With more than one worker, the processes share their Prometheus metrics through files in a
private temporary directory (PROMETHEUS_MULTIPROC_DIR, removed at exit), so /metrics counts
every worker whichever one answers the scrape. What else is per worker: docs/serving.md.

SIGTERM shuts down gracefully: uvicorn stops accepting, in-flight requests finish, the lifespan
marks the service not ready and drains the batchers, and the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from types import FrameType

import uvicorn

from app.config import Settings
from app.connections import uvicorn_options
from app.observability import configure_logging

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument(
        "--workers",
        type=_workers,
        default=settings.workers,
        help="uvicorn processes, or 'auto' (0): one per usable core",
    )
    args = parser.parse_args(argv)
    workers = settings.model_copy(update={"workers": args.workers}).worker_processes()

    configure_logging(
        json_logs=settings.log_json,
        level=settings.log_level,
        queue_max=settings.log_queue_max,
        flush_timeout_s=settings.log_flush_timeout_s,
    )
    # uvicorn re-raises the SIGTERM it handled once it has shut down; without a handler of ours
    # that would kill the process with status -15 after a perfectly clean shutdown.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    options = {
        "host": args.host,
        "port": args.port,
        "log_config": None,  # keep our JSON logging
        "access_log": False,  # app.observability writes one access line per request
        # In-flight requests get their own deadline plus a margin, then are cancelled.
        "timeout_graceful_shutdown": math.ceil(settings.request_timeout_s) + 5,
        **uvicorn_options(settings),  # header size and timeouts, open connections
    }
    # Worker processes build their Settings from the environment: tell them how many there
    # are (resolved, not "auto"), so each takes its share of the cores for inference
    # (Settings.inference_workers_for).
    os.environ["IMGSIM_WORKERS"] = str(workers)
    # prometheus_client picks its mode when imported: set before any worker starts. A directory
    # of our own, fresh each start: files left by an earlier run would be counted again.
    metrics_dir = tempfile.mkdtemp(prefix="imgsim-metrics-") if workers > 1 else None
    if metrics_dir is None:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        logger.info("%d worker processes; shared metrics in %s", workers, metrics_dir)
    try:
        if workers > 1:
            # Each worker process builds its own app (and loads every model) from IMGSIM_*.
            uvicorn.run("app.main:create_app", factory=True, workers=workers, **options)
        else:
            # Imported here: with --workers the supervisor process never needs torch (~700 MB).
            from app.main import create_app

            uvicorn.run(create_app(settings), **options)
    except KeyboardInterrupt:
        return 130
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _workers(value: str) -> int:
    """--workers: a count, or "auto" (0) for one per usable core."""
    if value == "auto":
        return 0
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: a number of processes, or 'auto'")
    return count


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    sys.exit(main())
