"""The machine a result was measured on, Markdown tables, and RESULTS.md's generated sections."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
ROOT = Path(__file__).resolve().parent.parent

RESULTS_HEADER = """# Benchmark results

Generated, not written by hand: `make bench` (benchmarks/run.py) rewrites the section between the
`bench` markers and `make soak` (benchmarks/soak.py) the one between the `soak` markers. What each
number means and how to rerun it: [README.md](README.md).
"""


def machine_info() -> dict[str, str]:
    info = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": str(os.cpu_count()),
        "cpu": _cpuinfo("model name") or platform.processor() or "unknown",
        "ram": _ram(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "git commit": _git_commit(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        info["torch"] = "not installed"
    return info


def busy_warning() -> str | None:
    """A sentence when something else is using the CPU: such numbers are not the machine's."""
    load1 = os.getloadavg()[0]
    if load1 < 0.5:
        return None
    return (
        f"load average was {load1:.2f} before the run started: another process was using the "
        "CPU, so these numbers understate the machine."
    )


def _cpuinfo(key: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _ram() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git_commit() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty else "")


def machine_lines(info: dict[str, str]) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in info.items())


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table; numbers right-aligned."""
    align = [
        "---:" if rows and all(isinstance(r[i], int | float) for r in rows) else "---"
        for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(v: object) -> str:
    if isinstance(v, float):
        if v != v:  # nan
            return "–"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` (added at the
    end when absent), leaving the other sections alone."""
    text = path.read_text() if path.is_file() else RESULTS_HEADER
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
