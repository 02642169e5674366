"""Uploaded bytes -> uint8 tensor (C, H, W) in a model's mode and size.

Only the bytes decide what an upload is: client file names and declared content types are never
read. The pixel count comes from the header and is checked before any pixel is decoded. Call
:func:`decode` from a worker thread; on the event loop only with a small pixel cap, as the
inline path of app/embedding.py does.
"""

from __future__ import annotations

import ctypes
import io
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# Image.open tries only these plugins: no EPS (runs Ghostscript), no ICO/PSD/PDF/... surprises.
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
ACCEPTED = "PNG, JPEG, GIF, WebP, BMP, TIFF"

_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_WHITE = (255, 255, 255, 255)
# 0..65535 -> 0..255, rounded: one byte per 16-bit value, so the conversion is one table look-up
# instead of a pass through int64 (720 MB for one 40 MP image, issue 12).
_SIXTEEN_TO_EIGHT = ((np.arange(65536, dtype=np.uint32) * 255 + 32767) // 65535).astype(np.uint8)

# Every image is checked against Settings.max_image_pixels below, before a pixel is decoded, so
# the 413 names the limit that fired. Pillow's own bomb check (a process-wide 89 M pixels that
# only warns below twice that) would otherwise refuse or let through by its own rules.
Image.MAX_IMAGE_PIXELS = None
# A TIFF tile is decoded into a buffer of its own declared size, whatever the image size: a
# 64x64 image with one 46336x46336 tile made Pillow inflate 2.1 GB (issue 12). Tiles may overhang
# the image (their sides are multiples of 16), and writers such as GDAL use 256x256 tiles even for
# small images, so a tile side up to this many pixels is fine whatever the image size.
TILE_SIDE_SLACK = 1024
_TIFF_TILE_WIDTH, _TIFF_TILE_LENGTH = 322, 323
# Decodes of at least this many pixels hand their freed memory back to the system (malloc_trim):
# without it, glibc keeps the arenas of a few heavy images and idle RSS stays high.
TRIM_AFTER_PIXELS = 4_000_000


class ImageError(ValueError):
    """An upload the service cannot use; the message is safe to show the client."""


class Undecodable(ImageError):
    """Not an image in one of the accepted formats, or a damaged one."""


class TooLarge(ImageError):
    """More pixels than Settings.max_image_pixels, or a TIFF tile larger than its image."""


class OverBudget(TooLarge):
    """A request's images together declare more than Settings.max_request_pixels (HTTP 413):
    it fails the whole request, not only one image (see app/embedding.py)."""


def decode(
    data: bytes,
    mode: Literal["L", "RGB"],
    size: tuple[int, int],
    max_pixels: int,
) -> torch.Tensor:
    """Decode ``data`` to a uint8 tensor (C, H, W); ``size`` is (width, height) as in ModelCard.

    Raises Undecodable or TooLarge, never anything else for bad bytes.
    """
    if not data:
        raise Undecodable("empty file")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except UnidentifiedImageError as e:
        raise Undecodable("not a decodable image") from e
    except Exception as e:  # OSError, SyntaxError, ValueError, struct.error, ... from a plugin
        raise Undecodable(f"not a decodable image ({e})"[:200]) from e

    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise TooLarge(
                f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels} "
                "(max_image_pixels)"
            )
        _check_tiles(img, max_pixels)
        _draft(img, size)
        pixels_decoded = img.size[0] * img.size[1]
        try:
            rgb_or_l = _to_model_input(img, mode, size)
        except Image.DecompressionBombError as e:
            raise TooLarge("an image frame claims too many pixels") from e
        except Exception as e:  # truncated data, corrupt chunks, bad EXIF, ...
            raise Undecodable(f"damaged image ({type(e).__name__}: {e})"[:200]) from e

    pixels = np.array(rgb_or_l, dtype=np.uint8)  # (H, W) or (H, W, 3), a writable copy
    del rgb_or_l
    if pixels_decoded >= TRIM_AFTER_PIXELS:
        _trim()
    # Reordered with numpy, then one torch call: each torch call releases the GIL, and handing
    # it back and forth with the event loop costs more than the copy (see app/batching.py).
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(chw))  # (C, H, W), its own memory


def pixels_to_decode(data: bytes, size: tuple[int, int], max_pixels: int) -> int:
    """The pixels :func:`decode` would decode, from the header alone (a JPEG at its draft
    scale); 0 for what decode refuses before decoding (over ``max_pixels``, not an image).
    Cheap: no pixel is read."""
    return survey(data, size, max_pixels)[0]


def survey(data: bytes, size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """From the header alone: (the pixels :func:`decode` would decode, as
    :func:`pixels_to_decode`; the largest pixel count decode holds to its limit, the image's
    or a tile's, 0 for what is not an image). Two limits both at least that second number make
    decode decide the same: app/embedding.py's inline path decodes under a smaller cap."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            declared = img.size[0] * img.size[1]
            largest = max([declared] + [(x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in _tiles(img)])
            if declared > max_pixels:
                return 0, largest
            _draft(img, size)
            return img.size[0] * img.size[1], largest
    except Exception:  # whatever it is, decode() refuses it without decoding
        return 0, 0


def _draft(img: Image.Image, size: tuple[int, int]) -> None:
    if img.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the photo is far larger than the model
        # input. Square, so the draft stays large enough after an EXIF rotation.
        side = max(size)
        img.draft(None, (side, side))


def _check_tiles(img: Image.Image, max_pixels: int) -> None:
    """Refuse, before decoding, a tile or strip that would need more memory than the image:
    a decoder allocates what the tile declares (see TILE_SIDE_SLACK)."""
    width, height = img.size
    # Strips need no check: libtiff clamps RowsPerStrip to the image height, so a strip is never
    # larger than the image; Pillow's own decoders get boxes inside the image (checked here too).
    for x0, y0, x1, y1 in _tiles(img):
        tile_w, tile_h = x1 - x0, y1 - y0
        too_wide = tile_w > max(_round16(width), TILE_SIDE_SLACK)
        too_tall = tile_h > max(_round16(height), TILE_SIDE_SLACK)
        if too_wide or too_tall or tile_w * tile_h > max_pixels:
            raise TooLarge(
                f"a {tile_w}x{tile_h} tile in a {width}x{height} image: a tile may not be larger "
                f"than its image or the limit of {max_pixels} pixels (max_image_pixels)"
            )


def _tiles(img: Image.Image) -> list[tuple[int, int, int, int]]:
    """The boxes a decoder allocates for: Pillow's tiles, and a TIFF's own tiles."""
    boxes = [tile.extents for tile in img.tile if tile.extents is not None]
    tag_v2 = getattr(img, "tag_v2", None)  # TIFF: libtiff reads tiles itself, from these tags
    if tag_v2 is not None and _TIFF_TILE_WIDTH in tag_v2 and _TIFF_TILE_LENGTH in tag_v2:
        boxes.append((0, 0, int(tag_v2[_TIFF_TILE_WIDTH]), int(tag_v2[_TIFF_TILE_LENGTH])))
    return boxes


def _round16(n: int) -> int:
    return -(-n // 16) * 16


def _load_libc_trim() -> Callable[[int], int] | None:
    try:  # the symbols of the running process: glibc's when it is linked against glibc
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:  # not glibc (musl, macOS): nothing to trim
        return None


_malloc_trim = _load_libc_trim()


def _trim() -> None:
    """Return freed heap to the system after a large decode (glibc only)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _to_model_input(
    img: Image.Image, mode: Literal["L", "RGB"], size: tuple[int, int]
) -> Image.Image:
    img.load()  # first frame of a GIF/TIFF; raises on truncated data
    ImageOps.exif_transpose(img, in_place=True)  # phone photos are stored sideways

    img = _to_basic_mode(img)  # L, RGB or RGBA
    # Resize before flattening alpha: cheap at model size, and Pillow resizes RGBA premultiplied.
    if img.size != size:  # a same-size resize is a full copy: a third of a 32x32 JPEG's decode
        img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    if img.mode == "RGBA":
        # Over white, as a viewer shows it: a transparent background must not turn black.
        img = Image.alpha_composite(Image.new("RGBA", img.size, _WHITE), img).convert("RGB")
    return img if img.mode == mode else img.convert(mode)


def _to_basic_mode(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> L, RGB or RGBA, keeping transparency and the full 16-bit range."""
    if img.mode in _SIXTEEN_BIT:
        # 0..65535 -> 0..255, rounded; convert("L") would clip everything above 255 to white.
        values = np.asarray(img)  # uint16, or int32 for mode "I"
        if values.dtype != np.uint16:
            values = values.clip(0, 65535)  # int32 stays int32: an index into the table
        return Image.fromarray(_SIXTEEN_TO_EIGHT[values])
    if img.mode in ("LA", "La", "PA", "RGBa") or "transparency" in img.info:
        return img.convert("RGBA")
    if img.mode == "P":
        return img.convert("RGB")
    if img.mode in ("1", "F"):
        return img.convert("L")
    if img.mode in ("L", "RGB", "RGBA"):
        return img
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV
