"""The seams between capabilities, each in one documented place.

Every object that crosses from one part of the loop to another is defined here: who writes it,
who reads it, and its form. A change of form bumps ``SEAM_VERSION``.

1. ``DataVersion``      written by ingestion/DVC; read by training, registry lineage, retraining.
2. Model bundle         written at registration; read by serving, monitoring, retraining, promotion.
                        Its artifact layout is ``BUNDLE_FILES``; tags on the model version are ``LINEAGE_TAGS``.
3. Reference profile    per-image features of the training data (``visionloop.monitoring.features``), stored in
                        the bundle as ``reference_profile.parquet``; columns ``features.feature_columns()``.
4. ``PredictionRecord`` written by REST and batch inference; read by monitoring, labeling, retraining.
5. ``DriftVerdict``     written by monitoring; read by the alert and the retrain flow.
6. Alert event         a Prefect event ``DRIFT_EVENT`` on resource ``model_resource_id(name)``, emitted only
                        when ``healing`` allows a retrain (else ``DRIFT_SUPPRESSED_EVENT``); every alert is
                        also a row of the ``alerts`` table (``visionloop.healing.alerts``).
7. ``PromotionRecord``  written by the gate and rollback; read by ``registry history`` and serving.
8. ``DiffSummary``      a prediction-diff gallery's ``diff.json``: written by ``promotion.diff_gallery``; read by
                        the promotion record (``flips``), the review page and whoever lists what a model changed.
9. ``CanaryState``      a canary in progress: written to the registry by ``promotion.canary``; followed by serving
                        (``serving.canary``), whose per-process ``CanaryCounters`` the canary's watch reads back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

SEAM_VERSION = 4

# --- 1. data version -------------------------------------------------------------------------


@dataclass(frozen=True)
class DataVersion:
    """Exactly the images a model saw: DVC's hash of the raw-data output and the git commit naming it."""

    dvc_hash: str  # DVC md5 of the raw-data directory (ends in ".dir")
    path: str  # the DVC-tracked output, relative to the project root
    git_commit: str  # commit of dvc.lock / .dvc file that names the hash ("unknown" outside git)
    n_images: int = 0

    def as_tags(self) -> dict[str, str]:
        return {"data_version": self.dvc_hash, "data_path": self.path, "data_git_commit": self.git_commit}


# The ``.dvc`` file of a model's data version, an artifact of its training run: with the DVC remote, what
# ``visionloop data checkout`` restores the images from (``visionloop.data.restore``).
DATA_VERSION_FILE = "data_version.dvc"


# --- 2. model bundle ---------------------------------------------------------------------------

# Artifact paths inside the MLflow run that produced a model version.
BUNDLE_FILES = {
    "model": "model",  # MLflow pytorch flavor, pt2 (torch.export) — what `mlflow models serve` can serve
    "state_dict": "bundle/state_dict.pt",  # torch.load(weights_only=True) — for fine-tuning
    "config": "bundle/model_config.json",  # architecture kwargs to rebuild the LightningModule
    "eval_transform": "bundle/eval_transform.json",  # albumentations A.to_dict of the eval pipeline
    "classes": "bundle/classes.json",  # list of class names, index = output unit
    "reference_profile": "bundle/reference_profile.parquet",  # seam 3
    "embedding_reduction": "bundle/embedding_reduction.json",  # PCA fitted on the reference embeddings
    "metrics": "bundle/metrics.json",  # test metrics at training time (per class too)
    "test_set": "bundle/test_set",  # the held-out test split (manifest.csv + images): the frozen gate set
    "onnx": "bundle/model.onnx",  # the network for ONNX Runtime (models.onnx_bundle), stored at registration
    "onnx_parity": "bundle/onnx_parity.json",  # the export's parity with PyTorch on the gate set
}

# Tags on every registered model version.
LINEAGE_TAGS = ("git_commit", "data_version", "params_hash", "run_id", "base_model", "strategy")

CHAMPION = "champion"
CHALLENGER = "challenger"
CANARY = "canary"  # the version answering a share of /predict (``CanaryState``), beside the champion

# --- 4. prediction log -------------------------------------------------------------------------


@dataclass
class PredictionRecord:
    """One prediction, as stored by ``visionloop.store.predlog`` (one row, features flattened)."""

    id: str
    created_at: datetime
    model_name: str
    model_version: str
    label: str
    confidence: float
    probabilities: dict[str, float]
    features: dict[str, float]  # image statistics + reduced embedding (see visionloop.monitoring.features)
    image_path: str | None  # stored copy of the input, for labeling and retraining
    source: str = "rest"  # rest | batch | demo | stream
    feedback_label: str | None = None
    feedback_at: datetime | None = None
    stream_id: str | None = None  # source "stream": which stream the frame came from (visionloop.streaming)
    frame_ts: float | None = None  # and its time in that stream, seconds


# --- 5. drift verdict --------------------------------------------------------------------------

Severity = Literal["none", "warning", "critical"]


@dataclass
class FeatureTest:
    feature: str
    test: str  # e.g. "ks", "chisquare"
    statistic: float
    p_value: float | None
    threshold: float  # the corrected per-feature threshold on the p-value
    drifted: bool


@dataclass
class DriftVerdict:
    drift: bool
    severity: Severity
    share_drifted: float
    features: list[FeatureTest]
    alpha: float  # family-wise false-alarm rate
    n_reference: int
    n_current: int
    model_name: str | None = None
    model_version: str | None = None
    window_start: str | None = None
    window_end: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["drifted_features"] = self.drifted_features
        return data

    def summary(self) -> dict[str, Any]:
        """The alert payload: small enough for an event, enough to decide on."""
        return {
            "drift": self.drift,
            "severity": self.severity,
            "share_drifted": round(self.share_drifted, 4),
            "drifted_features": self.drifted_features,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "n_current": self.n_current,
            "created_at": self.created_at,
        }


# --- 6. alert event ----------------------------------------------------------------------------

DRIFT_EVENT = "visionloop.drift.detected"  # payload: DriftVerdict.summary() + alert_id, action, reason
DRIFT_SUPPRESSED_EVENT = "visionloop.drift.suppressed"  # recorded alert that started no retrain (cooldown)


def model_resource_id(model_name: str) -> str:
    return f"visionloop.training.model.{model_name}"


# --- 7. promotion record -----------------------------------------------------------------------

Decision = Literal[
    "promoted", "refused", "rollback", "initial", "assigned",  # assigned: by hand, no gate
    "canary", "canary_rollback",  # a canary started (champion unchanged); a canary ended without promoting
    "deferred",  # the gate waits for the challenger's shadow predictions (registry.gate.shadow); nothing changed
]


@dataclass
class PromotionRecord:
    model_name: str
    decision: Decision
    from_version: str | None  # champion before
    to_version: str | None  # champion after (== from_version when refused)
    candidate_version: str | None
    reason: str
    trigger: str  # who asked: "cli", "flow:promote", "flow:retrain", "rollback", ...
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # {"champion": {...}, "challenger": {...}}
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    flips: dict[str, int] = field(default_factory=dict)  # the gate's prediction diff: DiffSummary.totals(); {} if none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- 8. prediction diff ------------------------------------------------------------------------


@dataclass
class FlipGroup:
    """The images whose answer went from ``before`` (model A) to ``after`` (model B)."""

    flip: str  # "before→after"
    before: str
    after: str
    count: int
    fixed: int  # of them, with a known label that B gets right and A got wrong
    broken: int  # ... that A got right and B gets wrong


@dataclass
class DiffSummary:
    """What changes between two models on the same images (``diff.json`` of a diff gallery).

    Written by ``visionloop.promotion.diff_gallery`` (every gate decision, ``visionloop diff``, any caller
    of ``diff_models``); read by the promotion record (``totals``), the review page and the demo.
    """

    model_a: str  # e.g. "digits-cnn v1": whose answers are ``before``
    model_b: str
    title: str  # what compared them, e.g. "promotion v1→v2: refused"
    n_images: int
    n_labeled: int  # images with a known true label
    n_flipped: int  # images whose predicted class differs
    fixed: int
    broken: int
    groups: list[FlipGroup]  # one per flip type, most frequent first
    folder: str | None = None  # where diff.html / diff.png / diff.json were written
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def totals(self) -> dict[str, int]:
        return {"images": self.n_images, "flipped": self.n_flipped, "fixed": self.fixed, "broken": self.broken}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffSummary:
        return cls(**{**data, "groups": [FlipGroup(**group) for group in data["groups"]]})


# --- 9. canary ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryState:
    """A canary in progress: ``version`` answers ``share`` of /predict requests beside ``champion``.

    Kept in the registry (``models.registry.set_canary``: the ``canary`` alias and a tag of the registered
    model holding this as JSON) so every serving process follows it and any process can watch it.
    """

    version: str  # the challenger version under canary
    champion: str  # the champion when it started: rows of this version are the comparison arm
    share: float  # 0..1 of requests answered by ``version``
    started_at: str  # UTC, ISO 8601: the window starts here
    trigger: str  # who started it
    gated: bool  # the offline gate passed it first (False: started with --no-gate, the canary alone decides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> str:
        """Names this canary (its version and start) in file names and sticky draws; unique per canary."""
        return f"v{self.version}-{int(datetime.fromisoformat(self.started_at).timestamp() * 1000)}"


@dataclass
class ArmCounters:
    """What one serving process counted for one arm of a canary (``champion`` or ``canary``)."""

    requests: int = 0  # /predict requests answered by this arm
    failed: int = 0  # canary arm: requests whose challenger forward failed (answered by the champion instead)
    latency_s: float = 0.0  # sum of server-side answer times, seconds

    def add(self, other: ArmCounters) -> None:
        self.requests += other.requests
        self.failed += other.failed
        self.latency_s += other.latency_s

    @property
    def mean_latency_s(self) -> float | None:
        return self.latency_s / self.requests if self.requests else None


CanaryCounters = dict[str, ArmCounters]  # arm ("champion" | "canary") → counters
