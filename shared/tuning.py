"""Optuna, as digits uses it: its storage, and the sampler and pruner rebuilt from our study
record in every process (Optuna stores neither).

Optuna's tables never share a schema with ours: on PostgreSQL they live in the `optuna` schema
(its own `alembic_version` there, so the two Alembic histories never meet); on the embedded
SQLite default they are a journal file beside the database ("we would never recommend SQLite3
for parallel optimization", RDBStorage's docstring). Steps are validation indexes: the n-th
validation of a trial is step n, and the pruners' epochs are converted to that unit.

Optuna is imported inside the functions: it pulls in alembic, colorlog and its samplers, which
the processes that never tune (the model service, dataset workers) have no use for.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from shared.settings import Settings

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("digits.tuning")

SCHEMA = "optuna"
JOURNAL = "optuna.journal"
# a system attribute of the trial: the step at which a prune was decided (a trial whose
# worker died after the decision stops at its next validation instead of running on)
PRUNED_AT = "digits:pruned_step"

_storages: dict[str, Any] = {}
_storages_lock = threading.Lock()


def _quiet() -> None:
    import optuna

    # our logs say what happened to each trial; Optuna's default handler would repeat it
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage(settings: Settings) -> Any:
    """This process's Optuna storage for the configured database (built once)."""
    url = settings.sqlalchemy_url
    with _storages_lock:
        found = _storages.get(url)
        if found is not None:
            return found
        _quiet()
        import optuna

        if url.startswith("sqlite"):
            from optuna.storages.journal import JournalFileBackend

            path = settings.resolved_data_dir / JOURNAL
            path.parent.mkdir(parents=True, exist_ok=True)
            made: Any = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        else:
            made = optuna.storages.RDBStorage(
                url,
                engine_kwargs={
                    # its own schema: its tables and its alembic_version stay out of ours
                    "connect_args": {"options": f"-c search_path={SCHEMA}", "connect_timeout": 5},
                    # a long trial must not find its connection dropped (optuna#5600)
                    "pool_pre_ping": True,
                    "pool_size": 2,
                    "max_overflow": 4,
                },
            )
        _storages[url] = made
        return made


def prepare(settings: Settings) -> None:
    """Create Optuna's tables in their schema (`digits db upgrade`), so that no two processes
    race to create them on first use."""
    _quiet()
    import optuna

    made = optuna.storages.RDBStorage(
        settings.sqlalchemy_url,
        engine_kwargs={"connect_args": {"options": f"-c search_path={SCHEMA}"}},
    )
    made.engine.dispose()


def forget_storages() -> None:
    """Drop this process's storages (a forked child must not share its parent's pool)."""
    with _storages_lock:
        for made in _storages.values():
            engine = getattr(made, "engine", None)
            if engine is not None:
                engine.dispose()
        _storages.clear()


# -- rebuilding the sampler and the pruner ------------------------------------------------------


def validations_per_epoch(hyper: dict[str, Any]) -> float:
    """How many steps (validations) an epoch makes; 0 when it validates only at the end."""
    interval = float(hyper.get("val_interval") or 0.0)
    return 1.0 / interval if interval > 0 else 0.0


def step_of(epoch: float, hyper: dict[str, Any]) -> int:
    """The Optuna step of a validation at `epoch`: its index, 1 for the first."""
    per_epoch = validations_per_epoch(hyper)
    if per_epoch == 0:
        return 1
    return max(1, math.ceil(epoch * per_epoch - 1e-6))


def _steps(epochs: float, hyper: dict[str, Any]) -> int:
    return max(1, math.ceil(epochs * validations_per_epoch(hyper) - 1e-6))


def distributions(space: dict[str, Any]) -> dict[str, Any]:
    """Optuna distributions of a validated search space."""
    import optuna.distributions as d

    made: dict[str, Any] = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "float":
            made[name] = d.FloatDistribution(
                spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step")
            )
        elif kind == "int":
            made[name] = d.IntDistribution(
                spec["low"], spec["high"], log=spec.get("log", False), step=spec.get("step", 1)
            )
        else:
            made[name] = d.CategoricalDistribution(spec["choices"])
    return made


def grid(space: dict[str, Any]) -> dict[str, list[Any]]:
    """The values of each parameter for a grid search; ValueError for a continuous range."""
    values: dict[str, list[Any]] = {}
    for name, spec in space.items():
        if spec["type"] == "categorical":
            values[name] = list(spec["choices"])
        elif spec["type"] == "int":
            values[name] = list(range(spec["low"], spec["high"] + 1, spec.get("step", 1)))
        elif spec.get("step"):
            count = math.floor((spec["high"] - spec["low"]) / spec["step"] + 1e-9) + 1
            values[name] = [round(spec["low"] + i * spec["step"], 12) for i in range(count)]
        else:
            raise ValueError(
                f"a grid needs the values of {name}: give it choices or a step, not a range"
            )
    return values


def grid_size(space: dict[str, Any]) -> int:
    """The number of points of the grid."""
    return math.prod(len(v) for v in grid(space).values())


def sampler(config: dict[str, Any], number: int) -> Any:
    """The study's sampler, for asking trial `number`.

    The seed is offset by the trial number: a sampler rebuilt with the same seed in a fresh
    process would otherwise draw the same "random" startup point for every trial. The grid
    keeps its seed, which fixes the order of its points in every process.
    """
    import optuna

    spec = config["sampler"]
    seed = spec.get("seed")
    if spec["type"] == "grid":
        return optuna.samplers.GridSampler(grid(config["search_space"]), seed=seed)
    # hashed, not seed + number: Mersenne Twister streams of nearby seeds start alike
    per_trial = None
    if seed is not None:
        per_trial = int(np.random.SeedSequence([int(seed), number]).generate_state(1)[0] >> 1)
    if spec["type"] == "random":
        return optuna.samplers.RandomSampler(seed=per_trial)
    kwargs: dict[str, Any] = {"seed": per_trial}
    if spec.get("n_startup_trials") is not None:
        kwargs["n_startup_trials"] = int(spec["n_startup_trials"])
    # constant_liar (Optuna 5's default) makes running trials count, so two workers asking
    # at once are not handed the same point
    return optuna.samplers.TPESampler(constant_liar=True, **kwargs)


def pruner(config: dict[str, Any]) -> Any:
    """The study's pruner, in validation steps."""
    import optuna

    spec = config["pruner"]
    hyper = config["hyperparameters"]
    kind = spec["type"]
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(spec["n_startup_trials"]),
            n_warmup_steps=_steps(spec["warmup_epochs"], hyper) if spec["warmup_epochs"] else 0,
        )
    min_steps = _steps(float(spec["min_epochs"]), hyper)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=min_steps,
            max_resource=max(min_steps, _steps(float(hyper["epochs"]), hyper)),
            reduction_factor=int(spec["reduction_factor"]),
        )
    # ASHA; min_resource given, as 'auto' would not prune until a trial completes
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=min_steps,
        reduction_factor=int(spec["reduction_factor"]),
        min_early_stopping_rate=int(spec["min_early_stopping_rate"]),
    )


def direction(config: dict[str, Any]) -> Literal["maximize", "minimize"]:
    """maximize or minimize."""
    objective = config["objective"]
    if objective.get("direction") == "minimize":
        return "minimize"
    if objective.get("direction") == "maximize":
        return "maximize"
    return "minimize" if objective["metric"] == "val.loss" else "maximize"


def open_study(
    settings: Settings, name: str, config: dict[str, Any], *, number: int = 0
) -> optuna.Study:
    """The Optuna study (created on first use), with the sampler and pruner of `config`."""
    import optuna

    made = storage(settings)
    with warnings.catch_warnings():
        # GridSampler warns when a study asks past its grid; we never do
        warnings.simplefilter("ignore", UserWarning)
        built = {"sampler": sampler(config, number), "pruner": pruner(config)}
        try:  # loading first: a create that finds the study costs a failed INSERT each time
            return optuna.load_study(study_name=name, storage=made, **built)
        except KeyError:
            return optuna.create_study(
                study_name=name,
                storage=made,
                direction=direction(config),
                load_if_exists=True,
                **built,
            )


def delete_study(settings: Settings, name: str) -> None:
    """Remove the Optuna study, if it exists."""
    import optuna

    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=storage(settings))


# -- reporting from a running trial ---------------------------------------------------------------


def report(study: optuna.Study, number: int, step: int, value: float) -> bool:
    """Report a validation of trial `number`; True when the pruner stops the trial.

    A step already reported (a trial resumed after its worker was lost repeats the
    validations after its last checkpoint) is not reported again: the first value stands,
    and the decision is made on what is stored, so nothing counts twice.
    """
    store = study._storage  # Optuna has no public way to rebuild a trial in another process
    trial_id = store.get_trial_id_from_study_id_trial_number(study._study_id, number)
    frozen = store.get_trial(trial_id)
    if frozen.state.is_finished():
        return False  # already told (its study was aborted or deleted): nothing to decide
    if PRUNED_AT in frozen.system_attrs:
        return True
    if step not in frozen.intermediate_values and math.isfinite(value):
        store.set_trial_intermediate_value(trial_id, step, float(value))
        frozen = store.get_trial(trial_id)
    elif not math.isfinite(value):
        return True
    if frozen.last_step is None or step < frozen.last_step:
        return False  # a repeated early step: the decision belongs to the newest one
    pruned = bool(study.pruner.prune(study, frozen))
    if pruned:
        store.set_trial_system_attr(trial_id, PRUNED_AT, step)
    return pruned


@contextlib.contextmanager
def host_lock(settings: Settings) -> Iterator[None]:
    """One process at a time on this host (asks on the embedded SQLite default, whose
    `SELECT ... FOR UPDATE` locks nothing)."""
    path: Path = settings.resolved_data_dir / "studies.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
