"""The hostile corpus in tests/fixtures/hostile: each file gets the answer its README documents."""

from __future__ import annotations

from pathlib import Path

import pytest

HOSTILE = Path(__file__).parent / "fixtures" / "hostile"


def documented_cases() -> list[tuple[str, str, int, str]]:
    """Rows of the README table: (file, content type, status, detail fragment)."""
    rows = []
    for line in (HOSTILE / "README.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append((cells[0].strip("`"), cells[1], int(cells[2]), cells[3]))
    return rows


CASES = documented_cases()


def test_every_file_is_documented():
    on_disk = {p.name for p in HOSTILE.iterdir() if p.suffix not in {".md", ".py"}}
    assert on_disk == {name for name, *_ in CASES}


@pytest.mark.parametrize("name,content_type,status,detail", CASES, ids=[c[0] for c in CASES])
def test_hostile_upload_gets_its_documented_answer(client, name, content_type, status, detail):
    data = (HOSTILE / name).read_bytes()
    response = client.post("/embed", files={"image": (name, data, content_type)})
    assert response.status_code == status, response.text
    body = response.json()
    if status == 200:
        assert body["dim"] == 16
    else:
        assert detail in body["detail"]
        assert body["detail"].startswith("image: ")
    if status == 400:
        assert "PNG, JPEG, GIF, WebP, BMP, TIFF" in body["detail"]


def test_client_file_name_is_never_used(client):
    data = (HOSTILE / "real.png").read_bytes()
    for name in ["../../etc/passwd", "x" * 200, "evil.exe", ""]:
        response = client.post("/embed", files={"image": (name or "a", data, "text/plain")})
        assert response.status_code == 200, (name[:20], response.text)
