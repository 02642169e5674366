"""POST /calibrate on real digit images in a zip, the profiles it saves (GET/DELETE, /verify with
profile=, across a restart of a real process), and every kind of hostile zip."""

from __future__ import annotations

import base64
import io
import struct
import zipfile
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from test_server import free_port, start, wait_ready

from app.main import create_app

Entries = dict[str, bytes]


def make_zip(entries: Entries, csv: str | None = None, infos: list[zipfile.ZipInfo] = ()) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        if csv is not None:
            zf.writestr("pairs.csv", csv)
        for name, data in entries.items():
            zf.writestr(name, data)
        for info in infos:
            zf.writestr(info, b"x")
    return out.getvalue()


def digit_pairs(digits, n_same: int = 6, n_diff: int = 6) -> tuple[Entries, str]:
    """Same pairs: an image with itself (distance 0 under any tower); different pairs: two
    different digits (distance > 0). So any model separates them perfectly: a known answer."""
    entries: Entries = {}
    rows = ["a,b,same"]
    for i in range(n_same):
        d = str(i % 10)
        name = f"img/{d}_{i}.png"
        entries[name] = digits[d][i % len(digits[d])]
        rows.append(f"{name},./{name},{'1' if i % 2 else 'true'}")
    for i in range(n_diff):
        x, y = str(i % 10), str((i + 1) % 10)
        entries[f"d/{x}_{i}.png"], entries[f"d/{y}_{i}b.png"] = digits[x][0], digits[y][1]
        rows.append(f"d/{x}_{i}.png,d/{y}_{i}b.png,{'0' if i % 2 else 'False'}")
    return entries, "\n".join(rows) + "\n"


@pytest.fixture
def cal_client(make_settings, tmp_path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(data_dir=tmp_path / "data"))) as c:
        yield c


def post(client, archive: bytes, **fields: str) -> httpx.Response:
    return client.post("/calibrate", files={"pairs": ("pairs.zip", archive)}, data=fields)


def test_calibrate_on_separable_pairs_gives_the_known_answer(cal_client, digits):
    entries, csv = digit_pairs(digits)
    r = post(cal_client, make_zip(entries, csv))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "mnist" and body["pairs"] == 12
    assert body["auc"] == 1.0 and body["eer"] == 0.0
    assert body["far"] == 0.0 and body["frr"] == 0.0
    assert body["threshold_rule"] == "balanced_accuracy" and body["profile"] is None
    assert body["threshold"] > 0
    fars = [row["far"] for row in body["table"]]
    assert fars == sorted(fars)
    png = base64.b64decode(body["roc_png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert not (cal_client.app.state.settings.data_dir / "profiles").exists()


def test_calibrate_with_profile_saves_it_and_verify_applies_it(cal_client, digits):
    entries, csv = digit_pairs(digits)
    r = post(cal_client, make_zip(entries, csv), profile="night-shift", model="mnist")
    assert r.status_code == 201, r.text
    threshold = r.json()["threshold"]
    listed = cal_client.get("/models/mnist/profiles").json()
    assert [(p["name"], p["applicable"]) for p in listed["profiles"]] == [("night-shift", True)]
    assert listed["profiles"][0]["threshold"] == threshold
    files = {"image_a": digits["3"][0], "image_b": digits["3"][0]}
    v = cal_client.post("/verify", files=files, data={"profile": "night-shift"}).json()
    assert (v["threshold"], v["threshold_source"], v["same"]) == (threshold, "profile", True)
    # saved for mnist only
    assert cal_client.get("/models/cifar10/profiles").json()["profiles"] == []

    assert cal_client.delete("/models/mnist/profiles/night-shift").status_code == 204
    assert cal_client.get("/models/mnist/profiles").json()["profiles"] == []
    gone = cal_client.delete("/models/mnist/profiles/night-shift")
    assert gone.status_code == 404 and "no profile 'night-shift'" in gone.json()["detail"]
    v = cal_client.post("/verify", files=files, data={"profile": "night-shift"})
    assert v.status_code == 404


def test_profiles_of_an_unknown_model_are_404(cal_client):
    r = cal_client.get("/models/nope/profiles")
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["detail"]


def test_bad_profile_name_is_422(cal_client, digits):
    entries, csv = digit_pairs(digits)
    r = post(cal_client, make_zip(entries, csv), profile="../etc")
    assert r.status_code == 422


@pytest.mark.slow
def test_profiles_survive_a_restart_of_a_real_process(model_store, digits, tmp_path):
    data_dir = tmp_path / "state"
    entries, csv = digit_pairs(digits)
    files = {"image_a": ("a.png", digits["7"][0]), "image_b": ("b.png", digits["7"][0])}
    procs = []
    try:
        for attempt in range(2):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            proc = start(["-m", "app", "--port", str(port)], model_store, port, data_dir)
            procs.append(proc)
            wait_ready(proc, base)
            if attempt == 0:
                made = httpx.post(
                    f"{base}/calibrate",
                    files={"pairs": ("p.zip", make_zip(entries, csv))},
                    data={"profile": "kept"},
                    timeout=30,
                )
                assert made.status_code == 201, made.text
                saved = made.json()["threshold"]
            else:
                listed = httpx.get(f"{base}/models/mnist/profiles", timeout=10).json()
                assert [p["name"] for p in listed["profiles"]] == ["kept"]
                v = httpx.post(f"{base}/verify", files=files, data={"profile": "kept"}, timeout=10)
                assert v.status_code == 200, v.text
                assert (v.json()["threshold"], v.json()["threshold_source"]) == (saved, "profile")
            proc.terminate()
            assert proc.wait(30) == 0
        assert (data_dir / "profiles" / "mnist" / "kept.json").is_file()
        assert not list((data_dir / "profiles" / "mnist").glob("*.tmp"))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


# --- hostile zips: each a clear 4xx, never a 500 ------------------------------------------


def _bomb(size: int) -> bytes:
    """A zip whose one entry inflates to ``size`` zero bytes but whose headers claim 10."""
    raw = bytearray(make_zip({"img/a.png": bytes(size)}))
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.index(sig)
        struct.pack_into("<I", raw, at + offset, 10)
    return bytes(raw)


def test_not_a_zip_is_400(cal_client, digits):
    r = post(cal_client, digits["1"][0])
    assert r.status_code == 400 and "not a zip archive" in r.json()["detail"]


def test_too_many_entries_is_413(make_settings, tmp_path, digits):
    settings = make_settings(data_dir=tmp_path, max_calibrate_entries=5)
    entries, csv = digit_pairs(digits)
    with TestClient(create_app(settings)) as c:
        r = post(c, make_zip(entries, csv))
    assert r.status_code == 413 and "entries; at most 5" in r.json()["detail"]


def test_too_many_pairs_is_413(make_settings, tmp_path, digits):
    settings = make_settings(data_dir=tmp_path, max_calibrate_pairs=10)
    entries, csv = digit_pairs(digits)
    with TestClient(create_app(settings)) as c:
        r = post(c, make_zip(entries, csv))
    assert r.status_code == 413 and "more than 10 pairs" in r.json()["detail"]


def test_entry_over_the_per_image_limit_is_413(make_settings, tmp_path, digits):
    settings = make_settings(data_dir=tmp_path, max_upload_bytes=50_000)
    entries, csv = digit_pairs(digits)
    entries["img/big.png"] = bytes(60_000)  # compresses to almost nothing; unpacks past the limit
    with TestClient(create_app(settings)) as c:
        r = post(c, make_zip(entries, csv))
    assert r.status_code == 413
    assert "'img/big.png' is 60000 bytes unpacked" in r.json()["detail"]


def test_total_over_the_cap_is_413(make_settings, tmp_path, digits):
    settings = make_settings(data_dir=tmp_path, max_calibrate_total_bytes=100_000)
    entries, csv = digit_pairs(digits)
    for i in range(3):
        entries[f"pad/{i}.bin"] = bytes(40_000)
    with TestClient(create_app(settings)) as c:
        r = post(c, make_zip(entries, csv))
    assert r.status_code == 413 and "at most 100000" in r.json()["detail"]


def test_zip_bomb_lying_about_its_size_is_refused(cal_client):
    csv = "a,b,same\n" + "img/a.png,img/a.png,1\n" * 5 + "img/a.png,img/a.png,0\n" * 5
    archive = bytearray(_bomb(50_000_000))
    # add pairs.csv by rebuilding: simplest is a second zip entry appended via zipfile in "a" mode
    buf = io.BytesIO(bytes(archive))
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr("pairs.csv", csv)
    r = post(cal_client, buf.getvalue())
    assert 400 <= r.status_code < 500, r.text
    assert "img/a.png" in r.json()["detail"]


@pytest.mark.parametrize("name", ["/etc/passwd", "../../up.png", "img/../../x.png", "C:/win.png"])
def test_unsafe_paths_are_422(cal_client, digits, name):
    entries, csv = digit_pairs(digits)
    r = post(cal_client, make_zip(entries, csv, infos=[zipfile.ZipInfo(name)]))
    assert r.status_code == 422 and "unsafe path" in r.json()["detail"]


def test_csv_naming_missing_files_is_422(cal_client, digits):
    entries, csv = digit_pairs(digits)
    r = post(cal_client, make_zip(entries, csv + "img/nope.png,img/gone.png,1\n"))
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "pairs.csv names files that are not in the zip: 'img/gone.png', 'img/nope.png'"
    )


def test_non_image_entry_is_400_naming_it(cal_client, digits):
    entries, csv = digit_pairs(digits)
    entries["notes.txt"] = b"not an image"
    r = post(cal_client, make_zip(entries, csv + "notes.txt,img/0_0.png,0\n"))
    assert r.status_code == 400 and "'notes.txt' is not a usable image" in r.json()["detail"]


@pytest.mark.parametrize(("n_same", "n_diff"), [(4, 8), (8, 0)])
def test_too_few_pairs_of_a_label_is_422(cal_client, digits, n_same, n_diff):
    entries, csv = digit_pairs(digits, n_same, n_diff)
    r = post(cal_client, make_zip(entries, csv))
    assert r.status_code == 422
    assert f"{n_same} same and {n_diff} different pairs" in r.json()["detail"]


@pytest.mark.parametrize(
    ("csv", "detail"),
    [
        (None, "no pairs.csv at the root"),
        ("x,y,z\n", "the header must be a,b,same"),
        ("a,b,same\nimg/0_0.png,img/0_0.png,maybe\n", "same must be 1, 0, true or false"),
        ("a,b,same\nimg/0_0.png\n", "want 3 columns"),
    ],
)
def test_malformed_csv_is_422(cal_client, digits, csv, detail):
    entries, _ = digit_pairs(digits)
    r = post(cal_client, make_zip(entries, csv))
    assert r.status_code == 422 and detail in r.json()["detail"]


def test_upload_over_the_zip_cap_is_413(make_settings, tmp_path, digits):
    settings = make_settings(data_dir=tmp_path, max_calibrate_zip_bytes=1000)
    entries, csv = digit_pairs(digits)
    with TestClient(create_app(settings)) as c:
        r = post(c, make_zip(entries, csv) + bytes(2_000_000))
    assert r.status_code == 413


def test_entry_count_is_checked_before_the_directory_is_parsed(make_settings, tmp_path):
    # 3,000 empty entries, and a central directory broken at its first record: parsing it would
    # fail (400 not a zip), so a 413 shows the count came from the end record, before parsing.
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for i in range(3000):
            zf.writestr(f"e/{i}", b"")
    raw = out.getvalue().replace(b"PK\x01\x02", b"XX\x01\x02", 1)
    settings = make_settings(data_dir=tmp_path, max_calibrate_entries=2000)
    with TestClient(create_app(settings)) as c:
        r = post(c, raw)
    assert r.status_code == 413 and r.json()["detail"] == (
        "pairs: the zip has 3000 entries; at most 2000"
    )
