"""Soak: a bounded stream of valid and hostile requests against a real uvicorn (issue 6).

    python -m benchmarks.soak                          # make soak: 20,000 requests, concurrency 32
    python -m benchmarks.soak --requests 2000 --out /tmp/soak.md

``python -m app`` serves the model store as shipped (cache on). The load is a seeded shuffle of

* valid requests on every model: /similarity, /verify (with and without a threshold) and /embed
  on distinct real images; each must answer 200;
* hostile ones, each with the status it must get: the corpus in tests/fixtures/hostile/ with the
  statuses its README documents (sent to /embed and as image_a of /similarity), or generated
  stand-ins when it is absent (empty, text named .png, random bytes, truncated PNG and JPEG, SVG,
  HTML); always a 40000x40000 all-zero PNG (deflate-streamed, ~200 KB), an upload one byte over
  max_upload_bytes, bad thresholds (NaN, inf, -1, "abc", ""), an unknown model, an invalid model
  name, missing fields and an empty body;
* heavy ones (issue 12), rarer: a legal 6320x6320 16-bit PNG (40 M pixels, ~80 KB; 200, or 503
  when its deadline passes under load), a TIFF whose one tile is 8192x8192 in a 64x64 image
  (413) and a matrix of six such PNGs, over max_request_pixels (413);
* slow clients beside the load (issue 12): connections that send half their headers, and bodies
  trickled a byte a second; each must be closed by the server (header_timeout_s,
  body_idle_timeout_s / body_timeout_s), none answered 200.

Targets: no 5xx (but the 503 a heavy image may get), no dropped connection or client error,
every request answered with its expected status, server RSS growth from after warm-up to the
end under 10% and its peak under RSS_PEAK_OVER_START_MB above the start, every slow client cut
off, the server still ready at the end and exiting cleanly. Exits 1 when one is missed; writes
the "soak" section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import random
import socket
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

from PIL import Image

from app import artifact
from app.config import Settings
from benchmarks import report
from benchmarks.corpus import FIXTURES, Corpus, load_corpus
from benchmarks.loadgen import LoadResult, Request, build_request, percentile, raw_request, run_load
from benchmarks.servers import MB, RssSampler, Server, clean_env, service_cmd

HOSTILE_DIR = FIXTURES / "hostile"
OK = frozenset({200})
HOSTILE_SHARE = 0.3  # of all requests
OVERSIZE_SHARE = 0.0025  # of all requests; each is a 10 MB upload
HEAVY_SHARE = 0.0025  # of all requests; each is a 40 M pixel decode (about 1 s of CPU)
RSS_GROWTH_MAX = 0.10
# Heavy images are decoded a few at a time (decode_threads), each under ~0.5 GB while decoding.
RSS_PEAK_OVER_START_MB = 1024
HEAVY = "heavy"  # label prefix of the heavy requests


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model-store", type=Path, default=Path("model_store"))
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    p.add_argument("--models", nargs="*", default=[], help="only these models (default: all)")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--warmup-requests", type=int, default=1000, help="before RSS 'start'")
    p.add_argument("--images", type=int, default=2000, help="distinct real images per model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=30.0, help="client timeout per request, s")
    p.add_argument(
        "--service-env",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra IMGSIM_* settings for the service",
    )
    p.add_argument("--out", type=Path, default=report.RESULTS, help="Markdown file to update")
    p.add_argument("--no-write", action="store_true", help="print only; leave --out alone")
    p.add_argument("--log-dir", type=Path, default=Path("benchmarks/out"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = report.machine_info()
    busy = report.busy_warning()
    dirs = artifact.discover(args.model_store)
    if args.models:
        dirs = [d for d in dirs if d.name in args.models]
    if not dirs:
        raise SystemExit(f"{args.model_store}: no model directory with {artifact.CARD_FILE}")
    extra = dict(kv.split("=", 1) for kv in args.service_env)
    env = clean_env(IMGSIM_MODEL_STORE=str(args.model_store), **extra)
    settings = Settings(**{k.removeprefix("IMGSIM_").lower(): v for k, v in extra.items()})
    run_dir = args.log_dir / time.strftime("soak-%Y%m%d-%H%M%S")
    if busy:
        print(f"WARNING: {busy}")

    corpora = {d.name: load_corpus(artifact.read_card(d), args.data_dir, args.images) for d in dirs}
    valid = {name: valid_requests(name, corpus) for name, corpus in corpora.items()}
    first = dirs[0].name
    hostile = hostile_requests(first, corpora[first], settings.max_upload_bytes)
    hostile += heavy_requests(first, round(args.requests * HEAVY_SHARE))
    hostile_source = (
        f"{HOSTILE_DIR} (README table)" if fixture_cases() else "generated (no fixture corpus)"
    )
    rng = random.Random(args.seed)
    warmup = mix(valid, hostile, args.warmup_requests, rng)
    load = mix(valid, hostile, args.requests, rng)
    print(
        f"soak: {args.requests} requests at concurrency {args.concurrency} on "
        f"{', '.join(valid)}; {len(hostile)} hostile kinds from {hostile_source}",
        flush=True,
    )
    print(f"server log in {run_dir}", flush=True)

    server = Server.start("soak-service", service_cmd(), env, run_dir)
    slow = SlowClients(server.port, settings)
    try:
        warm = run_load("127.0.0.1", server.port, warmup, args.concurrency, count=len(warmup))
        time.sleep(0.5)
        with RssSampler(server.pid, interval_s=0.5) as rss:
            rss_start = rss.last
            started = time.perf_counter()
            slow.start()
            result = run_load(
                "127.0.0.1",
                server.port,
                load,
                args.concurrency,
                count=len(load),
                timeout_s=args.timeout,
            )
            slow.stop()
            elapsed = time.perf_counter() - started
        time.sleep(1.0)
        rss_end = rss.sample()
        ready = server.get("/readyz")
    finally:
        exit_status = server.stop()
    log_errors = sum(
        1
        for line in server.log.read_text(errors="replace").splitlines()
        if '"level": "ERROR"' in line or line.startswith("Traceback")
    )

    checks = targets(result, warm, rss_start, rss_end, ready, exit_status, log_errors)
    checks += slow_targets(slow, rss_start, rss.peak)
    markdown = render(
        result,
        args,
        machine,
        busy,
        hostile_source,
        elapsed,
        {"start": rss_start / MB, "peak": rss.peak / MB, "end": rss_end / MB},
        ready,
        exit_status,
        log_errors,
        checks,
    )
    print()
    print(markdown)
    if not args.no_write:
        report.write_section("soak", markdown, args.out)
        print(f"\nwrote {args.out}")
    return 1 if any(verdict == "FAIL" for verdict, _, _ in checks) else 0


def valid_requests(model: str, corpus: Corpus) -> list[Request]:
    """Distinct pairs on every endpoint; verify alternates between its default and a threshold."""
    out = []
    for i, (a, b) in enumerate(corpus.pairs()):
        fa, fb = corpus.files[a], corpus.files[b]
        kind = i % 3
        if kind == 0:
            files = [("image_a", *fa), ("image_b", *fb)]
            out.append(
                build_request(
                    "/similarity",
                    files=files,
                    fields=[("model", model)],
                    label=f"{model} /similarity",
                )
            )
        elif kind == 1:
            fields = [("model", model)] + ([("threshold", "0.8")] if i % 2 else [])
            files = [("image_a", *fa), ("image_b", *fb)]
            out.append(
                build_request("/verify", files=files, fields=fields, label=f"{model} /verify")
            )
        else:
            out.append(
                build_request(
                    "/embed",
                    files=[("image", *fa)],
                    fields=[("model", model)],
                    label=f"{model} /embed",
                )
            )
    return out


def fixture_cases() -> list[tuple[str, str, int]]:
    """(file, content type, status) rows of tests/fixtures/hostile/README.md, if it is there."""
    readme = HOSTILE_DIR / "README.md"
    if not readme.is_file():
        return []
    rows = []
    for line in readme.read_text().splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            name = cells[0].strip("`")
            if (HOSTILE_DIR / name).is_file() and cells[2].isdigit():
                rows.append((name, cells[1], int(cells[2])))
    return rows


def hostile_requests(model: str, corpus: Corpus, max_upload_bytes: int) -> list[Request]:
    good = corpus.files[0]
    m = [("model", model)]
    pair = [("image_a", *good), ("image_b", *good)]
    reqs: list[Request] = []

    def post(
        path: str,
        label: str,
        status: set[int],
        files: list[tuple[str, str, str, bytes]] | None = None,
        fields: list[tuple[str, str]] | None = None,
    ) -> None:
        reqs.append(
            build_request(
                path,
                files=files or [],
                fields=m if fields is None else fields,
                label=label,
                expect=frozenset(status),
            )
        )

    def upload(label: str, name: str, content_type: str, data: bytes, status: set[int]) -> None:
        part = (name, content_type, data)
        post("/embed", f"hostile /embed {label}", status, [("image", *part)])
        post("/similarity", f"hostile /similarity {label}", status, [("image_a", *part), pair[1]])

    cases = fixture_cases()
    for name, content_type, status in cases:
        upload(name, name, content_type, (HOSTILE_DIR / name).read_bytes(), {status})
    if not cases:
        for label, name, content_type, data in generated_files(corpus):
            upload(label, name, content_type, data, {400})
    upload("png bomb 40000x40000", "bomb.png", "image/png", png_bomb(40_000), {413})

    oversize = b"\x89PNG\r\n\x1a\n" + bytes(max_upload_bytes + 1 - 8)
    post("/embed", "oversize", {413}, [("image", "big.png", "image/png", oversize)])
    for value in ("NaN", "inf", "-1", "abc", ""):
        post("/verify", f"hostile threshold {value!r}", {422}, pair, [*m, ("threshold", value)])
    post("/similarity", "hostile unknown model", {404}, pair, [("model", "no-such-model")])
    post("/similarity", "hostile invalid model name", {422}, pair, [("model", "../etc/passwd")])
    post("/similarity", "hostile missing image_b", {422}, [("image_a", *good)])
    post("/verify", "hostile no images", {422})
    empty = raw_request(
        "POST", "/similarity", [("Content-Type", "multipart/form-data; boundary=x")]
    )
    reqs.append(Request(empty, "hostile empty body", frozenset({400, 422})))
    return reqs


def heavy_requests(model: str, count: int) -> list[Request]:
    """``count`` legal but heavy images, each distinct (the cache must not answer them), and
    the two kinds that must be refused before decoding (issue 12)."""
    m = [("model", model)]
    big = sixteen_bit_png(6320)
    reqs = [
        build_request(
            "/embed",
            files=[("image", "big16.png", "image/png", with_text(big, str(i)))],
            fields=m,
            label=f"{HEAVY} 40 MP 16-bit png",
            expect=frozenset({200, 503}),  # 503: its deadline passed while others were served
        )
        for i in range(max(1, count))
    ]
    reqs.append(
        build_request(
            "/embed",
            files=[("image", "tile.tif", "image/tiff", tiled_tiff_bomb(64, 8192))],
            fields=m,
            label=f"{HEAVY} tiff tile bomb",
            expect=frozenset({413}),
        )
    )
    reqs.append(
        build_request(
            "/similarity/matrix",
            files=[("images", f"{i}.png", "image/png", with_text(big, str(i))) for i in range(6)],
            fields=m,
            label=f"{HEAVY} matrix over max_request_pixels",
            expect=frozenset({413}),
        )
    )
    return reqs


def sixteen_bit_png(side: int) -> bytes:
    """A side x side all-zero 16-bit greyscale PNG."""
    buf = io.BytesIO()
    Image.new("I;16", (side, side)).save(buf, "PNG")
    return buf.getvalue()


def with_text(png: bytes, text: str) -> bytes:
    """``png`` with a tEXt chunk after its IHDR: the same pixels, different bytes."""
    data = b"n\x00" + text.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + data))
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length + type, IHDR data, CRC
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def tiled_tiff_bomb(side: int, tile: int) -> bytes:
    """A side x side greyscale TIFF stored as one deflated tile x tile tile of zeros."""
    z = zlib.compressobj(9)
    deflated = b"".join([*(z.compress(bytes(tile)) for _ in range(tile)), z.flush()])
    entries = [  # (tag, type LONG=4 / SHORT=3, value)
        (256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 8), (262, 3, 1), (277, 3, 1),
        (322, 4, tile), (323, 4, tile), (324, 4, 8), (325, 4, len(deflated)),
    ]  # fmt: skip
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in entries)
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8 + len(deflated)) + deflated + ifd


class SlowClients:
    """Beside the load, in a thread: rounds of connections that send half their headers, or a
    body a byte a second. Counts how many the server cut off (closed, or answered 408) and how
    many it kept past every timeout."""

    HALF_HEADERS = 20  # per round
    TRICKLED = 4

    def __init__(self, port: int, settings: Settings) -> None:
        self.port = port
        # A connection still open this long after its last byte was not cut off.
        self.patience_s = 3 * max(settings.header_timeout_s, settings.body_timeout_s) + 5
        self.cut_off = 0
        self.kept = 0
        self.answered_200 = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="slow-clients")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            socks = []
            for i in range(self.HALF_HEADERS + self.TRICKLED):
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                    if i < self.HALF_HEADERS:
                        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: soak\r\n")
                    else:
                        sock.sendall(
                            b"POST /embed HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n"
                            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
                        )
                    socks.append((sock, i >= self.HALF_HEADERS))
                except OSError:
                    continue
            self._watch(socks)

    def _watch(self, socks: list[tuple[socket.socket, bool]]) -> None:
        give_up = time.monotonic() + self.patience_s
        open_ = dict(socks)
        while open_ and time.monotonic() < give_up:
            for sock, trickles in list(open_.items()):
                try:
                    if trickles:
                        sock.sendall(b"x")
                    sock.settimeout(0.05)
                    answer = sock.recv(1024)
                except (TimeoutError, BlockingIOError):
                    continue
                except OSError:  # reset or broken pipe: closed by the server
                    answer = b""
                if answer.startswith(b"HTTP/1.1 200"):
                    self.answered_200 += 1
                self.cut_off += 1
                del open_[sock]
                sock.close()
            time.sleep(1.0)
        self.kept += len(open_)
        for sock in open_:
            sock.close()


def slow_targets(slow: SlowClients, rss_start: int, rss_peak: int) -> list[tuple[str, str, str]]:
    over_mb = (rss_peak - rss_start) / MB
    return [
        (
            "PASS" if slow.kept == 0 and slow.answered_200 == 0 and slow.cut_off else "FAIL",
            "every slow client cut off",
            f"{slow.cut_off} cut off, {slow.kept} kept past {slow.patience_s:.0f} s, "
            f"{slow.answered_200} answered 200",
        ),
        (
            "PASS" if over_mb < RSS_PEAK_OVER_START_MB else "FAIL",
            f"RSS peak < start + {RSS_PEAK_OVER_START_MB} MB",
            f"peak {rss_peak / MB:.0f} MB, {over_mb:+.0f} MB over the start",
        ),
    ]


def generated_files(corpus: Corpus) -> list[tuple[str, str, str, bytes]]:
    """Stand-ins for the fixture corpus: (label, file name, content type, bytes)."""
    rng = random.Random(1)
    name, _, real = corpus.files[0]
    buf = io.BytesIO()
    Image.open(io.BytesIO(real)).convert("RGB").resize((64, 64)).save(buf, "PNG")
    png = buf.getvalue()
    buf = io.BytesIO()
    Image.open(io.BytesIO(real)).convert("RGB").resize((64, 64)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    return [
        ("empty", "empty.png", "image/png", b""),
        ("text named .png", "text.png", "image/png", b"this is not an image\n" * 3),
        ("random bytes", "random.bin", "image/jpeg", rng.randbytes(4096)),
        ("truncated png", "cut.png", "image/png", png[: len(png) // 2]),
        ("truncated jpeg", "cut.jpg", "image/jpeg", jpeg[: len(jpeg) // 2]),
        ("svg", "image.svg", "image/svg+xml", svg),
        ("html", "page.png", "image/png", b"<!doctype html><html><body>hi</body></html>"),
    ]


def png_bomb(side: int) -> bytes:
    """A complete, valid side x side PNG of zeros (1-bit greyscale), built by streaming deflate
    row by row: ~200 KB on disk for 40000x40000, 1.6 G pixels once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = bytes(1 + (side + 7) // 8)  # filter type 0, then side bits of zero
    z = zlib.compressobj(9)
    idat = b"".join([*(z.compress(row) for _ in range(side)), z.flush()])
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def mix(
    valid: dict[str, list[Request]], hostile: list[Request], count: int, rng: random.Random
) -> list[Request]:
    """``count`` requests: valid ones cycling through every model's pairs, hostile ones evenly
    over their kinds (the 10 MB upload rarer), in a seeded random order."""
    oversize = [r for r in hostile if r.label == "oversize"]
    heavy = [r for r in hostile if r.label.startswith(HEAVY)]
    others = [r for r in hostile if r.label != "oversize" and r not in heavy]
    n_oversize = round(count * OVERSIZE_SHARE) if oversize else 0
    n_heavy = round(count * HEAVY_SHARE) if heavy else 0
    n_hostile = round(count * HOSTILE_SHARE) - n_oversize - n_heavy
    n_valid = count - n_hostile - n_oversize
    pools = list(valid.values())
    out = [
        pools[i % len(pools)][(i // len(pools)) % len(pools[i % len(pools)])]
        for i in range(n_valid)
    ]
    out += [others[i % len(others)] for i in range(n_hostile)]
    out += [oversize[0]] * n_oversize
    # The two refused kinds first, then the distinct heavy images (each decoded once).
    out += [heavy[(i - 2) % len(heavy)] for i in range(n_heavy)]
    rng.shuffle(out)
    return out


def targets(
    r: LoadResult,
    warm: LoadResult,
    rss_start: int,
    rss_end: int,
    ready: int | None,
    exit_status: int | None,
    log_errors: int,
) -> list[tuple[str, str, str]]:
    """(PASS|FAIL, target, numbers); 5xx, connection errors and wrong statuses of the warm-up
    count too."""
    checks = []

    def add(ok: bool, target: str, detail: str) -> None:
        checks.append(("PASS" if ok else "FAIL", target, detail))

    statuses = r.statuses + warm.statuses
    heavy_503 = sum(
        counts[503]
        for result in (r, warm)
        for label, counts in result.by_label.items()
        if label.startswith(HEAVY)
    )
    five = sum(n for s, n in statuses.items() if s >= 500) - heavy_503
    add(
        five == 0,
        "no 5xx (but a heavy image's 503)",
        ", ".join(f"{s}: {n}" for s, n in statuses.items() if s >= 500) or "none",
    )
    errors = r.errors + warm.errors
    add(
        not errors,
        "no dropped connections or client errors",
        ", ".join(f"{k}: {n}" for k, n in errors.items()) or "none",
    )
    wrong = r.unexpected + warm.unexpected
    add(
        not wrong,
        "every request got its expected status",
        ", ".join(f"{k}: {n}" for k, n in wrong.items()) or "all as expected",
    )
    growth = rss_end / rss_start - 1 if rss_start else float("nan")
    add(
        growth < RSS_GROWTH_MAX,
        f"RSS growth < {RSS_GROWTH_MAX:.0%}",
        f"{rss_start / MB:.0f} MB after warm-up -> {rss_end / MB:.0f} MB ({growth:+.1%})",
    )
    add(ready == 200, "still ready after the soak", f"GET /readyz -> {ready}")
    add(exit_status == 0, "graceful shutdown (SIGTERM -> exit 0)", f"exit status {exit_status}")
    add(log_errors == 0, "no ERROR lines in the server log", f"{log_errors} ERROR lines")
    return checks


def render(
    r: LoadResult,
    args: argparse.Namespace,
    machine: dict[str, str],
    busy: str | None,
    hostile_source: str,
    elapsed: float,
    rss_mb: dict[str, float],
    ready: int | None,
    exit_status: int | None,
    log_errors: int,
    checks: list[tuple[str, str, str]],
) -> str:
    out = ["## Soak (`make soak`)", ""]
    if busy:
        out += [f"**Warning: {busy}**", ""]
    valid_lat = [x for k, v in r.label_latencies_s.items() if not _is_hostile(k) for x in v]
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(r.statuses.items()))
    out += [
        report.machine_lines(machine),
        "",
        f"{r.responses} requests answered of {args.requests} sent, concurrency "
        f"{args.concurrency}, after {args.warmup_requests} warm-up requests, in {elapsed:.0f} s "
        f"({r.responses / max(elapsed, 1e-9):.0f} requests/s). Hostile corpus: {hostile_source}.",
        "",
        f"- status codes: {statuses}",
        f"- dropped connections / client errors: {sum(r.errors.values())}",
        f"- latency, all requests: p50 {r.percentile_ms(50):.1f} ms, p99 "
        f"{r.percentile_ms(99):.1f} ms, max {1000 * max(r.latencies_s, default=0):.0f} ms",
        f"- latency, valid requests: p50 {1000 * percentile(valid_lat, 50):.1f} ms, p99 "
        f"{1000 * percentile(valid_lat, 99):.1f} ms",
        f"- server RSS: {rss_mb['start']:.0f} MB after warm-up, peak {rss_mb['peak']:.0f} MB, "
        f"{rss_mb['end']:.0f} MB at the end",
        f"- after the soak: /readyz {ready}, exit status on SIGTERM {exit_status}, "
        f"{log_errors} ERROR lines in the server log",
        "",
    ]
    rows = []
    for label in sorted(r.by_label, key=lambda k: (_is_hostile(k), k)):
        counts: Counter[int] = r.by_label[label]
        lat = r.label_latencies_s.get(label, [])
        rows.append(
            [
                label,
                sum(counts.values()),
                ", ".join(f"{s}: {n}" for s, n in sorted(counts.items())),
                r.unexpected.get(label, 0),
                1000 * percentile(lat, 99),
            ]
        )
    out += [report.table(["request", "sent", "statuses", "unexpected", "p99 ms"], rows), ""]
    out += ["Targets:", "", "```"]
    out += [f"{v:<4}  {target}: {detail}" for v, target, detail in checks]
    out += ["```"]
    return "\n".join(out)


def _is_hostile(label: str) -> bool:
    return label.startswith(("hostile", HEAVY)) or label == "oversize"


if __name__ == "__main__":
    sys.exit(main())
