"""app.ood: uploads far from what a model was trained on carry warnings, through the API."""

from __future__ import annotations

from pathlib import Path

import pytest
from image_bytes import encode, exif_rotated_jpeg, multipart_files, noise, png
from PIL import Image

from app.ood import Source, source_of

HOSTILE = Path(__file__).parent / "fixtures" / "hostile"


def post(client, path, data=None, **files):
    r = client.post(path, files=multipart_files(**files), data=data or {})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(
    ("mode", "fmt", "options", "colour"),
    [
        ("L", "PNG", {}, False),
        ("RGB", "PNG", {}, True),
        ("RGBA", "PNG", {}, True),
        ("L", "JPEG", {}, False),
        ("RGB", "JPEG", {}, True),
        ("RGB", "JPEG", {"progressive": True}, True),
        ("CMYK", "JPEG", {}, True),
        ("RGB", "WEBP", {}, True),
        ("L", "BMP", {}, False),
        ("RGB", "TIFF", {}, True),
        ("L", "TIFF", {}, False),
    ],
)
def test_the_header_gives_the_size_and_whether_it_is_colour(mode, fmt, options, colour):
    data = encode(noise((45, 17), mode), fmt, **options)
    assert source_of(data) == Source(45, 17, colour)


def test_a_palette_does_not_say_whether_it_is_colour():
    data = encode(noise((20, 10), "RGB").convert("P"), "GIF")
    assert source_of(data) == Source(20, 10, None)
    assert source_of(encode(noise((20, 10), "RGB").convert("P"), "PNG")) == Source(20, 10, None)


def test_a_jpeg_with_exif_reports_its_stored_frame():
    assert source_of(exif_rotated_jpeg()) == Source(40, 20, True)


@pytest.mark.parametrize("path", sorted(p for p in HOSTILE.iterdir() if p.suffix != ".md"))
def test_hostile_files_give_what_pillow_reads_or_nothing(path):
    data = path.read_bytes()
    source = source_of(data)  # never raises
    if path.name.startswith("bomb_"):  # a header claiming e.g. 40000x40000: read, not decoded
        claimed = path.stem.removeprefix("bomb_").split("x")
        assert source is not None and [source.width, source.height] == [int(n) for n in claimed]
    elif source is not None and path.name in ("real.png", "truncated.png", "truncated.jpg"):
        with Image.open(path) as img:
            assert (source.width, source.height) == img.size


def test_real_digits_to_the_digit_model_carry_no_warning(client, digits):
    body = post(client, "/verify", image_a=digits["3"][0], image_b=digits["3"][1])
    assert body["warnings"] == []


def test_a_colour_photo_sent_to_the_greyscale_model_is_flagged(client, digits, photos):
    body = post(client, "/verify", image_a=digits["3"][0], image_b=photos["cat"][0])
    assert body["warnings"] == [
        "image_b: stored in colour, but model 'mnist' was trained on greyscale images "
        "(mnist): converted to grey, the answer may not mean much."
    ]
    body = post(client, "/similarity", image_a=photos["cat"][0], image_b=photos["ship"][0])
    assert len(body["warnings"]) == 1 and body["warnings"][0].startswith("image_a, image_b: ")


def test_a_digit_sent_to_the_colour_model_is_flagged(client, digits, photos):
    body = post(client, "/embed", data={"model": "cifar10"}, image=digits["7"][0])
    assert body["warnings"] == [
        "image: stored in greyscale, but model 'cifar10' was trained on colour images "
        "(cifar10): the answer may not mean much."
    ]
    body = post(client, "/embed", data={"model": "cifar10"}, image=photos["cat"][0])
    assert body["warnings"] == []


@pytest.mark.parametrize(
    ("size", "fragment"),
    [
        ((120, 28), "shaped far from the model's 28x28 input (more than 2:1 off)"),
        ((28, 60), "shaped far from the model's 28x28 input"),
        ((460, 470), "over 16 times the model's 28x28 input on each side"),
        ((10, 12), "under 0.5 of the model's 28x28 input on a side"),
    ],
)
def test_shape_and_size_far_from_the_input_are_flagged(client, size, fragment):
    body = post(client, "/embed", image=png(size, mode="L"))
    assert len(body["warnings"]) == 1 and fragment in body["warnings"][0]
    assert body["warnings"][0].startswith("image: ")


@pytest.mark.parametrize("size", [(28, 28), (56, 28), (448, 448), (14, 14), (100, 60)])
def test_within_the_bounds_no_warning(client, size):
    assert post(client, "/embed", image=png(size, mode="L"))["warnings"] == []


def test_one_to_many_names_the_candidates_and_skips_the_broken_one(client, digits, photos):
    body = post(
        client,
        "/similarity/one-to-many",
        query=digits["1"][0],
        candidates=[digits["1"][1], photos["cat"][0], b"not an image", photos["dog"][0]],
    )
    assert body["warnings"] == [
        "candidates[1], candidates[3]: stored in colour, but model 'mnist' was trained on "
        "greyscale images (mnist): converted to grey, the answer may not mean much."
    ]
    assert {r["index"] for r in body["results"] if "error" in r} == {2}


def test_matrix_groups_the_fields_per_rule(client, digits):
    wide = png((200, 40), mode="L")
    body = post(client, "/similarity/matrix", images=[wide, digits["2"][0], png((30, 30)), wide])
    assert [w.split(": ")[0] for w in body["warnings"]] == ["images[0], images[3]", "images[2]"]
