"""Warnings for uploads far from what a model was trained on, judged from the file header.

    warnings = ood.warnings_for(model, [("image_a", data_a), ("image_b", data_b)])
    # ["image_a: stored in colour, but model 'mnist' was trained on greyscale images ..."]

A model answers every image with a confident distance, even a photo sent to a digit model. The
answer then carries sentences saying why it may not mean much. The rules use only what the
header tells (colour or not, width x height), known before a pixel is decoded, and they compare
it with the model card's input (``card.input``):

* colour: a colour file (RGB, RGBA, CMYK, a 3- or 4-component JPEG) sent to a greyscale model,
  or a greyscale one sent to a colour model. A greyscale picture saved as RGB counts as colour:
  telling them apart needs the pixels. Palette images (GIF, 8-bit PNG) do not say, and pass.
* shape: the width:height ratio more than ``MAX_ASPECT_RATIO`` away from the model's, as the
  image is resized to the model's input without keeping its shape.
* size: more than ``MAX_SHRINK`` times the model's input on each side (shrunk so much that
  fine detail is gone), or under ``MIN_ENLARGE`` of it on a side (blown up from a few pixels).

The header is parsed here for PNG and JPEG (a few microseconds, on the event loop), and by
Pillow's header reader for the other formats. An image this cannot read gets no warning: its
decode reports the error. See docs/serving.md for the rule's reasoning.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from app.images import FORMATS
from app.registry import ServedModel

MAX_ASPECT_RATIO = 2.0  # e.g. 57x28 or wider for a 28x28 model
MAX_SHRINK = 16.0  # e.g. over 512x512 for a 32x32 model: a phone photo, a page scan
MIN_ENLARGE = 0.5  # e.g. under 14 pixels on a side for a 28x28 model

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR = {0: False, 2: True, 4: False, 6: True}  # IHDR colour type; 3 = palette: unknown
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): C0-CF but C4
# (Huffman tables), C8 (reserved) and CC (arithmetic conditioning).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, TEM
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_OTHER_FORMATS = tuple(f for f in FORMATS if f not in ("PNG", "JPEG"))


@dataclass(frozen=True, slots=True)
class Source:
    """What a file's header says about the image in it."""

    width: int
    height: int
    colour: bool | None  # None: the header does not tell (a palette)


def source_of(data: bytes) -> Source | None:
    """The image's size and colour from its header, or None when the header is unreadable."""
    try:
        if data.startswith(_PNG_SIGNATURE):
            return _png(data)
        if data.startswith(b"\xff\xd8"):
            return _jpeg(data)
        return _pillow(data)
    except Exception:  # hostile or damaged bytes: decoding reports them, not this
        return None


def _png(data: bytes) -> Source | None:
    if data[12:16] != b"IHDR" or len(data) < 26:
        return None
    width, height = struct.unpack(">II", data[16:24])
    return Source(width, height, _PNG_COLOUR.get(data[25]))


def _jpeg(data: bytes) -> Source | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            i += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            return None
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            components = data[i + 9]
            return Source(width, height, components >= 3)
        if length < 2:
            return None
        i += 2 + length
    return None


def _pillow(data: bytes) -> Source | None:
    with Image.open(io.BytesIO(data), formats=_OTHER_FORMATS) as img:  # the header only
        colour = True if img.mode in _COLOUR_MODES else False if img.mode in _GREY_MODES else None
        return Source(img.width, img.height, colour)


def warnings_for(model: ServedModel, named: Sequence[tuple[str, bytes]]) -> list[str]:
    """One sentence per rule that some of the ``(field, bytes)`` uploads break, naming them."""
    card = model.card
    width, height = card.size
    greyscale = card.input.channels == 1
    broken: dict[str, list[str]] = {}
    for field, data in named:
        source = source_of(data)
        if source is None or source.width <= 0 or source.height <= 0:
            continue
        for rule in _rules_broken(source, width, height, greyscale):
            broken.setdefault(rule, []).append(field)

    trained = f"model '{model.name}' was trained on"
    sentences = {
        "colour": f"stored in colour, but {trained} greyscale images ({card.dataset}): "
        "converted to grey, the answer may not mean much",
        "grey": f"stored in greyscale, but {trained} colour images ({card.dataset}): "
        "the answer may not mean much",
        "shape": f"shaped far from the model's {width}x{height} input (more than "
        f"{MAX_ASPECT_RATIO:g}:1 off), so squashed to fit: the answer may not mean much",
        "large": f"over {MAX_SHRINK:g} times the model's {width}x{height} input on each side, "
        "so shrunk that far: fine detail is lost",
        "small": f"under {MIN_ENLARGE:g} of the model's {width}x{height} input on a side, so "
        "enlarged from a few pixels: the answer may not mean much",
    }
    return [f"{', '.join(fields)}: {sentences[rule]}." for rule, fields in broken.items()]


def _rules_broken(source: Source, width: int, height: int, greyscale: bool) -> list[str]:
    rules = []
    if source.colour is not None and source.colour == greyscale:
        rules.append("colour" if greyscale else "grey")
    aspect = (source.width / source.height) / (width / height)
    if max(aspect, 1 / aspect) > MAX_ASPECT_RATIO:
        rules.append("shape")
    sides = (source.width / width, source.height / height)
    if min(sides) > MAX_SHRINK:
        rules.append("large")
    elif min(sides) < MIN_ENLARGE:
        rules.append("small")
    return rules
