"""What a drift check leaves behind for people: the report folder and the MLflow run.

Under ``<state>/monitoring/<UTC timestamp>/`` (``outputs.new_output_dir``): Evidently's HTML report
(``report.html``), the JSON verdict (``verdict.json``), the images behind the verdict (``images.png``:
the current images farthest from the reference in embedding space, each above a typical reference image
of the class the model predicted for it), the performance on feedback labels (``performance/``) and
``index.html`` (``index_page``), which ties them to the alert and the retrain it caused (``record_retrain``
adds the retrain's outcome when it ends). ``log_check`` records the same files and the verdict's numbers
in MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from visionloop.config import Settings
from visionloop.contracts import DriftVerdict
from visionloop.data.images import load_image
from visionloop.monitoring.checks import previous_check_at
from visionloop.monitoring.drift import verdict_json
from visionloop.monitoring.evidently_report import Snapshot, save_report_html
from visionloop.monitoring.features import CONFIDENCE_COLUMN, EMBEDDING_PREFIX, IMAGE_STAT_COLUMNS, LABEL_COLUMN
from visionloop.monitoring.index_page import note, render_index
from visionloop.monitoring.monitored import MonitoredModel
from visionloop.monitoring.outputs import log_check_run

if TYPE_CHECKING:
    from visionloop.monitoring.performance import PerformanceResult


def write_outputs(
    settings: Settings,
    monitored: MonitoredModel,
    frame: pd.DataFrame,
    verdict: DriftVerdict,
    snapshot: Snapshot,
    out_dir: Path,
    *,
    performance: PerformanceResult | None = None,
    alert: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Evidently's report, the JSON verdict, the images behind the verdict and the index page, in ``out_dir``.

    ``performance``: the check on feedback labels made with this one (its plots already in
    ``out_dir/performance``); ``alert``: what was done about it (``alert_facts``). Both are shown on the
    index page, or that there are none.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"report": save_report_html(snapshot, out_dir / "report.html")}
    files["verdict"] = out_dir / "verdict.json"
    files["verdict"].write_text(verdict_json(verdict) + "\n")
    k = settings.params.monitoring.outlier_images
    images = images_behind_verdict(
        settings, monitored, frame, out_dir / "images.png", k=k, drifted=verdict.drifted_features
    )
    if images is not None:
        files["images"] = images
    note(
        out_dir,
        previous_check_at=previous_check_at(settings.db_url, monitored.name),
        performance=None if performance is None else performance.to_dict(),
        alert=alert,
        no_alert="No alert: no drift and no performance degradation." if not verdict.drift and (
            performance is None or not performance.degraded) else "Found, but no alert raised by this run "
        "(`visionloop monitor` reports; the scheduled monitor flow raises alerts).",
    )
    files["index"] = render_index(out_dir)
    return files


def alert_facts(payload: dict[str, Any], alert_id: str, action: str, reason: str) -> dict[str, Any]:
    """What the index page says about an alert: its id, severity and cause, and what the healing policy did."""
    return {"alert_id": alert_id, "action": action, "reason": reason, "severity": payload.get("severity"),
            "cause": payload.get("cause"), "raised_at": datetime.now(UTC).isoformat()}


def record_retrain(out_dir: Path | str, outcome: str) -> Path | None:
    """The retrain an alert of this check caused has ended: its outcome on the folder's index page.

    None when the folder is gone (state cleaned up): a retrain never fails for its report.
    """
    folder = Path(out_dir)
    if not (folder / "verdict.json").is_file():
        return None
    note(folder, retrain={"outcome": outcome, "finished_at": datetime.now(UTC).isoformat()})
    return render_index(folder)


def embedding_outliers(reference: pd.DataFrame, current: pd.DataFrame, k: int) -> list[int]:
    """Positions of the ``k`` current rows farthest from the reference in embedding space.

    The distance is to the nearest reference row on the ``emb_*`` columns, standardised by the
    reference spread: the images a person should look at to see what changed.
    """
    cols = [c for c in reference.columns if c.startswith(EMBEDDING_PREFIX) and c in current.columns]
    if not cols or current.empty:
        return []
    ref = reference[cols].to_numpy(float)
    scale = ref.std(axis=0)
    scale[scale == 0] = 1.0
    ref, cur = ref / scale, current[cols].to_numpy(float) / scale
    nearest = np.full(len(cur), np.inf)
    for start in range(0, len(ref), 2048):
        block = ref[start : start + 2048]
        d2 = (cur**2).sum(1)[:, None] - 2 * cur @ block.T + (block**2).sum(1)[None, :]
        nearest = np.minimum(nearest, d2.min(axis=1))
    return [int(i) for i in np.argsort(-nearest, kind="stable")[:k]]


def outlier_feature(reference: pd.DataFrame, row: pd.Series, drifted: Sequence[str] = ()) -> str:
    """The feature that sets ``row`` farthest from the reference, as ``brightness +3.2 sd`` (reference
    standard deviations from its mean), among the drifted features when there are any, else among the
    image statistics and embedding components: why a person sees this image in the grid."""
    numeric = [c for c in reference.columns if c in IMAGE_STAT_COLUMNS or c.startswith(EMBEDDING_PREFIX)]
    candidates = [c for c in drifted if c in numeric] or numeric
    best, best_z = "", 0.0
    for column in candidates:
        value, spread = row.get(column), float(reference[column].std())
        if value is None or pd.isna(value) or not spread > 0:
            continue
        z = (float(value) - float(reference[column].mean())) / spread
        if abs(z) > abs(best_z):
            best, best_z = column, z
    return f"{best} {best_z:+.1f} sd" if best else "no single feature stands out"


def images_behind_verdict(
    settings: Settings,
    monitored: MonitoredModel,
    frame: pd.DataFrame,
    path: Path,
    k: int,
    drifted: Sequence[str] = (),
) -> Path | None:
    """A PNG grid: the ``k`` current images farthest from the reference (top), each above a typical
    reference image of the class the model predicted for it (bottom). None without embedding features.

    Each current image's caption names its prediction, its time and the feature that sets it apart
    (``outlier_feature``, among the ``drifted`` ones first), dark on white at a size read without zooming.
    """
    window = frame.reset_index(drop=True)
    outliers = embedding_outliers(monitored.reference, window, k=k)
    if not outliers:
        return None
    typical = monitored.typical_images()

    def read(file: Path | str | None) -> np.ndarray | None:
        if not isinstance(file, str | Path) or not str(file):
            return None
        resolved = settings.path(file)
        return load_image(resolved) if resolved.is_file() else None

    fig = Figure(figsize=(2.0 * len(outliers) + 0.8, 5.4), facecolor="white")
    axes = fig.subplots(2, len(outliers), squeeze=False)
    for column, position in enumerate(outliers):
        row = window.iloc[position]
        label = str(row[LABEL_COLUMN])
        panels = [
            (read(row.get("image_path")), f"pred {label} ({float(row[CONFIDENCE_COLUMN]):.2f})\n"
             f"{pd.Timestamp(row['created_at']):%H:%M:%S} UTC\n{outlier_feature(monitored.reference, row, drifted)}"),
            (read(typical.get(label)), f"typical '{label}'"),
        ]
        for ax, (image, caption) in zip(axes[:, column], panels, strict=True):
            ax.set_xticks([])
            ax.set_yticks([])
            if image is None:
                ax.text(0.5, 0.5, "image\nnot stored", ha="center", va="center", fontsize=10, color="#333333")
            else:
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(caption, fontsize=10, color="#111111")
    axes[0, 0].set_ylabel("current:\nfarthest", fontsize=11, color="#111111")
    axes[1, 0].set_ylabel("reference:\ntypical", fontsize=11, color="#111111")
    fig.suptitle(
        f"{monitored.name} v{monitored.version}: current images farthest from the reference (embedding distance)\n"
        "above a typical held-out image of the class the model predicted",
        fontsize=11, color="#111111",
    )
    fig.tight_layout(h_pad=1.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, facecolor="white")
    return path


def log_check(settings: Settings, monitored: MonitoredModel, verdict: DriftVerdict, files: dict[str, Path]) -> str:
    """An MLflow run in the monitoring experiment: drift metrics, per-feature p-values, tags, the files."""
    tags = {
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
        if f.p_value is not None:
            metrics[f"p_value.{f.feature}"] = float(f.p_value)
    threshold = verdict.features[0].threshold if verdict.features else verdict.alpha
    params = {"alpha": verdict.alpha, "window": verdict.n_current, "test_threshold": threshold}
    model = (monitored.name, monitored.version)
    return log_check_run(settings, "drift", model, tags=tags, metrics=metrics, files=files.values(), params=params)
