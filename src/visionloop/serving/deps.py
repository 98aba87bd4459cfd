"""What routes receive, declared once: ``Annotated[..., Depends(...)]`` types over ``app.state``.

``create_app`` puts the settings, the model manager, the micro-batcher and the prediction-log writer on
``app.state``; a route names what it needs by type (``model: CurrentModel``) instead of reaching into
the app. Tests swap a piece with ``app.dependency_overrides`` (e.g. ``serving_model`` or ``open_log``).

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in the thread pool, which would
cost every request a thread hop for what is an attribute read.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from visionloop.config import Settings
from visionloop.models.bundle import ServableModel
from visionloop.serving.batcher import MicroBatcher
from visionloop.serving.canary import CanaryRouter
from visionloop.serving.challenger import Challenger
from visionloop.serving.guards import token_matches
from visionloop.serving.reload import ModelManager
from visionloop.serving.shadow import ShadowScorer
from visionloop.serving.workers import WorkerBoard
from visionloop.store.predlog import PredictionLog
from visionloop.store.writer import PredictionLogWriter
from visionloop.store.writer_process import ProcessLogWriter

LogWriter = PredictionLogWriter | ProcessLogWriter  # same interface; serving.log_writer picks one

NO_MODEL = "no model version is loaded yet; see GET /ready"


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_manager(request: Request) -> ModelManager:
    return request.app.state.manager


async def get_batcher(request: Request) -> MicroBatcher:
    return request.app.state.batcher


async def get_writer(request: Request) -> LogWriter:
    return request.app.state.writer


async def get_board(request: Request) -> WorkerBoard:
    return request.app.state.board


async def get_challenger(request: Request) -> Challenger:
    return request.app.state.challenger


async def get_shadow(request: Request) -> ShadowScorer:
    return request.app.state.shadow


async def get_canary(request: Request) -> CanaryRouter:
    return request.app.state.canary


async def uptime_seconds(request: Request) -> float:
    return round(time.monotonic() - request.app.state.started, 3)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[ModelManager, Depends(get_manager)]
BatcherDep = Annotated[MicroBatcher, Depends(get_batcher)]
WriterDep = Annotated[LogWriter, Depends(get_writer)]
Uptime = Annotated[float, Depends(uptime_seconds)]
BoardDep = Annotated[WorkerBoard, Depends(get_board)]
ChallengerDep = Annotated[Challenger, Depends(get_challenger)]  # the registry's challenger (serving.challenger)
ShadowDep = Annotated[ShadowScorer, Depends(get_shadow)]
CanaryDep = Annotated[CanaryRouter, Depends(get_canary)]  # which arm answers a request (serving.canary)


async def serving_model(manager: ManagerDep) -> ServableModel | None:
    """The version serving now, or None before the first one is loaded and checked."""
    return manager.current()


ServingModel = Annotated[ServableModel | None, Depends(serving_model)]


async def current_model(model: ServingModel) -> ServableModel:
    """The version serving now; 503 before there is one (the server is alive but not ready)."""
    if model is None:
        raise HTTPException(503, NO_MODEL)
    return model


CurrentModel = Annotated[ServableModel, Depends(current_model)]


async def open_log(writer: WriterDep) -> PredictionLog | None:
    """This process's handle on the prediction log (None when its URL could not be opened)."""
    return writer.log


OpenLog = Annotated[PredictionLog | None, Depends(open_log)]


async def prediction_log(plog: OpenLog) -> PredictionLog:
    """The prediction log, or 503: answers go out without it, but labels cannot be stored."""
    if plog is None:
        raise HTTPException(503, "the prediction log is unavailable")
    return plog


PredictionLogDep = Annotated[PredictionLog, Depends(prediction_log)]

# --- the optional bearer token ---------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="The token set in serving.token / VISIONLOOP_TOKEN.")


async def require_token(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
) -> None:
    """401 unless the request carries ``app.state.token`` as its bearer token. Requests with a body were
    checked already, before it was read (``guards.RequestGuard``); this covers the GETs and names the
    scheme in /docs."""
    if not token_matches(request.headers.get("authorization"), request.app.state.token.encode()):
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


def token_guard(token: str | None) -> list[Any]:
    """``dependencies=`` for the protected routers. Empty without a token: no per-request cost, and /docs
    shows the bearer scheme only when one is required."""
    return [Depends(require_token)] if token else []
