"""Service settings: every knob is a DIGITS_* environment variable, read when asked for."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """All configuration, read from DIGITS_* environment variables (and an optional .env file)."""

    model_config = SettingsConfigDict(env_prefix="DIGITS_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        default=Path("data"), description="Datasets, jobs, broker files, uploads"
    )
    storage_url: str = Field(
        default="",
        description="Where artifacts live: empty for the data folder, or s3://bucket/prefix",
    )
    storage_endpoint: str = Field(
        default="", description="S3 endpoint URL (MinIO, Ceph, R2); empty: AWS's"
    )
    storage_region: str = Field(default="", description="S3 region; empty: from AWS_REGION")
    storage_access_key_id: str = Field(default="", description="empty: AWS_ACCESS_KEY_ID etc.")
    # not a SecretStr: the settings travel to training children as JSON and must survive it
    storage_secret_access_key: str = Field(default="", repr=False)
    storage_timeout: float = Field(
        default=3600.0, gt=0, description="longest transfer of one object (s)"
    )
    cache_dir: Path | None = Field(
        default=None, description="This host's cache of downloaded artifacts; data_dir/cache"
    )
    database_url: str = Field(default="", description="Empty: SQLite file under data_dir")
    broker_url: str = Field(default="", description="Empty: kombu filesystem broker under data_dir")
    broker_prefix: str = Field(default="", description="Redis key prefix (one per deployment)")
    host: str = "127.0.0.1"
    port: int = 8000
    import_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Server folders that POST /datasets may import from (allow-list)",
    )
    max_upload_bytes: int = Field(
        default=4 * 1024**3, description="largest body of the upload routes (files)"
    )
    max_json_bytes: int = Field(
        default=1024**2, ge=1024, description="largest body of every other route (JSON)"
    )
    body_read_timeout: float = Field(
        default=60.0, gt=0, description="a request body that stalls this long gets 408 (s)"
    )
    header_read_timeout: float = Field(
        default=10.0, gt=0, description="a connection must send its request headers in (s)"
    )
    max_image_pixels: int = 89_478_485
    pretrained_max_weights_bytes: int = Field(
        default=1024**3, ge=1, description="largest weights file an uploaded model may hold"
    )
    archive_max_members: int = 200_000
    archive_max_total_bytes: int = 20 * 1024**3
    archive_max_member_bytes: int = Field(default=1024**3, gt=0, description="per archive file")
    archive_max_expansion_ratio: float = Field(
        default=200.0, gt=1, description="bytes extracted over archive bytes, at most"
    )
    import_workers: int = 0
    log_level: str = "INFO"
    model_server_url: str = Field(
        default="", description="The model service (classify, export); default 127.0.0.1:PORT+1"
    )
    model_server_device: str = Field(default="", description="cpu, cuda; default: cuda if any")
    model_server_threads: int = Field(default=0, ge=0, description="torch threads; 0 = cores")
    model_cache_size: int = Field(default=8, ge=1, description="models kept warm")
    classify_max_images: int = Field(
        default=32, ge=1, description="more images than this make an inference job (202)"
    )
    heartbeat_interval: float = Field(default=5.0, gt=0, description="worker heartbeat, seconds")
    lease_timeout: float = Field(
        default=30.0, gt=0, description="a running job silent this long is requeued (s)"
    )
    max_attempts: int = Field(default=3, ge=1, description="restart budget of a job")
    reaper_interval: float = Field(default=5.0, gt=0, description="how often workers reap (s)")
    resend_after: float = Field(
        default=15.0, gt=0, description="re-send a waiting job an idle worker never got (s)"
    )
    telemetry_interval: float = Field(default=1.0, gt=0, description="GPU/process sampling, s")
    worker_stale_after: float = Field(
        default=30.0, gt=0, description="a worker silent this long is shown as stale"
    )
    max_job_seconds: int = Field(
        default=7 * 24 * 3600, gt=0, description="the longest a job may run (s); then error"
    )
    max_sweep_jobs: int = Field(
        default=64, ge=1, description="jobs one submission (a sweep) may create"
    )
    max_epochs: int = Field(default=10_000, ge=1, description="the most epochs a job may ask")
    max_evaluations: int = Field(
        default=10_000,
        ge=1,
        description="validations (and snapshots) a job may make: epochs / interval at most this",
    )
    keep_snapshots: int = Field(
        default=5, ge=1, description="epoch snapshots kept per job, besides best and last"
    )
    user_quota_bytes: int = Field(
        default=0, ge=0, description="disk a user's datasets and jobs may use; 0 = no limit"
    )
    # Celery's Redis transport redelivers an unacknowledged task after this many seconds;
    # it must exceed the longest job (the claim on the job row makes a redelivery harmless).
    visibility_timeout: int = Field(default=7 * 24 * 3600 + 3600, gt=0)
    # `digits up` supervision: restarts with backoff, graceful stop, per-process memory limits
    restart_backoff_initial: float = Field(
        default=0.5, gt=0, description="digits up: first wait before restarting a child (s)"
    )
    restart_backoff_max: float = Field(
        default=30.0, gt=0, description="digits up: the wait doubles up to this (s)"
    )
    restart_reset_after: float = Field(
        default=30.0, gt=0, description="digits up: a child up this long starts backoff afresh (s)"
    )
    stop_timeout: float = Field(
        default=20.0, gt=0, description="digits up: SIGTERM to SIGKILL when stopping children (s)"
    )
    child_memory_limit_mb: int | None = Field(
        default=None,
        ge=0,
        description="digits up: RLIMIT_DATA of each child (MiB); unset: half the machine's "
        "memory, at least 2048; 0: none. GPU processes get none unless set per kind",
    )
    child_memory_limits_mb: dict[str, int] = Field(
        default_factory=dict,
        description='digits up: per kind, JSON, e.g. {"api": 2048}; kinds: api, model-server, '
        "dataset-worker, train-worker, train-gpu; 0: none",
    )

    @field_validator("import_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [p for p in value.replace(",", ":").split(":") if p]
        return value

    @property
    def resolved_data_dir(self) -> Path:
        """The data directory as an absolute path."""
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_cache_dir(self) -> Path:
        """This host's cache of downloaded artifacts, as an absolute path."""
        if self.cache_dir is not None:
            return self.cache_dir.expanduser().resolve()
        return self.resolved_data_dir / "cache"

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            return url
        return f"sqlite:///{self.resolved_data_dir / 'digits.db'}"

    @property
    def resolved_model_server_url(self) -> str:
        """Where the API reaches the model service."""
        return self.model_server_url or f"http://127.0.0.1:{self.port + 1}"

    @property
    def is_embedded_broker(self) -> bool:
        """True when the broker is the filesystem transport (the embedded default)."""
        return not self.broker_url or self.broker_url.startswith("filesystem")

    @property
    def supervisor_state_file(self) -> Path:
        """Where `digits up` writes its children's state (read by /health)."""
        return self.resolved_data_dir / "supervisor.json"

    @property
    def broker_dir(self) -> Path:
        """Folder of the filesystem broker."""
        return self.resolved_data_dir / "broker"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, built on first use."""
    return Settings()
