"""app.observability: request ids, one JSON access line per request, nothing secret logged."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import threading

import pytest
from fastapi.testclient import TestClient
from image_bytes import multipart_files

from app.main import create_app
from app.observability import (
    JsonFormatter,
    TextFormatter,
    _HandOff,
    _LogWriter,
    clean_request_id,
    request_id_var,
)

KEY = "s3cret-api-key-value"


def access_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "app.access"]


def test_a_request_id_is_generated(client):
    r = client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", r.headers["x-request-id"])
    assert client.get("/healthz").headers["x-request-id"] != r.headers["x-request-id"]


def test_a_clean_incoming_request_id_is_honoured(client):
    r = client.get("/healthz", headers={"X-Request-ID": "lb-7f3a:42.b_c"})
    assert r.headers["x-request-id"] == "lb-7f3a:42.b_c"


@pytest.mark.parametrize("bad", ["a" * 129, "has space", "<script>", "x\ty", "ünï"])
def test_an_unsafe_request_id_is_replaced(bad):
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", clean_request_id(bad))


def test_error_responses_carry_the_id_too(client):
    r = client.post("/embed", files=multipart_files(image=b"junk"), headers={"X-Request-ID": "r-1"})
    assert r.status_code == 400 and r.headers["x-request-id"] == "r-1"


def test_access_line_is_json_with_the_fields(client, caplog, digits):
    caplog.set_level(logging.INFO, logger="app.access")
    r = client.post(
        "/verify",
        files=multipart_files(image_a=digits["0"][0], image_b=digits["1"][0]),
        data={"model": "mnist"},
        headers={"X-Request-ID": "trace-123"},
    )
    assert r.status_code == 200
    (record,) = access_records(caplog)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "INFO" and line["logger"] == "app.access"
    assert line["request_id"] == "trace-123"
    assert line["method"] == "POST" and line["route"] == "/verify" and line["status"] == 200
    assert line["model"] == "mnist" and line["latency_ms"] > 0
    assert line["msg"] == "POST /verify 200"


def test_client_errors_are_info_and_name_the_route(client, caplog):
    caplog.set_level(logging.INFO, logger="app.access")
    client.post("/embed", files=multipart_files(image=b"junk"))
    client.get("/does/not/exist")
    records = access_records(caplog)
    assert [(r.levelno, r.status, r.route) for r in records] == [
        (logging.INFO, 400, "/embed"),
        (logging.INFO, 404, None),
    ]
    assert records[1].path == "/does/not/exist"


def test_no_key_and_no_image_bytes_in_any_log(make_settings, caplog, digits):
    caplog.set_level(logging.DEBUG)
    image = digits["8"][0]
    with TestClient(create_app(make_settings(api_keys=KEY))) as client:
        for key in [KEY, "wrong-" + KEY]:
            client.post("/embed", files=multipart_files(image=image), headers={"X-API-Key": key})
        client.post("/embed", files=multipart_files(image=b"\x89PNG\r\n\x1a\nbroken" + image[:64]))
    lines = [JsonFormatter().format(r) for r in caplog.records]
    text = caplog.text + "\n".join(lines)
    assert KEY not in text
    for fragment in [image[8:40], image[8:40].hex(), base64.b64encode(image[8:40]).decode()]:
        assert str(fragment) not in text
    assert "IHDR" not in text


def test_server_errors_are_logged_with_traceback_and_answer_json(client, caplog):
    def broken(x):
        raise RuntimeError("boom: a bug in the model")

    client.app.state.registry.get("mnist").batcher.forward = broken
    caplog.set_level(logging.INFO)
    quiet = TestClient(client.app, raise_server_exceptions=False)
    r = quiet.post(
        "/embed",
        files=multipart_files(image=b"GIF89a" + bytes(10)),
        headers={"X-Request-ID": "bug-1"},
    )
    assert r.status_code == 400  # bad input is still the client's: no forward pass needed
    from image_bytes import png

    r = quiet.post("/embed", files=multipart_files(image=png()), headers={"X-Request-ID": "bug-2"})
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error", "request_id": "bug-2"}
    assert r.headers["x-request-id"] == "bug-2"
    (error,) = [r for r in caplog.records if r.name == "app.main" and r.levelno == logging.ERROR]
    assert error.exc_info is not None and "boom" in JsonFormatter().format(error)
    assert error.request_id == "bug-2"
    (access,) = [r for r in access_records(caplog) if r.status == 500]
    assert access.levelno == logging.ERROR


def test_the_log_writer_writes_batched_json_lines_with_id_and_traceback():
    stream = io.StringIO()
    writer = _LogWriter(stream, interval_s=3600)  # only explicit flushes in this test
    handoff = _HandOff(writer)
    logger = logging.getLogger("test.writer")
    logger.addHandler(handoff)
    logger.propagate = False
    token = request_id_var.set("req-9")
    try:
        logger.warning("%d images", 3)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
        assert stream.getvalue() == ""  # queued, not written on the caller's thread
        writer.flush()
    finally:
        request_id_var.reset(token)
        logger.removeHandler(handoff)
        writer.stop()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "3 images" and first["request_id"] == "req-9"
    assert second["msg"] == "failed" and "ValueError: boom" in second["exc"]


def test_the_log_writer_writes_what_is_queued_when_stopped():
    stream = io.StringIO()
    writer = _LogWriter(stream, interval_s=3600)
    writer.records.put(logging.LogRecord("app", logging.INFO, "", 0, "last words", None, None))
    writer.stop()
    assert json.loads(stream.getvalue())["msg"] == "last words"


def test_a_full_log_queue_drops_and_counts_then_says_so():
    stream = io.StringIO()
    writer = _LogWriter(stream, interval_s=3600, queue_max=5)
    handoff = _HandOff(writer)
    logger = logging.getLogger("test.bounded")
    logger.addHandler(handoff)
    logger.propagate = False
    try:
        for i in range(12):
            logger.warning("line %d", i)  # never blocks, whatever the queue holds
        assert writer.records.qsize() == 5 and writer.dropped == 7
        writer.flush()
    finally:
        logger.removeHandler(handoff)
        writer.stop()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["msg"] == "dropped 7 log records: the log stream was not keeping up"
    assert [line["msg"] for line in lines[1:]] == [f"line {i}" for i in range(5)]


class Stuck(io.StringIO):
    """A stream whose writes never return, like stderr on a full pipe nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait()
        return 0


def test_stopping_gives_up_on_a_stream_that_is_not_read():
    stream = Stuck()
    writer = _LogWriter(stream, interval_s=0.01, flush_timeout_s=0.2)
    writer.records.put(logging.LogRecord("app", logging.INFO, "", 0, "stuck", None, None))
    stopper = threading.Thread(target=writer.stop)
    stopper.start()
    stopper.join(10)  # returns after about 2 x flush_timeout_s, not never
    stream.release.set()
    assert not stopper.is_alive()


def test_plain_text_logs_escape_control_characters():
    record = logging.LogRecord("app.access", logging.INFO, "", 0, "GET %s 404", ("/a\nb\r",), None)
    record.request_id = "r-1"
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line
    assert line.endswith("[r-1] GET /a\\nb\\r 404")


def test_overload_is_logged_as_a_warning_not_an_error(make_settings, caplog, digits):
    caplog.set_level(logging.INFO, logger="app.access")
    with TestClient(create_app(make_settings(max_request_pixels=100))) as client:
        r = client.post("/embed", files=multipart_files(image=digits["1"][0]))
        assert r.status_code == 413
    with TestClient(create_app(make_settings(request_timeout_s=1e-6))) as client:
        r = client.post("/embed", files=multipart_files(image=digits["2"][0]))
        assert r.status_code == 503
    levels = {r.status: r.levelno for r in access_records(caplog)}
    assert levels[503] == logging.WARNING and levels[413] == logging.INFO
