"""The web page's server side: the page and its static files, offline-only, and the model card
and plot routes (only PNG plots of a known model; no path traversal)."""

from __future__ import annotations

import re

import pytest

from app.web import STATIC

HOOKS = ["model-select", "image-a", "image-b", "submit", "verdict", "distance", "similarity",
         "threshold", "far", "error",
         "gallery-name", "subject-name", "enroll-images", "enroll-submit", "identify-image",
         "identify-submit", "match", "identify-candidates"]  # fmt: skip


def test_page_is_served_with_every_test_hook(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for hook in HOOKS:
        assert f'data-testid="{hook}"' in r.text, hook
    # one element per hook: Playwright's get_by_test_id refuses an ambiguous one
    hooks = re.findall(r'data-testid="([^"]+)"', r.text)
    assert sorted(h for h in set(hooks) if hooks.count(h) > 1) == []
    for asset in ("/static/app.js", "/static/app.css"):
        assert asset in r.text
        assert client.get(asset).status_code == 200


@pytest.mark.parametrize("path", sorted(p.name for p in STATIC.iterdir()))
def test_static_files_load_nothing_from_elsewhere(path):
    text = (STATIC / path).read_text()
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), "no CDN, fonts, URLs"
    assert "@import" not in text


def test_page_and_static_files_need_no_api_key(make_settings, digits):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(make_settings(api_keys="k1"))) as c:
        assert c.get("/").status_code == 200
        assert c.get("/static/app.js").status_code == 200
        assert c.get("/models/mnist/card").status_code == 401
        assert c.get("/models/mnist/card", headers={"X-API-Key": "k1"}).status_code == 200


def test_card_has_training_config_and_plot_names(client, model_store):
    (model_store / "mnist" / "roc.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    try:
        body = client.get("/models/mnist/card").json()
        assert body["card"]["name"] == "mnist" and body["card"]["training"] == {"seed": 0}
        assert body["plots"] == ["roc.png"]
        r = client.get("/models/mnist/plots/roc.png")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content == b"\x89PNG\r\n\x1a\nfake"
    finally:
        (model_store / "mnist" / "roc.png").unlink()


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/models/mnist/plots/model.pt", 422),
        ("/models/mnist/plots/model.json", 422),
        ("/models/mnist/plots/..%2Fcifar10%2Froc.png", 404),
        ("/models/mnist/plots/%2E%2E.png", 422),
        ("/models/mnist/plots/missing.png", 404),
        ("/models/nope/plots/roc.png", 404),
        ("/models/nope/card", 404),
        ("/static/..%2F__init__.py", 404),
    ],
)
def test_plot_route_serves_nothing_else(client, path, status):
    r = client.get(path)
    assert r.status_code == status, r.text
