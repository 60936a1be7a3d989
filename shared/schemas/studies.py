"""Tuning studies: a base job, a search space, an objective, a sampler, a pruner and a budget."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.schemas.jobs import Hyperparameters, NetworkSpec

MAX_TRIALS = 1000
Metric = Literal["val.accuracy", "val.loss", "val.top5"]
# what a search may vary: every scalar option of a job, and the network
NESTED = frozenset({"lr_params", "early_stopping"})
SEARCHABLE = frozenset(
    {name for name in Hyperparameters.model_fields if name not in NESTED} | {"network"}
)
Choice = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatParam(_Strict):
    """A float in [low, high]; `log` samples it uniformly in log space (learning rates)."""

    type: Literal["float"] = "float"
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = False
    step: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntParam(_Strict):
    """An integer in [low, high] (both included)."""

    type: Literal["int"] = "int"
    low: int = Field(ge=-(2**31), le=2**31)
    high: int = Field(ge=-(2**31), le=2**31)
    log: bool = False
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log, None if self.step == 1 else self.step)
        return self


class CategoricalParam(_Strict):
    """One of a list of values (solvers, networks, batch sizes)."""

    type: Literal["categorical"] = "categorical"
    choices: list[Choice] = Field(min_length=1, max_length=64)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, values: list[Choice]) -> list[Choice]:
        for value in values:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError("choices must be finite")
            if isinstance(value, str) and len(value) > 200:
                raise ValueError("a choice is at most 200 characters")
        if len({repr(v) for v in values}) != len(values):
            raise ValueError("choices must be distinct")
        return values


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if not low < high:
        raise ValueError(f"low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError("a log range needs low > 0")
    if log and step is not None:
        raise ValueError("a log range cannot have a step")


SearchParam = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Objective(_Strict):
    """What a trial is judged by: a validation series, its direction, its best or last value."""

    metric: Metric = "val.accuracy"
    direction: Literal["maximize", "minimize"] | None = Field(
        default=None, description="Default: minimize for val.loss, maximize otherwise"
    )
    use: Literal["best", "last"] = Field(
        default="best", description="The trial's value: its best validation, or its last"
    )

    @property
    def resolved_direction(self) -> Literal["maximize", "minimize"]:
        """The direction, defaulting by metric."""
        if self.direction is not None:
            return self.direction
        return "minimize" if self.metric == "val.loss" else "maximize"


class SamplerSpec(_Strict):
    """Optuna's sampler: TPE (default), random, or an exhaustive grid."""

    type: Literal["tpe", "random", "grid"] = "tpe"
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="Default: random")
    n_startup_trials: int | None = Field(
        default=None, ge=0, le=1000, description="tpe: random trials first (Optuna's 10)"
    )


class PrunerSpec(_Strict):
    """Optuna's pruner, in epochs: ASHA (default), Hyperband, median, or none."""

    type: Literal["asha", "hyperband", "median", "none"] = "asha"
    min_epochs: float = Field(
        default=1.0, gt=0, le=100_000, description="asha/hyperband: the first rung (r)"
    )
    reduction_factor: int = Field(
        default=3, ge=2, le=100, description="asha/hyperband: keep the top 1/eta at each rung"
    )
    min_early_stopping_rate: int = Field(default=0, ge=0, le=20, description="asha: s")
    n_startup_trials: int = Field(default=5, ge=0, le=1000, description="median")
    warmup_epochs: float = Field(default=0.0, ge=0, le=100_000, description="median")


class StudyCreate(_Strict):
    """A study: a base training job and the hyperparameters to search, with a budget."""

    name: str = Field(min_length=1, max_length=200)
    group: str | None = Field(
        default=None, max_length=200, description="The trials' group; default: the name"
    )
    dataset_id: uuid.UUID
    network: NetworkSpec = Field(description="The base network (the space may vary it)")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters, description="The base options of every trial"
    )
    search_space: dict[str, SearchParam] = Field(
        min_length=1,
        max_length=32,
        description="Hyperparameter name -> float/int range or categorical choices",
    )
    objective: Objective = Field(default_factory=Objective)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    max_trials: int = Field(default=20, ge=1, le=MAX_TRIALS)
    max_concurrent: int | None = Field(
        default=None, ge=1, le=64, description="Trials at once; default: the live training workers"
    )
    max_epochs_total: float | None = Field(
        default=None, gt=0, description="Stop asking when the trials have trained this many epochs"
    )
    timeout_s: float | None = Field(
        default=None, gt=0, description="Stop asking this long after the start (s)"
    )

    @field_validator("network", mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"kind": "standard", "name": v} if isinstance(v, str) else v

    @field_validator("search_space")
    @classmethod
    def _known(cls, space: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(space) - SEARCHABLE)
        if unknown:
            raise ValueError(
                f"cannot search {', '.join(unknown)}: choose among {', '.join(sorted(SEARCHABLE))}"
            )
        return space


class TrialRead(BaseModel):
    """One trial: its job, the parameters it was given, how it went."""

    number: int
    job_id: uuid.UUID | None
    name: str | None
    state: Literal["waiting", "running", "complete", "pruned", "failed"]
    status: str | None = Field(description="The job's status")
    params: dict[str, Any]
    value: float | None = Field(description="The objective (pruned: its last reported value)")
    epochs: float = Field(description="Epochs it trained")
    pruned_epoch: float | None = None
    reason: str | None = Field(default=None, description="Why it was pruned or failed")
    started_at: datetime | None = None
    finished_at: datetime | None = None


class BestPoint(BaseModel):
    """The best value after each finished trial, in the order they finished."""

    number: int
    value: float | None
    best: float | None
    finished_at: datetime | None


class StudySummary(BaseModel):
    """A study in a list."""

    id: uuid.UUID
    name: str
    group: str
    status: str
    reason: str | None
    dataset_id: uuid.UUID | None
    objective: Objective
    max_trials: int
    max_concurrent: int
    trials_asked: int
    counts: dict[str, int] = Field(description="Trials by state")
    best_value: float | None
    best_trial: int | None
    created_at: datetime
    finished_at: datetime | None


class StudyRead(StudySummary):
    """A study with its trials, best-so-far history and parameter importances."""

    config: dict[str, Any] = Field(description="The validated request (sampler, pruner, space)")
    trials: list[TrialRead]
    best: TrialRead | None
    history: list[BestPoint]
    importances: dict[str, float] = Field(
        description="Optuna's parameter importances (PED-ANOVA) once enough trials completed"
    )
    epochs_used: float = Field(description="Epochs all trials trained")
    epochs_unpruned: float = Field(description="Epochs the same trials would train unpruned")
