"""Container health check: exit 0 when the server on this machine answers GET /healthz.

    python -m app.healthcheck        # the Dockerfile's HEALTHCHECK

It reads the same ``IMGSIM_HOST`` / ``IMGSIM_PORT`` as ``python -m app``, so a container started
with ``-e IMGSIM_PORT=9000`` still turns healthy. Standard library only, on purpose: the image
has no curl or wget, and app.config imports torch (through app.precision), which took 13 s in a
container on a loaded 2-core machine, longer than the check's 5 s timeout.
tests/test_healthcheck.py keeps the defaults here equal to Settings'.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

TIMEOUT_S = 4.0  # under the HEALTHCHECK's --timeout=5s, so a hung server reads as a failure here
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000  # Settings.host, Settings.port


def healthz_url(env: Mapping[str, str]) -> str:
    """The loopback address of the server ``python -m app`` starts with this environment."""
    host = env.get("IMGSIM_HOST", DEFAULT_HOST).strip()
    port = int(env.get("IMGSIM_PORT", DEFAULT_PORT))
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def main() -> int:
    url = healthz_url(os.environ)  # a bad IMGSIM_PORT raises: exit 1 with the traceback
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            ok = response.status == 200
    except (OSError, urllib.error.URLError) as e:
        sys.stderr.write(f"{url}: {e}\n")
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
