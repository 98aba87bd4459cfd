"""Where every monitoring check leaves its results: a folder under the state directory and an MLflow run.

Drift checks, performance checks and slice reports each write into a fresh
``<state>/monitoring/<UTC timestamp>/`` folder (``new_output_dir``) and record one run in the monitoring
experiment (``mlflow.monitoring_experiment``), tagged ``visionloop.kind`` = drift / performance / slices
with the model name and version, so that MLflow can list every check of a version (``log_check_run``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionloop.config import Settings
from visionloop.models.tracking import log_run


def new_output_dir(settings: Settings) -> Path:
    """A fresh ``<state>/monitoring/<UTC timestamp>/`` folder (suffixed when two checks start in one second)."""
    root = settings.state_dir / "monitoring"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for suffix in ("", *(f"-{i}" for i in range(1, 1000))):
        try:
            (root / f"{stamp}{suffix}").mkdir(parents=True)
        except FileExistsError:
            continue
        return root / f"{stamp}{suffix}"
    raise RuntimeError(f"could not create a new output folder under {root}")


def log_check_run(
    settings: Settings,
    kind: str,
    model: tuple[str, str],
    *,
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
    files: Iterable[Path],
    params: Mapping[str, Any] | None = None,
) -> str:
    """One run in the monitoring experiment about ``model`` (name, version); ``files`` go under ``kind/``."""
    model_name, model_version = model
    return log_run(
        settings,
        settings.params.mlflow.monitoring_experiment,
        run_name=f"{kind} {model_name} v{model_version}",
        tags={"visionloop.kind": kind, "model_name": model_name, "model_version": str(model_version), **tags},
        params=params,
        metrics=metrics,
        files=[(Path(file), kind) for file in files],
    )
