"""Real image files, made with Pillow in memory, for the image and API tests."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def noise(size: tuple[int, int] = (40, 30), mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def png(size: tuple[int, int] = (40, 30), mode: str = "RGB", seed: int = 0) -> bytes:
    return encode(noise(size, mode, seed), "PNG")


def halves(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Left half black, right half white, greyscale."""
    img = Image.new("L", size, 255)
    img.paste(0, (0, 0, size[0] // 2, size[1]))
    return img


def exif_rotated_jpeg() -> bytes:
    """Stored 40x20 (black left, white right) with EXIF orientation 6: shown rotated 90 deg
    clockwise, i.e. 20x40 with black on top."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(halves().convert("RGB"), "JPEG", exif=exif.tobytes(), quality=95)


def animated_gif() -> bytes:
    """Two frames: white, then black. Only the first may count."""
    frames = [Image.new("L", (20, 20), 255), Image.new("L", (20, 20), 0)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def sixteen_bit_png(value: int, size: tuple[int, int] = (8, 8)) -> bytes:
    return encode(Image.fromarray(np.full((size[1], size[0]), value, dtype=np.uint16)), "PNG")


def palette_with_transparency() -> bytes:
    """Index 0 (black) is transparent and fills the left half; index 1 is opaque black."""
    img = Image.new("P", (20, 20), 1)
    img.putpalette([0, 0, 0] * 2 + [0, 0, 0] * 254)
    img.paste(0, (0, 0, 10, 20))
    return encode(img, "PNG", transparency=0)


def transparent_rgba() -> bytes:
    """Left half fully transparent black, right half opaque black."""
    img = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    img.paste((0, 0, 0, 255), (10, 0, 20, 20))
    return encode(img, "PNG")


def multipart_files(**named: bytes | list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """httpx ``files=`` for fields holding one or several images."""
    files = []
    for field, value in named.items():
        for i, data in enumerate(value if isinstance(value, list) else [value]):
            files.append((field, (f"{field}{i}.png", data, "image/png")))
    return files


def tiled_tiff(size: tuple[int, int], tile: int, value: int = 0) -> bytes:
    """A greyscale TIFF of ``size`` stored as deflated ``tile`` x ``tile`` tiles of ``value``.

    Written by hand: the tile size is whatever the file says, even one far larger than the image
    (a tile bomb: a few hundred KB of zeros that a decoder inflates into its declared tile).
    """
    width, height = size
    across, down = -(-width // tile), -(-height // tile)
    squeezer = zlib.compressobj(9)
    row = bytes([value]) * tile
    deflated = b"".join(squeezer.compress(row) for _ in range(tile)) + squeezer.flush()
    count = across * down
    data_at = 8
    ifd_at = data_at + len(deflated)
    entries = [  # (tag, type, count, value): type 3 SHORT, 4 LONG
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: deflate
        (262, 3, 1, 1),  # Photometric: black is zero
        (277, 3, 1, 1),  # SamplesPerPixel
        (322, 4, 1, tile),  # TileWidth
        (323, 4, 1, tile),  # TileLength
        (324, 4, count, data_at),  # TileOffsets: every tile shares the one deflated block
        (325, 4, count, len(deflated)),  # TileByteCounts
    ]
    arrays_at = ifd_at + 2 + 12 * len(entries) + 4
    body, extra = b"", b""
    for tag, kind, n, value_ in entries:
        if n == 1:
            body += struct.pack("<HHII", tag, kind, 1, value_)
            continue
        body += struct.pack("<HHII", tag, kind, n, arrays_at + len(extra))
        extra += struct.pack(f"<{n}I", *[value_] * n)
    ifd = struct.pack("<H", len(entries)) + body + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_at) + deflated + ifd + extra
