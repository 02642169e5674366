"""Issue 12: what one hostile client could do, each attack replayed against a real process.

``python -m app`` (uvicorn as shipped: httptools, our header cap and timeout, our limits) on a
free port on 127.0.0.1, configured through IMGSIM_* with small limits and timeouts so each attack
is cheap.
Nothing here asserts a duration: a server that fails an attack does not answer, answers 200
where it must refuse, or keeps doing work, and the assertion sees that.
"""

from __future__ import annotations

import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from image_bytes import png, tiled_tiff
from PIL import Image, PngImagePlugin

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLIENT, OTHER, ADMIN = "client-key-0123456789", "other-key-abcdef012", "admin-key-9876543210"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path | None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log else ""

    def peak_rss_mb(self) -> float:
        """VmHWM: the most resident memory the process ever had."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def serve(model_store: Path, log: Path | None, **settings: object) -> Server:
    """``python -m app`` with IMGSIM_<KEY>=value for each setting; stderr to ``log`` (None: a
    pipe nobody reads)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSIM_")}
    env |= {f"IMGSIM_{k.upper()}": str(v) for k, v in settings.items()}
    env |= {"IMGSIM_MODEL_STORE": str(model_store), "IMGSIM_PORT": str(port)}
    env |= {"IMGSIM_INFERENCE_PRECISION": "float32", "PYTHONPATH": str(ROOT)}
    stderr = log.open("wb") if log else subprocess.PIPE
    proc = subprocess.Popen(
        [sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
    )
    server = Server(proc, port, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {server.log_text()[-2000:]}")
        try:
            if httpx.get(f"{server.base}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise AssertionError("server never became ready")


@pytest.fixture(scope="module")
def guarded(model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Keys on, plain-text logs, and small limits and timeouts."""
    log = tmp_path_factory.mktemp("guarded") / "stderr.log"
    server = serve(
        model_store,
        log,
        api_keys=f"{CLIENT},{OTHER}",
        admin_keys=ADMIN,
        log_json="false",
        max_header_bytes=8192,
        header_timeout_s=1,
        body_idle_timeout_s=1.5,
        body_timeout_s=6,
        upload_budget_bytes=3 * 1024 * 1024,
        max_request_pixels=20_000_000,
    )
    yield server
    server.stop()


def raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=15)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


# --- 3. header size -----------------------------------------------------------------------------


def test_a_header_over_the_cap_is_refused_and_the_connection_closed(guarded):
    with raw(guarded.port) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 256 * 1024)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while still sending: fine too
        answer = read_until_closed(sock)
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert httpx.get(f"{guarded.base}/healthz", timeout=10).status_code == 200


def test_a_head_under_the_cap_is_served_in_pieces(guarded):
    # max_header_bytes is 8192: 7,000 bytes of headers, sent in small pieces, are still served.
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 7000 + b"\r\n\r\n"
    with raw(guarded.port) as sock:
        for i in range(0, len(head), 500):
            sock.sendall(head[i : i + 500])
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


# --- 4. slow clients ----------------------------------------------------------------------------


def test_connections_with_half_sent_headers_are_closed(guarded):
    socks = [raw(guarded.port) for _ in range(20)]
    for sock in socks:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    try:
        for sock in socks:
            # header_timeout_s is 1: recv sees the close long before its own 15 s timeout.
            assert read_until_closed(sock) == b""
    finally:
        for sock in socks:
            sock.close()


def multipart_head(boundary: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()


def post_head(path: str, boundary: str, length: int, key: str = CLIENT) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def test_a_trickled_body_is_answered_408_and_closed(guarded):
    boundary = uuid.uuid4().hex
    with raw(guarded.port) as sock:
        sock.sendall(post_head("/embed", boundary, 10_000) + multipart_head(boundary))
        answer = b""
        for _ in range(60):  # a byte every 0.5 s: 30 s, far past body_timeout_s (6)
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
            sock.settimeout(0.5)
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            break
        sock.settimeout(15)
        answer += read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"body_timeout_s" in answer


def test_a_stalled_body_is_answered_408(guarded):
    boundary = uuid.uuid4().hex
    with raw(guarded.port) as sock:
        sock.sendall(post_head("/embed", boundary, 10_000) + multipart_head(boundary))
        answer = read_until_closed(sock)  # nothing more is sent
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"body_idle_timeout_s" in answer


# --- 5. upload memory ---------------------------------------------------------------------------


def padded_png(total: int) -> bytes:
    """A valid PNG followed by zeros up to ``total`` bytes (decoders ignore what follows)."""
    data = png(size=(28, 28), mode="L")
    return data + bytes(total - len(data))


def test_uploads_in_flight_share_one_byte_budget(guarded):
    boundary = uuid.uuid4().hex
    held = multipart_head(boundary) + bytes(2 * 1024 * 1024)  # 2 of the 3 MB budget
    first = raw(guarded.port)
    stop = threading.Event()

    def drip() -> None:  # a byte now and then: within body_idle_timeout_s, so it is kept
        while not stop.wait(0.5):
            try:
                first.sendall(b"x")
            except OSError:
                return

    dripping = threading.Thread(target=drip)
    try:
        first.sendall(post_head("/embed", boundary, len(held) + 1024) + held)
        dripping.start()
        time.sleep(0.5)  # the server reads what was sent; the request waits for the rest
        files = {"image": ("b.png", padded_png(2 * 1024 * 1024), "image/png")}
        r = httpx.post(
            f"{guarded.base}/embed", files=files, headers={"X-API-Key": OTHER}, timeout=30
        )
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] and "upload_budget_bytes" in r.json()["detail"]
    finally:
        stop.set()
        first.close()  # the held request ends, and gives its bytes back
    for _ in range(50):
        r = httpx.post(
            f"{guarded.base}/embed", files=files, headers={"X-API-Key": OTHER}, timeout=30
        )
        if r.status_code != 503:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text


# --- 1. decode budget per request ---------------------------------------------------------------


def test_a_request_over_the_pixel_budget_is_413_naming_it(guarded):
    big = [png(size=(3000, 3000), mode="L", seed=i) for i in range(3)]  # 27 M of 20 M allowed
    files = [("images", (f"{i}.png", data, "image/png")) for i, data in enumerate(big)]
    r = httpx.post(
        f"{guarded.base}/similarity/matrix", files=files, headers={"X-API-Key": CLIENT}, timeout=60
    )
    assert r.status_code == 413, r.text
    assert "max_request_pixels" in r.json()["detail"]


# --- 2. TIFF tile bomb --------------------------------------------------------------------------


def test_a_tiff_tile_bomb_is_refused_without_inflating_it(guarded):
    bomb = tiled_tiff((64, 64), tile=8192)  # 130 KB of deflate for a 67 M pixel tile
    files = [("images", (f"{i}.tif", bomb + bytes([i]), "image/tiff")) for i in range(4)]
    r = httpx.post(
        f"{guarded.base}/similarity/matrix", files=files, headers={"X-API-Key": CLIENT}, timeout=60
    )
    assert r.status_code == 413, r.text
    assert "8192x8192 tile in a 64x64 image" in r.json()["detail"]
    assert guarded.peak_rss_mb() < 1500  # four inflated tiles alone would be 270 MB more


# --- 6. cache side channel and /metrics ---------------------------------------------------------


def cache_hits(server: Server) -> float:
    text = httpx.get(f"{server.base}/metrics", headers={"X-API-Key": ADMIN}, timeout=10).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("imgsim_cache_hits_total{")
    )


def test_one_key_cannot_see_another_keys_uploads(guarded):
    r = httpx.get(f"{guarded.base}/metrics", headers={"X-API-Key": CLIENT}, timeout=10)
    assert r.status_code == 403 and "IMGSIM_ADMIN_KEYS" in r.json()["detail"]

    image = {"image": ("a.png", png(size=(28, 28), mode="L", seed=77), "image/png")}
    embed = f"{guarded.base}/embed"
    before = cache_hits(guarded)
    assert httpx.post(embed, files=image, headers={"X-API-Key": CLIENT}, timeout=30).is_success
    assert httpx.post(embed, files=image, headers={"X-API-Key": OTHER}, timeout=30).is_success
    assert cache_hits(guarded) == before  # the other key's identical upload is not a hit
    assert httpx.post(embed, files=image, headers={"X-API-Key": CLIENT}, timeout=30).is_success
    assert cache_hits(guarded) == before + 1


# --- 9. log forging -----------------------------------------------------------------------------


def test_a_path_cannot_forge_a_plain_text_log_line(guarded):
    marker = uuid.uuid4().hex
    with raw(guarded.port) as sock:
        sock.sendall(f"GET /x%0a{marker}%0d%0aINFO%20forged HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 40")
    for _ in range(100):
        text = guarded.log_text()
        if marker in text:
            break
        time.sleep(0.1)
    lines = [line for line in text.splitlines() if marker in line]
    assert lines, "the request was not logged"
    assert all(not line.startswith(marker) for line in lines), lines
    assert any(f"/x\\n{marker}\\r\\nINFO forged" in line for line in lines), lines


# --- 1. decode work outliving its request, fairness ---------------------------------------------


def sixteen_bit_pngs(n: int, side: int) -> list[bytes]:
    """``n`` distinct all-zero 16-bit greyscale PNGs (distinct through a text chunk)."""
    out = []
    for i in range(n):
        info = PngImagePlugin.PngInfo()
        info.add_text("n", str(i))
        buf = io.BytesIO()
        Image.fromarray(np.zeros((side, side), np.uint16)).save(buf, "PNG", pnginfo=info)
        out.append(buf.getvalue())
    return out


def decodes(server: Server, model: str) -> float:
    text = httpx.get(f"{server.base}/metrics", timeout=10).text
    pattern = rf'^imgsim_decode_seconds_count{{model="{model}"}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_heavy_request_neither_outlives_its_deadline_nor_starves_others(
    model_store, digits, tmp_path
):
    server = serve(
        model_store,
        tmp_path / "stderr.log",
        request_timeout_s=2,
        decode_threads=2,
        cache_entries=0,  # every probe is decoded: it must get its turn at the decode threads
        max_request_pixels=10**10,
    )
    try:
        heavy = sixteen_bit_pngs(60, 3000)  # 60 x 9 M pixels: ~0.3 s each here, 2 s allowed
        statuses: list[tuple[float, int]] = []
        heavy_done = threading.Event()
        heavy_result: list[tuple[float, int]] = []

        def send_heavy() -> None:
            files = [("images", (f"{i}.png", d, "image/png")) for i, d in enumerate(heavy)]
            r = httpx.post(
                f"{server.base}/similarity/matrix",
                files=files,
                data={"model": "cifar10"},  # heavy decodes are counted apart from the probes'
                timeout=120,
            )
            heavy_result.append((time.monotonic(), r.status_code))
            heavy_done.set()

        thread = threading.Thread(target=send_heavy)
        thread.start()
        with httpx.Client(timeout=30) as client:
            for i in range(120):  # a probe every 0.5 s, until 4 have run after the heavy one
                a, b = digits[str(i % 10)][0], digits[str((i + 3) % 10)][1]
                files = {"image_a": ("a.png", a), "image_b": ("b.png", b)}
                r = client.post(f"{server.base}/similarity", files=files, data={"model": "mnist"})
                statuses.append((time.monotonic(), r.status_code))
                if heavy_done.is_set():
                    ended = heavy_result[0][0]
                    if sum(t > ended + 1 for t, _ in statuses) >= 4:
                        break
                time.sleep(0.5)
        thread.join(120)
        ended, heavy_status = heavy_result[0]
        assert heavy_status == 503  # its deadline passed ...
        time.sleep(1)  # ... and once the last decode that had started ends, none follows
        settled = decodes(server, "cifar10")
        time.sleep(1.5)
        assert decodes(server, "cifar10") == settled
        assert settled < len(heavy)  # the images still waiting when it gave up were dropped

        during = [s for t, s in statuses if t <= ended]
        after = [s for t, s in statuses if t > ended + 1]
        assert during.count(200) >= len(during) // 2, statuses
        assert after and all(s == 200 for s in after), statuses
    finally:
        server.stop()


# --- 4 and 8. connection limit; exit with a stderr nobody reads ---------------------------------


def test_open_connections_are_capped(model_store, tmp_path):
    server = serve(model_store, tmp_path / "stderr.log", max_connections=4)
    try:
        idle = [raw(server.port) for _ in range(4)]
        time.sleep(0.3)
        try:
            assert httpx.get(f"{server.base}/healthz", timeout=10).status_code == 503
        finally:
            for sock in idle:
                sock.close()
        for _ in range(50):
            if httpx.get(f"{server.base}/healthz", timeout=10).status_code == 200:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the server never took connections again")
    finally:
        server.stop()


def test_sigterm_exits_even_when_nobody_reads_stderr(model_store):
    server = serve(model_store, None, log_queue_max=100, log_flush_timeout_s=1)
    try:
        with httpx.Client(timeout=10) as client:
            for _ in range(600):  # ~150 KB of access lines: more than a pipe holds (64 KB)
                assert client.get(f"{server.base}/healthz").status_code == 200
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) == 0
    finally:
        server.stop()


# --- 10. a request cancelled at shutdown --------------------------------------------------------


def test_a_request_cancelled_at_shutdown_is_a_503_not_a_500(model_store, tmp_path):
    # request_timeout_s 1: uvicorn waits 1 + 5 s for what is in flight, then cancels it.
    server = serve(
        model_store, tmp_path / "stderr.log", request_timeout_s=1, body_idle_timeout_s=60
    )
    try:
        boundary = uuid.uuid4().hex
        with raw(server.port) as sock:
            head = post_head("/embed", boundary, 10_000, key="")
            sock.sendall(head + multipart_head(boundary))  # and the rest never comes
            time.sleep(0.5)
            server.proc.send_signal(signal.SIGTERM)
            sock.settimeout(60)
            answer = read_until_closed(sock)
        assert server.proc.wait(60) == 0
        assert answer.startswith(b"HTTP/1.1 503"), answer[:300]
        log = server.log_text()
        assert "cancelled at shutdown" in log
        assert '"status": 500' not in log and "Exception in ASGI application" not in log, log
    finally:
        server.stop()
