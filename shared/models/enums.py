"""Enumerations stored as strings in the database."""

from enum import StrEnum


class Status(StrEnum):
    """DIGITS's six job states."""

    INITIALIZED = "initialized"
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    ABORTED = "aborted"

    @property
    def is_running(self) -> bool:
        """DIGITS's is_running(): initialized, waiting or running."""
        return self in (Status.INITIALIZED, Status.WAITING, Status.RUNNING)

    @property
    def is_final(self) -> bool:
        """Done, error or aborted: nothing changes any more."""
        return not self.is_running


class JobKind(StrEnum):
    """What a job does."""

    TRAIN = "train"
    INFERENCE = "inference"
    EVALUATE = "evaluate"
    EXPLAIN = "explain"


class ResizeMode(StrEnum):
    """DIGITS's resize modes."""

    SQUASH = "squash"
    CROP = "crop"
    FILL = "fill"
    HALF_CROP = "half_crop"
