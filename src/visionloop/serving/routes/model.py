"""``GET /model``: which registered model version is serving, with its lineage and preprocessing."""

from __future__ import annotations

import json

from fastapi import APIRouter

from visionloop.contracts import LINEAGE_TAGS
from visionloop.serving.deps import CurrentModel, ManagerDep
from visionloop.serving.schemas import ErrorResponse, ModelInfo

router = APIRouter(tags=["model"])


@router.get(
    "/model",
    response_model=ModelInfo,
    responses={503: {"model": ErrorResponse, "description": "No model loaded yet."}},
    summary="The model version serving now",
)
def model_info(model: CurrentModel, manager: ManagerDep) -> ModelInfo:
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
