"""The prediction-diff gallery: which images change their answer between two models, for a person to look at.

A gate decision reports a few numbers; what a promotion really changes is a set of images whose predicted
class flips. Given two models' predictions on the same images (true labels where known), this module
finds those flips, groups them by flip type (``A→B``: model A's answer → model B's answer, most
frequent first) and writes into one folder:

* ``diff.html`` — a static page (inline CSS, images embedded as PNG ``data:`` URIs, so it also shows
  inside MLflow's sandboxed artifact view): totals on top, every flip type with its counts, and up
  to ``registry.diff.images_per_flip`` images for each of the ``registry.diff.flip_types`` most
  frequent types, each with both answers, both confidences and the true label where known;
* ``diff.png`` — the same groups as one montage (``diff_render``);
* ``diff.json`` — ``contracts.DiffSummary``: flip counts per type, fixed/broken counts.

Who calls what:

* the promotion gate (``promote._evaluate``) builds a ``PredictionDiff`` from the predictions it made
  anyway (``diff.compare_predictions``; nothing is predicted twice) and ``audit.record_decision`` writes it
  with ``write_gallery`` and logs the three files to the decision's MLflow run;
* ``visionloop diff MODEL_A MODEL_B [IMAGES]`` and any other caller with two loaded models — e.g. the
  canary, to list what a rolled-back challenger changed — call ``diff_models(settings, a, b, images,
  labels)``, which predicts with both, writes the gallery and returns its ``DiffSummary``;
* the serving app lists the galleries (``galleries``) and serves their files (``gallery_file``),
  from ``<state dir>/reports/diffs/`` only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from visionloop.config import Settings
from visionloop.contracts import DiffSummary
from visionloop.models.bundle import ServableModel
from visionloop.monitoring.outputs import new_stamped_dir
from visionloop.promotion.diff import PredictionDiff, compare_predictions
from visionloop.promotion.diff_render import render_html, render_montage

GALLERY_FILES = ("diff.html", "diff.png", "diff.json")  # what every gallery folder holds
PREDICT_BATCH = 256  # images per forward pass (memory, not results)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")  # a gallery folder's name: what a request may name


def model_label(model: ServableModel) -> str:
    """How a model is named in a gallery: ``NAME vVERSION`` for a registered version, the folder name otherwise."""
    return model.name if model.version == "local" else f"{model.name} v{model.version}"


def predict_probabilities(model: ServableModel, images: list[np.ndarray]) -> np.ndarray:
    """N×C softmax of ``model`` on ``images``, in batches."""
    chunks = [model.predict(images[i : i + PREDICT_BATCH]).probabilities for i in range(0, len(images), PREDICT_BATCH)]
    return np.concatenate(chunks) if chunks else np.zeros((0, len(model.classes)), np.float32)


def diff_models(
    settings: Settings,
    model_a: ServableModel,
    model_b: ServableModel,
    images: list[np.ndarray],
    labels: Sequence[str | None],
    out_dir: Path | None = None,
    title: str = "",
) -> DiffSummary:
    """Predict ``images`` with both models and write the gallery; its ``DiffSummary`` (``folder``: where).

    The one call for a caller holding two models, e.g. the canary after a rollback listing what the
    challenger changed. ``out_dir`` defaults to a new folder under ``<state dir>/reports/diffs/``.
    """
    if model_a.channels != model_b.channels:
        raise ValueError(f"{model_label(model_a)} takes {model_a.channels}-channel images and "
                         f"{model_label(model_b)} {model_b.channels}-channel ones: they cannot see the same images")
    names = (model_label(model_a), model_label(model_b))
    diff = compare_predictions(images, labels, (list(model_a.classes), predict_probabilities(model_a, images)),
                               (list(model_b.classes), predict_probabilities(model_b, images)), names, title)
    return write_gallery(settings, diff, out_dir or new_gallery_dir(settings, *names))


def write_gallery(settings: Settings, diff: PredictionDiff, folder: Path) -> DiffSummary:
    """Write ``diff.html``, ``diff.png`` and ``diff.json`` into ``folder`` (created); the summary written."""
    folder.mkdir(parents=True, exist_ok=True)
    summary = diff.summary(folder)
    shown_params = settings.params.registry.diff
    shown = [(group, diff.shown(group, shown_params.images_per_flip)) for group in
             summary.groups[: shown_params.flip_types]]
    (folder / "diff.html").write_text(render_html(diff, summary, shown), encoding="utf-8")
    render_montage(diff, summary, shown).save(folder / "diff.png")
    (folder / "diff.json").write_text(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    return summary


# --- where galleries live ---------------------------------------------------------------------------------


def reports_root(settings: Settings) -> Path:
    """``<state dir>/reports/diffs``: every gallery of the project, one folder each (the only place served)."""
    return settings.state_dir / "reports" / "diffs"


def new_gallery_dir(settings: Settings, model_a: str, model_b: str) -> Path:
    """A fresh ``<UTC timestamp>-<A>-to-<B>`` folder under ``reports_root`` (suffixed if the name is taken)."""
    return new_stamped_dir(reports_root(settings), f"{_slug(model_a)}-to-{_slug(model_b)}"[:80])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def galleries(settings: Settings) -> list[tuple[str, DiffSummary]]:
    """Every written gallery as (folder name, summary), newest first; folders without a readable summary skipped."""
    root = reports_root(settings)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        summary_file = folder / "diff.json"
        if not (_NAME.match(folder.name) and summary_file.is_file()):
            continue
        try:
            found.append((folder.name, DiffSummary.from_dict(json.loads(summary_file.read_text(encoding="utf-8")))))
        except (ValueError, TypeError, KeyError):  # a torn or foreign file: not a gallery
            continue
    found.sort(key=lambda item: (item[1].created_at, item[0]), reverse=True)
    return found


def gallery_file(settings: Settings, name: str, file: str) -> Path | None:
    """The file ``file`` of the gallery folder ``name`` (``latest``: the newest); None unless both name one that
    exists. Both come from a request: they are matched against the listing, never joined to a path unchecked."""
    if file not in GALLERY_FILES:
        return None
    listed = [folder for folder, _ in galleries(settings)]
    if name == "latest":
        name = listed[0] if listed else ""
    if name not in listed:
        return None
    path = reports_root(settings) / name / file
    return path if path.is_file() else None
