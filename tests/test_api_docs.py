"""GET /docs: Swagger UI that needs nothing but this server (no CDN)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from swagger_ui_bundle import swagger_ui_path

from app.main import create_app


def test_docs_page_references_only_assets_this_server_serves(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""url:\s*["']([^"']+)["']""", html)  # SwaggerUIBundle({url: ...})
    assert "/openapi.json" in urls and "/docs/swagger-ui-bundle.js" in urls
    assert "http" not in html  # no absolute URL to fetch
    assert '"validatorUrl": null' in html  # nor the schema sent to validator.swagger.io
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        if url.startswith("/docs/"):
            assert asset.content == (swagger_ui_path / url.removeprefix("/docs/")).read_bytes()
    js = client.get("/docs/swagger-ui-bundle.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert client.get("/docs/swagger-ui.css").headers["content-type"].startswith("text/css")


def test_only_the_named_assets_are_served(client):
    assert client.get("/docs/index.html").status_code == 404
    assert client.get("/docs/../pyproject.toml").status_code == 404
    assert client.get("/redoc").status_code == 404  # ReDoc would need a CDN


def test_docs_and_assets_need_no_api_key(make_settings):
    with TestClient(create_app(make_settings(api_keys="k1"))) as client:
        for path in (
            "/docs",
            "/docs/swagger-ui-bundle.js",
            "/docs/swagger-ui.css",
            "/openapi.json",
        ):
            assert client.get(path).status_code == 200, path
        assert client.get("/models").status_code == 401
