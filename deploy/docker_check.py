"""`make docker-check`: build both images and run them the way a user would, on a real engine.

    make docker-check                                    # = python deploy/docker_check.py
    python deploy/docker_check.py --skip-without-engine  # .ci/run: pass, saying so, without Docker

Steps, each timed (docs/deployment.md has the measured times and image sizes):
  1. build the `runtime` and `train` targets: on a machine with ../shared/tools/docker-local.sh
     (no container registry) with the local base image it prints, and with pip's default index
     when PyTorch's CPU index is unreachable; elsewhere with the Dockerfile's own defaults;
  2. run the runtime image hardened (--read-only --tmpfs /tmp --cap-drop ALL --security-opt
     no-new-privileges) on a free port given by IMGSIM_PORT, with a named volume for its state,
     and wait for Docker's own health status to turn `healthy`;
  3. /verify the README's example pairs; the serving extras (psycopg, faiss, onnxruntime)
     import; the process runs as a non-root uid with no capabilities, the root file system
     refuses writes, the state volume takes them;
  4. the same image under `--cpus 1` serves the cifar10 model with one inference worker, where
     the container without a quota gets one per core (GET /models);
  5. the train image trains a tiny model on a mounted folder of real digits
     (tests/fixtures/mnist_small) into a mounted output folder;
  6. the runtime image serves that model and answers /verify with it.

Every container runs with `--network host` (the local engine has no bridge network) and the
server listens on 127.0.0.1 only. Containers, the volume and the temporary folder are removed at
the end, pass or fail; the images are kept (tagged imgsim:check, imgsim-train:check), so a rerun
only rebuilds what changed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DIGITS = ROOT / "tests" / "fixtures" / "mnist_small"
DOCKER_LOCAL = ROOT.parent / "shared" / "tools" / "docker-local.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
RUNTIME_TAG, TRAIN_TAG = "imgsim:check", "imgsim-train:check"
HARDENED = [
    "--network=host",
    "--read-only",
    "--tmpfs=/tmp",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
]
# Docker 20.10 (Debian's) has no --health-start-interval: the image's 30 s interval would make
# every start here wait 30 s for the first check. The check's command is the image's own.
FAST_HEALTH = ["--health-interval=2s"]
HEALTHY_TIMEOUT_S = 300.0  # boot loads and warms up both models; slow on a busy 2-core machine
BUILD_TIMEOUT_S = 3600.0  # the first build downloads torch (~4 GB with the default index)

# README's examples: (image_a, image_b, model, same)
PAIRS = [
    ("seven_a.png", "seven_b.png", "mnist", True),
    ("seven_a.png", "two.png", "mnist", False),
    ("cat_a.jpg", "cat_b.jpg", "cifar10", True),
    ("cat_a.jpg", "ship.jpg", "cifar10", False),
]


class CheckFailed(Exception):
    pass


class NoEngine(Exception):
    pass


def log(message: str) -> None:
    print(f"docker-check: {message}", flush=True)


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise CheckFailed(f"docker {' '.join(args[:3])} ...: {proc.stderr.strip()[-2000:]}")
    return proc.stdout.strip()


def engine_up() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_engine(docker_local: Path) -> str | None:
    """Start the engine if needed; the base image tag to build from, or None for the Dockerfile's
    own (python:3.11-slim from a registry)."""
    if docker_local.is_file():
        # Installs and starts the engine where needed, builds the base image; idempotent.
        log(f"engine and base image from {docker_local}")
        proc = subprocess.run(
            ["bash", str(docker_local)], capture_output=True, text=True, timeout=900, check=False
        )
        if proc.returncode != 0 or not engine_up():
            raise NoEngine(f"{docker_local} failed: {proc.stderr.strip()[-1000:]}")
        return proc.stdout.strip().splitlines()[-1]
    if shutil.which("docker") is None:
        raise NoEngine("no docker command on PATH")
    if not engine_up():
        raise NoEngine("`docker info` fails: no Docker engine is running")
    return None


def reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status == 200
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Check:
    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.run_id = f"imgsim-check-{os.getpid()}"
        self.containers: list[str] = []
        self.volumes: list[str] = []
        self.times: list[tuple[str, float]] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        log(f"{name} ...")
        started = time.monotonic()
        yield
        self.times.append((name, time.monotonic() - started))
        log(f"{name}: ok ({self.times[-1][1]:.0f} s)")

    # --- images ---------------------------------------------------------------------------

    def build(self, target: str, tag: str, build_args: dict[str, str]) -> None:
        args = [a for k, v in build_args.items() for a in ("--build-arg", f"{k}={v}")]
        # BuildKit where its buildx plugin is installed; the classic builder (all Debian's
        # docker.io has) reads the same Dockerfile.
        buildx = subprocess.run(["docker", "buildx", "version"], capture_output=True, check=False)
        buildkit = os.environ.get("DOCKER_BUILDKIT", "1" if buildx.returncode == 0 else "0")
        out = self.scratch / f"build-{target}.log"
        with out.open("w") as f:
            proc = subprocess.run(
                ["docker", "build", "--network=host", *args, "--target", target, "-t", tag, "."],
                cwd=ROOT,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT_S,
                env={**os.environ, "DOCKER_BUILDKIT": buildkit},
                check=False,
            )
        if proc.returncode != 0:
            tail = "\n".join(out.read_text().splitlines()[-40:])
            raise CheckFailed(f"docker build --target {target} failed:\n{tail}")

    def image_size_mb(self, tag: str) -> float:
        return int(docker("image", "inspect", "-f", "{{.Size}}", tag)) / 1e6

    # --- containers -----------------------------------------------------------------------

    def serve(self, role: str, port: int, *options: str) -> str:
        """Start the runtime image on 127.0.0.1:port, hardened; its container id."""
        cid = docker(
            "run",
            "--detach",
            f"--name={self.run_id}-{role}",
            *HARDENED,
            *FAST_HEALTH,
            "--env=IMGSIM_HOST=127.0.0.1",
            f"--env=IMGSIM_PORT={port}",
            *options,
            RUNTIME_TAG,
        )
        self.containers.append(cid)
        return cid

    def wait_healthy(self, cid: str) -> None:
        """Until Docker's health check (the image's HEALTHCHECK command) says `healthy`."""
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        while time.monotonic() < deadline:
            state = json.loads(docker("inspect", "-f", "{{json .State}}", cid))
            health = state.get("Health") or {}
            if health.get("Status") == "healthy":
                return
            if not state["Running"] or health.get("Status") == "unhealthy":
                checks = [entry.get("Output", "") for entry in health.get("Log", [])[-3:]]
                raise CheckFailed(
                    f"container {cid[:12]}: {health.get('Status') or state['Status']}, "
                    f"health checks {checks}\n{self.logs(cid)}"
                )
            time.sleep(1)
        raise CheckFailed(f"container {cid[:12]} not healthy in {HEALTHY_TIMEOUT_S:.0f} s")

    def logs(self, cid: str) -> str:
        proc = subprocess.run(
            ["docker", "logs", "--tail", "30", cid], capture_output=True, text=True, check=False
        )
        return (proc.stdout + proc.stderr)[-4000:]

    def exec(self, cid: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["docker", "exec", cid, *argv], capture_output=True, text=True, timeout=60, check=False
        )
        if check and proc.returncode != 0:
            raise CheckFailed(f"{' '.join(argv)} in {cid[:12]}: {proc.stderr.strip()}")
        return proc

    def cleanup(self) -> None:
        for cid in self.containers:
            subprocess.run(["docker", "rm", "-f", "-v", cid], capture_output=True, check=False)
        for volume in self.volumes:
            subprocess.run(["docker", "volume", "rm", volume], capture_output=True, check=False)


# --- what is checked in a running container -------------------------------------------------


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def verify_examples(base: str) -> None:
    for a, b, model, same in PAIRS:
        files = {
            "image_a": (a, (EXAMPLES / a).read_bytes()),
            "image_b": (b, (EXAMPLES / b).read_bytes()),
        }
        r = httpx.post(f"{base}/verify", files=files, data={"model": model}, timeout=30)
        expect(r.status_code == 200, f"/verify {a} {b}: {r.status_code} {r.text}")
        expect(r.json()["same"] is same, f"/verify {a} {b} ({model}): {r.json()}, expected {same}")


def process_status(check: Check, cid: str) -> dict[str, str]:
    """/proc/1/status of the container's main process (the server), as fields."""
    text = check.exec(cid, "cat", "/proc/1/status").stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def check_hardening(check: Check, cid: str) -> str:
    status = process_status(check, cid)
    uids = status["Uid"].split()
    expect(all(u != "0" for u in uids), f"the server runs as uid {uids}")
    expect(int(status["CapEff"], 16) == 0, f"effective capabilities {status['CapEff']}")
    expect(status.get("NoNewPrivs", "").strip() == "1", "no-new-privileges is not in force")
    root_write = check.exec(cid, "touch", "/srv/probe", check=False)
    expect(root_write.returncode != 0, "the root file system accepted a write")
    check.exec(cid, "sh", "-c", 'touch "$IMGSIM_DATA_DIR/probe" && rm "$IMGSIM_DATA_DIR/probe"')
    return uids[0]


def model_info(base: str, name: str) -> dict:
    r = httpx.get(f"{base}/models", timeout=30)
    expect(r.status_code == 200, f"/models: {r.status_code} {r.text}")
    found = {m["name"]: m for m in r.json()["models"]}
    expect(name in found, f"/models lists {sorted(found)}, not {name}")
    return found[name]


def in_container_cores(check: Check, cid: str) -> tuple[int, float | None]:
    code = "from app.config import usable_cores, cgroup_cpu_quota as q; print(usable_cores(), q())"
    cores, quota = check.exec(cid, "python", "-c", code).stdout.split()
    return int(cores), None if quota == "None" else float(quota)


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace, check: Check) -> None:
    with check.step("engine"):
        base_image = args.python_image or start_engine(Path(args.docker_local))
    build_args: dict[str, str] = {}
    if base_image:
        build_args["PYTHON_IMAGE"] = base_image
    index = args.torch_index_url
    if index is None:
        index = CPU_INDEX if reachable(f"{CPU_INDEX}/torch/") else ""
        log(f"PyTorch's CPU index {'reachable' if index else 'unreachable: default index'}")
    if index != CPU_INDEX:
        build_args["TORCH_INDEX_URL"] = index
    log(f"build arguments: {build_args or 'the Dockerfile defaults'}")

    with check.step("build runtime"):
        check.build("runtime", RUNTIME_TAG, build_args)
    with check.step("build train"):
        check.build("train", TRAIN_TAG, build_args)
    sizes = {tag: check.image_size_mb(tag) for tag in (RUNTIME_TAG, TRAIN_TAG)}

    volume = f"{check.run_id}-data"
    check.volumes.append(docker("volume", "create", volume))
    port, port_1cpu = free_port(), free_port()
    base, base_1cpu = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port_1cpu}"
    with check.step("runtime healthy (hardened, and with --cpus 1)"):
        # Both boot at once: they share the machine's cores either way.
        cid = check.serve("api", port, f"--volume={volume}:/srv/data")
        cid_1cpu = check.serve("api-1cpu", port_1cpu, "--cpus=1")
        check.wait_healthy(cid)
        check.wait_healthy(cid_1cpu)
    with check.step("verify examples, non-root, read-only"):
        verify_examples(base)
        # The serving extras: IMGSIM_GALLERY_URL=postgresql://... needs psycopg; the ONNX engine
        # onnxruntime.
        check.exec(cid, "python", "-c", "import psycopg, faiss, onnxruntime")
        uid = check_hardening(check, cid)
        log(f"server uid {uid}, no capabilities, read-only root, state volume writable")
        memory = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", cid)
        log(f"memory after the examples (both models loaded): {memory}")
    with check.step("CPU quota"):
        cores, quota = in_container_cores(check, cid)
        cores_1cpu, quota_1cpu = in_container_cores(check, cid_1cpu)
        expect(
            quota_1cpu == 1.0 and cores_1cpu == 1, f"--cpus 1: {cores_1cpu} cores ({quota_1cpu})"
        )
        workers = model_info(base, "cifar10")["inference_workers"]
        workers_1cpu = model_info(base_1cpu, "cifar10")["inference_workers"]
        log(
            f"cifar10 inference workers: {workers} without a quota ({cores} cores), "
            f"{workers_1cpu} with --cpus 1"
        )
        expect(workers_1cpu == 1, f"--cpus 1 gives {workers_1cpu} inference workers")
        expect(workers == cores, f"no quota: {workers} workers for {cores} cores")
        if cores == 1:
            log("this machine has one core: the quota check cannot tell the two apart")
    for c in (cid, cid_1cpu):
        docker("stop", "-t", "20", c, timeout=60)

    out = check.scratch / "model_store"
    out.mkdir()
    user = "10001:10001" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"
    out.chmod(0o777)  # the container's user writes here
    with check.step("train a tiny model in the train image"):
        tiny = [
            *("--dataset", "folder:/data", "--channels", "1", "--image-size", "28"),
            *("--widths", "8", "16", "--embedding-dim", "16", "--batch-size", "64"),
            *("--epochs", "2", "--lr", "0.05", "--plots", "false"),
            # 2 epochs on 230 digits: too little for the trainer's collapse guard and small-data
            # batch rule (tested in tests/test_training.py); this checks the image, not the model.
            *("--force", "--min-steps-per-epoch", "0"),
            *("--out", "model_store/tiny"),
        ]
        proc = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                f"--name={check.run_id}-train",
                *HARDENED,
                "--tmpfs=/srv/runs",
                "--tmpfs=/srv/.cache",
                f"--user={user}",
                f"--volume={DIGITS}:/data:ro",
                f"--volume={out}:/srv/model_store",
                TRAIN_TAG,
                "python",
                "-m",
                "training.train",
                *tiny,
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        expect(proc.returncode == 0, f"training failed:\n{proc.stderr[-3000:]}")
        card = json.loads((out / "tiny" / "model.json").read_text())
    with check.step("serve the trained model"):
        port = free_port()
        cid = check.serve("api-trained", port, f"--volume={out}:/srv/model_store:ro")
        check.wait_healthy(cid)
        base = f"http://127.0.0.1:{port}"
        info = model_info(base, "tiny")
        expect(info["version"] == card["version"], f"serves {info['version']}, wrote {card}")
        seven, two = (
            sorted((DIGITS / "7").glob("*.png"))[0],
            sorted((DIGITS / "2").glob("*.png"))[0],
        )
        files = {"image_a": seven.read_bytes(), "image_b": two.read_bytes()}
        r = httpx.post(f"{base}/verify", files=files, data={"model": "tiny"}, timeout=30)
        expect(r.status_code == 200 and r.json()["model_version"] == card["version"], r.text)
        docker("stop", "-t", "20", cid, timeout=60)

    total = sum(seconds for _, seconds in check.times)
    for name, seconds in check.times:
        log(f"  {seconds:7.1f} s  {name}")
    log(f"  {total:7.1f} s  total")
    for tag, mb in sizes.items():
        log(f"  image {tag}: {mb:,.0f} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skip-without-engine",
        action="store_true",
        help="pass, saying so, when no Docker engine can be started (CI on a machine without one)",
    )
    parser.add_argument("--docker-local", default=str(DOCKER_LOCAL), help="engine + base script")
    parser.add_argument("--python-image", help="base image (default: docker-local's, or python)")
    parser.add_argument(
        "--torch-index-url", help="default: PyTorch's CPU index if reachable, else pip's default"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="imgsim-docker-check-") as tmp:
        check = Check(Path(tmp))
        try:
            run(args, check)
        except NoEngine as e:
            if args.skip_without_engine:
                log(f"SKIPPED: no Docker engine could be started here ({e})")
                return 0
            log(f"FAIL: no Docker engine: {e}")
            return 1
        except (CheckFailed, subprocess.TimeoutExpired, httpx.HTTPError) as e:
            log(f"FAIL: {e}")
            print(f"docker-check: {len(check.times)} passed, 1 failed", flush=True)
            return 1
        finally:
            check.cleanup()
            # Files the container's user wrote (uid 10001 when run as root) go with the folder.
            shutil.rmtree(Path(tmp) / "model_store", ignore_errors=True)
    print(f"docker-check: {len(check.times)} passed, 0 failed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
