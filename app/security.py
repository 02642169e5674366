"""Optional API keys and CORS.

With ``Settings.api_keys`` set, every path except the probes and the API docs needs a valid
``X-API-Key`` header: 401 without one, 403 with a wrong one. The check is an ASGI middleware so
it runs before a single byte of an upload is read. Keys are compared in constant time against
every configured key, and are never logged.

With any key configured, ``/metrics`` is for ``Settings.admin_keys`` only (403 for a client key):
its counters would tell one client about another's uploads. Each key also gets its own part of
the embedding cache (``scope["state"]["cache_partition"]``, a digest of the key), so a cache hit
and its latency tell a client only about its own uploads (issue 12).
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import APIKeyHeader
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.docs import ASSET_PATHS, DOCS_PATH
from app.config import Settings
from app.observability import REQUEST_ID_HEADER

API_KEY_HEADER = "X-API-Key"
# The probes must work for the orchestrator; the schema and its viewers hold no secret, and
# Swagger UI needs them to offer "Authorize".
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", DOCS_PATH, "/"}) | ASSET_PATHS
ADMIN_PATHS = frozenset({"/metrics"})
# The web page's own files (app/web/static) hold no data; the page sends the key for the API.
OPEN_PREFIXES = ("/static/",)

# Declared on the protected routers only to document the header in OpenAPI (/docs shows a lock
# and an "Authorize" button); the middleware below does the enforcing.
api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="One of the keys in IMGSIM_API_KEYS."
)


class APIKeyMiddleware:
    def __init__(
        self, app: ASGIApp, keys: frozenset[str], admin_keys: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        # (key, may read ADMIN_PATHS); admin keys may call everything else too.
        self._keys = [(k.encode(), k in admin_keys) for k in sorted(keys | admin_keys)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        provided = next((v for k, v in scope["headers"] if k == b"x-api-key"), None)
        if provided is None:
            response = JSONResponse({"detail": f"missing {API_KEY_HEADER} header"}, 401)
            await response(scope, receive, send)
            return
        # No early exit: the time taken does not depend on which key (if any) matched.
        matched = admin = False
        for key, is_admin in self._keys:
            same = hmac.compare_digest(provided, key)
            matched |= same
            admin |= same and is_admin
        if not matched:
            await JSONResponse({"detail": "invalid API key"}, 403)(scope, receive, send)
            return
        if scope["path"] in ADMIN_PATHS and not admin:
            detail = "this path needs an admin key (IMGSIM_ADMIN_KEYS)"
            await JSONResponse({"detail": detail}, 403)(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["cache_partition"] = hashlib.sha256(provided).hexdigest()[:32]
        await self.app(scope, receive, send)


def add_cors(app: FastAPI, settings: Settings) -> None:
    """Browsers on other origins may call the API only when origins are configured."""
    if not settings.cors_origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "DELETE"],  # DELETE: threshold profiles
        allow_headers=[API_KEY_HEADER, REQUEST_ID_HEADER, "Content-Type"],
        expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        max_age=600,
    )
