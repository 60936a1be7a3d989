"""Checkpoint files: plain state dicts (weights_only-loadable), written atomically."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray

FORMAT = 1


def rng_state(aug_generator: torch.Generator | None) -> dict[str, Any]:
    """Every random state training draws from, as tensors, lists and numbers."""
    version, internal, gauss = random.getstate()
    # numpy's stubs give the legacy=False overload the default, but the default is legacy=True,
    # which returns this tuple for the global (MT19937) generator
    np_state = cast(
        "tuple[str, NDArray[np.uint32], int, int, float]", np.random.get_state(legacy=True)
    )
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [
            str(np_state[0]),
            torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "augment": aug_generator.get_state() if aug_generator is not None else None,
    }
    return state


def set_rng_state(state: dict[str, Any], aug_generator: torch.Generator | None) -> None:
    """Restore what rng_state captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if aug_generator is not None and state.get("augment") is not None:
        aug_generator.set_state(state["augment"])


def serialize(checkpoint: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint, so several names can be written from one serialisation."""
    buf = io.BytesIO()
    torch.save(checkpoint, buf)
    return buf.getvalue()


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint onto the CPU, refusing anything but tensors and plain containers."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or "model" not in data:
        raise ValueError(f"{Path(path).name} is not a training checkpoint")
    return data


def model_state(data: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint (or of a bare state dict)."""
    state = data.get("model", data)
    if not isinstance(state, dict):
        raise ValueError("the checkpoint holds no model weights")
    return state


def epoch_name(epoch: float) -> str:
    """A snapshot's name: epoch-3, epoch-1.5."""
    value = round(epoch, 2)
    return f"epoch-{int(value)}" if value == int(value) else f"epoch-{value:g}"
