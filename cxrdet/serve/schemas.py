"""Pydantic models of the API's answers: they document ``/openapi.json`` (the handlers build the
JSON themselves, :mod:`cxrdet.serve.results`)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Finding(BaseModel):
    class_id: int = Field(description="0..13, the VinBigData finding classes")
    class_name: str
    score: float
    box: list[float] = Field(description="[x_min, y_min, x_max, y_max] in ORIGINAL image pixels")


class ClassProbability(BaseModel):
    class_id: int
    class_name: str
    p: float = Field(description="highest fused detection score of the class before the gate (0 if none)")


class ImageLevel(BaseModel):
    p_abnormal: float | None
    classes: list[ClassProbability]


class PredictResponse(BaseModel):
    request_id: str = Field(description="key of the image / overlay endpoints for a few minutes")
    image_id: str = Field(description="the uploaded file's name without suffix (or 'upload')")
    width: int = Field(description="original width (DICOM Columns)")
    height: int = Field(description="original height (DICOM Rows)")
    findings: list[Finding] = Field(description="the gated boxes, highest score first")
    p_abnormal: float | None = Field(description="the gate's P(abnormal); null without a gate")
    gate_zone: str | None = Field(description="normal (p < low) | uncertain | abnormal (p >= high); null without a gate")
    image_level: ImageLevel
    prediction_string: str = Field(description="exactly what `cxrdet infer` writes for this image")
    models: dict = Field(description="the artifacts that answered (GET /v1/models)")
    timings: dict[str, float] = Field(description="milliseconds per stage")
    display: dict = Field(description="the overlay layout the page draws (picture pixels)")
    classifier: dict | None = Field(None, description="image-level classifier output when one is loaded")
    downloads: dict = Field(description="URLs of the overlay PNG (and a DICOM SR when available)")


class QueueState(BaseModel):
    admitted: int
    capacity: int
    served: int


class HealthResponse(BaseModel):
    status: str
    detectors: int
    gate: bool
    classifier: bool
    token_required: bool
    queue: QueueState
    min_score: float
    max_upload_mb: float


class ErrorResponse(BaseModel):
    detail: str = Field(description="why the request was refused")


ERROR_RESPONSES = {code: {"model": ErrorResponse, "description": text} for code, text in {
    400: "malformed multipart body", 401: "token missing or wrong", 404: "no such recent result",
    413: "upload larger than --max-upload-mb", 415: "not a multipart/form-data upload",
    422: "not a usable image (not DICOM/PNG/JPEG, truncated, no pixel data, colour, multi-frame, too large)",
    503: "queue full: retry after the Retry-After header's seconds",
}.items()}

UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": "a DICOM (.dicom/.dcm), PNG or JPEG file"}},
    }}},
}
