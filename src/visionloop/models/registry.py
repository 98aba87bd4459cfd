"""Registry access: the one place that reads and writes the MLflow model registry.

Alias → version lookup (model URIs are parsed by ``visionloop.models.uris``), version
listing, registering a run's model and moving aliases. Nothing here decides anything: whether a
version deserves ``champion`` is ``visionloop.promotion``'s call; it moves the alias through
``move_champion`` under ``registry_lock``.

The lock: alias changes happen under an exclusive file lock (``<state_dir>/registry-<name>.lock``,
which serialises every process on this machine). Against a remote registry shared by several
machines the lock is per machine; promotion's compare-and-set then narrows a race to the instant
between its re-read of the champion and the flip.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from visionloop.config import Settings
from visionloop.contracts import CANARY, CHALLENGER, CHAMPION, LINEAGE_TAGS, CanaryState
from visionloop.locks import exclusive
from visionloop.models.tracking import NOTE_TAG, client, describe_run, point_mlflow_at, registered_run_name
from visionloop.models.uris import parse_model_uri

# Run tags copied from the training run onto the model version (with LINEAGE_TAGS).
RUN_LINEAGE_TAGS = (*LINEAGE_TAGS, "data_path", "data_git_commit", "trigger")
METRIC_TAG_PREFIX = "metric."
HEADLINE_METRICS = ("accuracy", "macro_f1", "roc_auc_ovr", "ece", "n")
CANARY_TAG = "visionloop.canary"  # on the registered model: the CanaryState (JSON) of the canary in progress


class RegistryError(RuntimeError):
    """A registry request that cannot be carried out (the message says why)."""


def not_found(error: Exception) -> bool:
    """Whether an MLflow error says the model, version or alias does not exist."""
    return getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"


# --- reading ----------------------------------------------------------------------------------


def aliases(settings: Settings, name: str | None = None) -> dict[str, str]:
    """Alias → version of a registered model (default: the project's); empty when it does not exist yet."""
    try:
        model = client(settings).get_registered_model(name or settings.model_name)
    except MlflowException as error:
        if not_found(error):
            return {}
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def alias_version(settings: Settings, alias: str = CHAMPION, name: str | None = None) -> str | None:
    """The version ``alias`` points to now; None when nothing holds it (or the model does not exist)."""
    return aliases(settings, name).get(alias)


def model_version(settings: Settings, version: str, name: str | None = None) -> ModelVersion:
    """One registered version; ``RegistryError`` when it does not exist."""
    name = name or settings.model_name
    try:
        return client(settings).get_model_version(name, str(version))
    except MlflowException as error:
        if not_found(error):
            raise RegistryError(f"{name} has no version {version}") from error
        raise


def resolve(settings: Settings, model_uri: str) -> ModelVersion:
    """The version a ``models:/`` URI names now (an alias is read once); ``RegistryError`` if there is none."""
    name, alias, version = parse_model_uri(model_uri)
    if alias is not None:
        version = alias_version(settings, alias, name)
        if version is None:
            raise RegistryError(f"{name} has no version with the alias {alias!r}")
    assert version is not None
    return model_version(settings, version, name)


def run_started_ms(settings: Settings, version: str) -> int:
    """When the training run of a version of the project's model started (now, for a version without a run)."""
    run_id = model_version(settings, version).run_id
    return int(client(settings).get_run(run_id).info.start_time) if run_id else int(time.time() * 1000)


def run_test_metrics(settings: Settings, run_id: str) -> dict[str, float]:
    """The headline test metrics of a training run (``test/…`` metrics, else ``bundle/metrics.json``)."""
    logged = client(settings).get_run(run_id).data.metrics
    metrics = {
        k.removeprefix("test/"): float(v)
        for k, v in logged.items()
        if k.startswith("test/") and k.removeprefix("test/") in HEADLINE_METRICS
    }
    if metrics:
        return metrics
    point_mlflow_at(settings.tracking_uri)
    try:
        stored = mlflow.artifacts.load_dict(f"runs:/{run_id}/bundle/metrics.json")
    except Exception as error:
        raise RegistryError(f"run {run_id} has no test metrics: run `visionloop evaluate` first ({error})") from error
    return {k: float(v) for k, v in stored.items() if k in HEADLINE_METRICS}


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """Every version, newest first: version, aliases, metrics, lineage, created, run_id, status."""
    name = settings.model_name
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases(settings).items():
        by_version.setdefault(version, []).append(alias)
    escaped = name.replace("'", "\\'")
    rows = []
    for mv in client(settings).search_model_versions(f"name='{escaped}'"):
        tags = dict(mv.tags or {})
        rows.append(
            {
                "version": str(mv.version),
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "metrics": {
                    k.removeprefix(METRIC_TAG_PREFIX): float(v)
                    for k, v in tags.items()
                    if k.startswith(METRIC_TAG_PREFIX)
                },
                "lineage": {k: tags[k] for k in RUN_LINEAGE_TAGS if k in tags},
                "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
                "run_id": mv.run_id,
                "status": str(mv.status),
            }
        )
    rows.sort(key=lambda r: int(r["version"]) if r["version"].isdigit() else 0, reverse=True)
    return rows


def registered_metrics(settings: Settings, *versions: str | None) -> dict[str, dict[str, float]]:
    """The test metrics tagged on some versions of the project's model (absent versions: none)."""
    wanted = {v for v in versions if v is not None}
    return {row["version"]: row["metrics"] for row in list_versions(settings) if row["version"] in wanted}


# --- writing ----------------------------------------------------------------------------------


def register_version(settings: Settings, run_id: str, metrics: dict[str, float]) -> str:
    """Register ``runs:/{run_id}/model`` as a new version of the project's model, alias ``challenger``.

    The version is tagged with the run's lineage tags, the run id and ``metric.*`` test metrics.
    Idempotent per run: a retried registration (the task failed after the registry answered) returns
    the version already made from ``run_id`` instead of a second one.
    """
    name = settings.model_name
    mlflow_client = client(settings)
    if (existing := version_of_run(settings, run_id)) is not None:
        if alias_version(settings, CHAMPION) != existing:  # made champion already: the retry changes nothing
            mlflow_client.set_registered_model_alias(name, CHALLENGER, existing)
        return existing
    run = mlflow_client.get_run(run_id)
    run_tags = run.data.tags
    tags = {key: run_tags[key] for key in RUN_LINEAGE_TAGS if key in run_tags}
    tags["run_id"] = run_id
    tags.update({f"{METRIC_TAG_PREFIX}{k}": f"{float(v):.6g}" for k, v in metrics.items()})
    point_mlflow_at(settings.tracking_uri)
    version = str(mlflow.register_model(f"runs:/{run_id}/model", name, tags=tags).version)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, version)
    # The UI's story: the run is named after the version it became; the version says where it came from.
    note = run_tags.get(NOTE_TAG, "")
    describe_run(settings, run_id, name=registered_run_name(run.info.run_name, version),
                 note=f"{note}\n\nRegistered as {name} v{version}.".strip())
    quality = ", ".join(f"{k.replace('_', '-')} {float(metrics[k]):.3f}" for k in ("accuracy", "macro_f1")
                        if k in metrics)
    describe_version(settings, version, f"v{version}: trained (trigger `{run_tags.get('trigger', '?')}`) on data "
                                        f"version {run_tags.get('data_version', '?')}; test {quality or 'no metrics'}. "
                                        "Awaiting the promotion gate.")
    return version


def version_of_run(settings: Settings, run_id: str) -> str | None:
    """The newest version of the project's model registered from ``run_id`` (None: not registered)."""
    escaped = settings.model_name.replace("'", "\\'")
    found = client(settings).search_model_versions(f"name='{escaped}' and run_id='{run_id}'")
    return str(max(int(v.version) for v in found)) if found else None


def describe_version(settings: Settings, version: str, description: str) -> None:
    """Set the description a registry version shows in the MLflow UI."""
    client(settings).update_model_version(settings.model_name, str(version), description=description)


def move_champion(settings: Settings, version: str) -> None:
    """Point ``champion`` at ``version`` (one registry call: atomic for serving); the version stops
    being the challenger. Call under ``registry_lock``."""
    name = settings.model_name
    mlflow_client = client(settings)
    challenger = alias_version(settings, CHALLENGER)
    mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    if challenger == version:
        mlflow_client.delete_registered_model_alias(name, CHALLENGER)


def canary_state(settings: Settings) -> CanaryState | None:
    """The canary in progress (one registry call, polled by every serving process); None when there is none.

    A canary exists only while both the ``canary`` alias and the tag are there and agree: ``set_canary`` writes
    the tag before the alias and ``clear_canary`` removes the alias first, so a reader between the two calls
    sees no canary rather than half of one.
    """
    try:
        model = client(settings).get_registered_model(settings.model_name)
    except MlflowException as error:
        if not_found(error):
            return None
        raise
    version = (model.aliases or {}).get(CANARY)
    text = (model.tags or {}).get(CANARY_TAG)
    if version is None or not text:
        return None
    state = CanaryState(**json.loads(text))
    return state if state.version == str(version) else None


def set_canary(settings: Settings, state: CanaryState) -> None:
    """Have ``state.version`` answer ``state.share`` of requests (tag, then alias). Call under ``registry_lock``."""
    mlflow_client = client(settings)
    mlflow_client.set_registered_model_tag(settings.model_name, CANARY_TAG, json.dumps(state.to_dict()))
    mlflow_client.set_registered_model_alias(settings.model_name, CANARY, state.version)


def clear_canary(settings: Settings) -> None:
    """End the canary, if any (alias, then tag): servers send every request to the champion again.
    Call under ``registry_lock``."""
    mlflow_client = client(settings)
    current = aliases(settings)
    if CANARY in current:
        mlflow_client.delete_registered_model_alias(settings.model_name, CANARY)
    try:
        mlflow_client.delete_registered_model_tag(settings.model_name, CANARY_TAG)
    except MlflowException as error:
        if not not_found(error):
            raise


@contextmanager
def registry_lock(settings: Settings, timeout: float | None = None) -> Iterator[None]:
    """Exclusive lock on the registered model's aliases for every process (and thread) on this machine.

    Waits up to ``timeout`` seconds (default ``registry.lock_timeout_seconds``), then ``TimeoutError``.
    """
    timeout = settings.params.registry.lock_timeout_seconds if timeout is None else timeout
    path = settings.state_dir / f"registry-{settings.model_name}.lock"
    with exclusive(path, wait_s=timeout, what=f"the aliases of {settings.model_name}"):
        yield
