"""What a job can use: networks and learning-rate policies."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.deps import get_current_user
from shared import lr_policy
from shared.errors import InvalidInput
from shared.networks import CATALOG, CLASSIFIER_EXPORTS, exports_of, recommended
from shared.schemas.common import Problem
from shared.schemas.jobs import LRParams, LRPolicy, LRPreview, NetworkRead

router = APIRouter(tags=["catalog"], dependencies=[Depends(get_current_user)])


@router.get(
    "/networks",
    operation_id="list_networks",
    summary="Networks a job may use",
    response_model=list[NetworkRead],
)
def list_networks() -> list[NetworkRead]:
    """Standard networks (DIGITS's three and torchvision's), plus custom and previous, each
    with the recipe `"recipe": "recommended"` gives a job (DIGITS's defaults otherwise)."""
    items = [
        NetworkRead(
            name=n.name,
            kind="standard",
            family=n.family,
            description=n.description,
            default_batch_size=n.default_batch_size,
            task=n.task,
            recommended=recommended(n.name),
            exports=list(exports_of(n.name)),
        )
        for n in CATALOG.values()
    ]
    items.append(
        NetworkRead(
            name="custom",
            kind="custom",
            family="custom",
            default_batch_size=64,
            exports=list(CLASSIFIER_EXPORTS),
            description="A declarative list of layers (conv2d, pooling, batchnorm, activations, "
            "dropout, flatten, linear), checked against the dataset before queueing",
        )
    )
    items.append(
        NetworkRead(
            name="previous",
            kind="previous",
            family="previous",
            default_batch_size=None,
            description="Another job's network and checkpoint (fine-tuning); the classifier head "
            "is re-initialised when the class count differs",
        )
    )
    return items


@router.get(
    "/lr-policies/preview",
    operation_id="preview_lr_policy",
    summary="The learning-rate curve of a policy (101 points)",
    response_model=LRPreview,
    responses={400: {"model": Problem}, 422: {"model": Problem}},
)
def preview_lr_policy(
    policy: LRPolicy = "step",
    learning_rate: Annotated[float, Query(gt=0, le=10)] = 0.01,
    step_size: Annotated[float | None, Query(gt=0, le=100)] = None,
    gamma: Annotated[float | None, Query(gt=0)] = None,
    step_values: Annotated[str | None, Query(description="Comma-separated %, multistep")] = None,
    power: Annotated[float | None, Query(gt=0)] = None,
    warmup_pct: Annotated[float, Query(ge=0, lt=100)] = 0.0,
    min_lr_pct: Annotated[float, Query(ge=0, le=100)] = 0.0,
) -> LRPreview:
    """The rate at 0, 1, ..., 100 % of training, by DIGITS's formulas (its visualize-lr)."""
    try:
        values = [float(v) for v in step_values.split(",") if v.strip()] if step_values else None
        params = LRParams(
            step_size=step_size,
            gamma=gamma,
            step_values=values,
            power=power,
            warmup_pct=warmup_pct,
            min_lr_pct=min_lr_pct,
        )
    except ValueError as exc:
        raise InvalidInput(str(exc).splitlines()[0], code="invalid_lr_params") from exc
    try:
        lr_policy.check(learning_rate, policy, params.model_dump(exclude_none=True))
    except ValueError as exc:
        raise InvalidInput(str(exc), code="invalid_lr_params") from exc
    curve = lr_policy.preview(learning_rate, policy, params.model_dump(exclude_none=True))
    return LRPreview(
        policy=policy, learning_rate=learning_rate, percent=list(range(101)), values=curve
    )
