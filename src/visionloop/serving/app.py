"""The REST server: ``create_app(settings, model_source)`` builds it, ``lifespan`` starts and stops it.

What serves what, one module each under ``routes/``:

* ``predict`` — ``POST /predict``, images as multipart files or base64 JSON (read by ``uploads``),
  micro-batched (``batcher``), every forward pass handed to the prediction log off the request path.
* ``feedback`` — ``POST /feedback``, the true label of an earlier prediction.
* ``health`` — ``GET /health`` (liveness) and ``GET /ready`` (a model is loaded and checked).
* ``model`` — ``GET /model``, the version serving; hot reload (``reload.ModelManager``) follows
  ``model_source.current_version()``.
  The registry's ``challenger`` alias is followed too (``challenger``); ``shadow`` has it predict a share of
  ``/predict`` requests after their answers went out, logged beside the champion's; during a canary
  (``canary``) it answers a share of them instead of the champion.
* ``labeling`` — the labeling queue and label review API; ``pages`` — the browser pages; ``diffs`` — the
  prediction-diff galleries of gate decisions and ``visionloop diff``, linked from the review page.

Routes receive what they need through ``deps`` (``Annotated`` dependencies over ``app.state``), their
shapes are in ``schemas``. Bad input never costs the server: every problem is a 4xx JSON
``{"detail": reason}``, and ``guards`` refuses foreign hosts and origins, missing tokens and oversized
bodies before a route reads a byte; an unexpected error is logged and answered with a request id only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from visionloop.config import Settings
from visionloop.serving.batcher import MicroBatcher
from visionloop.serving.canary import canary_router
from visionloop.serving.challenger import Challenger, challenger_source
from visionloop.serving.deps import LogWriter, token_guard
from visionloop.serving.guards import RequestGuard, internal_error
from visionloop.serving.reload import ModelManager
from visionloop.serving.routes import diffs, feedback, health, labeling, model, pages, predict, stream
from visionloop.serving.schemas import ErrorResponse
from visionloop.serving.shadow import ShadowScorer
from visionloop.serving.sources import ModelSource, source_from_uri
from visionloop.serving.workers import WorkerBoard, board_dir
from visionloop.store.predlog import PredictionLog
from visionloop.store.writer import PredictionLogWriter
from visionloop.store.writer_process import ProcessLogWriter

log = logging.getLogger(__name__)

PUBLIC_ROUTERS = (health.router, model.router, pages.router, labeling.metrics_router,
                  stream.router)  # the /stream WebSocket checks host, origin and token at its handshake itself
PROTECTED_ROUTERS = (predict.router, feedback.router, diffs.router, labeling.router)  # need the token when one is set


def create_app(settings: Settings, model_source: ModelSource, challenger: ModelSource | None = None) -> FastAPI:
    """The serving app for ``model_source``, configured by ``settings`` (``serving:`` of params.yaml).

    ``challenger``: where the challenger comes from; None: the ``challenger`` alias beside a registry-following
    ``model_source`` (``serving.challenger.challenger_source``), no challenger for any other source.

    Everything the routes share is built here and put on ``app.state``; the service locations
    (``VISIONLOOP_DB_URL``, the state directory, the token) are read now, once.
    """
    serving = settings.params.serving
    app = FastAPI(
        title="visionloop serving",
        summary="Image classification by the registry's champion, with every prediction logged.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their files from a CDN: routes.pages serves /docs offline
        redoc_url=None,
        responses={500: {"model": ErrorResponse, "description": "Unexpected server error."}},
    )
    manager = ModelManager(model_source, poll_seconds=serving.poll_seconds, max_batch=serving.max_batch)
    writer = make_writer(settings)
    app.state.manager = manager
    app.state.writer = writer
    app.state.board = WorkerBoard(board_dir(settings))  # every worker of this port: its pid and version
    manager.on_swap.append(app.state.board.publish)
    app.state.batcher = MicroBatcher(
        manager.current,
        max_batch=serving.max_batch,
        max_wait_ms=serving.max_wait_ms,
        log=writer.submit,  # one prediction-log entry per forward pass, never blocking
    )
    # The registry's challenger, followed like the champion; shadow scoring (and the canary) read it.
    app.state.challenger = Challenger(challenger or challenger_source(model_source),
                                      poll_seconds=serving.poll_seconds, max_batch=serving.max_batch)
    app.state.shadow = ShadowScorer(app.state.challenger, writer.submit_shadow, share=serving.shadow.share,
                                    max_queue=serving.shadow.max_queue, max_batch=serving.max_batch)
    # A canary (`promote --canary`) has the challenger answer a share of /predict instead of the champion.
    app.state.canary = canary_router(model_source, app.state.challenger, serving.poll_seconds)
    add_routes(app, settings)
    return app


def worker_app(settings: Settings, model_uri: str | None) -> FastAPI:
    """The app of one of ``serve --workers N``'s processes, built in that process (the factory uvicorn calls)."""
    return create_app(settings, source_from_uri(settings, model_uri))


def add_routes(app: FastAPI, settings: Settings) -> None:
    """Every route, the error answers, and the state of ``app`` the routes read besides the model and the log.

    Apart from ``create_app`` so that a test can serve the routes over a stand-in model and log
    (``app.dependency_overrides`` of ``deps.serving_model`` and ``deps.open_log``).
    """
    app.state.settings = settings
    app.state.token = settings.token
    app.state.labeling = labeling.LabelingState(settings)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, internal_error)
    app.add_middleware(RequestGuard, serving=settings.params.serving, token=settings.token)
    for router in PUBLIC_ROUTERS:
        app.include_router(router)
    guard = token_guard(settings.token)
    for router in PROTECTED_ROUTERS:
        app.include_router(router, dependencies=guard)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the prediction-log writer, the micro-batcher and the model poller; stop them in reverse."""
    state = app.state
    threads_before = torch.get_num_threads()
    torch.set_num_threads(state.settings.params.serving.torch_threads)
    await asyncio.to_thread(state.writer.start)
    state.board.join()
    state.batcher.start()
    poller = asyncio.create_task(state.manager.run(), name="model-poller")
    challenger_poller = asyncio.create_task(state.challenger.run(), name="challenger-poller")
    canary_poller = asyncio.create_task(state.canary.run(), name="canary-poller")
    state.shadow.start()
    state.started = time.monotonic()  # GET /health's uptime
    try:
        yield
    finally:
        for task in (poller, challenger_poller, canary_poller):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        state.canary.publish()  # what this process counted for a canary, up to its last request
        state.batcher.stop()
        state.shadow.stop()  # before the writer closes: its last rows are drained or spilled with the rest
        # Drain the log for serving.drain_seconds; what is left is spilled to <state dir>/spool, replayed next start.
        await asyncio.to_thread(state.writer.close, state.settings.params.serving.drain_seconds)
        if state.writer.log is not None:
            state.writer.log.dispose()
        state.board.leave()
        torch.set_num_threads(threads_before)  # the process may go on (tests, notebooks)


def make_writer(settings: Settings) -> LogWriter:
    """``serving.log_writer``: ``process`` keeps the writing off the serving interpreter's GIL; ``thread``
    writes from a thread of this process. A database that cannot be opened disables the log, not serving.
    Entries unwritten at a stop are spilled to ``<state dir>/spool`` and replayed by the next writer."""
    serving = settings.params.serving
    image_dir = settings.path(serving.image_dir) if serving.image_dir else settings.state_dir / "images"
    writer_class = ProcessLogWriter if serving.log_writer == "process" else PredictionLogWriter
    kept = {"max_queue": serving.log_queue, "spool_dir": settings.state_dir / "spool"}
    try:
        prediction_log = PredictionLog(settings.db_url)
    except Exception as exc:  # noqa: BLE001 - a bad URL must not stop serving
        log.error("prediction log disabled: %s", exc)
        return writer_class(None, image_dir, init_error=str(exc), **kept)
    return writer_class(prediction_log, image_dir, **kept)


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Every HTTP error as JSON; a dict detail (per-image errors of /predict) is the body itself."""
    content = exc.detail if isinstance(exc.detail, dict) else {"detail": exc.detail}
    return JSONResponse(content, status_code=exc.status_code, headers=exc.headers)
