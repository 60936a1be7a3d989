"""SQLAlchemy models; importing this package registers every table on Base.metadata."""

from shared.models.dataset import Dataset
from shared.models.enums import JobKind, ResizeMode, Status
from shared.models.job import Job
from shared.models.lifecycle import StatusChange
from shared.models.metrics import Checkpoint, JobEvent, MetricPoint
from shared.models.pretrained import PretrainedModel
from shared.models.study import Study, StudyStatus
from shared.models.user import ApiToken, User
from shared.models.worker import Worker

__all__ = [
    "ApiToken",
    "Checkpoint",
    "Dataset",
    "Job",
    "JobEvent",
    "JobKind",
    "MetricPoint",
    "PretrainedModel",
    "ResizeMode",
    "Status",
    "StatusChange",
    "Study",
    "StudyStatus",
    "User",
    "Worker",
]
