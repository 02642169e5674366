"""Which threshold a verdict uses, resolved in one place that every judging route calls.

    chosen = resolve_threshold(request.app.state, served, threshold=t, far=None, profile=None)
    same = distance <= chosen.value   # chosen.source says where it came from

Sources: ``model`` (the card's calibrated default), ``request`` (the client's own distance),
``far`` (a target false-accept rate, read off the model's validation table) and ``profile`` (a
named threshold an operator saved with ``POST /calibrate``). At most one may be given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fastapi import HTTPException

from app.registry import ServedModel

ThresholdSource = Literal["model", "request", "far", "profile"]


@dataclass(frozen=True, slots=True)
class ChosenThreshold:
    value: float  # a distance: at or below means same
    source: ThresholdSource


def resolve_threshold(
    state: Any,
    served: ServedModel,
    *,
    threshold: float | None = None,
    far: float | None = None,
    profile: str | None = None,
) -> ChosenThreshold:
    """The threshold to judge with; HTTPException (422, 404, 409) when the request's choice
    cannot be honoured. ``state`` is ``request.app.state``."""
    given = [name for name, v in (("threshold", threshold), ("far", far), ("profile", profile))
             if v is not None]  # fmt: skip
    if len(given) > 1:
        raise HTTPException(422, detail=f"give at most one of threshold, far, profile; got {given}")
    if threshold is not None:
        return ChosenThreshold(threshold, "request")
    if far is not None or profile is not None:
        raise HTTPException(422, detail="far and profile are not supported yet")
    return ChosenThreshold(served.card.threshold, "model")
