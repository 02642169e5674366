"""Response bodies, named after their endpoints, with examples for /docs.

Requests are multipart forms, declared in the routes with ``File``/``Form`` parameters.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.artifact import Calibration, Engine, InputSpec, OnnxCard
from app.precision import Precision
from app.thresholds import ThresholdSource

_VERSION = "3f2a9c1b7d4e"


class ErrorResponse(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="What to fix: a sentence, or FastAPI's list of invalid fields (422)"
    )
    request_id: str | None = Field(None, description="Present on 500s; quote it in bug reports")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"detail": "unknown model 'x'; available: mnist"}]}
    )


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error statuses a route can answer with."""
    why = {
        400: "An upload is not a decodable image (PNG, JPEG, GIF, WebP, BMP, TIFF)",
        401: "API keys are configured and X-API-Key is missing",
        403: "X-API-Key is not one of the configured keys",
        404: "No model, profile, gallery, subject or image by that name",
        409: "A profile or gallery made for another model version; a gallery without kept images",
        413: "An upload is over max_upload_bytes, or an image over max_image_pixels",
        422: "A field is missing or invalid",
        503: "Not ready, overloaded or timed out: retry after Retry-After seconds",
    }
    return {code: {"model": ErrorResponse, "description": why[code]} for code in codes}


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready", "not ready"]
    models: dict[str, str] = Field(
        description='Each model found in the store: "up", "warming up" (while starting), or '
        "why it was refused"
    )
    detail: str | None = Field(None, description="Why the service is not ready")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"status": "ready", "models": {"mnist": "up", "cifar10": "sha256 … does not match"}}
            ]
        }
    )


class ModelInfo(BaseModel):
    name: str = Field(description="What to pass as the `model` form field")
    default: bool = Field(description="Used when a request names no model")
    precision: Precision | Literal["int8"] = Field(
        description="Number format this server runs the forward pass in: bfloat16 where the "
        "CPU has it natively, unless the card records that it costs this model more than 0.5 "
        "points of pair accuracy against float32; int8 for the onnx-int8 engine"
    )
    precision_note: str | None = Field(
        None, description="Why the model runs in float32 although the server is set otherwise"
    )
    inference_workers: int = Field(
        description="Threads running this model's forward passes on this server"
    )
    engine: Engine = Field(
        description="What runs the forward pass here: torchscript (model.pt), onnx (model.onnx "
        "on ONNX Runtime, within the card's onnx.tolerance of it) or onnx-int8 (model.int8.onnx, "
        "within the card's accuracy limits)"
    )
    engines: list[Engine] = Field(description="Engines this server has loaded for the model")
    version: str = Field(description="First 12 hex digits of sha256(model.pt)")
    dataset: str
    classes: list[str]
    input: InputSpec = Field(description="Images are converted and resized to this")
    embedding_dim: int
    distance: Literal["euclidean"]
    threshold: float = Field(description="Calibrated distance at or below which a pair is same")
    calibration: Calibration = Field(description="Maps a distance to P(same)")
    metrics: dict[str, Any] = Field(description="Validation results recorded at export")
    created_at: str
    torch_version: str
    onnx: OnnxCard | None = Field(
        None, description="The model's ONNX engine: its sha256, export check and test metrics"
    )
    onnx_int8: OnnxCard | None = Field(
        None, description="The model's int8 ONNX engine: its quantization and test metrics"
    )


class FailedModel(BaseModel):
    name: str
    error: str


class ModelsResponse(BaseModel):
    default: str | None
    models: list[ModelInfo]
    failed: list[FailedModel] = Field(description="Models in the store that were refused")


class ModelAnswer(BaseModel):
    model: str = Field(description="The model that answered")
    model_version: str = Field(description="Its version (sha256 prefix of model.pt)")


# Declared last in each answer (pydantic puts a base class's fields first), so it reads last.
Warnings = Annotated[
    list[str],
    Field(
        default_factory=list,
        description="Sentences naming uploads far from what the model was trained on (colour "
        "vs greyscale, shape, size), whose answer may not mean much; empty otherwise",
    ),
]


class EmbedResponse(ModelAnswer):
    dim: int
    embedding: list[float] = Field(description="The image's embedding, `dim` floats")
    warnings: Warnings

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "mnist", "model_version": _VERSION, "dim": 3, "embedding": [0.6, 0, 0.8]}
            ]
        }
    )


class SimilarityResponse(ModelAnswer):
    distance: float = Field(ge=0, description="Euclidean distance between the two embeddings")
    similarity: float = Field(ge=0, le=1, description="Calibrated P(same) for this distance")
    threshold: float = Field(description="The model's calibrated threshold, for reference")
    warnings: Warnings

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "mnist",
                    "model_version": _VERSION,
                    "distance": 0.41,
                    "similarity": 0.93,
                    "threshold": 0.8,
                }
            ]
        }
    )


ThresholdSourceField = Field(
    description="Where the threshold came from: model (its calibrated default), request "
    "(`threshold`), far (`far`, via the validation table) or profile (`profile`)"
)


class VerifyResponse(ModelAnswer):
    same: bool = Field(description="distance <= threshold")
    distance: float = Field(ge=0)
    threshold: float = Field(description="The threshold applied (see threshold_source)")
    threshold_source: ThresholdSource = ThresholdSourceField
    similarity: float = Field(ge=0, le=1, description="Calibrated P(same) for this distance")
    warnings: Warnings

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "mnist",
                    "model_version": _VERSION,
                    "same": True,
                    "distance": 0.41,
                    "threshold": 0.8,
                    "threshold_source": "model",
                    "similarity": 0.93,
                }
            ]
        }
    )


class CandidateMatch(BaseModel):
    index: int = Field(ge=0, description="Position of the candidate in the request")
    distance: float = Field(ge=0)
    similarity: float = Field(ge=0, le=1)
    same: bool


class CandidateError(BaseModel):
    index: int = Field(ge=0, description="Position of the candidate in the request")
    error: str = Field(description="Why this candidate could not be compared")


class OneToManyResponse(ModelAnswer):
    threshold: float = Field(description="The threshold applied to every candidate")
    threshold_source: ThresholdSource = ThresholdSourceField
    results: list[CandidateMatch | CandidateError] = Field(
        description="Matches by ascending distance, then the candidates that failed, by index"
    )
    warnings: Warnings

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "mnist",
                    "model_version": _VERSION,
                    "threshold": 0.8,
                    "threshold_source": "model",
                    "results": [
                        {"index": 1, "distance": 0.2, "similarity": 0.98, "same": True},
                        {"index": 0, "distance": 1.3, "similarity": 0.04, "same": False},
                        {"index": 2, "error": "not a decodable image (PNG, JPEG, ...)"},
                    ],
                }
            ]
        }
    )


class MatrixResponse(ModelAnswer):
    distances: list[list[float]] = Field(description="N x N euclidean distances, zero diagonal")
    warnings: Warnings

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "mnist", "model_version": _VERSION, "distances": [[0, 0.7], [0.7, 0]]}
            ]
        }
    )


class OperatingPoint(BaseModel):
    threshold: float = Field(description="A distance: at or below means same")
    far: float = Field(description="False-accept rate: different pairs judged same")
    frr: float = Field(description="False-reject rate: same pairs judged different")


class CalibrateResponse(ModelAnswer):
    pairs: int = Field(description="Labelled pairs measured")
    auc: float = Field(description="ROC AUC: P(a same pair is closer than a different one)")
    eer: float = Field(description="Equal error rate")
    threshold: float = Field(
        description="Recommended threshold: the one that maximises balanced accuracy "
        "(mean of the true-accept and true-reject rates) on these pairs"
    )
    threshold_rule: Literal["balanced_accuracy"] = "balanced_accuracy"
    far: float = Field(description="False-accept rate at threshold, on these pairs")
    frr: float = Field(description="False-reject rate at threshold, on these pairs")
    table: list[OperatingPoint] = Field(description="FAR and FRR by threshold, ascending")
    roc_png: str = Field(description="Base64 PNG of the ROC curve, the threshold marked")
    profile: str | None = Field(None, description="The profile saved (201), if one was named")


class ProfileInfo(BaseModel):
    name: str
    model_version: str
    applicable: bool = Field(description="Made with the model version that is serving")
    threshold: float
    far: float
    frr: float
    auc: float
    eer: float
    pairs: int
    created_at: str


class ProfilesResponse(ModelAnswer):
    profiles: list[ProfileInfo]


class SetDistanceResponse(ModelAnswer):
    frechet_distance: float = Field(
        ge=0,
        description="||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) over the two sets' "
        "embeddings: 0 for identical sets, larger the more the sets differ",
    )
    n_a: int = Field(description="Images in set_a")
    n_b: int = Field(description="Images in set_b")
    mean_distance: float = Field(
        ge=0, description="Mean euclidean distance over all pairs (one image of each set)"
    )
    dim: int = Field(description="Embedding dimension")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "mnist",
                    "model_version": _VERSION,
                    "frechet_distance": 0.83,
                    "n_a": 40,
                    "n_b": 52,
                    "mean_distance": 1.21,
                    "dim": 64,
                }
            ]
        }
    )


class DriftResponse(ModelAnswer):
    images: int = Field(description="Embeddings computed by this process the statistics cover")
    window_images: int = Field(
        description="The statistics cover the last window_images to 2 x window_images"
    )
    reference_images: int | None = Field(
        description="Validation images behind the card's statistics; null: the card has none"
    )
    frechet_distance: float | None = Field(
        description="Fréchet distance between the served embeddings and the card's validation "
        "embeddings; null without card statistics or before 2 images"
    )
    mean_shift: float | None = Field(description="||mu_served - mu_validation||")


class EnrollResponse(ModelAnswer):
    gallery: str
    subject: str
    image_ids: list[int] = Field(description="Ids of the images just enrolled, in upload order")
    images: int = Field(description="The subject's image count after this call")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "gallery": "staff",
                    "subject": "ada",
                    "model": "mnist",
                    "model_version": _VERSION,
                    "image_ids": [41, 42],
                    "images": 5,
                }
            ]
        }
    )


class GalleryInfo(ModelAnswer):
    gallery: str
    subjects: int
    images: int


class GalleriesResponse(BaseModel):
    galleries: list[GalleryInfo]


class SubjectInfo(BaseModel):
    subject: str
    images: int


class SubjectsResponse(BaseModel):
    subjects: list[SubjectInfo]


class GalleryVerifyResponse(ModelAnswer):
    gallery: str
    subject: str
    same: bool = Field(description="distance <= threshold")
    distance: float = Field(ge=0, description="To the subject's nearest enrolled image")
    threshold: float = Field(description="The threshold applied")
    threshold_source: ThresholdSource = Field(
        description="model (calibrated default), request, far or profile"
    )
    similarity: float = Field(ge=0, le=1, description="Calibrated P(same) for this distance")
    image_id: int = Field(description="The subject's enrolled image nearest to the query")


class IdentifyCandidate(BaseModel):
    subject: str
    distance: float = Field(ge=0, description="To this subject's nearest enrolled image")
    similarity: float = Field(ge=0, le=1)
    image_id: int


class IdentifyResponse(ModelAnswer):
    gallery: str
    threshold: float
    threshold_source: ThresholdSource
    match: IdentifyCandidate | None = Field(
        description="The nearest subject if within the threshold, else null (open set)"
    )
    candidates: list[IdentifyCandidate] = Field(
        description="One per subject, nearest first, at most top_k"
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "gallery": "staff",
                    "model": "mnist",
                    "model_version": _VERSION,
                    "threshold": 0.8,
                    "threshold_source": "model",
                    "match": {
                        "subject": "ada",
                        "distance": 0.3,
                        "similarity": 0.97,
                        "image_id": 41,
                    },
                    "candidates": [
                        {"subject": "ada", "distance": 0.3, "similarity": 0.97, "image_id": 41},
                        {"subject": "bob", "distance": 1.2, "similarity": 0.05, "image_id": 7},
                    ],
                }
            ]
        }
    )


class ReembedResponse(GalleryInfo):
    pass
