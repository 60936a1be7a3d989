"""Training job requests and responses."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.lr_policy import POLICIES
from shared.networks import Layer, NetworkName
from shared.schemas.common import StatusEntry

Solver = Literal["sgd", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "adamw"]
# what best_metric and early stopping may follow: classification's, detection's, segmentation's
ValMetric = Literal[
    "val.loss",
    "val.accuracy",
    "val.top5",
    "val.map",
    "val.map_50",
    "val.map_75",
    "val.miou",
    "val.pixel_accuracy",
]
LRPolicy = Literal[
    "fixed", "step", "multistep", "exp", "inv", "poly", "sigmoid", "cosine", "onecycle"
]
assert set(POLICIES) == set(get_args(LRPolicy))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StandardNetwork(_Strict):
    """A built-in network: DIGITS's three or a torchvision classifier, with random weights."""

    kind: Literal["standard"] = "standard"
    name: NetworkName
    backbone_job_id: uuid.UUID | None = Field(
        default=None,
        exclude_if=lambda v: v is None,  # requests and info.json without it stay as they were
        description="Detection and segmentation: start the backbone from this classification "
        "job's best checkpoint (its network must be the backbone's: resnet18 for "
        "fcos_resnet18_fpn, resnet50 for the ResNet-50 ones, mobilenet_v3_large for the rest)",
    )
    backbone_model_id: uuid.UUID | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="Detection and segmentation: start the backbone from this uploaded "
        "pretrained model instead (GET /pretrained-models; the same network rule)",
    )

    @model_validator(mode="after")
    def _one_backbone(self) -> StandardNetwork:
        if self.backbone_job_id is not None and self.backbone_model_id is not None:
            raise ValueError("give backbone_job_id or backbone_model_id, not both")
        return self


class CustomNetwork(_Strict):
    """A declarative list of layers, checked against the dataset before the job is queued."""

    kind: Literal["custom"] = "custom"
    layers: list[Layer] = Field(min_length=1, max_length=200)


class PreviousNetwork(_Strict):
    """Start from another job's checkpoint (fine-tuning); a new head when the classes differ."""

    kind: Literal["previous"] = "previous"
    job_id: uuid.UUID
    checkpoint: Literal["best", "last"] | int = Field(
        default="last", description="`best`, `last`, or an epoch number"
    )


class PretrainedNetwork(_Strict):
    """Start from an uploaded (or converted) pretrained model; a new head when classes differ."""

    kind: Literal["pretrained"] = "pretrained"
    model_id: uuid.UUID


NetworkSpec = Annotated[
    StandardNetwork | CustomNetwork | PreviousNetwork | PretrainedNetwork,
    Field(discriminator="kind"),
]


class LRParams(_Strict):
    """LR-policy parameters in DIGITS's units (percent of training); omitted = DIGITS default."""

    step_size: float | None = Field(
        default=None, gt=0, le=100, description="step: 33, sigmoid: 50 (% of training)"
    )
    gamma: float | None = Field(
        default=None, gt=0, description="step 0.1, multistep 0.5, exp 0.95, inv 0.1, sigmoid 0.1"
    )
    step_values: list[float] | None = Field(default=None, description="multistep: [50, 85] (%)")
    power: float | None = Field(default=None, gt=0, description="inv 0.5, poly 3")
    warmup_pct: float = Field(
        default=0.0, ge=0, lt=100, description="linear warm-up over this % of training"
    )
    min_lr_pct: float = Field(
        default=0.0, ge=0, le=100, description="cosine: floor as % of the base rate"
    )

    @field_validator("step_values")
    @classmethod
    def _sorted_percent(cls, values: list[float] | None) -> list[float] | None:
        if values is not None:
            if not values or any(not 0 < v <= 100 for v in values):
                raise ValueError("step_values are percentages in (0, 100]")
            if values != sorted(values):
                raise ValueError("step_values must increase")
        return values


class EarlyStopping(_Strict):
    """Stop when the validation metric has not improved for `patience` validations."""

    metric: ValMetric = Field(
        default="val.loss",
        description="detection jobs left at val.loss follow val.map (segmentation keeps val.loss)",
    )
    patience: int = Field(default=5, ge=1)
    min_delta: float = Field(default=0.0, ge=0)


class LRRangeTest(_Strict):
    """The learning-rate range test run before training (fastai's lr_find, in our engine)."""

    start_lr: float = Field(default=1e-7, gt=0, le=10)
    end_lr: float = Field(default=10.0, gt=0, le=100)
    steps: int = Field(default=200, ge=10, le=2000, description="stops early at divergence")
    suggestion: Literal["valley", "steep", "minimum"] = Field(
        default="valley", description="fastai's rules: valley (default), steepest, minimum/10"
    )

    @model_validator(mode="after")
    def _range(self) -> LRRangeTest:
        if self.start_lr >= self.end_lr:
            raise ValueError("start_lr must be below end_lr")
        return self


class Hyperparameters(_Strict):
    """Training options, with DIGITS's defaults and meanings."""

    epochs: int = Field(default=30, ge=1, le=100_000)
    batch_size: int | None = Field(
        default=None, ge=1, le=65536, description="None = the network's default"
    )
    batch_accumulation: int = Field(
        default=1, ge=1, le=1024, description="Gradient accumulation (Caffe's iter_size)"
    )
    solver: Solver = "sgd"
    momentum: float = Field(default=0.9, ge=0, lt=1, description="sgd, nesterov")
    weight_decay: float | None = Field(
        default=None, ge=0, description="None = learning_rate / 100 (DIGITS)"
    )
    rms_decay: float = Field(default=0.99, gt=0, lt=1, description="rmsprop")
    learning_rate: Annotated[float, Field(gt=0, le=10)] | Literal["auto"] = Field(
        default=0.01, description='"auto": run the LR range test first and train at its suggestion'
    )
    lr_range_test: LRRangeTest | None = Field(
        default=None, description="Run the range test first (implied by learning_rate auto)"
    )
    lr_policy: LRPolicy = "step"
    lr_params: LRParams = Field(default_factory=LRParams)
    snapshot_interval: float = Field(default=1.0, ge=0, description="epochs; 0 = at the end")
    val_interval: float = Field(default=1.0, ge=0, description="epochs; 0 = at the end")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    use_mean: Literal["image", "pixel", "none"] = "image"
    crop_size: int | None = Field(default=None, ge=1, description="random crop (centre at test)")
    shuffle: bool = True
    aug_flip: Literal["none", "fliplr", "flipud", "fliplrud"] = "none"
    aug_quad_rot: Literal["none", "rot90", "rot180", "rotall"] = "none"
    aug_rot: float = Field(default=0.0, ge=0, le=180, description="max rotation, degrees")
    aug_scale: float = Field(default=0.0, ge=0, le=1, description="scale stddev (0.07)")
    aug_noise: float = Field(default=0.0, ge=0, le=1, description="noise stddev (0.03)")
    aug_hsv_use: bool = False
    aug_hsv_h: float = Field(default=0.02, ge=0, le=0.5)
    aug_hsv_s: float = Field(default=0.04, ge=0, le=0.5)
    aug_hsv_v: float = Field(default=0.06, ge=0, le=0.5)
    early_stopping: EarlyStopping | None = None
    best_metric: ValMetric = Field(
        default="val.accuracy",
        description="detection and segmentation jobs left at val.accuracy use val.map or val.miou",
    )
    amp: bool = Field(default=True, description="mixed precision on CUDA (bf16 where supported)")
    log_interval: int = Field(default=0, ge=0, description="train loss every N steps; 0 = auto")

    @model_validator(mode="after")
    def _finite_schedule(self) -> Hyperparameters:
        from shared import lr_policy

        rates = self.learning_rate if isinstance(self.learning_rate, list) else [self.learning_rate]
        for lr in rates:  # "auto": the curve's shape does not depend on the rate
            rate = 1.0 if lr == "auto" else float(lr)
            lr_policy.check(rate, self.lr_policy, self.lr_params.model_dump(exclude_none=True))
        return self

    def effective_weight_decay(self) -> float:
        """DIGITS's hidden constant when unset: base_lr / 100."""
        if self.weight_decay is not None:
            return self.weight_decay
        if isinstance(self.learning_rate, str):
            raise ValueError("learning_rate auto is resolved by the range test first")
        return self.learning_rate / 100


class SweepHyperparameters(Hyperparameters):
    """Hyperparameters where learning_rate and batch_size may be lists (one job per pair)."""

    # Widening a parent's field is unsound for the parent's methods (effective_weight_decay);
    # a sweep is expanded into Hyperparameters before any of them runs. A base class without
    # these two fields would remove the ignores but reorder the OpenAPI schema.
    learning_rate: float | list[float] | Literal["auto"] = Field(  # type: ignore[assignment]
        default=0.01
    )
    batch_size: int | list[int] | None = Field(default=None)  # type: ignore[assignment]

    @field_validator("learning_rate")
    @classmethod
    def _lrs(cls, v: float | list[float] | str) -> float | list[float] | str:
        if isinstance(v, str):
            return v  # "auto": the Literal checked it
        values = v if isinstance(v, list) else [v]
        if not values or len(values) > 64 or any(not 0 < x <= 10 for x in values):
            raise ValueError("learning rates must be in (0, 10], at most 64 of them")
        return v

    @field_validator("batch_size")
    @classmethod
    def _bss(cls, v: int | list[int] | None) -> int | list[int] | None:
        if v is None:
            return v
        values = v if isinstance(v, list) else [v]
        if not values or len(values) > 64 or any(not 1 <= x <= 65536 for x in values):
            raise ValueError("batch sizes must be in [1, 65536], at most 64 of them")
        return v


class JobCreate(_Strict):
    """A training job (or a sweep: lists of learning rates / batch sizes)."""

    dataset_id: uuid.UUID
    name: str = Field(min_length=1, max_length=200)
    group: str | None = Field(default=None, max_length=200)
    notes: str | None = Field(default=None, max_length=10_000)
    network: NetworkSpec = Field(
        description="A standard network name, or {kind: standard|custom|previous, ...}"
    )
    hyperparameters: SweepHyperparameters = Field(default_factory=SweepHyperparameters)
    recipe: Literal["digits", "recommended"] = Field(
        default="digits",
        description="What fills the hyperparameters left out: DIGITS's defaults, or the "
        "network's recommended recipe (GET /networks); given values always win",
    )
    gpu: str | None = Field(
        default=None,
        max_length=200,
        description="Run on this worker (its name) or GPU (its UUID); any free one if omitted",
    )
    gpus: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Devices for this job: more than 1 trains with DistributedDataParallel on "
        "a worker started with that many (`digits worker --gpus 0,1`)",
    )

    @field_validator("network", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"kind": "standard", "name": v} if isinstance(v, str) else v


class JobUpdate(_Strict):
    """Editable fields of a job."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    notes: str | None = Field(default=None, max_length=10_000)
    group: str | None = Field(default=None, max_length=200)


class JobClone(_Strict):
    """Overrides for a clone; anything omitted is copied from the original request."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    group: str | None = None
    notes: str | None = None
    dataset_id: uuid.UUID | None = None
    network: NetworkSpec | None = None
    hyperparameters: dict[str, Any] | None = Field(
        default=None, description="Merged into the original hyperparameters"
    )
    gpu: str | None = None
    gpus: int | None = Field(default=None, ge=1, le=16)

    @field_validator("network", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"kind": "standard", "name": v} if isinstance(v, str) else v


class MetricValue(BaseModel):
    """The latest value of a series."""

    value: float
    step: int
    epoch: float


class JobRead(BaseModel):
    """A job: its request, state, progress and latest metrics."""

    id: uuid.UUID
    kind: str
    name: str
    group: str | None
    notes: str | None
    status: str
    status_history: list[StatusEntry]
    error: str | None
    dataset_id: uuid.UUID | None
    request: dict[str, Any] = Field(description="The validated request (what clone copies)")
    worker: str | None
    attempts: int
    progress: float
    epoch: float
    step: int = Field(description="Optimizer steps done")
    total_steps: int = Field(description="Optimizer steps of the whole run")
    eta_seconds: float | None
    abort_requested: bool
    queue_position: int | None = Field(default=None, description="While waiting: 1 = next")
    waiting_reason: str | None = Field(default=None, description="While waiting: why")
    best: dict[str, MetricValue] = Field(
        default_factory=dict, description="Best value of each validation series"
    )
    last: dict[str, MetricValue] = Field(
        default_factory=dict, description="Latest value of each series"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobsCreated(BaseModel):
    """The jobs a request created: one, or one per sweep combination."""

    jobs: list[JobRead]
    group: str | None


class MetricPoint(BaseModel):
    """One value of a named series."""

    id: int = Field(description="Cursor: pass the largest as `since` to get only newer points")
    name: str
    step: int
    epoch: float
    value: float


class MetricsRead(BaseModel):
    """Points of a job's series, oldest first."""

    items: list[MetricPoint]
    next_since: int


class SeriesColumns(BaseModel):
    """One series as columns, for charts; each is there unless `columns` left it out."""

    step: list[int] = Field(default_factory=list)
    epoch: list[float] = Field(default_factory=list)
    value: list[float] = Field(default_factory=list)
    time: list[float] = Field(default_factory=list, description="Seconds since the job was created")


class MetricSeriesRead(BaseModel):
    """A job's series as columns (`format=columnar`), decimated to `max_points` if asked."""

    series: dict[str, SeriesColumns]
    next_since: int = Field(description="Cursor: pass as `since` for newer points only")
    decimated: bool = Field(description="Whether some series were thinned to max_points")


class MetricsBatchRead(BaseModel):
    """The columnar series of many jobs, by job id."""

    jobs: dict[str, MetricSeriesRead]


class CheckpointRead(BaseModel):
    """A saved snapshot."""

    name: str = Field(description="epoch-N, or the aliases best / last")
    epoch: float
    step: int
    size_bytes: int
    metrics: dict[str, float]
    created_at: datetime


class LRPreview(BaseModel):
    """The 101-point learning-rate curve (DIGITS's visualize-lr)."""

    policy: str
    learning_rate: float
    percent: list[int]
    values: list[float]


class NetworkRead(BaseModel):
    """A network a job may use."""

    name: str
    kind: Literal["standard", "custom", "previous", "pretrained"]
    family: str
    description: str
    default_batch_size: int | None
    task: Literal["classification", "detection", "segmentation"] = Field(
        default="classification", description="The datasets it trains on"
    )
    recommended: dict[str, Any] = Field(
        default_factory=dict,
        description='The recipe `"recipe": "recommended"` fills in (DIGITS\'s defaults otherwise)',
    )
    exports: list[str] = Field(
        default_factory=list,
        description="What GET /jobs/{id}/download?export= gives for a model of this network",
    )
