"""Container health check: exit 0 when the server on this machine answers GET /healthz.

    python -m app.healthcheck        # the Dockerfile's HEALTHCHECK and docker-compose.yml's

It reads the same ``IMGSIM_HOST`` / ``IMGSIM_PORT`` as ``python -m app``, so a container started
with ``-e IMGSIM_PORT=9000`` still turns healthy. Only the standard library and app.config: the
image has no curl or wget, and importing torch every 30 s would cost a second of CPU each time.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from app.config import Settings

TIMEOUT_S = 4.0  # under the HEALTHCHECK's --timeout=5s, so a hung server reads as a failure here


def healthz_url(settings: Settings) -> str:
    """The loopback address of the server ``python -m app`` starts with these settings."""
    host = settings.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}/healthz"


def main() -> int:
    url = healthz_url(Settings())
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            ok = response.status == 200
    except (OSError, urllib.error.URLError) as e:
        sys.stderr.write(f"{url}: {e}\n")
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
