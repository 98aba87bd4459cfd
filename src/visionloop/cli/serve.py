"""``visionloop serve``: the REST server over the registry's champion (hot reload when it moves)."""

from __future__ import annotations

import logging
from functools import partial

import typer

from visionloop.config import Settings


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_command(
        host: str = typer.Option(None, help="Interface to bind (default serving.host: 127.0.0.1, loopback only)."),
        port: int = typer.Option(None, help="Port (default serving.port: 8000)."),
        model_uri: str = typer.Option(
            None,
            help="Serve something other than the champion: models:/NAME@ALIAS (follow that alias), "
            "models:/NAME/VERSION (one fixed version, no reload) or a bundle folder.",
        ),
        log_level: str = typer.Option("info", help="debug | info | warning | error."),
        workers: int = typer.Option(
            1, min=1, help="Server processes on the one port: each loads the model, micro-batches and follows the "
            "alias; all log into the one database (GET /health lists their versions).",
        ),
    ) -> None:
        """Serve predictions over HTTP: POST /predict, POST /feedback, GET /health /ready /model, /docs.

        Follows the champion alias (checked every serving.poll_seconds) and swaps in a new version only
        after it loaded and predicted a sample. Every prediction is logged (VISIONLOOP_DB_URL) with its
        input image (serving.image_dir). Set VISIONLOOP_TOKEN to require a bearer token.
        """
        import uvicorn  # heavy imports here, at use: `visionloop --help` stays fast

        from visionloop.serving.app import create_app
        from visionloop.serving.sources import source_from_uri
        from visionloop.store.database import upgrade_embedded

        settings = Settings.load()
        if host:  # the bound name is one the server answers to (guards' Host allow-list)
            settings = settings.with_overrides({"serving": {"host": host}})
        if port:  # the port names the workers' board (serving.workers.board_dir)
            settings = settings.with_overrides({"serving": {"port": port}})
        bind_host = settings.params.serving.host
        bind_port = settings.params.serving.port
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if bind_host not in ("127.0.0.1", "localhost", "::1") and not settings.token:
            typer.secho(
                f"warning: serving on {bind_host} without a token; set VISIONLOOP_TOKEN to require one "
                "(and serving.allowed_hosts to the names clients use)",
                fg=typer.colors.YELLOW,
                err=True,
            )
        try:
            source = source_from_uri(settings, model_uri)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--model-uri") from None
        try:
            upgrade_embedded(settings.db_url)  # a team database is upgraded by its owners: `visionloop db upgrade`
        except Exception as error:  # noqa: BLE001 - answers go out without the prediction log; /health says why
            typer.secho(f"warning: the prediction log could not be upgraded: {error}", fg=typer.colors.YELLOW, err=True)
        if workers == 1:
            uvicorn.run(create_app(settings, source), host=bind_host, port=bind_port, log_level=log_level.lower())
            return
        # Bind once, then N spawned processes each build their own app (worker_app) and accept on that socket;
        # uvicorn's supervisor restarts one that dies and stops them all on SIGINT/SIGTERM.
        from uvicorn.supervisors import Multiprocess

        from visionloop.serving.app import worker_app

        config = uvicorn.Config(partial(worker_app, settings, model_uri), factory=True, host=bind_host,
                                port=bind_port, workers=workers, log_level=log_level.lower(),
                                timeout_worker_healthcheck=settings.params.serving.worker_timeout)
        Multiprocess(config, sockets=[config.bind_socket()]).run()
