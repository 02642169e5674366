"""Optional API keys and CORS.

With ``Settings.api_keys`` set, every path except the probes and the API docs needs a valid
``X-API-Key`` header: 401 without one, 403 with a wrong one. The check is an ASGI middleware so
it runs before a single byte of an upload is read. Keys are compared in constant time against
every configured key, and are never logged.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.security import APIKeyHeader
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import Settings
from app.observability import REQUEST_ID_HEADER

API_KEY_HEADER = "X-API-Key"
# The probes must work for the orchestrator; the schema and its viewers hold no secret, and
# Swagger UI needs them to offer "Authorize".
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/redoc", "/"})
# The web page's own files (app/web/static) hold no data; the page sends the key for the API.
OPEN_PREFIXES = ("/static/",)

# Declared on the protected routers only to document the header in OpenAPI (/docs shows a lock
# and an "Authorize" button); the middleware below does the enforcing.
api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER, auto_error=False, description="One of the keys in IMGSIM_API_KEYS."
)


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: frozenset[str]) -> None:
        self.app = app
        self._keys = [k.encode() for k in sorted(keys)]

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
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(provided, key)
        if not matched:
            await JSONResponse({"detail": "invalid API key"}, 403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def add_cors(app: FastAPI, settings: Settings) -> None:
    """Browsers on other origins may call the API only when origins are configured."""
    if not settings.cors_origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST"],
        allow_headers=[API_KEY_HEADER, REQUEST_ID_HEADER, "Content-Type"],
        expose_headers=[REQUEST_ID_HEADER, "Retry-After"],
        max_age=600,
    )
