"""One settings object: typed defaults from ``params.yaml``, service locations from the environment.

Nothing else in the project reads environment variables. The variables:

==============================  ==========================================  =========================================
variable                        meaning                                     default
==============================  ==========================================  =========================================
``VISIONLOOP_PROJECT_DIR``      project root (holds ``params.yaml``)        nearest parent of cwd with params.yaml
``VISIONLOOP_STATE_DIR``        git-ignored state of the embedded stack     ``<root>/.visionloop``
``MLFLOW_TRACKING_URI``         MLflow tracking + registry                  ``sqlite:///<state>/mlflow.db``
``VISIONLOOP_ARTIFACT_ROOT``    artifact location for new experiments      local store: ``file://<state>/mlartifacts``
``PREFECT_API_URL``             Prefect API (unset: Prefect's local mode)   unset
``VISIONLOOP_DB_URL``           prediction log (any SQLAlchemy URL)         ``sqlite:///<state>/predictions.db``
``VISIONLOOP_DVC_REMOTE``       DVC remote URL (dir, s3://, ...)            ``<state>/dvc-remote``
``VISIONLOOP_DVC_ENDPOINT``     S3-compatible endpoint of an s3:// remote   AWS S3 (keys: boto's ``AWS_*`` chain)
``VISIONLOOP_TOKEN``            bearer token for the REST server            ``serving.token`` in params.yaml
``VISIONLOOP_POSTGRES_URL``     team profile: a PostgreSQL server to use    one started in ``<state>/postgres``
``VISIONLOOP_ARTIFACTS_DEST``   team profile: where the MLflow server       ``<state>/mlflow-artifacts``
                                keeps artifacts (folder or s3://...)
==============================  ==========================================  =========================================
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from visionloop.params import Params, validate_params

OFFLINE_ENVIRONMENT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "DVC_NO_ANALYTICS": "1",
    "GIT_PYTHON_REFRESH": "quiet",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def apply_offline_environment() -> None:
    """Switch off telemetry and update checks before any of the stack is imported."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def find_project_root(start: Path | None = None) -> Path:
    """The project root: ``VISIONLOOP_PROJECT_DIR`` or the nearest parent holding ``params.yaml``."""
    if env := os.environ.get("VISIONLOOP_PROJECT_DIR"):
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "params.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"no params.yaml in {here} or its parents; run inside a visionloop project or set VISIONLOOP_PROJECT_DIR"
    )


def params_hash(params: dict[str, Any]) -> str:
    """A stable short hash of the parameters, for lineage."""
    canonical = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Settings:
    """The project root, its validated params and where the services live."""

    root: Path
    params: Params

    @classmethod
    def load(cls, root: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
        """Read and validate ``params.yaml`` of the project, deep-merged with ``overrides``.

        Raises :class:`visionloop.params.ParamsError` naming each unknown, missing or mistyped key.
        """
        project = Path(root).resolve() if root else find_project_root()
        source = project / "params.yaml"
        with open(source) as handle:
            raw = yaml.safe_load(handle) or {}
        if overrides:
            raw = deep_merge(raw, overrides)
        return cls(root=project, params=validate_params(raw, source))

    def with_overrides(self, overrides: dict[str, Any]) -> Settings:
        """The same project with some params replaced (validated like the file)."""
        raw = deep_merge(self.params.model_dump(mode="json"), overrides)
        return Settings(root=self.root, params=validate_params(raw, f"{self.root / 'params.yaml'} with overrides"))

    def path(self, relative: str | Path) -> Path:
        """A path from params.yaml, resolved against the project root."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    @cached_property
    def state_dir(self) -> Path:
        state = Path(os.environ.get("VISIONLOOP_STATE_DIR") or self.root / ".visionloop")
        state.mkdir(parents=True, exist_ok=True)
        return state.resolve()

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.state_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str | None:
        """Artifact location for new experiments; None lets a tracking server choose its own."""
        if root := os.environ.get("VISIONLOOP_ARTIFACT_ROOT"):
            return root
        if self.tracking_uri.startswith(("http://", "https://", "databricks")):
            return None
        return (self.state_dir / "mlartifacts").as_uri()

    @property
    def prefect_api_url(self) -> str | None:
        return os.environ.get("PREFECT_API_URL") or None

    @property
    def db_url(self) -> str:
        return os.environ.get("VISIONLOOP_DB_URL") or f"sqlite:///{self.state_dir / 'predictions.db'}"

    @property
    def dvc_remote(self) -> str:
        return os.environ.get("VISIONLOOP_DVC_REMOTE") or str(self.state_dir / "dvc-remote")

    @property
    def dvc_endpoint(self) -> str | None:
        """Endpoint URL of an S3-compatible DVC remote (MinIO, moto, ...); None: AWS S3 itself."""
        return os.environ.get("VISIONLOOP_DVC_ENDPOINT") or None

    @property
    def postgres_url(self) -> str | None:
        """A PostgreSQL server the team profile uses (its databases created there) instead of starting its own."""
        return os.environ.get("VISIONLOOP_POSTGRES_URL") or None

    @property
    def artifacts_destination(self) -> str:
        """Where the team profile's MLflow server stores artifacts; clients reach them only through the server."""
        return os.environ.get("VISIONLOOP_ARTIFACTS_DEST") or str(self.state_dir / "mlflow-artifacts")

    @property
    def token(self) -> str | None:
        return os.environ.get("VISIONLOOP_TOKEN") or self.params.serving.token or None

    @property
    def model_name(self) -> str:
        return self.params.registry.model_name

    @property
    def seed(self) -> int:
        return self.params.seed

    @property
    def params_hash(self) -> str:
        return params_hash(self.params.model_dump(mode="json"))


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
