"""Every request and response shape of the REST API, in one place: ``/docs`` is generated from these.

Each field carries a description because the OpenAPI page is the API's only reference (a test checks
that no field of ours is undocumented).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# --- POST /predict ---------------------------------------------------------------------------------


class ImagePrediction(BaseModel):
    """The answer for one image of the request, in request order."""

    index: int = Field(description="Position of the image in the request (0-based).")
    filename: str | None = Field(None, description="File name of the multipart part, if one was sent.")
    prediction_id: str | None = Field(
        None, description="Id of the stored prediction; send it to POST /feedback with the true label."
    )
    label: str | None = Field(None, description="Predicted class (the most probable one).")
    confidence: float | None = Field(None, description="Probability of the predicted class, 0..1.")
    probabilities: dict[str, float] | None = Field(
        None, description="Probability of every class the model knows, summing to 1."
    )
    model_name: str | None = Field(None, description="Registered model that answered.")
    model_version: str | None = Field(None, description="Version of the model that answered.")
    error: str | None = Field(
        None,
        description="Why this image could not be read (then every other field but index/filename is null); "
        "null for an answered image.",
    )
    error_code: str | None = Field(
        None,
        description="Stable reason code: empty, not_an_image, corrupt, too_small, too_large, "
        "unsupported_format, bad_base64.",
    )


class PredictResponse(BaseModel):
    predictions: list[ImagePrediction] = Field(description="One entry per image sent, in request order.")


class PredictJSON(BaseModel):
    """JSON alternative to the multipart upload."""

    images: list[str] = Field(
        description="Encoded images (PNG, JPEG, ...) as base64 strings; a data-URL prefix "
        "('data:image/png;base64,') is accepted."
    )


class ImageError(BaseModel):
    index: int = Field(description="Position of the image in the request.")
    filename: str | None = Field(None, description="File name of the multipart part, if any.")
    error: str = Field(description="Why the image could not be read.")
    error_code: str = Field(description="Stable reason code (see ImagePrediction.error_code).")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What was wrong with the request, for the person who sent it.")
    errors: list[ImageError] | None = Field(None, description="Per-image reasons, when images were refused.")


# --- POST /feedback --------------------------------------------------------------------------------


class FeedbackRequest(BaseModel):
    prediction_id: str = Field(description="The prediction_id returned by POST /predict.")
    label: str = Field(description="The true class of that image; must be one of the model's classes.")


class FeedbackResponse(BaseModel):
    prediction_id: str = Field(description="The prediction that received the label.")
    label: str = Field(description="The stored true label.")
    stored: bool = Field(
        description="Always true: the label is in the prediction log, or, for a prediction answered but not yet "
        "written, queued to be written right after it (never refused because the log is behind)."
    )


# --- GET /model, /health, /ready --------------------------------------------------------------------


class ModelInfo(BaseModel):
    name: str = Field(description="Registered model name.")
    version: str = Field(description="Version serving now.")
    aliases: list[str] = Field(description="Registry aliases of this version (e.g. champion).")
    lineage: dict[str, str] = Field(
        description="Lineage tags: git_commit, data_version, params_hash, run_id, base_model, strategy."
    )
    tags: dict[str, str] = Field(description="All tags of the model version.")
    classes: list[str] = Field(description="Class names; index = output unit.")
    preprocessing: dict[str, Any] = Field(description="The eval pipeline (Albumentations to_dict).")
    loaded_at: str | None = Field(None, description="When this version started serving (UTC, ISO 8601).")


class ReloadError(BaseModel):
    version: str = Field(description="The version that failed to load or failed its check.")
    error: str = Field(description="The failure.")
    at: str = Field(description="When (UTC, ISO 8601).")
    still_serving: str | None = Field(None, description="The version that kept serving.")


class LogStatus(BaseModel):
    state: str = Field(
        description="ok; degraded while a dead writer process is restarted (entries are kept and written after); "
        "unavailable when the last attempt to reach the database failed."
    )
    written: int = Field(description="Predictions written since start.")
    failed: int = Field(description="Predictions lost because the database refused them.")
    dropped: int = Field(description="Predictions not logged because the write queue was full.")
    image_failures: int = Field(description="Input images that could not be stored.")
    queued: int = Field(description="Predictions waiting to be written.")
    restarts: int = Field(description="Times the writer process died and was restarted.")
    spooled: int = Field(description="Entries spilled to <state dir>/spool at a stop, for the next start.")
    replayed: int = Field(description="Spilled entries replayed at this start.")
    shadow_written: int = Field(description="A challenger's shadow predictions written (serving.shadow).")
    shadow_dropped: int = Field(description="Shadow predictions not queued: the log queue was half full.")
    last_error: str | None = Field(None, description="The last failure.")
    last_error_at: str | None = Field(None, description="When it happened.")


class ShadowStatus(BaseModel):
    share: float = Field(description="serving.shadow.share: the share of /predict requests the challenger also sees.")
    challenger_version: str | None = Field(None, description="The challenger loaded now (None: no challenger alias).")
    queued: int = Field(description="Requests waiting for the challenger.")
    offered: int = Field(description="Requests sampled and queued for the challenger since start.")
    skipped: int = Field(description="Sampled requests not scored: the shadow queue was full.")
    scored: int = Field(description="Images the challenger predicted.")
    failed: int = Field(description="Images of batches the challenger failed on (their answers were not affected).")
    incompatible: int = Field(description="Images not scored: the challenger is the champion or wants other channels.")
    not_logged: int = Field(description="Scored images the prediction log did not take.")


class WorkerStatus(BaseModel):
    pid: int = Field(description="The worker process.")
    model_version: str | None = Field(None, description="The version it serves (None: none loaded yet).")
    since: str = Field(description="When it started serving that version (UTC, ISO 8601).")


class HealthResponse(BaseModel):
    status: str = Field(description="Always 'ok' while the process answers.")
    prediction_log: str = Field(description="ok | degraded | unavailable (see log.state); answers go out either way.")
    model_loaded: bool = Field(description="Whether a model version is serving (see GET /ready).")
    model_version: str | None = Field(None, description="The version serving now.")
    last_reload_error: ReloadError | None = Field(
        None, description="The last failed hot reload since the last successful one (old version kept)."
    )
    last_poll_error: str | None = Field(None, description="Why the last look at the model source failed.")
    reloads: int = Field(description="Versions swapped in since start (the first load counts).")
    log: LogStatus = Field(description="Prediction log writer counters.")
    batches: int = Field(description="Forward passes run.")
    images: int = Field(description="Images predicted.")
    largest_batch: int = Field(description="Largest forward batch so far.")
    uptime_s: float = Field(description="Seconds since start.")
    pid: int = Field(description="The process that answered (one of `serve --workers N`'s).")
    workers: list[WorkerStatus] = Field(description="Every live serving process on this port and its version.")
    shadow: ShadowStatus = Field(description="Shadow scoring by the registry's challenger (this process).")


class ReadyResponse(BaseModel):
    ready: bool = Field(description="True when a model is loaded, warmed up and checked.")
    model_version: str | None = Field(None, description="The version serving.")
    detail: str | None = Field(None, description="Why not ready.")


# --- the labeling API --------------------------------------------------------------------------------


class LabelBody(BaseModel):
    label: str = Field(description="The true class of the image; must be one of the model's classes.")


class LabelResult(BaseModel):
    prediction_id: str = Field(description="The prediction that was handled.")
    state: str = Field(description="Its queue state now: labeled, skipped or invalid.")
    label: str | None = Field(None, description="The stored label (for a label).")
    in_queue: bool = Field(True, description="False when the prediction was labeled without being queued.")


class ReviewDecision(BaseModel):
    sha256: str = Field(description="Pixel hash of the training image (manifest column sha256).")
    decision: Literal["confirm", "correct"] = Field(description="confirm: the given label is right.")
    label: str | None = Field(None, description="The correct label, for decision=correct.")


# --- documented error answers (OpenAPI ``responses=``) --------------------------------------------------

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Malformed request (empty body, no image, bad JSON)."},
    401: {"model": ErrorResponse, "description": "Missing or wrong bearer token (when one is configured)."},
    413: {
        "model": ErrorResponse,
        "description": "Payload over serving.max_payload_bytes, or too many images.",
    },
    415: {"model": ErrorResponse, "description": "Neither multipart/form-data nor application/json."},
    422: {"model": ErrorResponse, "description": "No image in the request could be read (see errors)."},
    503: {"model": ErrorResponse, "description": "No model loaded yet, or overloaded."},
}
