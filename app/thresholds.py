"""Which threshold a verdict uses, resolved in one place that every judging route calls.

    chosen = resolve_threshold(request.app.state, served, threshold=t, far=None, profile=None)
    same = distance <= chosen.value   # chosen.source says where it came from

Sources: ``model`` (the card's calibrated default), ``request`` (the client's own distance),
``far`` (a target false-accept rate, read off the model's validation table) and ``profile`` (a
named threshold an operator saved with ``POST /calibrate``). At most one may be given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import HTTPException

from app.artifact import ThresholdRate
from app.registry import ServedModel

ThresholdSource = Literal["model", "request", "far", "profile"]


@dataclass(frozen=True, slots=True)
class ChosenThreshold:
    value: float  # a distance: at or below means same
    source: ThresholdSource


class FarOutOfRange(ValueError):
    """A target false-accept rate the validation table cannot support."""


def threshold_for_far(table: Sequence[ThresholdRate], far: float) -> float:
    """The distance threshold whose validation false-accept rate is ``far``.

    Linear interpolation between the two table rows around ``far``; where several thresholds
    share a FAR, the largest (it rejects fewest same pairs). Never extrapolated: below the
    smallest nonzero FAR measured (FAR 0 only says "no different pair was that close", which
    supports no particular rate) or above the largest, FarOutOfRange says the supported range.
    """
    points: list[tuple[float, float]] = []  # (far, largest threshold with that far), far rising
    for row in sorted(table, key=lambda r: r.threshold):
        if points and row.false_accept_rate <= points[-1][0]:
            points[-1] = (points[-1][0], row.threshold)
        else:
            points.append((row.false_accept_rate, row.threshold))
    measured = [(f, t) for f, t in points if f > 0]
    if not measured:
        raise FarOutOfRange("the model's validation table has no false-accept rates to go by")
    lowest, highest = measured[0][0], measured[-1][0]
    if far < lowest:
        raise FarOutOfRange(
            f"far={far} is below what the validation pairs can support; the smallest supported "
            f"far is {lowest!r}"
        )
    if far > highest:
        raise FarOutOfRange(f"far={far} is above the largest supported far, {highest!r}")
    for (f0, t0), (f1, t1) in zip(measured, measured[1:], strict=False):
        if f0 <= far <= f1:
            if far == f0:
                return t0
            return t0 + (far - f0) / (f1 - f0) * (t1 - t0)
    return measured[-1][1]  # far == highest with a single measured row


def rates_for_threshold(table: Sequence[ThresholdRate], threshold: float) -> tuple[float, float]:
    """(FAR, FRR) at ``threshold``, interpolated in the table, clamped to its ends."""
    rows = sorted(table, key=lambda r: r.threshold)
    if not rows:
        return float("nan"), float("nan")
    if threshold <= rows[0].threshold:
        return rows[0].false_accept_rate, rows[0].false_reject_rate
    for a, b in zip(rows, rows[1:], strict=False):
        if threshold <= b.threshold:
            w = (threshold - a.threshold) / (b.threshold - a.threshold)
            far = a.false_accept_rate + w * (b.false_accept_rate - a.false_accept_rate)
            frr = a.false_reject_rate + w * (b.false_reject_rate - a.false_reject_rate)
            return far, frr
    return rows[-1].false_accept_rate, rows[-1].false_reject_rate


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
    if far is not None:
        if not 0 < far < 1:
            raise HTTPException(422, detail=f"far must be in (0, 1); got {far}")
        try:
            value = threshold_for_far(served.card.calibration.table, far)
        except FarOutOfRange as e:
            raise HTTPException(422, detail=f"model '{served.name}': {e}") from e
        return ChosenThreshold(value, "far")
    if profile is not None:
        saved = state.profiles.get(served.name, profile)
        if saved is None:
            names = [p.name for p in state.profiles.list(served.name)]
            raise HTTPException(
                404,
                detail=f"no profile '{profile}' for model '{served.name}'; "
                f"available: {', '.join(names) or 'none (create one with POST /calibrate)'}",
            )
        if saved.model_version != served.card.version:
            raise HTTPException(
                409,
                detail=f"profile '{profile}' was calibrated on model '{served.name}' version "
                f"{saved.model_version}, but version {served.card.version} is serving; "
                "re-run POST /calibrate with this profile name to remake it",
            )
        return ChosenThreshold(saved.threshold, "profile")
    return ChosenThreshold(served.card.threshold, "model")
