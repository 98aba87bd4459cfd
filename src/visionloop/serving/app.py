"""The REST server: ``create_app(settings, model_source)``.

* ``POST /predict`` — images as multipart files (field ``files``) or JSON ``{"images": [base64, ...]}``;
  micro-batched (``serving.batcher``, which hands each forward pass to the prediction log off the request path).
* ``POST /feedback`` — the true label of an earlier prediction.
* ``GET /health`` (always 200 while the process lives), ``GET /ready`` (200 once a model is loaded and
  checked), ``GET /model`` (what is serving), ``/docs`` (OpenAPI).
* Hot reload: ``serving.reload.ModelManager`` follows ``model_source.current_version()``.

Bad input never costs the server: every problem is a 4xx JSON ``{"detail": reason}``; in a request
with several images, unreadable ones get a per-image ``error`` and the others are answered (200 when at
least one image was readable, else 422 — or 413 when every image was refused for its size).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from visionloop.contracts import LINEAGE_TAGS
from visionloop.data.ingest import TOO_LARGE, InvalidImage, validate_image_bytes
from visionloop.serving.auth import token_dependencies
from visionloop.serving.batcher import MicroBatcher, NoModelLoaded, Overloaded
from visionloop.serving.reload import ModelManager
from visionloop.serving.routes.labeling import labeling_router
from visionloop.serving.sources import ModelSource
from visionloop.store.predlog import PredictionLog, PredictionLogWriter
from visionloop.store.writer_process import ProcessLogWriter

if TYPE_CHECKING:
    from visionloop.config import Settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_THREAD_DECODE_BYTES = 64 * 1024  # decode bigger uploads in a worker thread, off the event loop
_DRAIN_FACTOR = 4  # read (and discard) up to this many times the limit before answering 413

# --- the documented shapes --------------------------------------------------------------------


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


class FeedbackRequest(BaseModel):
    prediction_id: str = Field(description="The prediction_id returned by POST /predict.")
    label: str = Field(description="The true class of that image; must be one of the model's classes.")


class FeedbackResponse(BaseModel):
    prediction_id: str = Field(description="The prediction that received the label.")
    label: str = Field(description="The stored true label.")
    stored: bool = Field(description="Always true: the label is in the prediction log.")


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
    state: str = Field(description="ok, or unavailable when the last attempt to reach the database failed.")
    written: int = Field(description="Predictions written since start.")
    failed: int = Field(description="Predictions lost because the database refused them.")
    dropped: int = Field(description="Predictions not logged because the write queue was full.")
    image_failures: int = Field(description="Input images that could not be stored.")
    queued: int = Field(description="Predictions waiting to be written.")
    last_error: str | None = Field(None, description="The last failure.")
    last_error_at: str | None = Field(None, description="When it happened.")


class HealthResponse(BaseModel):
    status: str = Field(description="Always 'ok' while the process answers.")
    prediction_log: str = Field(description="ok | unavailable; answers go out either way.")
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


class ReadyResponse(BaseModel):
    ready: bool = Field(description="True when a model is loaded, warmed up and checked.")
    model_version: str | None = Field(None, description="The version serving.")
    detail: str | None = Field(None, description="Why not ready.")


_ERRORS = {
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

_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One or several images: multipart files under the field `files` (repeat the field "
        "for several), or JSON with base64 images.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Encoded images (PNG, JPEG, BMP, GIF, TIFF, WebP).",
                        }
                    },
                    "required": ["files"],
                }
            },
            "application/json": {"schema": PredictJSON.model_json_schema()},
        },
    }
}


# --- the app ------------------------------------------------------------------------------------


def create_app(settings: Settings, model_source: ModelSource) -> FastAPI:
    """The serving app for ``model_source``, configured by ``settings`` (``serving:`` of params.yaml)."""
    cfg = settings.section("serving")
    data_cfg = settings.section("data")
    max_payload = int(cfg.get("max_payload_bytes", 5_000_000))
    max_pixels = int(cfg.get("max_pixels", data_cfg.get("max_pixels", 25_000_000)))
    max_images = int(cfg.get("max_images", 64))
    min_side = int(data_cfg.get("min_side", 1))
    default_channels = int(data_cfg.get("channels", 1))

    manager = ModelManager(
        model_source, poll_seconds=float(cfg.get("poll_seconds", 5)), max_batch=int(cfg.get("max_batch", 32))
    )
    writer = _make_writer(settings, cfg)
    batcher = MicroBatcher(
        manager.current,
        max_batch=int(cfg.get("max_batch", 32)),
        max_wait_ms=float(cfg.get("max_wait_ms", 4)),
        log=writer.submit,  # one prediction-log entry per forward pass, never blocking
    )
    started = time.monotonic()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        import torch

        threads_before = torch.get_num_threads()
        torch.set_num_threads(int(cfg.get("torch_threads", 1)))
        await asyncio.to_thread(writer.start)
        batcher.start()
        poller = asyncio.create_task(manager.run(), name="model-poller")
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            batcher.stop()
            await asyncio.to_thread(writer.close)
            if writer.log is not None:
                writer.log.dispose()
            torch.set_num_threads(threads_before)  # the process may go on (tests, notebooks)

    app = FastAPI(
        title="visionloop serving",
        summary="Image classification by the registry's champion, with every prediction logged.",
        version="1",
        lifespan=lifespan,
        responses={500: {"model": ErrorResponse, "description": "Unexpected server error."}},
    )
    app.state.settings = settings
    app.state.manager = manager
    app.state.batcher = batcher
    app.state.writer = writer

    protected = token_dependencies(settings.token)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        content = exc.detail if isinstance(exc.detail, dict) else {"detail": exc.detail}
        return JSONResponse(content, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=_ERRORS,
        openapi_extra=_PREDICT_BODY,
        dependencies=protected,
        summary="Classify one or several images",
    )
    async def predict(request: Request) -> PredictResponse:
        """Answers per image: label, probabilities, confidence, model version and a prediction id.

        An unreadable image among several gets an ``error`` entry and the others are answered (200);
        when no image can be read the answer is 422 (413 when all were refused for their size).
        """
        model = manager.current()
        if model is None:
            raise HTTPException(503, "no model version is loaded yet; see GET /ready")
        channels = int(model.config.get("in_channels", default_channels))
        batcher.arriving()
        try:
            parts = await _read_images(request, max_payload, max_images)
            decoded = await _decode(parts, channels, min_side, max_pixels)
            good = [i for i, item in enumerate(decoded) if isinstance(item, np.ndarray)]
            if not good:
                _refuse(parts, decoded)
            future = batcher.submit([decoded[i] for i in good])
        except Overloaded as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        finally:
            batcher.arrived()
        try:
            result = await future
        except NoModelLoaded as exc:
            raise HTTPException(503, str(exc)) from None
        answered = result.model
        classes = answered.classes
        entries: list[ImagePrediction] = []
        position = {index: k for k, index in enumerate(good)}
        for index, (filename, _data) in enumerate(parts):
            k = position.get(index)
            if k is None:
                error: InvalidImage = decoded[index]  # type: ignore[assignment]
                entries.append(
                    ImagePrediction(index=index, filename=filename, error=error.reason, error_code=error.code)
                )
                continue
            probabilities = result.probabilities[k]
            best = int(probabilities.argmax())
            entries.append(
                ImagePrediction(
                    index=index,
                    filename=filename,
                    prediction_id=result.prediction_ids[k],
                    label=classes[best],
                    confidence=float(probabilities[best]),
                    probabilities=dict(zip(classes, probabilities.tolist(), strict=True)),
                    model_name=answered.name,
                    model_version=str(answered.version),
                )
            )
        return PredictResponse(predictions=entries)

    @app.post(
        "/feedback",
        response_model=FeedbackResponse,
        responses={
            401: _ERRORS[401],
            404: {"model": ErrorResponse, "description": "No prediction with that id."},
            422: {"model": ErrorResponse, "description": "The label is not one of the model's classes."},
            503: {"model": ErrorResponse, "description": "The prediction log is unavailable."},
        },
        dependencies=protected,
        summary="Store the true label of an earlier prediction",
    )
    def feedback(body: FeedbackRequest) -> FeedbackResponse:
        """Ground truth arriving later; stored beside the prediction for monitoring and retraining."""
        model = manager.current()
        if model is None:
            raise HTTPException(503, "no model version is loaded yet, so labels cannot be checked")
        if body.label not in model.classes:
            raise HTTPException(422, f"label {body.label!r} is not one of the model's classes {model.classes}")
        if writer.log is None:
            raise HTTPException(503, "the prediction log is unavailable")
        try:
            stored = writer.log.add_feedback(body.prediction_id, body.label)
            if not stored and writer.is_pending(body.prediction_id):
                writer.flush(timeout=5.0)  # the prediction is answered but not written yet
                stored = writer.log.add_feedback(body.prediction_id, body.label)
        except Exception as exc:  # noqa: BLE001 - a database failure is reported, not raised
            log.warning("feedback not stored: %s", exc)
            raise HTTPException(503, f"the prediction log is unavailable: {str(exc).splitlines()[0]}") from None
        if not stored:
            raise HTTPException(404, f"no prediction with id {body.prediction_id!r}")
        return FeedbackResponse(prediction_id=body.prediction_id, label=body.label, stored=True)

    @app.get("/health", response_model=HealthResponse, summary="Liveness and the state of the prediction log")
    def health() -> HealthResponse:
        """200 while the process answers; says whether the prediction log is reachable."""
        status = manager.status()
        log_status = writer.status()
        stats = batcher.stats
        return HealthResponse(
            status="ok",
            prediction_log=log_status.state,
            model_loaded=status["model_loaded"],
            model_version=status["model_version"],
            last_reload_error=status["last_reload_error"],
            last_poll_error=status["last_poll_error"],
            reloads=status["reloads"],
            log=LogStatus(**log_status.to_dict()),
            batches=stats.batches,
            images=stats.images,
            largest_batch=stats.largest_batch,
            uptime_s=round(time.monotonic() - started, 3),
        )

    @app.get(
        "/ready",
        response_model=ReadyResponse,
        responses={503: {"model": ReadyResponse, "description": "No model loaded and checked yet."}},
        summary="Readiness: a model is loaded and warmed up",
    )
    def ready() -> JSONResponse:
        model = manager.current()
        if model is None:
            body = ReadyResponse(ready=False, detail="no model version loaded yet")
            return JSONResponse(body.model_dump(), status_code=503)
        return JSONResponse(ReadyResponse(ready=True, model_version=str(model.version)).model_dump())

    @app.get(
        "/model",
        response_model=ModelInfo,
        responses={503: {"model": ErrorResponse, "description": "No model loaded yet."}},
        summary="The model version serving now",
    )
    def model_info() -> ModelInfo:
        model = manager.current()
        if model is None:
            raise HTTPException(503, "no model version is loaded yet")
        tags = {str(k): str(v) for k, v in model.tags.items()}
        return ModelInfo(
            name=model.name,
            version=str(model.version),
            aliases=list(model.aliases),
            lineage={k: tags[k] for k in LINEAGE_TAGS if k in tags},
            tags=tags,
            classes=list(model.classes),
            preprocessing=json.loads(model.eval_transform_json),
            loaded_at=manager.loaded_at,
        )

    if (STATIC_DIR / "index.html").is_file():

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html")

    # /label, /label/review and /metrics/labeling: the labeling queue and the review of disputed labels
    app.include_router(labeling_router(settings, lambda: writer.log, manager.current))
    return app


def _make_writer(settings: Settings, cfg: dict[str, Any]) -> PredictionLogWriter | ProcessLogWriter:
    """``serving.log_writer``: ``process`` (default) keeps the writing off the serving interpreter's GIL."""
    image_dir = Path(cfg["image_dir"]) if cfg.get("image_dir") else settings.state_dir / "images"
    image_dir = settings.path(image_dir)
    queue_size = int(cfg.get("log_queue", 10_000))
    writer_class = ProcessLogWriter if cfg.get("log_writer", "process") == "process" else PredictionLogWriter
    try:
        prediction_log = PredictionLog(settings.db_url)
    except Exception as exc:  # noqa: BLE001 - a bad URL must not stop serving
        log.error("prediction log disabled: %s", exc)
        return writer_class(None, image_dir, max_queue=queue_size, init_error=str(exc))
    return writer_class(prediction_log, image_dir, max_queue=queue_size)


# --- reading and checking the input -----------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, or 413 once it passes ``limit`` (a little more is drained so the client hears the 413)."""
    too_large = HTTPException(413, f"payload is larger than the limit of {limit:,} bytes (serving.max_payload_bytes)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _DRAIN_FACTOR * limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _DRAIN_FACTOR * limit:
            raise too_large
        if size > limit:
            chunks.clear()
        else:
            chunks.append(chunk)
    if size > limit:
        raise too_large
    return b"".join(chunks)


Part = tuple[str | None, "bytes | InvalidImage"]


async def _read_images(request: Request, limit: int, max_images: int) -> list[Part]:
    """(filename, bytes) for each image sent, from a multipart form or a base64 JSON body."""
    content_type = request.headers.get("content-type", "")  # the multipart boundary is case-sensitive
    media_type = content_type.lower()
    body = await _read_body(request, limit)
    if not body:
        raise HTTPException(400, "empty body: send images as multipart files under 'files' or JSON {'images': [...]}")
    if media_type.startswith("multipart/form-data"):
        parts = _multipart_files(content_type, body)
    elif media_type.startswith("application/json"):
        parts = _json_images(body)
    else:
        raise HTTPException(
            415,
            f"unsupported content type {content_type or 'none'!r}; use multipart/form-data or application/json",
        )
    if not parts:
        raise HTTPException(400, "no image in the request: send multipart files under 'files' or JSON 'images'")
    if len(parts) > max_images:
        raise HTTPException(413, f"{len(parts)} images in one request; the limit is {max_images} (serving.max_images)")
    return parts


def _multipart_files(content_type: str, body: bytes) -> list[Part]:
    """(filename, bytes) of every file part of a multipart/form-data body; fields without a filename are
    ignored. python-multipart's parser straight into memory: the body is already bounded by the payload
    limit, so Starlette's form machinery (a spooled temporary file per part) would only add cost."""
    _type, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise HTTPException(400, "multipart/form-data without a boundary parameter in the Content-Type header")
    parts: list[Part] = []
    headers: dict[bytes, bytes] = {}
    field, value, chunks = bytearray(), bytearray(), []

    def on_part_begin() -> None:
        headers.clear()
        chunks.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_part_end() -> None:
        _disposition, params = parse_options_header(headers.get(b"content-disposition", b""))
        if b"filename" in params:
            parts.append((params[b"filename"].decode("utf-8", "replace"), b"".join(chunks)))

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise HTTPException(400, f"malformed multipart/form-data body: {exc}") from None
    return parts


def _json_images(body: bytes) -> list[Part]:
    try:
        payload = PredictJSON.model_validate_json(body)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "body"
        raise HTTPException(400, f'JSON body must be {{"images": [base64, ...]}}; {where}: {problem["msg"]}') from None
    parts: list[Part] = []
    for text in payload.images:
        encoded = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
        try:
            parts.append((None, base64.b64decode(encoded, validate=True)))
        except (binascii.Error, ValueError):
            parts.append((None, InvalidImage("not valid base64", "bad_base64")))
    return parts


async def _decode(parts: list[Part], channels: int, min_side: int, max_pixels: int) -> list[np.ndarray | InvalidImage]:
    """Canonical pixels or the ``InvalidImage`` for each part (big uploads decode in a thread)."""

    def decode_all() -> list[np.ndarray | InvalidImage]:
        out: list[np.ndarray | InvalidImage] = []
        for _name, data in parts:
            if isinstance(data, InvalidImage):
                out.append(data)
                continue
            try:
                out.append(validate_image_bytes(data, channels=channels, min_side=min_side, max_pixels=max_pixels))
            except InvalidImage as exc:
                out.append(exc)
        return out

    total = sum(len(d) for _n, d in parts if isinstance(d, bytes))
    return await run_in_threadpool(decode_all) if total > _THREAD_DECODE_BYTES else decode_all()


def _refuse(parts: list[Part], decoded: list[np.ndarray | InvalidImage]) -> None:
    errors = [
        ImageError(index=i, filename=name, error=exc.reason, error_code=exc.code)
        for i, ((name, _d), exc) in enumerate(zip(parts, decoded, strict=True))
    ]
    status = 413 if all(e.error_code == TOO_LARGE for e in errors) else 422
    if len(errors) == 1:
        detail = f"the image could not be read: {errors[0].error}"
    else:
        detail = f"none of the {len(errors)} images could be read"
    raise HTTPException(status, ErrorResponse(detail=detail, errors=errors).model_dump())
