"""POST /calibrate: measure a model on the operator's own labelled pairs (a zip), recommend a
threshold, and optionally save it as a named profile of that model version."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, File, Form, HTTPException, Request, Response, UploadFile

from app import calibration
from app.api.deps import ImageJobDep
from app.api.uploads import SLACK_BYTES, UploadRoute, max_files
from app.images import ACCEPTED, ImageError
from app.pairs_archive import ArchiveError, read_pairs
from app.profiles import NAME_PATTERN, Profile
from app.roc_png import roc_png
from app.schemas import CalibrateResponse, OperatingPoint, errors

router = APIRouter(tags=["thresholds"], route_class=UploadRoute)

# Images per embed call: a request must fit the batcher's queue (Settings.queue_max).
_EMBED_CHUNK = 64


@router.post(
    "/calibrate",
    response_model=CalibrateResponse,
    summary="Measure a model on your own labelled pairs and recommend a threshold",
    description="`pairs` is a zip holding `pairs.csv` (header `a,b,same`; `a`, `b` are image "
    "paths inside the zip, `same` is 1/0 or true/false) and the images. With `profile`, the "
    "recommended threshold is saved under that name for this model version (201) and "
    "`/verify` etc. apply it with `profile=NAME`.",
    status_code=200,
    responses={
        201: {"model": CalibrateResponse, "description": "Measured, and saved as a profile"},
        **errors(400, 401, 403, 404, 413, 422, 503),
    },
)
@max_files(lambda s: 1, body_bytes=lambda s: s.max_calibrate_zip_bytes + SLACK_BYTES)
async def calibrate(
    request: Request,
    response: Response,
    pairs: Annotated[UploadFile, File(description="zip: pairs.csv + the images it names")],
    job: ImageJobDep,
    profile: Annotated[
        str | None,
        Form(description="Save the result as this profile", pattern=NAME_PATTERN),
    ] = None,
) -> CalibrateResponse:
    model, settings = job.model, job.settings
    try:
        archive = await asyncio.to_thread(read_pairs, pairs.file, settings)
    except ArchiveError as e:
        raise HTTPException(e.status, detail=e.detail) from e

    names = list(archive.images)
    embeddings: dict[str, torch.Tensor] = {}
    for start in range(0, len(names), _EMBED_CHUNK):
        chunk = names[start : start + _EMBED_CHUNK]
        results = await job.embedder.embed(model, [archive.images[n] for n in chunk])
        for name, result in zip(chunk, results, strict=True):
            if isinstance(result, ImageError):
                raise HTTPException(
                    400, detail=f"pairs: '{name}' is not a usable image ({result}); send {ACCEPTED}"
                )
            embeddings[name] = result
    a = torch.stack([embeddings[p[0]] for p in archive.pairs])  # (P, D)
    b = torch.stack([embeddings[p[1]] for p in archive.pairs])
    d = (a - b).norm(dim=1).double().numpy()  # (P,)
    same = np.array([p[2] for p in archive.pairs], dtype=bool)

    threshold = calibration.best_threshold(d, same)
    far, frr = calibration.rates_at(d, same, threshold)
    fpr, tpr, _ = calibration.roc(d, same)
    table = calibration.operating_table(d, same, threshold)
    png = await asyncio.to_thread(roc_png, fpr, tpr, (far, 1 - frr))
    auc, eer = calibration.auc(d, same), calibration.eer(d, same)
    if profile is not None:
        saved = Profile(
            name=profile,
            model=model.name,
            model_version=model.card.version,
            threshold=threshold,
            far=far,
            frr=frr,
            auc=auc,
            eer=eer,
            pairs=len(d),
            table=table,
        )
        await asyncio.to_thread(request.app.state.profiles.save, saved)
        response.status_code = 201
    return CalibrateResponse(
        model=model.name,
        model_version=model.card.version,
        pairs=len(d),
        auc=auc,
        eer=eer,
        threshold=threshold,
        far=far,
        frr=frr,
        table=[
            OperatingPoint(threshold=r.threshold, far=r.false_accept_rate, frr=r.false_reject_rate)
            for r in table
        ],
        roc_png=base64.b64encode(png).decode("ascii"),
        profile=profile,
    )
