"""``POST /predict``: images in, one answer per image out, micro-batched with other requests.

The body is read and checked by ``serving.uploads``; readable images go to the micro-batcher
(``serving.batcher``), which runs one forward pass for many requests and hands it to the prediction log
off the request path. An unreadable image among several gets its own ``error`` and the others are answered. On
``serving.shadow.share`` of requests the challenger predicts the same images after the answer is sent
(``serving.shadow``).
"""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, BackgroundTasks, HTTPException, Request

from visionloop.data.images import InvalidImage
from visionloop.serving.batcher import BatchResult, NoModelLoaded, Overloaded
from visionloop.serving.canary import client_key
from visionloop.serving.deps import BatcherDep, CanaryDep, CurrentModel, SettingsDep, ShadowDep
from visionloop.serving.schemas import ERRORS, ImagePrediction, PredictResponse
from visionloop.serving.uploads import PREDICT_BODY_DOC, Decoded, Part, decode_images, read_images, refuse

router = APIRouter(tags=["predict"])


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra=PREDICT_BODY_DOC,
    summary="Classify one or several images",
)
async def predict(request: Request, model: CurrentModel, batcher: BatcherDep, settings: SettingsDep,
                  shadow: ShadowDep, background: BackgroundTasks, canary: CanaryDep) -> PredictResponse:
    """Answers per image: label, probabilities, confidence, model version and a prediction id.

    An unreadable image among several gets an ``error`` entry and the others are answered (200);
    when no image can be read the answer is 422 (413 when all were refused for their size). During a canary
    (``visionloop promote --canary``) a share of requests is answered by the challenger (``model_version`` says
    which version answered); a client that sends ``X-Client-Key`` (or ``?client_key=``) keeps one version.
    """
    params = settings.params
    channels = model.channels
    batcher.arriving()
    try:
        parts = await read_images(request, params.serving)
        decoded = await decode_images(parts, channels, params.data.min_side, params.serving.max_pixels)
        good = [i for i, item in enumerate(decoded) if isinstance(item, np.ndarray)]
        if not good:
            refuse(parts, decoded)
        images = [decoded[i] for i in good]
        route = canary.choose(model, client_key(request))  # during a canary, its share goes to the challenger
        future = batcher.submit(images, route.model)  # answered by the model it was decoded for
    except Overloaded as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
    finally:
        batcher.arrived()
    try:  # a canary forward that fails is answered by the champion (counted by the canary, not the client's)
        result = await canary.settle(route, future, lambda champion: batcher.submit(images, champion), model)
    except (NoModelLoaded, Overloaded) as exc:
        raise HTTPException(503, str(exc)) from None
    # The challenger sees the same images once the answer is sent (serving.shadow); not when it gave the answer.
    if result.model is model and shadow.wants():
        background.add_task(shadow.offer, images, result)
    return PredictResponse(predictions=_answers(parts, decoded, good, result))


def _answers(parts: list[Part], decoded: list[Decoded], good: list[int], result: BatchResult) -> list[ImagePrediction]:
    """One entry per part in request order: the batch's answer for a readable image, the reason otherwise."""
    answered = result.model
    classes = answered.classes
    position = {index: k for k, index in enumerate(good)}
    entries: list[ImagePrediction] = []
    for index, (filename, _data) in enumerate(parts):
        k = position.get(index)
        if k is None:
            error: InvalidImage = decoded[index]  # type: ignore[assignment]
            entries.append(ImagePrediction(index=index, filename=filename, error=error.reason, error_code=error.code))
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
    return entries
