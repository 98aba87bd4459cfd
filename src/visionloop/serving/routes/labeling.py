"""The labeling pages and their JSON API: ``labeling_router(settings, get_log, get_model)``.

* ``GET /label`` — the labeling page (plain HTML + a little JavaScript from ``static/``): the next
  queued image large, the model's top guesses, keys 0–9 for the first ten classes, ``s`` skip,
  ``x`` not a valid image, and progress.
* ``GET /label/next`` — the next queued item (JSON); ``?session=`` holds it for that labeler.
* ``GET /label/image/{prediction_id}`` — the stored input image (PNG).
* ``POST /label/{prediction_id}`` ``{"label": ...}`` — stored exactly like ``POST /feedback``;
  ``POST /label/{prediction_id}/skip``, ``POST /label/{prediction_id}/invalid``.
* ``GET /label/review`` — training images whose label the model disputes (``visionloop.labeling.review``),
  with confirm/correct; ``GET /label/review/items`` (JSON), ``POST /label/review/decisions``,
  ``POST /label/review/apply`` — every pending correction as ONE new DVC data snapshot.
* ``GET /metrics/labeling`` — progress as JSON (no token needed, like ``/health``).

When a bearer token is configured, every route but the page shells and the metrics needs it; the
pages ask for it once and keep it in the tab's session storage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from visionloop.labeling.queue import LabelingRules, LabelQueue, QueueError, UnknownItem
from visionloop.labeling.review import (
    CONFIRMED,
    CORRECTED,
    ReviewStore,
    apply_corrections,
    load_or_compute_suspects,
    ordered_classes,
    prepared_dir,
    undecided,
)
from visionloop.serving.auth import token_dependencies

if TYPE_CHECKING:
    from visionloop.config import Settings
    from visionloop.models.bundle import ServableModel
    from visionloop.store.predlog import PredictionLog

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = {"label.css": "text/css", "label.js": "text/javascript", "review.js": "text/javascript"}
REVIEW_PAGE_SIZE = 60


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


def labeling_router(
    settings: Settings,
    get_log: Callable[[], PredictionLog | None],
    get_model: Callable[[], ServableModel | None],
) -> APIRouter:
    """The labeling routes over the prediction log ``get_log()`` and the model serving now ``get_model()``."""
    rules = LabelingRules.from_settings(settings)
    queues: dict[int, LabelQueue] = {}
    stores: dict[int, ReviewStore] = {}
    apply_lock = threading.Lock()
    suspects_lock = threading.Lock()  # one computation at a time; the others then read its saved table
    manifest_cache: dict[str, Any] = {}

    def prediction_log() -> PredictionLog:
        plog = get_log()
        if plog is None:
            raise HTTPException(503, "the prediction log is unavailable")
        return plog

    def queue() -> LabelQueue:
        plog = prediction_log()
        if id(plog) not in queues:
            queues[id(plog)] = LabelQueue(plog, rules)
        return queues[id(plog)]

    def store() -> ReviewStore:
        plog = prediction_log()
        if id(plog) not in stores:
            stores[id(plog)] = ReviewStore(plog.engine)
        return stores[id(plog)]

    def model() -> ServableModel:
        current = get_model()
        if current is None:
            raise HTTPException(503, "no model version is loaded yet; see GET /ready")
        return current

    def manifest() -> pd.DataFrame:
        from visionloop.data.ingest import read_manifest

        path = prepared_dir(settings) / "manifest.csv"
        if not path.exists():
            raise HTTPException(404, f"no prepared data at {path.parent}; run `visionloop data prepare`")
        stamp = path.stat().st_mtime_ns
        if manifest_cache.get("stamp") != stamp:
            manifest_cache.update(stamp=stamp, frame=read_manifest(path.parent).set_index("sha256", drop=False))
        return manifest_cache["frame"]

    router = APIRouter(tags=["labeling"])
    protected = token_dependencies(settings.token)

    # -- pages --

    @router.get("/label", include_in_schema=False)
    def label_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "label.html", media_type="text/html")

    @router.get("/label/review", include_in_schema=False)
    def review_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "review.html", media_type="text/html")

    @router.get("/label/assets/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise HTTPException(404, f"no asset {name!r}")
        return FileResponse(STATIC_DIR / name, media_type=ASSETS[name])

    # -- review of suspected label errors (declared before /label/{prediction_id}) --

    @router.get("/label/review/items", dependencies=protected, summary="Training images the model disputes")
    def review_items(limit: int = Query(REVIEW_PAGE_SIZE, ge=1, le=1000)) -> dict[str, Any]:
        """Suspected label errors of the prepared data nobody has decided on, most suspect first.

        Computed once per model version and manifest (out-of-fold predictions on the embeddings).
        """
        current = model()
        try:
            with suspects_lock:
                suspects = load_or_compute_suspects(settings, current)
        except FileNotFoundError as error:
            raise HTTPException(404, f"no prepared data: {error}") from None
        decisions = store().decisions()
        open_items = undecided(suspects, decisions)
        classes = ordered_classes([*current.classes, *manifest()["label"].unique()])
        pending = decisions[(decisions["decision"] == CORRECTED) & decisions["applied_at"].isna()]
        return {
            "model_name": current.name,
            "model_version": str(current.version),
            "classes": classes,
            "total_suspects": len(suspects),
            "open": len(open_items),
            "confirmed": int((decisions["decision"] == CONFIRMED).sum()),
            "pending_corrections": [
                {"sha256": s, "given_label": g, "new_label": n}
                for s, g, n in zip(pending["sha256"], pending["given_label"], pending["new_label"], strict=True)
            ],
            "items": [
                {
                    "sha256": row.sha256,
                    "path": row.path,
                    "split": row.split,
                    "given_label": str(row.given_label),
                    "suggested_label": str(row.suggested_label),
                    "self_confidence": round(float(row.self_confidence), 4),
                    "suggested_confidence": round(float(row.suggested_confidence), 4),
                }
                for row in open_items.head(limit).itertuples()
            ],
        }

    @router.get("/label/review/image/{sha256}", dependencies=protected, summary="A prepared training image")
    def review_image(sha256: str) -> FileResponse:
        frame = manifest()
        if sha256 not in frame.index:
            raise HTTPException(404, f"no prepared image with sha256 {sha256!r}")
        return FileResponse(frame.loc[sha256, "abs_path"], media_type="image/png")

    @router.post("/label/review/decisions", dependencies=protected, summary="Confirm or correct a disputed label")
    def review_decide(body: ReviewDecision) -> dict[str, Any]:
        """Recorded now; corrections reach the data only through ``POST /label/review/apply``."""
        frame = manifest()
        if body.sha256 not in frame.index:
            raise HTTPException(404, f"no prepared image with sha256 {body.sha256!r}")
        row = frame.loc[body.sha256]
        classes = ordered_classes([*model().classes, *frame["label"].unique()])
        if body.decision == "correct":
            if body.label not in classes:
                raise HTTPException(422, f"label {body.label!r} is not one of the classes {classes}")
            if body.label == row["label"]:
                raise HTTPException(422, "a correction must change the label; use decision=confirm")
        store().decide(
            body.sha256,
            path=row["path"],
            given_label=row["label"],
            decision=CONFIRMED if body.decision == "confirm" else CORRECTED,
            new_label=body.label if body.decision == "correct" else None,
            model_version=str(model().version),
        )
        return {"sha256": body.sha256, "decision": body.decision, "given_label": row["label"], "label": body.label}

    @router.post("/label/review/apply", dependencies=protected, summary="Apply corrections as a new data version")
    def review_apply() -> dict[str, Any]:
        """Every pending correction becomes ONE new DVC-versioned snapshot; the current data is never edited."""
        if not apply_lock.acquire(blocking=False):
            raise HTTPException(409, "corrections are being applied already")
        try:
            applied = apply_corrections(settings, store())
        except LookupError as error:
            raise HTTPException(409, str(error)) from None
        finally:
            apply_lock.release()
        if applied is None:
            raise HTTPException(409, "no pending corrections")
        return applied.to_dict()

    # -- the queue --

    @router.get("/label/next", dependencies=protected, summary="The next image to label")
    def next_item(
        session: str | None = Query(None, max_length=64, description="The labeler's session: holds the item."),
    ) -> dict[str, Any]:
        current = get_model()
        item = queue().next_item(claimant=session)
        classes = list(current.classes) if current is not None else []
        if not classes and item is not None:
            classes = list(item.prediction.probabilities)
        return {
            "item": None if item is None else item.to_dict(),
            "classes": classes,
            "model_version": None if current is None else str(current.version),
            "progress": queue().progress(),
        }

    @router.get("/label/image/{prediction_id}", dependencies=protected, summary="The stored input image")
    def image(prediction_id: str) -> FileResponse:
        record = prediction_log().get(prediction_id)
        if record is None:
            raise HTTPException(404, f"no prediction with id {prediction_id!r}")
        if not record.image_path or not Path(record.image_path).is_file():
            raise HTTPException(404, f"the image of prediction {prediction_id!r} was not stored")
        return FileResponse(record.image_path, media_type="image/png")

    @router.post("/label/{prediction_id}", response_model=LabelResult, dependencies=protected,
                 summary="Label an image (stored like POST /feedback)")
    def label(prediction_id: str, body: LabelBody) -> LabelResult:
        classes = model().classes
        try:
            in_queue = queue().submit_label(prediction_id, body.label, classes=classes)
        except ValueError as error:
            raise HTTPException(422, str(error)) from None
        except UnknownItem:
            raise HTTPException(404, f"no prediction with id {prediction_id!r}") from None
        return LabelResult(prediction_id=prediction_id, state="labeled", label=body.label, in_queue=in_queue)

    @router.post("/label/{prediction_id}/skip", response_model=LabelResult, dependencies=protected,
                 summary="Skip an image")
    def skip(prediction_id: str) -> LabelResult:
        return _transition(queue().skip, prediction_id, "skipped")

    @router.post("/label/{prediction_id}/invalid", response_model=LabelResult, dependencies=protected,
                 summary="Mark an image as not valid for this task")
    def invalid(prediction_id: str) -> LabelResult:
        return _transition(queue().mark_invalid, prediction_id, "invalid")

    @router.get("/metrics/labeling", summary="Labeling progress")
    def metrics() -> dict[str, Any]:
        """Counts per state, reason and predicted class, and the labeled share of drifted traffic."""
        return queue().progress()

    return router


def _transition(action: Callable[[str], None], prediction_id: str, state: str) -> LabelResult:
    try:
        action(prediction_id)
    except UnknownItem:
        raise HTTPException(404, f"prediction {prediction_id!r} is not in the labeling queue") from None
    except QueueError as error:
        raise HTTPException(409, str(error)) from None
    return LabelResult(prediction_id=prediction_id, state=state)
