"""app.security: optional API keys (401/403/200) and CORS, off unless configured."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from image_bytes import multipart_files, png

from app.main import create_app

KEYS = "first-key-0123456789,second-key-abcdef"


@pytest.fixture
def keyed(make_settings):
    with TestClient(create_app(make_settings(api_keys=KEYS))) as client:
        yield client


def embed(client, headers=None):
    return client.post("/embed", files=multipart_files(image=png()), headers=headers or {})


def test_no_key_is_401(keyed):
    r = embed(keyed)
    assert r.status_code == 401
    assert r.json() == {"detail": "missing X-API-Key header"}


def test_wrong_key_is_403(keyed):
    near = "first-key-012345678"
    for wrong in ["nope", near, KEYS, "", "ключ".encode(), b"first-key-0123456789\xff"]:
        r = embed(keyed, {"X-API-Key": wrong})
        assert r.status_code == 403, wrong
        assert r.json() == {"detail": "invalid API key"}


def test_each_configured_key_works(keyed):
    for key in KEYS.split(","):
        assert embed(keyed, {"X-API-Key": key}).status_code == 200


@pytest.mark.parametrize("path", ["/models", "/nope"])
def test_other_paths_need_the_key_too(keyed, path):
    assert keyed.get(path).status_code == 401
    assert keyed.get(path, headers={"X-API-Key": "first-key-0123456789"}).status_code in (200, 404)


ADMIN = "admin-key-0123456789"


@pytest.fixture
def with_admin(make_settings):
    settings = make_settings(api_keys=KEYS, admin_keys=ADMIN)
    with TestClient(create_app(settings)) as client:
        yield client


def test_metrics_is_for_admin_keys_only(with_admin):
    assert with_admin.get("/metrics").status_code == 401
    r = with_admin.get("/metrics", headers={"X-API-Key": "first-key-0123456789"})
    assert r.status_code == 403
    assert r.json() == {"detail": "this path needs an admin key (IMGSIM_ADMIN_KEYS)"}
    assert with_admin.get("/metrics", headers={"X-API-Key": ADMIN}).status_code == 200
    assert embed(with_admin, {"X-API-Key": ADMIN}).status_code == 200  # and the rest too


def test_metrics_is_closed_to_client_keys_when_no_admin_key_is_set(keyed):
    r = keyed.get("/metrics", headers={"X-API-Key": "first-key-0123456789"})
    assert r.status_code == 403


def cache_hits(client) -> float:
    text = client.get("/metrics", headers={"X-API-Key": ADMIN}).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("imgsim_cache_hits_total{")
    )


def test_each_key_has_its_own_cache(with_admin):
    first, second = ({"X-API-Key": k} for k in KEYS.split(","))
    image = multipart_files(image=png(seed=5))
    assert with_admin.post("/embed", files=image, headers=first).status_code == 200
    assert with_admin.post("/embed", files=image, headers=second).status_code == 200
    assert cache_hits(with_admin) == 0  # the second key's identical upload was not a hit
    assert with_admin.post("/embed", files=image, headers=first).status_code == 200
    assert cache_hits(with_admin) == 1  # but the first key's own repeat is


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/docs"])
def test_probes_and_docs_are_open(keyed, path):
    assert keyed.get(path).status_code == 200


def test_openapi_documents_the_header(keyed):
    schema = keyed.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    assert schema["paths"]["/verify"]["post"]["security"] == [{"APIKeyHeader": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_keys_from_a_file(make_settings, tmp_path):
    path = tmp_path / "keys"
    path.write_text("# rotated 2026-11\nfile-key-1\n\nfile-key-2\n")
    with TestClient(create_app(make_settings(api_keys=str(path)))) as client:
        assert embed(client, {"X-API-Key": "file-key-2"}).status_code == 200
        assert embed(client, {"X-API-Key": "# rotated 2026-11"}).status_code == 403


def test_keys_as_a_json_list(make_settings):
    with TestClient(create_app(make_settings(api_keys='["json-key"]'))) as client:
        assert embed(client, {"X-API-Key": "json-key"}).status_code == 200


def test_auth_is_off_without_keys(client):
    assert embed(client).status_code == 200


def test_cors_is_off_by_default(client):
    r = client.options(
        "/similarity",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_configured_origins(make_settings):
    settings = make_settings(cors_origins=["https://app.example"], api_keys=KEYS)
    with TestClient(create_app(settings)) as client:
        preflight = client.options(
            "/verify",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "X-API-Key",
            },
        )
        assert preflight.status_code == 200  # answered without a key: browsers send none
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        r = client.get("/healthz", headers={"Origin": "https://app.example"})
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "X-Request-ID" in r.headers["access-control-expose-headers"]
        r = client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
