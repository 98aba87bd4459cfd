"""The JSON API behind the labeling pages (``routes.pages``): the queue, and the review of disputed labels.

* ``GET /label/next`` — the next queued item; ``?session=`` holds it for that labeler.
* ``GET /label/image/{prediction_id}`` — the stored input image (PNG).
* ``POST /label/{prediction_id}`` ``{"label": ...}`` — stored exactly like ``POST /feedback``;
  ``POST /label/{prediction_id}/skip``, ``POST /label/{prediction_id}/invalid``. With ``?session=``
  each is refused (409) when that session's lease ran out and another labeler holds the image.
* ``GET /label/review/items`` — training images whose label the model disputes (``visionloop.labeling.suspects``),
  ``POST /label/review/decisions`` (confirm/correct), ``POST /label/review/apply`` — every pending
  correction as ONE new DVC data snapshot.
* ``GET /metrics/labeling`` — progress (``metrics_router``: no token needed, like ``/health``).

``create_app`` puts one ``LabelingState`` on ``app.state.labeling``: what these routes share across requests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse

from visionloop.config import Settings
from visionloop.data.manifest import read_manifest
from visionloop.labeling.confident_learning import ordered_classes
from visionloop.labeling.queue import LabelQueue, LeaseLost, QueueError, UnknownItem
from visionloop.labeling.review import CONFIRMED, CORRECTED, ReviewStore, apply_corrections, undecided
from visionloop.labeling.rules import LabelingRules
from visionloop.labeling.suspects import load_or_compute_suspects, prepared_dir
from visionloop.serving.deps import CurrentModel, PredictionLogDep, ServingModel, SettingsDep
from visionloop.serving.schemas import LabelBody, LabelResult, ReviewDecision
from visionloop.store.predlog import PredictionLog

REVIEW_PAGE_SIZE = 60
NO_PREPARED_DATA = "no prepared data; run `visionloop data prepare`"
SessionQuery = Annotated[
    str | None, Query(max_length=64, description="The labeler's session: holds the item, and must still hold it.")
]


class LabelingState:
    """The queue's rules, the review stores, the locks that keep the slow steps single, and the manifest."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rules = LabelingRules.from_settings(settings)
        self.apply_lock = threading.Lock()
        self.suspects_lock = threading.Lock()  # one computation at a time; the others then read its saved table
        self._stores: dict[PredictionLog, ReviewStore] = {}  # one per database: each creates its table once
        self._manifest: tuple[int, pd.DataFrame] | None = None

    def review_store(self, plog: PredictionLog) -> ReviewStore:
        if plog not in self._stores:
            self._stores[plog] = ReviewStore(plog.engine)
        return self._stores[plog]

    def manifest(self) -> pd.DataFrame:
        """The prepared data's manifest indexed by sha256, read again only when the file changed; 404 without."""
        path = prepared_dir(self.settings) / "manifest.csv"
        if not path.exists():
            raise HTTPException(404, NO_PREPARED_DATA)  # never the server's paths in an answer
        stamp = path.stat().st_mtime_ns
        if self._manifest is None or self._manifest[0] != stamp:
            self._manifest = (stamp, read_manifest(path.parent).set_index("sha256", drop=False))
        return self._manifest[1]


async def labeling_state(request: Request) -> LabelingState:
    return request.app.state.labeling


Labeling = Annotated[LabelingState, Depends(labeling_state)]


async def label_queue(state: Labeling, plog: PredictionLogDep) -> LabelQueue:
    return LabelQueue(plog, state.rules)


def review_store(state: Labeling, plog: PredictionLogDep) -> ReviewStore:
    """A plain ``def``: the first call per database creates its table, off the event loop."""
    return state.review_store(plog)


Queue = Annotated[LabelQueue, Depends(label_queue)]
Reviews = Annotated[ReviewStore, Depends(review_store)]

router = APIRouter(tags=["labeling"])
metrics_router = APIRouter(tags=["labeling"])

# --- review of suspected label errors (declared before /label/{prediction_id}) ------------------------


@router.get("/label/review/items", summary="Training images the model disputes")
def review_items(
    model: CurrentModel,
    settings: SettingsDep,
    state: Labeling,
    reviews: Reviews,
    limit: int = Query(REVIEW_PAGE_SIZE, ge=1, le=1000),
) -> dict[str, Any]:
    """Suspected label errors of the prepared data nobody has decided on, most suspect first.

    Computed once per model version and manifest (out-of-fold predictions on the embeddings).
    """
    try:
        with state.suspects_lock:
            suspects = load_or_compute_suspects(settings, model)
    except FileNotFoundError:
        raise HTTPException(404, NO_PREPARED_DATA) from None
    decisions = reviews.decisions()
    open_items = undecided(suspects, decisions)
    classes = ordered_classes([*model.classes, *state.manifest()["label"].unique()])
    pending = decisions[(decisions["decision"] == CORRECTED) & decisions["applied_at"].isna()]
    return {
        "model_name": model.name,
        "model_version": str(model.version),
        "classes": classes,
        "total_suspects": len(suspects),
        "computed_at": suspects.attrs.get("created_at"),  # when, and over how many images, the review was computed
        "images_reviewed": suspects.attrs.get("images"),
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


@router.get("/label/review/image/{sha256}", summary="A prepared training image")
def review_image(sha256: str, state: Labeling) -> FileResponse:
    frame = state.manifest()
    if sha256 not in frame.index:
        raise HTTPException(404, f"no prepared image with sha256 {sha256!r}")
    path = Path(frame.loc[sha256, "abs_path"])
    if not path.is_file():  # the manifest names it, the file is gone: the data changed under the server
        raise HTTPException(404, f"the prepared image {sha256!r} is missing; run `visionloop data prepare` again")
    return FileResponse(path, media_type="image/png")


@router.post("/label/review/decisions", summary="Confirm or correct a disputed label")
def review_decide(body: ReviewDecision, model: CurrentModel, state: Labeling, reviews: Reviews) -> dict[str, Any]:
    """Recorded now; corrections reach the data only through ``POST /label/review/apply``."""
    frame = state.manifest()
    if body.sha256 not in frame.index:
        raise HTTPException(404, f"no prepared image with sha256 {body.sha256!r}")
    row = frame.loc[body.sha256]
    classes = ordered_classes([*model.classes, *frame["label"].unique()])
    if body.decision == "correct":
        if body.label not in classes:
            raise HTTPException(422, f"label {body.label!r} is not one of the classes {classes}")
        if body.label == row["label"]:
            raise HTTPException(422, "a correction must change the label; use decision=confirm")
    reviews.decide(
        body.sha256,
        path=row["path"],
        given_label=row["label"],
        decision=CONFIRMED if body.decision == "confirm" else CORRECTED,
        new_label=body.label if body.decision == "correct" else None,
        model_version=str(model.version),
    )
    return {"sha256": body.sha256, "decision": body.decision, "given_label": row["label"], "label": body.label}


@router.post("/label/review/apply", summary="Apply corrections as a new data version")
def review_apply(settings: SettingsDep, state: Labeling, reviews: Reviews) -> dict[str, Any]:
    """Every pending correction becomes ONE new DVC-versioned snapshot; the current data is never edited."""
    if not state.apply_lock.acquire(blocking=False):
        raise HTTPException(409, "corrections are being applied already")
    try:
        applied = apply_corrections(settings, reviews)
    except LookupError as error:
        raise HTTPException(409, str(error)) from None
    finally:
        state.apply_lock.release()
    if applied is None:
        raise HTTPException(409, "no pending corrections")
    return applied.to_dict()


# --- the queue ------------------------------------------------------------------------------------------


@router.get("/label/next", summary="The next image to label")
def next_item(
    queue: Queue,
    model: ServingModel,
    session: str | None = Query(None, max_length=64, description="The labeler's session: holds the item."),
) -> dict[str, Any]:
    item = queue.next_item(claimant=session)
    classes = list(model.classes) if model is not None else []
    if not classes and item is not None:
        classes = list(item.prediction.probabilities)
    return {
        "item": None if item is None else item.to_dict(),
        "classes": classes,
        "model_version": None if model is None else str(model.version),
        "progress": queue.progress(),
    }


@router.get("/label/image/{prediction_id}", summary="The stored input image")
def image(prediction_id: str, plog: PredictionLogDep) -> FileResponse:
    record = plog.get(prediction_id)
    if record is None:
        raise HTTPException(404, f"no prediction with id {prediction_id!r}")
    if not record.image_path or not Path(record.image_path).is_file():
        raise HTTPException(404, f"the image of prediction {prediction_id!r} was not stored")
    return FileResponse(record.image_path, media_type="image/png")


@router.post(
    "/label/{prediction_id}", response_model=LabelResult, summary="Label an image (stored like POST /feedback)"
)
def label(
    prediction_id: str, body: LabelBody, model: CurrentModel, queue: Queue, session: SessionQuery = None
) -> LabelResult:
    try:
        in_queue = queue.submit_label(prediction_id, body.label, classes=model.classes, session=session)
    except LeaseLost as error:
        raise HTTPException(409, str(error)) from None
    except ValueError as error:
        raise HTTPException(422, str(error)) from None
    except UnknownItem:
        raise HTTPException(404, f"no prediction with id {prediction_id!r}") from None
    return LabelResult(prediction_id=prediction_id, state="labeled", label=body.label, in_queue=in_queue)


@router.post("/label/{prediction_id}/skip", response_model=LabelResult, summary="Skip an image")
def skip(prediction_id: str, queue: Queue, session: SessionQuery = None) -> LabelResult:
    return _transition(lambda pid: queue.skip(pid, session=session), prediction_id, "skipped")


@router.post(
    "/label/{prediction_id}/invalid", response_model=LabelResult, summary="Mark an image as not valid for this task"
)
def invalid(prediction_id: str, queue: Queue, session: SessionQuery = None) -> LabelResult:
    return _transition(lambda pid: queue.mark_invalid(pid, session=session), prediction_id, "invalid")


@router.post("/label/{prediction_id}/undo", response_model=LabelResult, summary="Undo the last answer on an image")
def undo(prediction_id: str, queue: Queue, session: SessionQuery = None) -> LabelResult:
    """A labeled, skipped or invalid image is queued again (a label is removed); the session gets it next."""
    return _transition(lambda pid: queue.undo(pid, session=session), prediction_id, "queued")


@metrics_router.get("/metrics/labeling", summary="Labeling progress")
def metrics(queue: Queue) -> dict[str, Any]:
    """Counts per state, reason and predicted class, and the labeled share of drifted traffic."""
    return queue.progress()


def _transition(action: Callable[[str], None], prediction_id: str, state: str) -> LabelResult:
    try:
        action(prediction_id)
    except UnknownItem:
        raise HTTPException(404, f"prediction {prediction_id!r} is not in the labeling queue") from None
    except QueueError as error:
        raise HTTPException(409, str(error)) from None
    return LabelResult(prediction_id=prediction_id, state=state)
