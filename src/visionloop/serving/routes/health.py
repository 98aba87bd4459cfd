"""``GET /health`` (liveness: 200 while the process answers) and ``GET /ready`` (200 once a model serves).

They are separate because an orchestrator restarts a process that is not alive but only withholds
traffic from one that is not ready: a server waiting for its first champion, or whose prediction log
is down, is alive and must not be restarted.

``/ready`` does not follow the prediction log: while it is ``degraded`` (a dead writer process being
restarted) answers go out and their entries are kept for the new writer, and while it is
``unavailable`` (the database) taking the server out of rotation would not bring the database back.
Both are for an operator, in ``/health``'s ``prediction_log`` and ``log`` counters.
"""

from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from visionloop.serving.deps import BatcherDep, BoardDep, ManagerDep, ServingModel, ShadowDep, Uptime, WriterDep
from visionloop.serving.schemas import HealthResponse, LogStatus, ReadyResponse, ShadowStatus, WorkerStatus

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse, summary="Liveness and the state of the prediction log")
def health(manager: ManagerDep, writer: WriterDep, batcher: BatcherDep, uptime: Uptime,
           board: BoardDep, shadow: ShadowDep) -> HealthResponse:
    """200 while the process answers; says whether the prediction log is writing (ok), restarting its writer
    (degraded) or cannot reach its database (unavailable), and which version every worker serves."""
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
        uptime_s=uptime,
        pid=os.getpid(),
        workers=[WorkerStatus(**record) for record in board.members()],
        shadow=ShadowStatus(**shadow.status()),
    )


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "No model loaded and checked yet."}},
    summary="Readiness: a model is loaded and warmed up",
)
def ready(model: ServingModel) -> JSONResponse:
    """200 once a model is loaded and checked, whatever the prediction log's state (module docstring)."""
    if model is None:
        body = ReadyResponse(ready=False, detail="no model version loaded yet")
        return JSONResponse(body.model_dump(), status_code=503)
    return JSONResponse(ReadyResponse(ready=True, model_version=str(model.version)).model_dump())
