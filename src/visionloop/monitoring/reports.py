"""What a drift check leaves behind for people: the report folder and the MLflow run.

Under ``<state>/monitoring/<UTC timestamp>/`` (``outputs.new_output_dir``): Evidently's HTML report
(``report.html``), the JSON verdict (``verdict.json``), the images behind the verdict (``images.png``:
the current images farthest from the reference in embedding space, each above a typical reference image
of the class the model predicted for it) and ``index.html``, which links the report and shows the
verdict and the images. ``log_check`` records the same files and the verdict's numbers in MLflow.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from visionloop.config import Settings
from visionloop.contracts import DriftVerdict
from visionloop.data.images import load_image
from visionloop.monitoring.drift import verdict_json
from visionloop.monitoring.evidently_report import Snapshot, save_report_html
from visionloop.monitoring.features import CONFIDENCE_COLUMN, EMBEDDING_PREFIX, LABEL_COLUMN
from visionloop.monitoring.monitored import MonitoredModel
from visionloop.monitoring.outputs import log_check_run


def write_outputs(
    settings: Settings,
    monitored: MonitoredModel,
    frame: pd.DataFrame,
    verdict: DriftVerdict,
    snapshot: Snapshot,
    out_dir: Path,
) -> dict[str, Path]:
    """Evidently's report, the JSON verdict, the images behind the verdict and an index page, in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"report": save_report_html(snapshot, out_dir / "report.html")}
    files["verdict"] = out_dir / "verdict.json"
    files["verdict"].write_text(verdict_json(verdict) + "\n")
    k = settings.params.monitoring.outlier_images
    images = images_behind_verdict(settings, monitored, frame, out_dir / "images.png", k=k)
    if images is not None:
        files["images"] = images
    files["index"] = write_index(verdict, out_dir / "index.html", has_images=images is not None)
    return files


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


def images_behind_verdict(
    settings: Settings, monitored: MonitoredModel, frame: pd.DataFrame, path: Path, k: int
) -> Path | None:
    """A PNG grid: the ``k`` current images farthest from the reference (top), each above a typical
    reference image of the class the model predicted for it (bottom). None without embedding features.
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

    fig = Figure(figsize=(1.45 * len(outliers) + 0.6, 4.2))
    axes = fig.subplots(2, len(outliers), squeeze=False)
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
    return path


def write_index(verdict: DriftVerdict, path: Path, *, has_images: bool) -> Path:
    """A small page beside Evidently's report: the verdict, the per-feature tests and the images."""
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
    title = f"Drift check: {esc(str(verdict.model_name))} v{esc(str(verdict.model_version))}"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 2px 10px; border-bottom: 1px solid #ddd; }}
tr.drifted {{ background: #fde2e0; }} .verdict {{ font-size: 1.2em; }}
img {{ max-width: 100%; border: 1px solid #ccc; }}
</style></head><body>
<h1>{title}</h1>
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
