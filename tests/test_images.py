"""app.images: every accepted format decodes to the model's mode and size; bad bytes are refused."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
import torch
from image_bytes import (
    animated_gif,
    encode,
    exif_rotated_jpeg,
    halves,
    noise,
    palette_with_transparency,
    png,
    sixteen_bit_png,
    tiled_tiff,
    transparent_rgba,
)
from PIL import Image

from app.images import TooLarge, Undecodable, decode, pixels_to_decode, survey

MAX_PIXELS = 40_000_000
GREY = ("L", (28, 28))
COLOUR = ("RGB", (32, 32))


def decode_l(data: bytes, size: tuple[int, int] = (28, 28)) -> torch.Tensor:
    return decode(data, "L", size, MAX_PIXELS)


FORMATS = {
    "png-rgb": lambda: png(mode="RGB"),
    "png-grey": lambda: png(mode="L"),
    "png-rgba": lambda: png(mode="RGBA"),
    "jpeg": lambda: encode(noise(), "JPEG"),
    "jpeg-grey": lambda: encode(noise(mode="L"), "JPEG"),
    "jpeg-cmyk": lambda: encode(noise(mode="CMYK"), "JPEG"),
    "jpeg-exif-rotated": exif_rotated_jpeg,
    "gif-animated": animated_gif,
    "webp": lambda: encode(noise(), "WEBP"),
    "bmp": lambda: encode(noise(), "BMP"),
    "tiff": lambda: encode(noise(), "TIFF"),
    "tiff-deflate": lambda: encode(noise(), "TIFF", compression="tiff_adobe_deflate"),
    "png-16bit": lambda: sixteen_bit_png(30000),
    "png-palette-transparent": palette_with_transparency,
    "png-1bit": lambda: encode(noise(mode="L").convert("1"), "PNG"),
    "png-1x1": lambda: png(size=(1, 1)),
    "png-1x3000": lambda: png(size=(1, 3000)),
    "png-3000x1": lambda: png(size=(3000, 1)),
    "jpeg-large": lambda: encode(noise(size=(2000, 1500)), "JPEG"),  # decoded at 1/8 scale
}


@pytest.mark.parametrize("mode,size", [GREY, COLOUR], ids=["L-28", "RGB-32"])
@pytest.mark.parametrize("make", FORMATS.values(), ids=FORMATS.keys())
def test_every_format_decodes_to_the_model_input(make, mode, size):
    x = decode(make(), mode, size, MAX_PIXELS)
    channels = 1 if mode == "L" else 3
    assert x.dtype == torch.uint8
    assert tuple(x.shape) == (channels, size[1], size[0])
    assert x.is_contiguous()


def test_non_square_size_is_width_height():
    x = decode(png(), "RGB", (20, 10), MAX_PIXELS)  # ModelCard.size is (width, height)
    assert tuple(x.shape) == (3, 10, 20)


def test_grey_matches_pil_conversion():
    img = noise(size=(28, 28))
    expected = np.asarray(img.convert("L"))
    got = decode_l(encode(img, "PNG"))[0].numpy()
    np.testing.assert_array_equal(got, expected)  # same size: no resampling, only the luma


def test_exif_orientation_is_applied():
    upright = decode_l(exif_rotated_jpeg())[0].float()
    top, bottom = upright[:10].mean(), upright[-10:].mean()
    assert top < 40 and bottom > 215, (top, bottom)  # rotated: black on top, not on the left
    stored = decode_l(encode(halves().convert("RGB"), "JPEG"))[0].float()
    assert stored[:, :10].mean() < 40 and stored[:, -10:].mean() > 215


def test_cmyk_jpeg_keeps_its_colours():
    red = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    x = decode(encode(red, "JPEG", quality=95), "RGB", (16, 16), MAX_PIXELS)
    r, g, b = (x[c].float().mean().item() for c in range(3))
    assert r > 200 and g < 60 and b < 60, (r, g, b)


def test_animated_gif_uses_the_first_frame():
    assert decode_l(animated_gif()).float().mean() > 250  # frame 0 is white, frame 1 black


@pytest.mark.parametrize(
    "value,expected", [(0, 0), (257, 1), (1000, 4), (32896, 128), (65535, 255)]
)
def test_sixteen_bit_is_scaled_not_clipped(value, expected):
    x = decode_l(sixteen_bit_png(value), size=(8, 8))
    assert x.unique().tolist() == [expected]


@pytest.mark.parametrize("make", [palette_with_transparency, transparent_rgba])
def test_transparency_is_composited_over_white(make):
    x = decode_l(make(), size=(20, 20))[0]
    assert x[:, :9].min() == 255  # transparent half: white, not black
    assert x[:, 11:].max() == 0  # opaque black half stays black


def test_la_alpha_is_composited_over_white():
    img = Image.new("LA", (20, 20), (0, 0))
    x = decode_l(encode(img, "PNG"), size=(20, 20))
    assert x.min() == 255


def test_pixel_limit_is_checked_from_the_header():
    with pytest.raises(TooLarge, match="100x100 = 10000 pixels is over the limit of 9999"):
        decode(png(size=(100, 100)), "L", (28, 28), max_pixels=9_999)
    decode(png(size=(100, 100)), "L", (28, 28), max_pixels=10_000)  # at the limit: fine


def test_a_pixel_limit_above_pillows_own_default_is_honoured():
    # 9500x9500 = 90.25 M pixels, over Pillow's default bomb limit (89.5 M): the setting decides.
    data = encode(Image.new("L", (9500, 9500), 7), "PNG")
    assert decode(data, "L", (28, 28), max_pixels=100_000_000).unique().tolist() == [7]
    with pytest.raises(TooLarge, match=r"over the limit of 90000000 \(max_image_pixels\)"):
        decode(data, "L", (28, 28), max_pixels=90_000_000)


def test_a_tiff_tile_larger_than_its_image_is_refused_before_decoding():
    bomb = tiled_tiff((64, 64), tile=8192)  # 130 KB inflating into a 67 M pixel tile
    with pytest.raises(TooLarge, match="a 8192x8192 tile in a 64x64 image"):
        decode(bomb, "L", (28, 28), max_pixels=40_000_000)


@pytest.mark.parametrize("size,tile", [((50, 50), 64), ((300, 200), 256), ((40, 40), 16)])
def test_ordinary_tiled_tiffs_still_decode(size, tile):
    x = decode(tiled_tiff(size, tile=tile, value=200), "L", (28, 28), max_pixels=40_000_000)
    assert x.unique().tolist() == [200]


def test_a_jpeg_claiming_a_huge_size_costs_only_its_draft():
    # Decided (issue 12): a JPEG whose 6000x6000 frame holds a few KB of scan data is accepted.
    # libjpeg fills what is missing with grey, and the draft decodes it at 1/8 scale, so it
    # costs 1/64 of its declared pixels, and those are what the request's budget is charged.
    full = encode(noise(size=(6000, 6000)), "JPEG")
    scan = full.index(b"\xff\xda")
    tiny = full[: scan + 2000] + b"\xff\xd9"
    assert decode(tiny, "RGB", (32, 32), max_pixels=40_000_000).shape == (3, 32, 32)
    assert pixels_to_decode(tiny, (32, 32), 40_000_000) == 750 * 750


def test_pixels_to_decode_reads_only_the_header():
    assert pixels_to_decode(png(size=(40, 30)), (28, 28), 10_000) == 1200
    assert pixels_to_decode(png(size=(40, 30))[:60], (28, 28), 10_000) == 1200  # header only
    assert pixels_to_decode(png(size=(40, 30)), (28, 28), 1000) == 0  # refused unread anyway
    assert pixels_to_decode(b"not an image", (28, 28), 10_000) == 0


def test_survey_names_the_largest_image_or_tile_decode_checks():
    assert survey(png(size=(40, 30)), (28, 28), 10_000) == (1200, 1200)
    assert survey(png(size=(40, 30)), (28, 28), 1000) == (0, 1200)  # over the limit: declared
    assert survey(tiled_tiff((64, 64), tile=1024), (28, 28), 40_000_000) == (4096, 1024 * 1024)
    assert survey(b"not an image", (28, 28), 10_000) == (0, 0)
    # A drafted JPEG decodes 1/64 of its pixels, but its header declares them all.
    full = encode(noise(size=(800, 800)), "JPEG")
    assert survey(full, (32, 32), 40_000_000) == (100 * 100, 800 * 800)
    # Under a cap of at least that second number, decode decides as under the real limit.
    tiles = tiled_tiff((64, 64), tile=1024, value=7)
    with pytest.raises(TooLarge):
        decode(tiles, "L", (28, 28), max_pixels=1024 * 1024 - 1)
    assert decode(tiles, "L", (28, 28), max_pixels=1024 * 1024).unique().tolist() == [7]


def test_sixteen_bit_conversion_needs_no_int64():
    # A 16-bit image is mapped through a 64 K-entry table: the peak is Pillow's 16-bit bytes,
    # numpy's view of them and the uint8 result (about 4 bytes/pixel), never an int64 copy.
    big = np.full((2000, 2000), 40000, dtype=np.uint16)
    tracemalloc.start()
    x = decode(encode(Image.fromarray(big), "PNG"), "L", (28, 28), max_pixels=40_000_000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert x.unique().tolist() == [round(40000 * 255 / 65535)]
    assert peak < 2000 * 2000 * 8  # one int64 copy alone would be 32 MB


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty file"),
        (b"hello, world", "not a decodable image"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not a decodable image"),
        (b"<!doctype html><html></html>", "not a decodable image"),
        (png()[:200], "damaged image"),
        (encode(noise(size=(64, 64)), "JPEG")[:1500], "damaged image"),
    ],
    ids=["empty", "text", "svg", "html", "truncated-png", "truncated-jpeg"],
)
def test_bad_bytes_are_undecodable(data, message):
    with pytest.raises(Undecodable, match=message):
        decode_l(data)


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "PPM"])
def test_formats_outside_the_list_are_refused(fmt):
    # Pillow could open these; the service does not promise them, so it does not try.
    with pytest.raises(Undecodable):
        decode_l(encode(noise(size=(16, 16)), fmt))


def test_bytes_not_names_decide():
    buf = io.BytesIO()
    noise().save(buf, "GIF")
    assert decode_l(buf.getvalue()).shape == (1, 28, 28)  # no name, no content type: fine
