"""Production monitoring: the latest window of the prediction log against the champion's reference profile.

The steps, one function each, so that ``visionloop monitor`` runs them in a row (``run_monitor``) and the
Prefect ``monitor`` flow runs each one as a task:

1. ``load_monitored`` — the model version to watch: the registry's champion unless told otherwise, with
   its reference profile (seam 3). A version's bundle is downloaded once, into
   ``<state>/monitoring/models/<name>-v<version>/``.
2. ``read_window`` — the latest ``monitoring.window`` predictions (or those since a time) **made by that
   version**. Predictions of other versions come from another network: their embedding and output
   features are not comparable with this version's reference, so they are left out. Right after a
   promotion the window is therefore small until the new version has served enough traffic.
3. ``check_window`` — the drift tests of ``visionloop.monitoring.drift`` (Evidently's report, Bonferroni-corrected
   per-feature tests) on the feature columns: image statistics, reduced embedding, predicted class,
   confidence and the softmax vector; never the identifiers, times or paths of the log. Fewer than
   ``monitoring.min_window`` predictions give a "not enough data" result: no verdict, no alert.
4. ``write_outputs`` — under ``<state>/monitoring/<UTC timestamp>/``: Evidently's HTML report
   (``report.html``), the JSON verdict (``verdict.json``), the images behind the verdict
   (``images.png``: the current images farthest from the reference in embedding space, each above a
   typical reference image of the class the model predicted for it) and ``index.html``, which links
   the report and shows the verdict and the images.
5. ``log_check`` — an MLflow run in the monitoring experiment (metrics, tags, the files above);
   ``add_to_workspace`` — the Evidently snapshot in the workspace ``<state>/evidently``, one project
   per model name, so ``evidently ui --workspace <state>/evidently`` shows drift over time.
6. ``alert_payload`` — what the alert carries: the verdict summary (``DriftVerdict.summary``) with
   ``cause``, merged with the performance degradation when labels show one (``visionloop.monitoring.performance``).
"""

from __future__ import annotations

import html
import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from visionloop.contracts import BUNDLE_FILES, DriftVerdict, Severity
from visionloop.monitoring.drift import DEFAULT_CRITICAL_DISTANCE, check_drift, embedding_outliers, verdict_json
from visionloop.monitoring.features import CONFIDENCE_COLUMN, LABEL_COLUMN, feature_columns

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

    from visionloop.config import Settings
    from visionloop.models.bundle import ServableModel
    from visionloop.monitoring.performance import PerformanceResult

Status = Literal["ok", "drift", "not_enough_data"]
SEVERITY_ORDER: dict[str, int] = {"none": 0, "warning": 1, "critical": 2}
DEFAULT_MIN_WINDOW = 20
DEFAULT_OUTLIER_IMAGES = 8
_COMPLETE = ".complete"  # marks a fully downloaded bundle in the cache


class NoModelToMonitor(RuntimeError):
    """There is no champion (or the named model does not exist): nothing to compare traffic with."""


@dataclass
class MonitoredModel:
    """The version being watched, its reference profile and the folder holding its bundle files."""

    model: ServableModel
    reference: pd.DataFrame
    bundle_dir: Path  # holds bundle/… (seams.BUNDLE_FILES)
    typical: dict[str, Path] = field(default_factory=dict)  # class → a typical reference image (lazily)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return str(self.model.version)


@dataclass
class MonitorResult:
    """The outcome of one monitoring run: the drift verdict, where it was written and logged, the alert."""

    status: Status
    model_name: str
    model_version: str
    n_window: int
    message: str
    verdict: DriftVerdict | None = None
    snapshot: Snapshot | None = None  # Evidently's; not part of to_dict
    columns: list[str] = field(default_factory=list)
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    evidently_snapshot_id: str | None = None
    performance: PerformanceResult | None = None

    @property
    def alert(self) -> dict[str, Any] | None:
        """The alert payload (``alert_payload``), or None when nothing calls for one."""
        return alert_payload(self, self.performance)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: for ``--json``, the flow's result and the tests."""
        return {
            "status": self.status,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "n_window": self.n_window,
            "message": self.message,
            "verdict": json.loads(verdict_json(self.verdict)) if self.verdict else None,
            "out_dir": str(self.out_dir) if self.out_dir else None,
            "files": {k: str(v) for k, v in self.files.items()},
            "mlflow_run_id": self.mlflow_run_id,
            "evidently_snapshot_id": self.evidently_snapshot_id,
            "performance": self.performance.to_dict() if self.performance else None,
            "alert": self.alert,
        }


# --- 1. the model to watch ---------------------------------------------------------------------------


def load_monitored(settings: Settings, model_uri: str | None = None) -> MonitoredModel:
    """The champion (or ``models:/NAME/VERSION`` / ``models:/NAME@ALIAS``) with its reference profile.

    Raises ``NoModelToMonitor`` when there is no champion yet.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from visionloop.models.bundle import parse_model_uri

    if model_uri is None:
        name, version = settings.model_name, champion_version(settings)
        if version is None:
            raise NoModelToMonitor(f"{name} has no champion yet: train and register a model first")
    else:
        name, alias, version = parse_model_uri(model_uri)
        if alias is not None:
            client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
            try:
                version = str(client.get_model_version_by_alias(name, alias).version)
            except MlflowException as error:
                raise NoModelToMonitor(f"{model_uri}: {error}") from None
    try:
        directory = cached_bundle(settings, name, str(version))
    except MlflowException as error:
        if getattr(error, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise NoModelToMonitor(f"models:/{name}/{version}: {error}") from None
    return monitored_from_dir(directory, name=name, version=str(version))


def champion_version(settings: Settings) -> str | None:
    """The version the registry's champion alias points to; None before the first champion."""
    from visionloop.promotion.registry import registry_model_source

    return registry_model_source(settings).current_version()


def cached_bundle(settings: Settings, name: str, version: str) -> Path:
    """The bundle files of a registered version, downloaded once into ``<state>/monitoring/models``."""
    from visionloop.models.bundle import load_registered

    cache = settings.state_dir / "monitoring" / "models"
    target = cache / f"{name}-v{version}"
    if (target / _COMPLETE).exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{name}-v{version}-", dir=cache))
    try:
        load_registered(f"models:/{name}/{version}", settings.tracking_uri, destination=partial)
        (partial / _COMPLETE).touch()
        try:
            partial.rename(target)  # atomic: the folder appears complete or not at all
        except OSError:
            if not (target / _COMPLETE).exists():
                raise
            shutil.rmtree(partial)  # another monitor run got there first
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target


def monitored_from_dir(directory: Path | str, *, name: str, version: str) -> MonitoredModel:
    """A bundle folder (``bundle/…``) as the monitored model; it must hold a reference profile."""
    from visionloop.models.bundle import ServableModel

    root = Path(directory)
    profile = root / BUNDLE_FILES["reference_profile"]
    if not profile.exists():
        raise FileNotFoundError(f"{root} has no reference profile ({BUNDLE_FILES['reference_profile']})")
    model = ServableModel.from_dir(root, name=name, version=str(version))
    return MonitoredModel(model, pd.read_parquet(profile), root)


# --- 2. the window -----------------------------------------------------------------------------------


def read_window(
    settings: Settings, monitored: MonitoredModel, *, window: int | None = None, since: datetime | None = None
) -> pd.DataFrame:
    """The monitored version's latest ``window`` predictions (default ``monitoring.window``), oldest first.

    With ``since`` and no ``window``: every prediction since then.
    """
    from visionloop.store.predlog import PredictionLog

    if window is None and since is None:
        window = int(settings.section("monitoring").get("window", 200))
    prediction_log = PredictionLog(settings.db_url)
    try:
        frame = prediction_log.read_window(last_n=window, since=since, model_version=monitored.version)
    finally:
        prediction_log.dispose()
    return frame[frame["model_name"] == monitored.name].reset_index(drop=True)


# --- 3. the check ------------------------------------------------------------------------------------


def monitored_columns(monitored: MonitoredModel, frame: pd.DataFrame) -> list[str]:
    """The feature columns present in the reference and with values in the window, in the schema's order."""
    model = monitored.model
    return [
        c
        for c in feature_columns(model.classes, model.reduction)
        if c in monitored.reference.columns and c in frame.columns and frame[c].notna().any()
    ]


def check_window(settings: Settings, monitored: MonitoredModel, frame: pd.DataFrame) -> MonitorResult:
    """Drift tests of the window against the reference; too small a window is reported, not tested."""
    params = settings.section("monitoring")
    min_window = int(params.get("min_window", DEFAULT_MIN_WINDOW))
    n = len(frame)
    base = {"model_name": monitored.name, "model_version": monitored.version, "n_window": n}
    if n < min_window:
        return MonitorResult(
            status="not_enough_data",
            message=f"not enough data: {n} prediction(s) by {monitored.name} v{monitored.version} in the window, "
            f"at least {min_window} needed (monitoring.min_window); no drift check, no alert",
            **base,
        )
    columns = monitored_columns(monitored, frame)
    times = pd.to_datetime(frame["created_at"], utc=True)
    verdict, snapshot = check_drift(
        monitored.reference,
        frame[columns],
        alpha=float(params.get("alpha", 0.05)),
        critical_share=float(params.get("critical_share", 0.3)),
        critical_distance=float(params.get("critical_distance", DEFAULT_CRITICAL_DISTANCE)),
        columns=columns,
        model_name=monitored.name,
        model_version=monitored.version,
        window_start=times.min().isoformat(),
        window_end=times.max().isoformat(),
    )
    if verdict.drift:
        message = (
            f"drift ({verdict.severity}): {len(verdict.drifted_features)} of {len(columns)} features drifted "
            f"({', '.join(verdict.drifted_features)}) in {n} predictions by v{monitored.version}"
        )
    else:
        message = f"no drift in {n} predictions by v{monitored.version} ({len(columns)} features tested)"
    return MonitorResult(
        status="drift" if verdict.drift else "ok",
        message=message,
        verdict=verdict,
        snapshot=snapshot,
        columns=columns,
        **base,
    )


# --- 4. the files ------------------------------------------------------------------------------------


def new_output_dir(settings: Settings) -> Path:
    """A fresh ``<state>/monitoring/<UTC timestamp>/`` folder."""
    root = settings.state_dir / "monitoring"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for suffix in ("", *(f"-{i}" for i in range(1, 1000))):
        try:
            (root / f"{stamp}{suffix}").mkdir(parents=True)
        except FileExistsError:
            continue
        return root / f"{stamp}{suffix}"
    raise RuntimeError(f"could not create a new output folder under {root}")


def write_outputs(
    settings: Settings,
    monitored: MonitoredModel,
    frame: pd.DataFrame,
    result: MonitorResult,
    out_dir: Path | None = None,
) -> dict[str, Path]:
    """Evidently's report, the JSON verdict, the images behind the verdict and an index page."""
    from visionloop.monitoring.drift import save_report_html

    if result.verdict is None or result.snapshot is None:
        raise ValueError(f"nothing to write: {result.message}")
    out = Path(out_dir) if out_dir is not None else new_output_dir(settings)
    out.mkdir(parents=True, exist_ok=True)
    files = {"report": save_report_html(result.snapshot, out / "report.html")}
    files["verdict"] = out / "verdict.json"
    files["verdict"].write_text(verdict_json(result.verdict) + "\n")
    k = int(settings.section("monitoring").get("outlier_images", DEFAULT_OUTLIER_IMAGES))
    images = images_behind_verdict(settings, monitored, frame, out / "images.png", k=k)
    if images is not None:
        files["images"] = images
    files["index"] = write_index(result, out / "index.html", has_images=images is not None)
    return files


def typical_reference_images(monitored: MonitoredModel) -> dict[str, Path]:
    """Per class, the held-out test image (``bundle/test_set``) nearest its class centre in embedding space."""
    if monitored.typical:
        return monitored.typical
    from visionloop.data.ingest import load_image
    from visionloop.monitoring.features import predict_in_chunks, reduce_embeddings

    test_dir = monitored.bundle_dir / BUNDLE_FILES["test_set"]
    manifest_path = test_dir / "manifest.csv"
    if not manifest_path.exists():
        return {}
    manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    paths = [test_dir / p for p in manifest["path"]]
    embeddings = predict_in_chunks(monitored.model, [load_image(p) for p in paths]).embeddings
    if monitored.model.reduction is not None:
        embeddings = reduce_embeddings(embeddings, monitored.model.reduction)
    labels = manifest["label"].to_numpy(str)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        points = embeddings[rows]
        nearest = rows[np.argmin(((points - points.mean(axis=0)) ** 2).sum(axis=1))]
        monitored.typical[str(label)] = paths[nearest]
    return monitored.typical


def images_behind_verdict(
    settings: Settings, monitored: MonitoredModel, frame: pd.DataFrame, path: Path, k: int = DEFAULT_OUTLIER_IMAGES
) -> Path | None:
    """A PNG grid: the ``k`` current images farthest from the reference (top), each above a typical
    reference image of the class the model predicted for it (bottom). None without embedding features.
    """
    from visionloop.data.ingest import load_image

    window = frame.reset_index(drop=True)
    outliers = embedding_outliers(monitored.reference, window, k=k)
    if not outliers:
        return None
    typical = typical_reference_images(monitored)

    def read(file: Path | str | None) -> np.ndarray | None:
        if not isinstance(file, str | Path) or not str(file):
            return None
        resolved = settings.path(file)
        return load_image(resolved) if resolved.is_file() else None

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(outliers), figsize=(1.45 * len(outliers) + 0.6, 4.2), squeeze=False)
    for column, position in enumerate(outliers):
        row = window.iloc[position]
        label = str(row[LABEL_COLUMN])
        panels = [
            (read(row.get("image_path")), f"pred {label} ({float(row[CONFIDENCE_COLUMN]):.2f})\n"
             f"{pd.Timestamp(row['created_at']):%m-%d %H:%M:%S}"),
            (read(typical.get(label)), f"typical '{label}'"),
        ]
        for ax, (image, caption) in zip(axes[:, column], panels, strict=True):
            ax.set_xticks([])
            ax.set_yticks([])
            if image is None:
                ax.text(0.5, 0.5, "image\nnot stored", ha="center", va="center", fontsize=7, color="gray")
            else:
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(caption, fontsize=7)
    axes[0, 0].set_ylabel("current:\nfarthest", fontsize=8)
    axes[1, 0].set_ylabel("reference:\ntypical", fontsize=8)
    fig.suptitle(
        f"{monitored.name} v{monitored.version}: current images farthest from the reference (embedding distance)\n"
        "above a typical held-out image of the class the model predicted",
        fontsize=8,
    )
    fig.tight_layout(h_pad=1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_index(result: MonitorResult, path: Path, *, has_images: bool) -> Path:
    """A small page beside Evidently's report: the verdict, the per-feature tests and the images."""
    verdict = result.verdict
    if verdict is None:
        raise ValueError("no verdict to show")
    esc = html.escape
    rows = "\n".join(
        f"<tr class=\"{'drifted' if f.drifted else ''}\"><td>{esc(f.feature)}</td><td>{esc(f.test)}</td>"
        f"<td>{f.statistic:.3f}</td><td>{'–' if f.p_value is None else f'{f.p_value:.3g}'}</td>"
        f"<td>{f.threshold:.3g}</td><td>{'YES' if f.drifted else 'no'}</td></tr>"
        for f in verdict.features
    )
    images = (
        '<h2>The images behind the verdict</h2><p>Top: the current images farthest from the reference in '
        "embedding space. Bottom: a typical held-out image of the class the model predicted for each.</p>"
        '<img src="images.png" alt="current images farthest from the reference beside typical reference images">'
        if has_images
        else "<p>No embedding features: no images to show.</p>"
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Drift check: {esc(result.model_name)} v{esc(result.model_version)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; border-bottom: 1px solid #ddd; }}
tr.drifted {{ background: #fde2e0; }} .verdict {{ font-size: 1.2em; }}
img {{ max-width: 100%; border: 1px solid #ccc; }}
</style></head><body>
<h1>Drift check: {esc(result.model_name)} v{esc(result.model_version)}</h1>
<p class="verdict"><b>drift: {"yes" if verdict.drift else "no"}</b> · severity <b>{esc(verdict.severity)}</b>
· {len(verdict.drifted_features)} of {len(verdict.features)} features drifted
({verdict.share_drifted:.0%})</p>
<p>{verdict.n_current} predictions from {esc(str(verdict.window_start))} to {esc(str(verdict.window_end))}
against a reference of {verdict.n_reference}; family-wise false-alarm rate alpha = {verdict.alpha}
(Bonferroni: each test at alpha / {len(verdict.features)}). Checked {esc(verdict.created_at)}.</p>
<p><a href="report.html">Evidently report</a> · <a href="verdict.json">verdict (JSON)</a></p>
{images}
<h2>Per-feature tests</h2>
<table><tr><th>feature</th><th>test</th><th>statistic</th><th>p-value</th><th>threshold</th><th>drifted</th></tr>
{rows}
</table>
</body></html>
"""
    path.write_text(page)
    return path


# --- 5. MLflow and the Evidently workspace ------------------------------------------------------------


def log_check(settings: Settings, result: MonitorResult, files: dict[str, Path]) -> str:
    """An MLflow run in the monitoring experiment: drift metrics, per-feature p-values, tags, the files."""
    import mlflow

    from visionloop.models.tracking import use_tracking

    verdict = result.verdict
    if verdict is None:
        raise ValueError(f"nothing to log: {result.message}")
    experiment_id = use_tracking(settings, "monitoring_experiment")
    tags = {
        "visionloop.kind": "drift",
        "model_name": result.model_name,
        "model_version": result.model_version,
        "drift": str(verdict.drift).lower(),
        "severity": verdict.severity,
        "drifted_features": ",".join(verdict.drifted_features)[:5000],
        "window_start": str(verdict.window_start),
        "window_end": str(verdict.window_end),
    }
    metrics = {
        "share_drifted": verdict.share_drifted,
        "n_drifted": float(len(verdict.drifted_features)),
        "n_features": float(len(verdict.features)),
        "n_current": float(verdict.n_current),
        "n_reference": float(verdict.n_reference),
        "drift": float(verdict.drift),
    }
    for f in verdict.features:
        metrics[f"statistic.{f.feature}"] = float(f.statistic)
        if f.p_value is not None and np.isfinite(f.p_value):
            metrics[f"p_value.{f.feature}"] = float(f.p_value)
    run_name = f"drift {result.model_name} v{result.model_version}"
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        mlflow.log_params({"alpha": verdict.alpha, "window": verdict.n_current, "test_threshold": _threshold(verdict)})
        mlflow.log_metrics(metrics)
        for file in files.values():
            mlflow.log_artifact(str(file), artifact_path="drift")
        return run.info.run_id


def _threshold(verdict: DriftVerdict) -> float:
    return verdict.features[0].threshold if verdict.features else verdict.alpha


def add_to_workspace(settings: Settings, result: MonitorResult) -> str:
    """Add the snapshot to the Evidently workspace (``<state>/evidently``), project = model name."""
    if result.snapshot is None:
        raise ValueError(f"no snapshot to add: {result.message}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Evidently's UI imports deprecated Litestar APIs
        from evidently.ui.workspace import Workspace

    workspace = Workspace.create(str(settings.state_dir / "evidently"))
    projects = workspace.search_project(result.model_name)
    project = projects[0] if projects else _create_project(workspace, result.model_name)
    return str(workspace.add_run(project.id, result.snapshot, include_data=False).id)


def _create_project(workspace: Any, name: str) -> Any:
    """A project per model with a dashboard of drift over time."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    project = workspace.create_project(name, description=f"Drift of {name}'s production traffic (visionloop monitor)")
    drifted = "evidently:metric_v2:DriftedColumnsCount"
    project.dashboard.add_panel(
        line_plot_panel(
            title="Share of drifted features",
            values=[PanelMetric(legend="share", metric=drifted, metric_labels={"value_type": "share"})],
            size="half",
        )
    )
    project.dashboard.add_panel(
        line_plot_panel(
            title="Drifted features",
            values=[PanelMetric(legend="count", metric=drifted, metric_labels={"value_type": "count"})],
            size="half",
        )
    )
    project.save()
    return project


# --- 6. the alert ------------------------------------------------------------------------------------


def worst(*severities: str) -> Severity:
    """The most severe of ``none`` / ``warning`` / ``critical``."""
    return max(severities, key=lambda s: SEVERITY_ORDER.get(s, 0))  # type: ignore[return-value]


def alert_payload(result: MonitorResult | None, performance: PerformanceResult | None = None) -> dict[str, Any] | None:
    """The alert event's payload, or None when neither drift nor a performance degradation was found.

    Drift: the verdict summary (``DriftVerdict.summary``) with ``cause`` "drift". A degradation adds
    ``performance`` (accuracy now and at training time, the drop, the number of labels) and "performance" to
    ``cause``; ``severity`` is the worse of the two. One monitoring run raises at most one alert. (``cause``,
    not ``reason``: the alert task adds the healing decision's ``reason``.)
    """
    drift = result is not None and result.verdict is not None and result.verdict.drift
    degraded = performance is not None and performance.degraded
    if not drift and not degraded:
        return None
    if drift:
        payload = result.verdict.summary()  # type: ignore[union-attr]
    else:
        payload = {
            "drift": False,
            "severity": "none",
            "share_drifted": round(result.verdict.share_drifted, 4) if result and result.verdict else 0.0,
            "drifted_features": [],
            "model_name": performance.model_name,  # type: ignore[union-attr]
            "model_version": performance.model_version,  # type: ignore[union-attr]
            "n_current": result.n_window if result else 0,
            "created_at": datetime.now(UTC).isoformat(),
        }
    causes = ["drift"] if drift else []
    if degraded:
        causes.append("performance")
        payload["performance"] = performance.summary()  # type: ignore[union-attr]
        payload["severity"] = worst(payload["severity"], performance.severity)  # type: ignore[union-attr]
    payload["cause"] = ", ".join(causes)
    return payload


# --- all of it ---------------------------------------------------------------------------------------


def run_monitor(
    settings: Settings,
    *,
    window: int | None = None,
    since: datetime | None = None,
    model_uri: str | None = None,
    out_dir: Path | None = None,
    performance: bool = True,
) -> MonitorResult:
    """One monitoring run without Prefect: check, write, log to MLflow and Evidently; the alert is in the result.

    With ``performance``, the version's predictions that have feedback labels are scored too
    (``visionloop.monitoring.performance.monitor_performance``); a degradation joins the alert.
    """
    monitored = load_monitored(settings, model_uri)
    frame = read_window(settings, monitored, window=window, since=since)
    result = check_window(settings, monitored, frame)
    if result.verdict is not None:
        result.out_dir = Path(out_dir) if out_dir is not None else new_output_dir(settings)
        result.files = write_outputs(settings, monitored, frame, result, result.out_dir)
        result.mlflow_run_id = log_check(settings, result, result.files)
        result.evidently_snapshot_id = add_to_workspace(settings, result)
    if performance:
        from visionloop.monitoring.performance import monitor_performance

        perf_dir = result.out_dir / "performance" if result.out_dir else None
        result.performance = monitor_performance(settings, monitored.model, out_dir=perf_dir)
    return result
