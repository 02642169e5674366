"""GET /docs: Swagger UI served from the swagger-ui-bundle-v2 package, so it works offline.

FastAPI's own /docs page loads Swagger UI's script and stylesheet from a CDN, which a machine
without internet access (or a browser that blocks third-party scripts) cannot reach. Here the
page names only the three files it needs, served by this process from the installed package.
ReDoc has no such package and is turned off.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
# file in the package -> its media type; served at /docs/<file>
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
ASSET_PATHS = frozenset(f"{DOCS_PATH}/{name}" for name in ASSETS)
_CACHE = {"Cache-Control": "public, max-age=86400"}  # the files change only with the package


def add_docs(app: FastAPI) -> None:
    """Serve Swagger UI at /docs; create the app with ``docs_url=None, redoc_url=None``."""
    assert app.openapi_url is not None

    @app.get(DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_PATH}/favicon-32x32.png",
            # Swagger UI would otherwise send the schema to validator.swagger.io for a badge.
            swagger_ui_parameters={"validatorUrl": None},
        )

    for name, media_type in ASSETS.items():
        app.add_api_route(
            f"{DOCS_PATH}/{name}",
            _asset(name, media_type),
            methods=["GET"],
            include_in_schema=False,
        )


def _asset(name: str, media_type: str) -> Callable[[], Awaitable[FileResponse]]:
    path = swagger_ui_path / name

    async def serve() -> FileResponse:
        return FileResponse(path, media_type=media_type, headers=_CACHE)

    return serve
