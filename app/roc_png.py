"""A small ROC curve as PNG bytes, drawn with Pillow (a runtime dependency; matplotlib is not)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = 360  # pixels, square
MARGIN = 44  # room for the axis labels


def roc_png(fpr: np.ndarray, tpr: np.ndarray, mark: tuple[float, float] | None = None) -> bytes:
    """The curve (false-accept rate on x, true-accept rate on y), the chance diagonal, and
    ``mark`` = (FAR, TAR) of the chosen threshold as a dot."""
    img = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    lo, hi = MARGIN, SIZE - 32
    span = hi - lo

    def xy(x: float, y: float) -> tuple[float, float]:
        return lo + x * span, hi - y * span  # y grows downwards in images

    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        gx, gy = xy(tick, tick)
        draw.line([xy(tick, 0), xy(tick, 1)], fill="#e4e4e4")
        draw.line([xy(0, tick), xy(1, tick)], fill="#e4e4e4")
        draw.text((gx - 8, hi + 4), f"{tick:g}", fill="#444", font=font)
        draw.text((lo - 26, gy - 6), f"{tick:g}", fill="#444", font=font)
    draw.rectangle([xy(0, 1), xy(1, 0)], outline="#444")
    draw.line([xy(0, 0), xy(1, 1)], fill="#bbb")
    draw.line(
        [xy(float(x), float(y)) for x, y in zip(fpr, tpr, strict=True)], fill="#1f5fbf", width=2
    )
    if mark is not None:
        mx, my = xy(*mark)
        draw.ellipse([mx - 4, my - 4, mx + 4, my + 4], fill="#d33")
    draw.text((lo + span / 2 - 40, SIZE - 14), "false accept rate", fill="#000", font=font)
    draw.text((4, 2), "true accept rate", fill="#000", font=font)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()
