"""SQLAlchemy models; importing this package registers every table on Base.metadata."""

from shared.models.dataset import Dataset
from shared.models.enums import JobKind, ResizeMode, Status
from shared.models.job import Job

__all__ = ["Dataset", "Job", "JobKind", "ResizeMode", "Status"]
