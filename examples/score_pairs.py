"""Score a CSV of image pairs against a running imgsim service; write distance/similarity/same.

    python examples/score_pairs.py pairs.csv --out scores.csv
    python examples/score_pairs.py pairs.csv --url http://127.0.0.1:8000 --model cifar10 \\
        --threshold 0.9 --api-key "$KEY" --concurrency 8 --out scores.csv

pairs.csv has a header with at least ``image_a`` and ``image_b``: paths to image files, relative
to the CSV's own folder unless absolute. Every input column is copied to the output, followed by
``distance``, ``similarity``, ``same``, ``threshold``, ``model``, ``model_version``,
``warnings`` and ``error``. A pair that cannot be scored (a missing file, an image the service
refuses) gets its ``error`` and empty scores; the others still run. With a ``label`` column
(1/0, true/false, same/different) the accuracy of ``same`` against it is printed at the end.

Needs only httpx (``pip install httpx``), no torch: the service does the work. Requests run
``--concurrency`` at a time, so the service can batch them; a 503 (overloaded, starting) is
retried after its Retry-After. Exit status: 0 when every pair was scored, 1 when some were not,
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

SCORE_COLUMNS = [
    "distance",
    "similarity",
    "same",
    "threshold",
    "model",
    "model_version",
    "warnings",
    "error",
]
RETRIES = 5  # per pair, on 503 only
LABEL_VALUES = {
    "1": True,
    "true": True,
    "same": True,
    "0": False,
    "false": False,
    "different": False,
}


@dataclass
class Progress:
    """One line on stderr, redrawn in place: done/total, a bar, pairs/s and the time left."""

    total: int
    stream: TextIO = sys.stderr
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    def advance(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else 0.0
        filled = 30 * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (30 - filled)
        self.stream.write(
            f"\r[{bar}] {self.done}/{self.total} pairs, {rate:.1f}/s, "
            f"{left:.0f}s left, {self.failed} failed "
        )
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pairs", type=Path, help="CSV with image_a and image_b columns")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write the scores to")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    parser.add_argument("--model", help="model to ask (GET /models); default: the service's")
    parser.add_argument(
        "--threshold", type=float, help="distance at or below which a pair is the same; "
        "default: the model's calibrated threshold",
    )  # fmt: skip
    parser.add_argument("--api-key", help="sent as X-API-Key when the service needs one")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (60)")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")

    try:
        with args.pairs.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except OSError as e:
        parser.error(f"cannot read {args.pairs}: {e}")
    missing = {"image_a", "image_b"} - set(columns)
    if missing:
        parser.error(f"{args.pairs} has no column {', '.join(sorted(missing))}")

    scores = asyncio.run(score_all(rows, args.pairs.parent, args))
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=columns + [c for c in SCORE_COLUMNS if c not in columns]
        )
        writer.writeheader()
        for row, score in zip(rows, scores, strict=True):
            writer.writerow({**row, **score})

    failed = sum(1 for s in scores if s["error"])
    print(f"{len(rows) - failed} of {len(rows)} pairs scored -> {args.out}", file=sys.stderr)
    if "label" in columns:
        print_accuracy(rows, scores)
    return 1 if failed else 0


async def score_all(
    rows: list[dict[str, str]], base: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    progress = Progress(len(rows))
    slots = asyncio.Semaphore(args.concurrency)
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    fields = (("model", args.model), ("threshold", args.threshold))
    data = {k: str(v) for k, v in fields if v is not None}
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, timeout=args.timeout, limits=limits
    ) as client:

        async def one(row: dict[str, str]) -> dict[str, Any]:
            async with slots:
                score = await score_pair(client, base, row, data)
            progress.advance(ok=not score["error"])
            return score

        return await asyncio.gather(*(one(row) for row in rows))


async def score_pair(
    client: httpx.AsyncClient, base: Path, row: dict[str, str], data: dict[str, str]
) -> dict[str, Any]:
    score: dict[str, Any] = dict.fromkeys(SCORE_COLUMNS, "")
    try:
        files = {name: _read(base, row[name]) for name in ("image_a", "image_b")}
    except OSError as e:
        score["error"] = f"cannot read {e.filename}: {e.strerror}"
        return score
    for attempt in range(RETRIES + 1):
        try:
            r = await client.post("/verify", files=files, data=data)
        except httpx.HTTPError as e:
            score["error"] = f"{type(e).__name__}: {e}"
            return score
        if r.status_code != 503 or attempt == RETRIES:
            break
        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
    body = _json(r)
    if r.status_code != 200:
        score["error"] = f"{r.status_code}: {body.get('detail', r.text)}"
        return score
    for key in ("distance", "similarity", "same", "threshold", "model", "model_version"):
        score[key] = body[key]
    score["warnings"] = " ".join(body.get("warnings", []))
    return score


def _read(base: Path, name: str) -> tuple[str, bytes]:
    path = Path(name) if Path(name).is_absolute() else base / name
    return path.name, path.read_bytes()


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def print_accuracy(rows: list[dict[str, str]], scores: list[dict[str, Any]]) -> None:
    judged = [
        (LABEL_VALUES[row["label"].strip().lower()], score["same"])
        for row, score in zip(rows, scores, strict=True)
        if not score["error"] and row["label"].strip().lower() in LABEL_VALUES
    ]
    if judged:
        right = sum(label == same for label, same in judged)
        print(
            f"accuracy against label: {right / len(judged):.2%} of {len(judged)}", file=sys.stderr
        )


if __name__ == "__main__":
    sys.exit(main())
