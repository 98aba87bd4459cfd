"""The data report: the numbers a person checks before training, as JSON and as a chart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from visionloop.data.ingest import IngestResult
from visionloop.data.manifest import SPLITS


def build_report(result: IngestResult, splits: dict[str, str], unsplit: list[str]) -> dict[str, Any]:
    """Balance, split sizes, what was refused and why, conversions, duplicates and image sizes."""
    per_class = Counter(r.label for r in result.records)
    per_split: dict[str, dict[str, int]] = {s: dict.fromkeys(result.classes, 0) for s in SPLITS}
    for record in result.records:
        per_split[splits[record.sha256]][record.label] += 1
    conversions = Counter(r.converted_from for r in result.records if r.converted_from)
    counts = [per_class[c] for c in result.classes]
    sizes = Counter(f"{r.width}x{r.height}" for r in result.records)
    return {
        "total_files": result.n_files,
        "n_images": len(result.records),
        "n_quarantined": len(result.quarantined),
        "classes": result.classes,
        "counts_per_class": {c: per_class[c] for c in result.classes},
        "counts_per_split": {s: sum(per_split[s].values()) for s in SPLITS},
        "counts_per_class_per_split": per_split,
        "imbalance_ratio": round(max(counts) / min(counts), 4) if counts else None,
        "classes_too_small_to_split": unsplit,
        "quarantined_by_reason": dict(sorted(Counter(q.code for q in result.quarantined).items())),
        "conversions": dict(sorted(conversions.items())),
        "duplicates": {
            "count": len(result.duplicates),
            "label_conflicts": sum(d["label"] != d["duplicate_of_label"] for d in result.duplicates),
            "items": result.duplicates,
        },
        "image_sizes": dict(sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))),
        "meta_columns": result.meta_columns,
    }


def plot_split_counts(report: dict[str, Any], path: Path) -> None:
    """A grouped bar chart of images per class and split (people would rather look than read JSON)."""
    classes = report["classes"]
    per_split = report["counts_per_class_per_split"]
    x = np.arange(len(classes))
    width = 0.8 / len(SPLITS)
    fig = Figure(figsize=(max(6.0, 0.5 * len(classes) + 2), 4))  # no pyplot: no GUI backend, no global state
    ax = fig.subplots()
    for i, split in enumerate(SPLITS):
        ax.bar(x + (i - 1) * width, [per_split[split][c] for c in classes], width, label=split)
    ax.set_xticks(x, classes, rotation=90 if len(classes) > 20 else 0)
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ratio = report["imbalance_ratio"]
    ax.set_title(
        f"{report['n_images']} images, {report['n_quarantined']} quarantined"
        + (f", imbalance {ratio:.2f}" if ratio is not None else "")
    )
    tallest = max((per_split[s][c] for s in SPLITS for c in classes), default=0)
    ax.set_ylim(0, max(1, tallest) * 1.25)  # room for the legend above the bars
    ax.legend(loc="upper center", ncols=len(SPLITS))
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
