"""Data-slice evaluation: accuracy per class, per image-statistic bin and per metadata value.

One implementation serves ``visionloop evaluate --slices`` and the promotion gate's slice check.

A slice is a value of a slice column: a class (``label``), a bin of an image statistic
(``brightness`` = ``dark`` / ``normal`` / ``bright``, cut at the tertiles of a reference set) or a
value of a metadata column a manifest provides (``source``, ``device``, ``site``).

**Flagging.** Each slice gets a two-sided Wilson score interval for its accuracy at ``confidence``
(shown as whiskers), and a one-sided Fisher exact test of "this slice is less accurate than the rest
of the data". A slice is *flagged* when that p-value is below ``(1 - confidence)`` divided by the
number of slices tested (Bonferroni), so on a model that is equally good everywhere the chance of
any false flag is at most ``1 - confidence``. One error in a small slice of a near-perfect model is
not a flag; a slice that is clearly worse is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import fisher_exact

from visionloop.monitoring.features import IMAGE_STAT_COLUMNS, image_stat_frame

OVERALL = "overall"
MISSING = "missing"
# Names of the low / middle / high tertile of each image statistic.
BIN_NAMES: dict[str, tuple[str, str, str]] = {
    "brightness": ("dark", "normal", "bright"),
    "contrast": ("low_contrast", "normal", "high_contrast"),
    "sharpness": ("blurry", "normal", "sharp"),
    "colourfulness": ("muted", "normal", "colourful"),
    "entropy": ("plain", "normal", "busy"),
    "width": ("narrow", "normal", "wide"),
    "height": ("short", "normal", "tall"),
    "aspect": ("tall", "normal", "wide"),
}
METRIC_COLUMNS = [
    "column",
    "slice",
    "n",
    "correct",
    "accuracy",
    "ci_low",
    "ci_high",
    "overall_accuracy",
    "p_value",
    "flagged",
]
COMPARISON_COLUMNS = [
    "column",
    "slice",
    "n",
    "champion_accuracy",
    "challenger_accuracy",
    "delta",
    "checked",
    "regressed",
]


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; honest for small ``n`` and for 0 % or 100 %."""
    if n <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = correct / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


# --- image-statistic bins ---------------------------------------------------------------------


def tertile_edges(reference: pd.DataFrame, columns: Sequence[str]) -> dict[str, tuple[float, float]]:
    """The 1/3 and 2/3 quantiles of each statistic in ``reference`` (e.g. a model's reference profile)."""
    missing = [c for c in columns if c not in reference.columns]
    if missing:
        raise ValueError(f"reference has no column(s) {missing}")
    return {c: (float(reference[c].quantile(1 / 3)), float(reference[c].quantile(2 / 3))) for c in columns}


def bin_statistics(stats: pd.DataFrame, edges: Mapping[str, tuple[float, float]]) -> pd.DataFrame:
    """Replace each statistic by its tertile name: below the 1/3 edge, above the 2/3 edge, or between.

    Values equal to an edge (up to float32 rounding, 1e-6) count as the middle bin, so a statistic that is
    constant in the reference (the size of a fixed-size data set) puts every image in ``normal``.
    """
    binned = {}
    for column, (low, high) in edges.items():
        names = BIN_NAMES.get(column, ("low", "normal", "high"))
        values = stats[column].to_numpy(dtype=float)
        below = (values < low) & ~np.isclose(values, low, rtol=1e-6, atol=1e-6)
        above = (values > high) & ~np.isclose(values, high, rtol=1e-6, atol=1e-6)
        binned[column] = np.where(below, names[0], np.where(above, names[2], names[1]))
    return pd.DataFrame(binned, index=stats.index)


def build_slice_frame(
    images: Sequence[np.ndarray],
    labels: Sequence[str],
    predictions: Mapping[str, Sequence[str]],
    *,
    stat_columns: Sequence[str] = ("brightness", "contrast", "sharpness"),
    reference: pd.DataFrame | None = None,
    metadata: pd.DataFrame | None = None,
    metadata_columns: Sequence[str] = (),
) -> tuple[pd.DataFrame, list[str]]:
    """One row per image: ``label``, one column per model's predicted label, binned image statistics
    and metadata. Returns the frame and its slice columns (statistics, then metadata).

    Bins are cut at the tertiles of ``reference`` (a frame with the statistics, such as the model's
    reference profile) so slices mean the same thing from one evaluation to the next; without a
    reference they are cut at the tertiles of ``images`` themselves.
    """
    unknown = [c for c in stat_columns if c not in IMAGE_STAT_COLUMNS]
    if unknown:
        raise ValueError(f"unknown image statistic(s) {unknown}; choose from {IMAGE_STAT_COLUMNS}")
    n = len(images)
    if len(labels) != n or any(len(p) != n for p in predictions.values()):
        raise ValueError("images, labels and every prediction column must have the same length")
    frame = pd.DataFrame({"label": pd.Series(labels, dtype=str).to_numpy()})
    for name, predicted in predictions.items():
        frame[name] = pd.Series(predicted, dtype=str).to_numpy()
    if stat_columns:
        stats = image_stat_frame(images)
        edges = tertile_edges(reference if reference is not None else stats, stat_columns)
        frame = pd.concat([frame, bin_statistics(stats, edges)], axis=1)
    meta_columns = list(metadata_columns)
    if meta_columns:
        if metadata is None or len(metadata) != n:
            raise ValueError("metadata must have one row per image")
        absent = [c for c in meta_columns if c not in metadata.columns]
        if absent:
            raise ValueError(f"metadata has no column(s) {absent}")
        for column in meta_columns:
            frame[column] = metadata[column].to_numpy()
    return frame, [*stat_columns, *meta_columns]


# --- metrics per slice --------------------------------------------------------------------------


def _slice_values(frame: pd.DataFrame, column: str) -> pd.Series:
    return frame[column].astype(object).where(frame[column].notna(), MISSING).astype(str)


def slice_metrics(
    frame: pd.DataFrame,
    *,
    label_col: str,
    pred_col: str,
    slice_cols: Sequence[str],
    confidence: float = 0.95,
    per_class: bool = True,
) -> pd.DataFrame:
    """Accuracy per slice with its Wilson interval and a ``flagged`` column (see the module doc).

    The first row is the overall accuracy (``column`` = ``overall``); with ``per_class`` the classes
    (the values of ``label_col``) are slices too.
    """
    correct = (frame[label_col].astype(str) == frame[pred_col].astype(str)).to_numpy()
    n_all = len(frame)
    overall = float(correct.mean()) if n_all else float("nan")
    rows: list[dict[str, Any]] = []
    k_all = int(correct.sum())

    def add(column: str, value: str, mask: np.ndarray) -> None:
        n, k = int(mask.sum()), int(correct[mask].sum())
        low, high = wilson_interval(k, n, confidence)
        rest_n, rest_k = n_all - n, k_all - k
        p_value = 1.0
        if column != OVERALL and n and rest_n:
            p_value = float(fisher_exact([[k, n - k], [rest_k, rest_n - rest_k]], alternative="less")[1])
        rows.append(
            {
                "column": column,
                "slice": value,
                "n": n,
                "correct": k,
                "accuracy": k / n if n else float("nan"),
                "ci_low": low,
                "ci_high": high,
                "overall_accuracy": overall,
                "p_value": p_value,
                "flagged": False,
            }
        )

    add(OVERALL, "all", np.ones(n_all, dtype=bool))
    columns = [label_col, *(c for c in slice_cols if c != label_col)] if per_class else list(slice_cols)
    for column in columns:
        values = _slice_values(frame, column)
        for value in sorted(values.unique(), key=_natural_key):
            add(column, value, (values == value).to_numpy())
    table = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    tested = table["column"] != OVERALL
    threshold = (1 - confidence) / max(1, int(tested.sum()))
    table["flagged"] = tested & (table["p_value"] < threshold)
    return table


def compare_slices(
    frame: pd.DataFrame,
    *,
    label_col: str,
    champion_col: str,
    challenger_col: str,
    slice_cols: Sequence[str],
    tolerance: float,
    min_size: int = 1,
) -> pd.DataFrame:
    """Both models' accuracy on every slice and the change; the gate's slice check.

    A slice is ``checked`` when it has at least ``min_size`` images (smaller ones are too noisy to
    judge: one image moves the accuracy by ``1/n``) and ``regressed`` when checked and the
    challenger's accuracy is more than ``tolerance`` below the champion's.
    """
    label = frame[label_col].astype(str)
    right = {
        "champion": (label == frame[champion_col].astype(str)).to_numpy(),
        "challenger": (label == frame[challenger_col].astype(str)).to_numpy(),
    }
    rows: list[dict[str, Any]] = []
    for column in slice_cols:
        values = _slice_values(frame, column)
        for value in sorted(values.unique(), key=_natural_key):
            mask = (values == value).to_numpy()
            n = int(mask.sum())
            champion, challenger = (
                float(right["champion"][mask].mean()),
                float(right["challenger"][mask].mean()),
            )
            delta = challenger - champion
            checked = n >= min_size
            rows.append(
                {
                    "column": column,
                    "slice": value,
                    "n": n,
                    "champion_accuracy": champion,
                    "challenger_accuracy": challenger,
                    "delta": delta,
                    "checked": checked,
                    "regressed": bool(checked and delta < -tolerance - 1e-12),
                }
            )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _natural_key(value: str) -> tuple[int, Any]:
    return (0, int(value)) if value.isdigit() else (1, value)


# --- plot ---------------------------------------------------------------------------------------


def plot_slices(table: pd.DataFrame, path: Path | str, title: str = "Accuracy per slice") -> Path:
    """Horizontal bars of slice accuracy with Wilson-interval whiskers; flagged slices in red."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = table.iloc[::-1]  # first row at the top
    names = [
        f"{c}={s}" if c != OVERALL else "overall" for c, s in zip(rows["column"], rows["slice"], strict=True)
    ]
    accuracy = rows["accuracy"].to_numpy(dtype=float)
    errors = np.vstack(
        [accuracy - rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float) - accuracy]
    )
    colours = [
        "#c0392b" if f else ("#555555" if c == OVERALL else "#4a90d9")
        for f, c in zip(rows["flagged"], rows["column"], strict=True)
    ]
    fig = Figure(figsize=(6.5, max(2.5, 0.28 * len(rows) + 1.2)))
    ax = fig.subplots()
    positions = np.arange(len(rows))
    ax.barh(positions, accuracy, xerr=np.clip(errors, 0, None), color=colours, ecolor="black", capsize=2)
    for y, (n, a) in enumerate(zip(rows["n"], accuracy, strict=True)):
        ax.text(0.01, y, f"n={n}", va="center", fontsize=7, color="white")
        ax.text(min(a, 1.0) + 0.01, y, f"{a:.3f}", va="center", fontsize=7)
    if len(table):
        ax.axvline(float(table["overall_accuracy"].iloc[0]), color="black", ls="--", lw=0.8, label="overall")
    ax.set(
        yticks=positions,
        yticklabels=names,
        xlim=(0, 1.12),
        xlabel="accuracy (Wilson interval)",
        title=f"{title}\nred: upper bound below overall accuracy",
    )
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
