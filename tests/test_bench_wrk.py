"""benchmarks/wrk.py: the request file, the Lua script's result line, a real wrk run."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.loadgen import build_request
from benchmarks.wrk import WrkError, parse_wrk, run_wrk, write_requests

LINE = (
    'WRK_JSON {"requests": 1200, "duration_us": 4000000, '
    '"latency_us": {"50": 7200, "90": 9100, "95": 12000, "99": 27700}, '
    '"errors": {"connect": 0, "read": 1, "write": 0, "status": 3, "timeout": 0}}'
)


def test_parse_reads_the_result_line_among_wrks_own_output():
    out = f"Running 4s test @ http://127.0.0.1:1/\n  1 threads and 32 connections\n{LINE}\n"
    r = parse_wrk(out, concurrency=32)
    assert r.responses == 1200 and r.seconds == 4.0 and r.rate == 300.0
    assert r.percentile_ms(50) == 7.2 and r.percentile_ms(99) == 27.7
    assert r.errors == Counter({"read": 1, "status": 3}) and r.failed == 4
    assert r.statuses == Counter({200: 1197})
    assert r.percentile_ms(75) != r.percentile_ms(75)  # not reported: nan


def test_parse_without_a_result_line_says_what_wrk_printed():
    with pytest.raises(WrkError, match="unable to connect"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n", concurrency=1)


def test_the_request_file_holds_every_raw_request_after_their_lengths(tmp_path):
    reqs = [build_request("/similarity", files=[("image_a", "a.png", "image/png", b"x" * n)])
            for n in (1, 50, 3)]  # fmt: skip
    data = write_requests(reqs, tmp_path).read_bytes()
    header, _, rest = data.partition(b"\n")
    lengths = [int(n) for n in header.split()]
    assert lengths == [len(r.raw) for r in reqs]
    assert rest == b"".join(r.raw for r in reqs)


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    bodies: Counter[bytes] = Counter()

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies[body] += 1
        status = 200 if b"good" in body else 422
        try:
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
        except (BrokenPipeError, ConnectionResetError):  # wrk hangs up when its time is over
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_real_wrk_run_rotates_the_requests_and_counts_bad_statuses(tmp_path):
    reqs = [
        build_request("/similarity", files=[("image_a", f"{i}.png", "image/png", body)])
        for i, body in enumerate([b"good-1", b"good-2", b"good-3", b"bad-4"])
    ]
    path = write_requests(reqs, tmp_path)
    _Recorder.bodies = Counter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    windows: list[str] = []
    try:
        r = run_wrk("wrk", path, server.server_address[1], 2, seconds=1, on_window=windows.append)
    finally:
        server.shutdown()
        server.server_close()
    assert windows == ["start", "end"]
    assert r.responses > 4 and r.rate > 0
    # Every one of the four requests was sent, and all in about equal measure.
    seen = {body.rsplit(b"\r\n--", 1)[0].rsplit(b"\r\n\r\n", 1)[1]: n for body, n in
            _Recorder.bodies.items()}  # fmt: skip
    assert set(seen) == {b"good-1", b"good-2", b"good-3", b"bad-4"}
    assert max(seen.values()) - min(seen.values()) <= 2 + r.responses // 10
    assert 0 < r.errors["status"] <= r.responses // 4 + 2  # the 422s, one in four
    assert 0 < r.percentile_ms(50) <= r.percentile_ms(99)
    assert r.client_cpu_s > 0
