"""examples/score_pairs.py against a real uvicorn process serving the tiny towers."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_server import free_port, start, wait_ready

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "score_pairs.py"

pytestmark = pytest.mark.slow

# Runs the script as `python examples/score_pairs.py ...` would, then checks it never
# imported torch: a client machine needs only httpx.
RUN_WITHOUT_TORCH = (
    "import runpy, sys; sys.argv = sys.argv[1:]; code = 0\n"
    "try: runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "except SystemExit as e: code = e.code\n"
    "assert 'torch' not in sys.modules, 'the client imported torch'\n"
    "sys.exit(code)\n"
)


@pytest.fixture(scope="module")
def service(model_store: Path) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(["-m", "app", "--port", str(port)], model_store, port)
    try:
        wait_ready(proc, base)
        yield base
    finally:
        proc.kill()
        proc.wait(10)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", RUN_WITHOUT_TORCH, str(SCRIPT), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def write_pairs(folder: Path, rows: list[dict[str, str]]) -> Path:
    path = folder / "pairs.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_scores_every_pair_as_the_service_does(service, digits, photos, tmp_path):
    images = {
        "three_a.png": digits["3"][0],
        "three_b.png": digits["3"][1],
        "seven.png": digits["7"][0],
        "cat.jpg": photos["cat"][0],
        "notes.txt": b"not an image",
    }
    (tmp_path / "img").mkdir()
    for name, data in images.items():
        (tmp_path / "img" / name).write_bytes(data)
    pairs = [
        ("img/three_a.png", "img/three_b.png", "1"),
        ("img/three_a.png", "img/seven.png", "0"),
        ("img/three_a.png", "img/three_a.png", "1"),
        (str(tmp_path / "img" / "seven.png"), "img/cat.jpg", "0"),  # absolute path
        ("img/three_a.png", "img/notes.txt", "0"),
        ("img/three_a.png", "img/missing.png", "1"),
    ]
    rows = [{"image_a": a, "image_b": b, "label": label} for a, b, label in pairs]
    out = tmp_path / "scores.csv"

    done = run(write_pairs(tmp_path, rows), "--url", service, "--out", out, "--concurrency", "3")

    assert done.returncode == 1, done.stderr  # two pairs could not be scored
    assert "4 of 6 pairs scored" in done.stderr and "6/6 pairs" in done.stderr
    assert "accuracy against label:" in done.stderr
    scored = read_rows(out)
    assert [(r["image_a"], r["image_b"], r["label"]) for r in scored] == pairs  # input order
    # Within float32 rounding: the script's concurrent requests share batches, the check's
    # lone ones do not, and a convolution's sums may group differently by batch size.
    for row in scored[:4]:
        expected = httpx.post(
            f"{service}/verify",
            files={
                "image_a": _read(tmp_path, row["image_a"]),
                "image_b": _read(tmp_path, row["image_b"]),
            },
            timeout=30,
        ).json()
        assert float(row["distance"]) == pytest.approx(expected["distance"], abs=1e-6)
        assert float(row["similarity"]) == pytest.approx(expected["similarity"], abs=1e-6)
        assert row["same"] == str(expected["same"]) and row["error"] == ""
        assert row["model"] == "mnist" and row["warnings"] == " ".join(expected["warnings"])
    assert float(scored[2]["distance"]) == pytest.approx(0, abs=1e-6)
    assert "stored in colour" in scored[3]["warnings"]
    assert scored[4]["error"].startswith("400: image_b: not a decodable image")
    assert scored[4]["distance"] == ""
    assert scored[5]["error"].startswith("cannot read") and "missing.png" in scored[5]["error"]


def test_threshold_and_model_are_sent(service, photos, tmp_path):
    for name in ("cat", "ship"):
        (tmp_path / f"{name}.jpg").write_bytes(photos[name][0])
    pairs = write_pairs(tmp_path, [{"image_a": "cat.jpg", "image_b": "ship.jpg"}])
    out = tmp_path / "scores.csv"
    done = run(pairs, "--url", service, "--out", out, "--model", "cifar10", "--threshold", "1.5")
    assert done.returncode == 0, done.stderr
    (row,) = read_rows(out)
    assert row["model"] == "cifar10" and float(row["threshold"]) == 1.5
    assert row["same"] == str(float(row["distance"]) <= 1.5)


def test_a_csv_without_the_columns_is_refused(tmp_path):
    pairs = write_pairs(tmp_path, [{"left": "a.png", "right": "b.png"}])
    done = run(pairs, "--out", tmp_path / "scores.csv")
    assert done.returncode == 2
    assert "has no column image_a, image_b" in done.stderr
    assert not (tmp_path / "scores.csv").exists()


def _read(folder: Path, name: str) -> bytes:
    path = Path(name) if Path(name).is_absolute() else folder / name
    return path.read_bytes()


def test_the_readme_example_runs(service, tmp_path):
    out = tmp_path / "scores.csv"
    done = run(ROOT / "examples" / "pairs.csv", "--url", service, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "4 of 4 pairs scored" in done.stderr
    rows = read_rows(out)
    assert [r["error"] for r in rows] == [""] * 4
    assert "stored in colour" in rows[3]["warnings"]  # seven_a.png vs cat_a.jpg on mnist
