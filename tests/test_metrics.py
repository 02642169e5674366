"""app.metrics: /metrics exposes HTTP counts by route template and the pipeline histograms."""

from __future__ import annotations

from fastapi.testclient import TestClient
from image_bytes import multipart_files

from app.main import create_app


def test_metrics_expose_requests_and_pipeline(client, digits):
    client.post("/embed", files=multipart_files(image=digits["3"][0]))
    client.post("/embed", files=multipart_files(image=digits["3"][0]))  # a cache hit
    client.post("/embed", files=multipart_files(image=b"junk"))
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in [
        'http_requests_total{handler="/embed",method="POST",status="200"} 2.0',
        'http_requests_total{handler="/embed",method="POST",status="400"} 1.0',
        'imgsim_cache_hits_total{model="mnist"} 1.0',
        'imgsim_cache_misses_total{model="mnist"} 2.0',
        'imgsim_batch_size_count{model="mnist"}',
        'imgsim_inference_seconds_count{model="mnist"}',
        'imgsim_queue_wait_seconds_count{model="mnist"}',
        'imgsim_decode_seconds_count{model="mnist"} 2.0',
        "imgsim_upload_read_seconds_count 3.0",
        'http_request_duration_seconds_bucket{handler="/embed"',
    ]:
        assert line in text, line
    assert "/metrics" not in [
        part.split('"')[1] for part in text.splitlines() if part.startswith("http_requests_total")
    ]


def test_untemplated_paths_do_not_grow_the_label_set(client):
    for i in range(5):
        client.get(f"/scan/{i}")
    handlers = {
        line.split('handler="')[1].split('"')[0]
        for line in client.get("/metrics").text.splitlines()
        if line.startswith("http_requests_total")
    }
    assert not any(h.startswith("/scan") for h in handlers)


def test_many_apps_in_one_process_do_not_clash(settings):
    for _ in range(3):
        with TestClient(create_app(settings)) as client:
            assert client.get("/metrics").status_code == 200
