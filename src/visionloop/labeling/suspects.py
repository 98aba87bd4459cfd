"""The prepared data's suspected label errors, found with a served model's embeddings, and their table.

``suspects_for_prepared`` embeds every prepared image (the splits of ``labeling.review.splits``) with
the model and runs the confident-learning finder (``labeling.confident_learning``) on the embeddings.
The table is saved as CSV (``labeling.review.output``) with a JSON beside it naming the model version
and the manifest it was computed from, so the review page recomputes only when either changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from visionloop.data.images import load_image
from visionloop.data.manifest import read_manifest
from visionloop.labeling.confident_learning import ISSUE_COLUMNS, find_label_issues, ordered_classes
from visionloop.monitoring.features import predict_in_chunks

if TYPE_CHECKING:
    from visionloop.config import Settings
    from visionloop.models.bundle import ServableModel

SUSPECT_COLUMNS = [
    "sha256",
    "path",
    "split",
    "source_path",
    *ISSUE_COLUMNS[1:],
    "model_name",
    "model_version",
]
# read back as text: labels like "0" and version numbers must not turn into numbers
_TEXT_COLUMNS = ("sha256", "path", "split", "source_path", "given_label", "suggested_label", "model_version")


def prepared_dir(settings: Settings) -> Path:
    return settings.path(settings.params.data.prepared_dir)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def suspects_for_prepared(
    settings: Settings, model: ServableModel, splits: Sequence[str] | None = None
) -> pd.DataFrame:
    """The prepared data's suspected label errors, from ``model``'s embeddings (``SUSPECT_COLUMNS``)."""
    review = settings.params.labeling.review
    manifest = read_manifest(prepared_dir(settings))
    wanted = tuple(splits) if splits is not None else tuple(review.splits)
    manifest = manifest[manifest["split"].isin(wanted)].reset_index(drop=True)
    if manifest.empty:
        empty = pd.DataFrame(columns=SUSPECT_COLUMNS)
        empty.attrs.update(model_name=model.name, model_version=str(model.version), classes=[], images=0)
        return empty
    images = [load_image(p) for p in manifest["abs_path"]]
    embeddings = predict_in_chunks(model, images).embeddings
    classes = ordered_classes(manifest["label"])
    issues = find_label_issues(
        embeddings,
        manifest["label"].tolist(),
        classes=classes,
        inputs="embeddings",
        method=review.method,
        folds=review.folds,
        seed=settings.seed,
        C=review.C,
    )
    rows = manifest.iloc[issues["position"].to_numpy()].reset_index(drop=True)
    frame = pd.concat([rows[["sha256", "path", "split", "source_path"]], issues.drop(columns="position")], axis=1)
    frame["model_name"] = model.name
    frame["model_version"] = str(model.version)
    frame = frame[SUSPECT_COLUMNS].copy()
    frame.attrs.update(
        issues.attrs, classes=classes, model_name=model.name, model_version=str(model.version), images=len(manifest)
    )
    return frame


def _meta_path(output: Path) -> Path:
    return output.with_suffix(".json")


def save_suspects(settings: Settings, frame: pd.DataFrame, output: Path | None = None) -> Path:
    """Write the table (CSV) and what it was computed from (JSON beside it: model, manifest hash)."""
    review = settings.params.labeling.review
    target = output or settings.path(review.output)
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(target, index=False)
    manifest = prepared_dir(settings) / "manifest.csv"
    meta = {
        "model_name": frame.attrs.get("model_name"),
        "model_version": frame.attrs.get("model_version"),
        "manifest_sha256": file_sha256(manifest) if manifest.exists() else None,
        "method": review.method,
        "folds": review.folds,
        "classes": frame.attrs.get("classes", []),
        "thresholds": frame.attrs.get("thresholds", {}),
        "images": frame.attrs.get("images"),  # how many images the review looked at: the review page says so
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    frame.attrs["created_at"] = meta["created_at"]
    _meta_path(target).write_text(json.dumps(meta, indent=2) + "\n")
    return target


def load_or_compute_suspects(settings: Settings, model: ServableModel, force: bool = False) -> pd.DataFrame:
    """The saved table when it was computed by this model version on this manifest; else compute and save."""
    review = settings.params.labeling.review
    target = settings.path(review.output)
    meta_path = _meta_path(target)
    manifest = prepared_dir(settings) / "manifest.csv"
    if not force and target.exists() and meta_path.exists() and manifest.exists():
        meta = json.loads(meta_path.read_text())
        if (
            meta.get("model_name") == model.name
            and meta.get("model_version") == str(model.version)
            and meta.get("manifest_sha256") == file_sha256(manifest)
            and meta.get("method") == review.method
        ):
            frame = pd.read_csv(target, dtype=dict.fromkeys(_TEXT_COLUMNS, str))
            frame.attrs.update(meta)
            return frame
    frame = suspects_for_prepared(settings, model)
    save_suspects(settings, frame, target)
    return frame
