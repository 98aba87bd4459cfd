"""The team profile of the stack: on one machine, the shape a team runs on several.

``visionloop up --profile team`` starts, on 127.0.0.1:

- **PostgreSQL** in ``<state>/postgres`` (``visionloop.stack_postgres``) with one database each for MLflow, Prefect
  and visionloop's store (prediction log, alerts, labeling queue) — or uses the server of ``VISIONLOOP_POSTGRES_URL``;
- the **MLflow server** on its database with **proxied artifacts** (``--serve-artifacts``, stored under
  ``VISIONLOOP_ARTIFACTS_DEST``: a folder of the state directory, or ``s3://...``): clients log and load through
  ``mlflow-artifacts:`` URIs and never hold storage credentials;
- the **Prefect server** on its database, the deployments deployed from source to a **process work pool**
  (``stack.work_pool``) and a **worker** polling it, so scheduled and automation-started runs (the drift alert's
  retrain) run on the worker;
- the Evidently UI and the REST server, as in the embedded profile.

Every process is recorded in ``<state>/stack.json`` like the embedded ones; ``visionloop down`` stops them all,
PostgreSQL last. Services configured elsewhere (``MLFLOW_TRACKING_URI`` / ``PREFECT_API_URL`` URLs, a PostgreSQL
``VISIONLOOP_DB_URL``) are used as they are. A client reaches the stack through the variables written to
``<state>/team.env``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from visionloop import stack_postgres
from visionloop.config import Settings
from visionloop.stack import (
    HOST,
    PORTS,
    Plan,
    Service,
    StackUrls,
    evidently_service,
    record_service,
    service_environment,
    start_services,
    up,
)
from visionloop.store.database import is_embedded, upgrade

# What the stack's own processes and any client of it must not inherit: a storage location for artifacts
# (clients go through the MLflow server) or a database of another stack.
CLIENT_UNSET = ("VISIONLOOP_ARTIFACT_ROOT",)


def start(settings: Settings, *, serve: bool = True, deployments: bool = True, evidently: bool = True,
          ports: dict[str, int] | None = None,
          echo: Callable[[str], None] = print) -> tuple[StackUrls, dict[str, str]]:
    """Start the stack of ``stack.profile``; returns its URLs and the environment variables that point a client
    (a shell, the demo) at it."""
    if settings.params.stack.profile == "team":
        return up_team(settings, serve=serve, deployments=deployments, evidently=evidently, ports=ports, echo=echo)
    u = up(settings, serve=serve, deployments=deployments, evidently=evidently, echo=echo)
    return u, {"PREFECT_API_URL": u.prefect_api, "MLFLOW_TRACKING_URI": u.mlflow}


def team_urls(settings: Settings, ports: dict[str, int]) -> StackUrls:
    """The team stack's addresses: configured servers, else ours on ``ports``."""
    prefect_api = settings.prefect_api_url or f"http://{HOST}:{ports['prefect']}/api"
    tracking = settings.tracking_uri
    serving = settings.params.serving
    return StackUrls(
        prefect_api=prefect_api,
        prefect_ui=prefect_api.removesuffix("/api"),
        mlflow=tracking if tracking.startswith("http") else f"http://{HOST}:{ports['mlflow']}",
        serve=f"http://{serving.host}:{serving.port}",
        evidently=f"http://{HOST}:{ports['evidently']}",
    )


def database_urls(settings: Settings, echo: Callable[[str], None]) -> dict[str, sa.URL]:
    """One database per service on the configured PostgreSQL server, else on ours (started if needed)."""
    if settings.postgres_url:
        server = sa.make_url(settings.postgres_url)
        if not server.get_backend_name().startswith("postgresql"):
            raise ValueError(f"VISIONLOOP_POSTGRES_URL must be a postgresql:// URL, not {server.drivername}://")
        stack_postgres.create_databases(server.set(drivername="postgresql+psycopg"))
        echo(f"{'postgres':<12} using {server.render_as_string(hide_password=True)}")
    else:
        cluster = stack_postgres.prepare(settings.state_dir / "postgres")
        was_running = cluster.postmaster_pid()
        pid = stack_postgres.start(cluster)
        command = [str(stack_postgres.bin_dir() / "postgres"), "-D", str(cluster.data)]
        record_service(settings, Service("postgres", pid, cluster.url("postgres"), command, str(cluster.log)))
        state = "already running" if was_running else f"started (pid {pid})"
        echo(f"{'postgres':<12} {state} at {HOST}:{cluster.port}  log: {cluster.log}")
        server = sa.make_url(cluster.url("postgres"))
    return {name: server.set(database=name) for name in stack_postgres.DATABASES}


def _text(url: sa.URL, driver: str) -> str:
    return url.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


def up_team(settings: Settings, *, serve: bool = True, deployments: bool = True, evidently: bool = True,
            ports: dict[str, int] | None = None,
            echo: Callable[[str], None] = print) -> tuple[StackUrls, dict[str, str]]:
    """Start the team stack (what is not running or configured elsewhere); returns its URLs and client variables."""
    ports = {**PORTS, **(ports or {})}
    u = team_urls(settings, ports)
    databases = database_urls(settings, echo)
    store_url = settings.db_url if not is_embedded(settings.db_url) else _text(databases["visionloop"], "psycopg")
    upgrade(store_url)  # the store's tables: this stack owns its database
    locations = {"PREFECT_API_URL": u.prefect_api, "MLFLOW_TRACKING_URI": u.mlflow, "VISIONLOOP_DB_URL": store_url}
    env = {**service_environment(settings, u), **locations}
    for key in CLIENT_UNSET:
        env.pop(key, None)
    bin_dir = Path(sys.executable).parent
    plan: Plan = []
    if not settings.prefect_api_url:
        home = settings.state_dir / "prefect-team"
        home.mkdir(exist_ok=True)
        prefect_env = {**env, "PREFECT_HOME": str(home),
                       "PREFECT_API_DATABASE_CONNECTION_URL": _text(databases["prefect"], "asyncpg")}
        prefect_env.pop("PREFECT_API_URL")
        plan.append(("prefect", [str(bin_dir / "prefect"), "server", "start", "--host", HOST,
                                 "--port", str(ports["prefect"]), "--analytics-off"], u.prefect_ui,
                     f"{u.prefect_api}/health", prefect_env))
    if not settings.tracking_uri.startswith("http"):
        plan.append(("mlflow", [str(bin_dir / "mlflow"), "server",
                                "--backend-store-uri", _text(databases["mlflow"], "psycopg"),
                                "--serve-artifacts", "--artifacts-destination", settings.artifacts_destination,
                                "--host", HOST, "--port", str(ports["mlflow"]), "--workers", "1"],
                     u.mlflow, f"{u.mlflow}/health", env))
    if evidently:
        plan.append(evidently_service(settings, u, env))
    start_services(settings, plan, ("prefect", "mlflow", "evidently"), echo)
    if deployments:
        deploy(settings, env, echo)
        pool = settings.params.stack.work_pool
        # The worker polls every 2 s (Prefect's default 10 s) so a drift alert's retrain starts promptly.
        plan.append(("worker", [str(bin_dir / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                                "--name", f"{pool}-worker"], u.prefect_ui, "",
                     {**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}))
    if serve:
        plan.append(("serve", [str(bin_dir / "visionloop"), "serve"], u.serve, f"{u.serve}/health", env))
    start_services(settings, plan, ("worker", "serve"), echo)
    write_client_environment(settings, locations)
    return u, locations


def deploy(settings: Settings, env: dict[str, str], echo: Callable[[str], None]) -> None:
    """Deploy the project's deployments from source to the work pool (``flows.deployments --work-pool``), in a
    child process: the library never imports Prefect."""
    pool = settings.params.stack.work_pool
    log = settings.state_dir / "logs" / "deploy.log"
    log.parent.mkdir(exist_ok=True)
    with open(log, "ab") as out:
        result = subprocess.run([sys.executable, "-m", "flows.deployments", "--work-pool", pool], cwd=settings.root,
                                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"deploying to work pool {pool} failed ({result.returncode}); see {log}")
    echo(f"{'deployments':<12} deployed from source to work pool {pool}  log: {log}")


def client_environment_file(settings: Settings) -> Path:
    return settings.state_dir / "team.env"


def write_client_environment(settings: Settings, locations: dict[str, str]) -> Path:
    """``<state>/team.env``: ``export`` lines a shell sources to use the running team stack (``visionloop`` commands
    then read and write the same databases and servers as the stack's processes)."""
    lines = [f"export {key}='{value}'" for key, value in locations.items()]
    lines += [f"unset {key}" for key in CLIENT_UNSET]
    path = client_environment_file(settings)
    path.write_text("\n".join(lines) + "\n")
    return path

