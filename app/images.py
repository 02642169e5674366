"""Uploaded bytes -> uint8 tensor (C, H, W) in a model's mode and size.

Only the bytes decide what an upload is: client file names and declared content types are never
read. The pixel count comes from the header and is checked before any pixel is decoded. Call
:func:`decode` from a worker thread, never on the event loop.
"""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# Image.open tries only these plugins: no EPS (runs Ghostscript), no ICO/PSD/PDF/... surprises.
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
ACCEPTED = "PNG, JPEG, GIF, WebP, BMP, TIFF"

_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_WHITE = (255, 255, 255, 255)


class ImageError(ValueError):
    """An upload the service cannot use; the message is safe to show the client."""


class Undecodable(ImageError):
    """Not an image in one of the accepted formats, or a damaged one."""


class TooLarge(ImageError):
    """More pixels than Settings.max_image_pixels."""


def decode(
    data: bytes, mode: Literal["L", "RGB"], size: tuple[int, int], max_pixels: int
) -> torch.Tensor:
    """Decode ``data`` to a uint8 tensor (C, H, W); ``size`` is (width, height) as in ModelCard.

    Raises Undecodable or TooLarge, never anything else for bad bytes.
    """
    if not data:
        raise Undecodable("empty file")
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise TooLarge(f"image header claims more than {max_pixels} pixels") from e
    except UnidentifiedImageError as e:
        raise Undecodable("not a decodable image") from e
    except Exception as e:  # OSError, SyntaxError, ValueError, struct.error, ... from a plugin
        raise Undecodable(f"not a decodable image ({e})"[:200]) from e

    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise TooLarge(
                f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels}"
            )
        try:
            rgb_or_l = _to_model_input(img, mode, size)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise TooLarge("an image frame claims too many pixels") from e
        except Exception as e:  # truncated data, corrupt chunks, bad EXIF, ...
            raise Undecodable(f"damaged image ({type(e).__name__}: {e})"[:200]) from e

    pixels = np.array(rgb_or_l, dtype=np.uint8)  # (H, W) or (H, W, 3), a writable copy
    # Reordered with numpy, then one torch call: each torch call releases the GIL, and handing
    # it back and forth with the event loop costs more than the copy (see app/batching.py).
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(chw))  # (C, H, W), its own memory


def _to_model_input(
    img: Image.Image, mode: Literal["L", "RGB"], size: tuple[int, int]
) -> Image.Image:
    if img.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the photo is far larger than the model
        # input. Square, so the draft stays large enough after an EXIF rotation.
        side = max(size)
        img.draft(None, (side, side))
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
        wide = np.asarray(img).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    if img.mode in ("LA", "La", "PA", "RGBa") or "transparency" in img.info:
        return img.convert("RGBA")
    if img.mode == "P":
        return img.convert("RGB")
    if img.mode in ("1", "F"):
        return img.convert("L")
    if img.mode in ("L", "RGB", "RGBA"):
        return img
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV
