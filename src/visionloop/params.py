"""The typed form of ``params.yaml``: one pydantic model per section, unknown keys refused.

``params.yaml`` is the single source of defaults: no field here has a default, so a key missing
from the file is an error just like a misspelled one (``extra="forbid"``). DVC keeps reading the
same YAML; the code reads only these typed fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)


class Section(BaseModel):
    """A params.yaml section: every key required, no unknown key, values checked once at load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


AugmentStep = dict[str, dict[str, Any]]  # {AlbumentationsName: kwargs}
Runtime = Literal["torch", "onnx"]  # what runs a served model's forward pass (visionloop.models.onnx_bundle)


class DataParams(Section):
    source: str
    raw_dir: str
    prepared_dir: str
    image_size: PositiveInt
    dataset: Literal["digits", "shapes", "contours"]  # digits or visionloop.training.pipeline.GENERATED
    generated_images: PositiveInt
    channels: Literal[1, 3]
    min_side: PositiveInt
    max_pixels: PositiveInt
    val_fraction: float = Field(ge=0, lt=1)
    test_fraction: float = Field(ge=0, lt=1)


class AugmentParams(Section):
    train: list[AugmentStep]
    eval: list[AugmentStep]


class ModelParams(Section):
    # timm names are checked when the network is built (visionloop.models.backbones): importing timm costs ~5 s
    backbone: str = Field(pattern=r"^(small_cnn|timm:[\w.\-]+)$")
    pretrained: str | None = Field(min_length=1)
    widths: list[int]
    pooling: Literal["avg", "max"]
    embedding_dim: PositiveInt
    dropout: float = Field(ge=0, lt=1)

    @model_validator(mode="after")
    def _hub_needs_timm(self) -> ModelParams:
        if self.pretrained == "hub" and not self.backbone.startswith("timm:"):
            raise ValueError("pretrained: hub downloads timm weights: it needs backbone: timm:<name>")
        return self


Strategy = Literal["full", "fine_tuning", "feature_extraction"]


class TrainParams(Section):
    epochs: PositiveInt
    batch_size: PositiveInt
    lr: PositiveFloat
    warmup_epochs: NonNegativeFloat
    early_stopping_patience: PositiveInt | None
    weight_decay: NonNegativeFloat
    num_workers: NonNegativeInt
    strategy: Strategy
    base: str | None
    fine_tune_lr_factor: PositiveFloat
    fine_tune_blocks: NonNegativeInt
    limit_train_fraction: float = Field(gt=0, le=1)
    origin_weights: dict[str, float]
    devices: PositiveInt
    num_nodes: PositiveInt


class MlflowParams(Section):
    experiment: str
    monitoring_experiment: str
    promotion_experiment: str


class QualityRule(Section):
    metric: str
    threshold: float


class SliceParams(Section):
    image_stats: list[str]
    metadata: list[str]
    min_size: int = Field(ge=1)


class GateShadowParams(Section):
    min_predictions: NonNegativeInt
    max_disagreement: float = Field(ge=0, le=1)


class GateParams(Section):
    metric: str
    margin: float
    class_tolerance: NonNegativeFloat
    slice_tolerance: NonNegativeFloat
    slices: SliceParams
    production_window: NonNegativeInt
    shadow: GateShadowParams


class DiffParams(Section):
    images_per_flip: PositiveInt
    flip_types: PositiveInt


class RegistryParams(Section):
    model_name: str
    min_quality: QualityRule
    gate: GateParams
    lock_timeout_seconds: PositiveFloat
    diff: DiffParams


class CanaryParams(Section):
    window_seconds: PositiveFloat
    max_seconds: PositiveFloat
    min_predictions: PositiveInt
    check_seconds: PositiveFloat
    max_error_rate: float = Field(ge=0, le=1)
    max_latency_ratio: PositiveFloat
    max_confidence_drop: float = Field(ge=0, le=1)
    drift_alpha: float = Field(gt=0, lt=1)
    max_label_shift: float = Field(ge=0, le=1)
    gallery_images: PositiveInt

    @model_validator(mode="after")
    def _window_fits(self) -> CanaryParams:
        if self.max_seconds < self.window_seconds:
            raise ValueError("max_seconds must be at least window_seconds")
        return self


class PromotionParams(Section):
    canary: CanaryParams


class ShadowParams(Section):
    share: float = Field(ge=0, le=1)
    max_queue: PositiveInt


class ServingParams(Section):
    host: str
    port: int = Field(gt=0, lt=65536)
    max_batch: PositiveInt
    max_wait_ms: NonNegativeFloat
    max_payload_bytes: PositiveInt
    max_pixels: PositiveInt
    poll_seconds: PositiveFloat
    token: str | None
    max_images: PositiveInt
    max_request_pixels: PositiveInt
    max_body_bytes: PositiveInt
    allowed_hosts: list[str]
    image_dir: str | None
    log_queue: PositiveInt
    log_writer: Literal["process", "thread"]
    drain_seconds: NonNegativeFloat
    torch_threads: PositiveInt
    runtime: Runtime
    worker_timeout: PositiveInt
    shadow: ShadowParams


class BatchParams(Section):
    batch_size: PositiveInt
    shards: PositiveInt
    num_workers: NonNegativeInt
    part_size: PositiveInt
    log_predictions: bool
    torch_threads: int | None
    runtime: Runtime
    runner: Literal["threads", "dask"]
    dask_address: str | None
    input_dir: str
    output_dir: str


class MonitoringParams(Section):
    window: PositiveInt
    min_window: PositiveInt
    alpha: float = Field(gt=0, lt=1)
    critical_share: float = Field(gt=0, le=1)
    critical_distance: float = Field(gt=0, le=1)
    outlier_images: NonNegativeInt
    label_window: PositiveInt
    min_labels: PositiveInt
    degradation_threshold: NonNegativeFloat
    degradation_critical: NonNegativeFloat
    embedding_components: PositiveInt
    torch_threads: PositiveInt | None
    cron: str


class RetrainParams(Section):
    strategy: Strategy
    epochs: PositiveInt
    origin_weights: dict[str, float]
    cooldown_seconds: NonNegativeFloat
    max_runtime_seconds: PositiveFloat


class SchedulesParams(Section):
    batch_inference_cron: str


class RuleParams(Section):
    """What every sampling rule of the labeling queue has; ``cap_per_hour: null`` means no cap."""

    cap_per_hour: int | None = Field(ge=0)
    weight: NonNegativeFloat


class LowConfidenceRule(RuleParams):
    threshold: float = Field(gt=0, le=1)


class DriftRule(RuleParams):
    quantile: float = Field(gt=0, lt=0.5)


class RandomRule(RuleParams):
    rate: float = Field(ge=0, le=1)


LabelErrorMethod = Literal["prune_by_noise_rate", "confident_joint"]  # see visionloop.labeling.confident_learning


class ReviewParams(Section):
    method: LabelErrorMethod
    folds: int = Field(ge=2)
    C: PositiveFloat
    splits: list[Literal["train", "val", "test"]]
    output: str


class StackParams(Section):
    profile: Literal["embedded", "team"]  # what `visionloop up` starts (visionloop.stack, visionloop.stack_team)
    work_pool: str = Field(min_length=1)


class LabelingParams(Section):
    low_confidence: LowConfidenceRule
    disagreement: RuleParams
    drift: DriftRule
    random: RandomRule
    scan_overlap_seconds: NonNegativeFloat
    lease_seconds: PositiveFloat
    review: ReviewParams


class StreamParams(Section):
    fps: PositiveFloat
    batch_size: PositiveInt
    max_latency_ms: PositiveFloat
    reconnect_initial_s: PositiveFloat
    reconnect_max_s: PositiveFloat
    reconnect_attempts: NonNegativeInt
    live_probe_ms: PositiveFloat
    max_frame_bytes: PositiveInt
    log_predictions: bool
    annotate_min_side: PositiveInt


class Params(Section):
    """The whole ``params.yaml``."""

    seed: int
    data: DataParams
    augment: AugmentParams
    model: ModelParams
    train: TrainParams
    mlflow: MlflowParams
    registry: RegistryParams
    promotion: PromotionParams
    serving: ServingParams
    batch: BatchParams
    monitoring: MonitoringParams
    retrain: RetrainParams
    schedules: SchedulesParams
    labeling: LabelingParams
    stack: StackParams
    stream: StreamParams


class ParamsError(ValueError):
    """``params.yaml`` does not match :class:`Params`: names the file, each key path and what was expected."""


def validate_params(raw: dict[str, Any], source: Path | str) -> Params:
    """Typed params from the YAML mapping, or a :class:`ParamsError` listing every bad key."""
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            if item["type"] == "extra_forbidden":
                expected = "an unknown key (misspelled?); remove it or fix its name"
            elif item["type"] == "missing":
                expected = "a required key that is missing"
            else:
                expected = f"{item['msg']} (got {item.get('input')!r})"
            problems.append(f"  {key}: {expected}")
        raise ParamsError(f"{source} is not valid:\n" + "\n".join(problems)) from None
