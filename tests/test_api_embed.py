"""POST /embed, and the upload limits every image endpoint shares (bytes, pixels, parts)."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch
from fastapi.testclient import TestClient
from image_bytes import multipart_files, png

from app.main import create_app

MB = 1024 * 1024


def test_embed_returns_a_unit_vector(client, digits):
    r = client.post("/embed", files=multipart_files(image=digits["5"][0]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "mnist" and body["dim"] == 16 and len(body["embedding"]) == 16
    assert torch.tensor(body["embedding"]).norm().item() == pytest.approx(1, abs=1e-5)


def test_embed_matches_the_model_run_directly(client, digits):
    from app.images import decode

    served = client.app.state.registry.get("cifar10")
    r = client.post(
        "/embed", files=multipart_files(image=digits["5"][0]), data={"model": "cifar10"}
    )
    x = decode(digits["5"][0], served.card.mode, served.card.size, 40_000_000)
    with torch.inference_mode():
        expected = served.module(x.unsqueeze(0))[0]
    torch.testing.assert_close(torch.tensor(r.json()["embedding"]), expected)


def test_thirty_megabytes_is_413_before_reading(client):
    big = b"\x89PNG\r\n\x1a\n" + bytes(30 * MB)
    r = client.post("/embed", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413
    assert r.json()["detail"] == f"request body is over {10 * MB + MB} bytes for this endpoint"


def test_a_streamed_body_without_length_is_cut_at_the_cap(client):
    """Chunked upload, no Content-Length: the app stops pulling body chunks past the cap."""
    head = (
        b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    pulled = 0

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1  # 40 MB on offer, if anyone kept reading
        body = head if pulled == 1 else bytes(MB)
        return {"type": "http.request", "body": body, "more_body": pulled < 41}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/embed",
        "raw_path": b"/embed",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"multipart/form-data; boundary=b0undary")],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "state": {},
    }
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["detail"].startswith("request body is over")
    assert pulled <= 13  # stopped just past the 11 MB cap


def test_one_part_over_the_limit_is_413_naming_it(client):
    # 12 MB in one part fits the two-image body cap of /verify (21 MB) but not one part.
    files = multipart_files(image_a=png(), image_b=b"\x89PNG" + bytes(12 * MB))
    r = client.post("/verify", files=files)
    assert r.status_code == 413
    assert r.json()["detail"] == f"image_b: upload is over the limit of {10 * MB} bytes"


def test_pixel_limit_is_413(make_settings):
    with TestClient(create_app(make_settings(max_image_pixels=10_000))) as client:
        r = client.post("/embed", files=multipart_files(image=png(size=(101, 100))))
        assert r.status_code == 413
        assert r.json()["detail"] == (
            "image: 101x100 = 10100 pixels is over the limit of 10000 (max_image_pixels)"
        )
        assert client.post("/embed", files=multipart_files(image=png(size=(100, 100)))).is_success


def test_too_many_parts_is_a_4xx(make_settings):
    with TestClient(create_app(make_settings(max_parts=5))) as client:
        images = [png(size=(4, 4), seed=i) for i in range(6)]
        r = client.post("/similarity/matrix", files=multipart_files(images=images))
        assert r.status_code == 400
        assert r.json()["detail"] == "Too many files. Maximum number of files is 5."
        fields = {f"f{i}": "x" for i in range(6)}
        r = client.post("/embed", files=multipart_files(image=png()), data=fields)
        assert r.status_code == 400
        assert r.json()["detail"] == "Too many fields. Maximum number of fields is 5."


def test_garbage_multipart_is_400(client):
    r = client.post(
        "/embed", content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data"}
    )
    assert r.status_code == 400
    assert "detail" in r.json()
