"""TorchServe on the same model.pt: the peer row of ``make bench`` (issue 18).

    ts = TorchServe.prepare(model_dir, work_dir)       # None, with a printed reason, if it can't
    with ts.start(run_dir) as server: ...               # a Server on a free port; POST ts.path

Installed by the bench itself: Java from Debian's ``openjdk-17-jre-headless`` (apt-get, when
``java`` is missing and we are root) and PyPI ``torchserve`` + ``torch-model-archiver`` (pinned
below) into a virtual environment under the work directory (benchmarks/out/torchserve/). That
environment takes torch, numpy and Pillow from the bench's own interpreter through a .pth file,
so both servers run the very same torch build, and nothing is downloaded twice.

Settings, written down in :data:`SETTINGS` and tuned as the issue's side-by-side run was: 2
worker processes x 1 torch thread, dynamic batching (batch 16, 1 ms delay), bfloat16 autocast
where the CPU computes it natively, token auth and the metrics API off. The handler
(benchmarks/torchserve_handler.py) decodes with Pillow, runs one forward pass per batch and
answers distance and verdict at the card's threshold.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.loadgen import Request, build_request
from benchmarks.servers import HOST, Server, clean_env, free_port, process_tree

TORCHSERVE_PINS = ("torchserve==0.12.0", "torch-model-archiver==0.12.0")
JAVA_PACKAGE = "openjdk-17-jre-headless"
MODEL_NAME = "imgsim"
HANDLER = Path(__file__).with_name("torchserve_handler.py")
SETTINGS = {
    "workers": 2,  # processes: each has its own GIL, one per core
    "torch_threads": 1,
    "batch_size": 16,
    "max_batch_delay_ms": 1,
    "precision": "bfloat16 autocast where native, else float32",
}


class Unavailable(RuntimeError):
    """Java or TorchServe cannot be installed here: the row is skipped with this message."""


@dataclass
class TorchServe:
    venv: Path
    model_store: Path  # holds imgsim.mar
    work: Path

    path = f"/predictions/{MODEL_NAME}"

    @classmethod
    def prepare(cls, model_dir: Path, work: Path) -> TorchServe:
        """Install (once) and archive ``model_dir``; raises Unavailable with the reason."""
        work.mkdir(parents=True, exist_ok=True)
        ensure_java()
        venv = ensure_venv(work / "venv")
        store = work / f"store-{model_dir.name}"
        store.mkdir(exist_ok=True)
        archiver = venv / "bin" / "torch-model-archiver"
        cmd = [
            str(archiver),
            "--model-name", MODEL_NAME,
            "--version", "1.0",
            "--serialized-file", str(model_dir / "model.pt"),
            "--handler", str(HANDLER),
            "--extra-files", str(model_dir / "model.json"),
            "--export-path", str(store),
            "--force",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise Unavailable(f"torch-model-archiver failed: {done.stderr[-500:]}")
        return cls(venv, store, work)

    def config(self, port: int) -> Path:
        """config.properties for an inference API on ``port``."""
        model = {
            "defaultVersion": True,
            "marName": f"{MODEL_NAME}.mar",
            "minWorkers": SETTINGS["workers"],
            "maxWorkers": SETTINGS["workers"],
            "batchSize": SETTINGS["batch_size"],
            "maxBatchDelay": SETTINGS["max_batch_delay_ms"],
            "responseTimeout": 120,
        }
        lines = [
            f"inference_address=http://{HOST}:{port}",
            f"management_address=http://{HOST}:{free_port()}",
            f"metrics_address=http://{HOST}:{free_port()}",
            "disable_token_authorization=true",
            "enable_metrics_api=false",
            "disable_system_metrics=true",
            "install_py_dep_per_model=false",
            f"model_store={self.model_store}",
            f"load_models={MODEL_NAME}.mar",
            f"default_workers_per_model={SETTINGS['workers']}",
            "models=" + json.dumps({MODEL_NAME: {"1.0": model}}),
        ]
        path = self.work / f"config-{port}.properties"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, name: str, run_dir: Path) -> TorchServeServer:
        """TorchServe up with its workers ready (a first prediction answered)."""
        bin_dir = self.venv / "bin"
        env = clean_env(
            PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            VIRTUAL_ENV=str(self.venv),
            OMP_NUM_THREADS=str(SETTINGS["torch_threads"]),
            BENCH_TORCH_THREADS=str(SETTINGS["torch_threads"]),
            LOG_LOCATION=str(run_dir / f"{name}-logs"),
            METRICS_LOCATION=str(run_dir / f"{name}-logs"),
        )
        env.pop("PYTHONPATH", None)  # the workers must not see app/ or benchmarks/

        def cmd(port: int) -> list[str]:
            return [
                str(bin_dir / "torchserve"),
                "--start",
                "--foreground",
                "--ncs",
                "--disable-token-auth",
                "--ts-config", str(self.config(port)),
                "--model-store", str(self.model_store),
            ]  # fmt: skip

        server = Server.start(name, cmd, env, run_dir, ready_path="/ping", timeout_s=240)
        server.__class__ = TorchServeServer
        return server  # type: ignore[return-value]


class TorchServeServer(Server):
    """A Server whose stop also ends the Java frontend's worker processes."""

    def stop(self, timeout_s: float = 20.0) -> int | None:
        tree = process_tree(self.pid)
        code = super().stop(timeout_s)
        for pid in tree[1:]:  # only the processes this server started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return code


def wait_for_predictions(server: Server, req: Request, timeout_s: float = 240.0) -> None:
    """/ping turns healthy before the workers have loaded the model: send a real pair."""
    head, _, body = req.raw.partition(b"\r\n\r\n")
    headers = dict(
        line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line
    )
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            f"http://{HOST}:{server.port}{TorchServe.path}",
            data=body,
            headers={"Content-Type": headers["Content-Type"]},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                if r.status == 200:
                    return
        except OSError as e:
            last = str(e)
        time.sleep(0.5)
    raise Unavailable(f"TorchServe answered no prediction in {timeout_s:.0f} s ({last})")


def describe() -> str:
    """The settings as a table cell."""
    from app.precision import resolve

    return (
        f"{SETTINGS['workers']} workers x {SETTINGS['torch_threads']} thread, batch "
        f"{SETTINGS['batch_size']}, {SETTINGS['max_batch_delay_ms']} ms, {resolve('auto')}"
    )


def requests_for(
    pairs: list[tuple[tuple[str, str, bytes], tuple[str, str, bytes]]],
) -> list[Request]:
    """The /similarity bodies, sent to TorchServe's prediction path."""
    return [
        build_request(TorchServe.path, files=[("image_a", *a), ("image_b", *b)]) for a, b in pairs
    ]


def ensure_java() -> str:
    java = shutil.which("java")
    if java:
        return java
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise Unavailable(f"no java, and no root apt-get to install {JAVA_PACKAGE}")
    print(f"java missing: apt-get install -y {JAVA_PACKAGE}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([apt, "install", "-y", "-q", JAVA_PACKAGE], env=env, capture_output=True)
    java = shutil.which("java")
    if not java:
        raise Unavailable(f"apt-get install {JAVA_PACKAGE} failed")
    return java


def ensure_venv(venv: Path) -> Path:
    """A venv holding TorchServe, with this interpreter's site-packages (torch) visible."""
    if (venv / "bin" / "torchserve").is_file() and (
        venv / "bin" / "torch-model-archiver"
    ).is_file():
        return venv
    print(f"installing {' '.join(TORCHSERVE_PINS)} into {venv}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "imgsim_bench_shared.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", *TORCHSERVE_PINS],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise Unavailable(f"pip install {' '.join(TORCHSERVE_PINS)} failed: {done.stderr[-500:]}")
    return venv
