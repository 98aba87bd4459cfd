"""The prediction diff itself: which images change their answer between two models, in memory.

Pure (numpy, no model, no files): ``compare_predictions`` turns two sets of answers on the same images
into a ``PredictionDiff``; its ``summary`` is the ``contracts.DiffSummary`` that ``diff_gallery`` writes
as ``diff.json`` and ``diff_render`` draws. The promotion gate builds one from the predictions it made
anyway, so nothing is predicted twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionloop.contracts import DiffSummary, FlipGroup


@dataclass(frozen=True)
class Flip:
    """One image whose predicted class differs: model A said ``before``, model B says ``after``."""

    index: int  # position in the images compared
    before: str
    after: str
    confidence_before: float
    confidence_after: float
    truth: str | None  # the true label, where known

    @property
    def kind(self) -> str:
        return f"{self.before}→{self.after}"

    @property
    def outcome(self) -> str:
        """``fixed`` (B is right, A was wrong), ``broken`` (A was right), ``both wrong`` or ``unlabeled``."""
        if self.truth is None:
            return "unlabeled"
        if self.truth == self.after:
            return "fixed"
        return "broken" if self.truth == self.before else "both wrong"


@dataclass
class PredictionDiff:
    """Two models' answers on the same images, reduced to the images whose answer flips (in memory, unwritten)."""

    model_a: str  # how the models are named on the page, e.g. "digits-cnn v1"
    model_b: str
    images: list[np.ndarray]
    labels: list[str | None]
    flips: list[Flip]
    title: str = ""  # what compared them, e.g. "promotion v1→v2: refused" (default: "A vs B")

    def summary(self, folder: Path | None = None) -> DiffSummary:
        """Counts per flip type, most frequent first (ties: by name), and the fixed/broken totals."""
        by_kind: dict[str, list[Flip]] = {}
        for flip in self.flips:
            by_kind.setdefault(flip.kind, []).append(flip)
        groups = [
            FlipGroup(kind, members[0].before, members[0].after, len(members),
                      sum(flip.outcome == "fixed" for flip in members),
                      sum(flip.outcome == "broken" for flip in members))
            for kind, members in sorted(by_kind.items(), key=lambda item: (-len(item[1]), item[0]))
        ]
        return DiffSummary(
            model_a=self.model_a,
            model_b=self.model_b,
            title=self.title or f"{self.model_a} vs {self.model_b}",
            n_images=len(self.images),
            n_labeled=sum(label is not None for label in self.labels),
            n_flipped=len(self.flips),
            fixed=sum(group.fixed for group in groups),
            broken=sum(group.broken for group in groups),
            groups=groups,
            folder=str(folder) if folder is not None else None,
        )

    def shown(self, group: FlipGroup, limit: int) -> list[Flip]:
        """The images shown for a flip type: broken known labels first, then fixed, then the rest;
        each by model B's confidence, surest first (a confident change says most)."""
        order = {"broken": 0, "fixed": 1, "both wrong": 2, "unlabeled": 3}
        members = [flip for flip in self.flips if flip.kind == group.flip]
        return sorted(members, key=lambda flip: (order[flip.outcome], -flip.confidence_after))[:limit]


def compare_predictions(
    images: list[np.ndarray],
    labels: Sequence[str | None],
    answers_a: tuple[list[str], np.ndarray],
    answers_b: tuple[list[str], np.ndarray],
    names: tuple[str, str],
    title: str = "",
) -> PredictionDiff:
    """The flips between two sets of answers, each ``(classes, N×C probabilities)`` on the same ``images``.

    Classes are compared by name, so two models with different class lists (a challenger that learned
    a new class) still compare. ``labels`` holds the true label of each image, None where unknown.
    """
    (classes_a, probabilities_a), (classes_b, probabilities_b) = answers_a, answers_b
    if not len(images) == len(labels) == len(probabilities_a) == len(probabilities_b):
        raise ValueError(f"{len(images)} images, {len(labels)} labels, {len(probabilities_a)} and "
                         f"{len(probabilities_b)} answers: each image needs one of each")
    index_a, index_b = probabilities_a.argmax(axis=1), probabilities_b.argmax(axis=1)
    flips = [
        Flip(i, classes_a[a], classes_b[b], float(probabilities_a[i, a]), float(probabilities_b[i, b]),
             None if labels[i] is None else str(labels[i]))
        for i, (a, b) in enumerate(zip(index_a, index_b, strict=True))
        if classes_a[a] != classes_b[b]
    ]
    return PredictionDiff(names[0], names[1], list(images), [None if x is None else str(x) for x in labels],
                          flips, title)


def describe_flips(totals: dict[str, int]) -> str | None:
    """``12 of 270 images change their answer (3 fixed, 7 broke a known label)``, from ``DiffSummary.totals()``
    (a promotion record's ``flips``: the gate set for a gate decision); None for a decision without a diff."""
    if not totals:
        return None
    return (f"{totals['flipped']} of {totals['images']} images change their answer "
            f"({totals['fixed']} fixed, {totals['broken']} broke a known label)")
