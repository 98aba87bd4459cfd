"""``POST /feedback``: the true label of an earlier prediction, stored beside it in the prediction log.

Ground truth arriving later is what monitoring scores the model with and what retraining learns from.
A prediction is logged off the request path, so its label may arrive first: a label for an id the
server answered and has not written yet is queued behind it (``WriterQueue.submit_feedback``) and
accepted, never refused because the log is behind. An id never issued is 404.
"""

from __future__ import annotations

import logging
import queue
from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException

from visionloop.serving.deps import CurrentModel, PredictionLogDep, WriterDep
from visionloop.serving.schemas import ERRORS, ErrorResponse, FeedbackRequest, FeedbackResponse

log = logging.getLogger(__name__)

router = APIRouter(tags=["feedback"])


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    responses={
        401: ERRORS[401],
        404: {"model": ErrorResponse, "description": "No prediction with that id."},
        422: {"model": ErrorResponse, "description": "The label is not one of the model's classes."},
        503: {"model": ErrorResponse, "description": "The prediction log is unavailable, or its queue is full."},
    },
    summary="Store the true label of an earlier prediction",
)
def feedback(body: FeedbackRequest, model: CurrentModel, plog: PredictionLogDep, writer: WriterDep) -> FeedbackResponse:
    """Ground truth arriving later; stored beside the prediction for monitoring and retraining."""
    if body.label not in model.classes:
        raise HTTPException(422, f"label {body.label!r} is not one of the model's classes {model.classes}")
    at = datetime.now(UTC)
    try:
        stored = plog.add_feedback(body.prediction_id, body.label, at)
        if not stored:
            # Not waiting: unknown, or written since the first look (an id leaves the queue only once written).
            stored = writer.submit_feedback(body.prediction_id, body.label, at) or plog.add_feedback(
                body.prediction_id, body.label, at
            )
    except queue.Full:
        raise HTTPException(503, "the prediction log is behind and its queue is full; retry later",
                            headers={"Retry-After": "5"}) from None
    except Exception as exc:  # noqa: BLE001 - a database failure is reported, not raised
        log.warning("feedback not stored: %s", exc)
        raise HTTPException(503, f"the prediction log is unavailable: {str(exc).splitlines()[0]}") from None
    if not stored:
        raise HTTPException(404, f"no prediction with id {body.prediction_id!r}")
    return FeedbackResponse(prediction_id=body.prediction_id, label=body.label, stored=True)
