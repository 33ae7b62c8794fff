"""Service settings: one pydantic-settings class, environment prefix ``ACTTAIL_``.

Built at entry points (``acttail serve``, the Celery worker, tests), never at import time, so a
module can be imported without reading the environment.

=============================  ==================================================================
Variable                       Meaning
=============================  ==================================================================
ACTTAIL_HOME                   state directory (default ``~/.acttail``): SQLite file, api_key, results
ACTTAIL_DATABASE_URL           SQLAlchemy URL (default ``sqlite:///$ACTTAIL_HOME/acttail.db``)
ACTTAIL_BROKER_URL             Celery broker (default ``redis://127.0.0.1:6379/0``)
ACTTAIL_EXECUTOR               ``embedded`` (thread pool in the API process) or ``celery``
ACTTAIL_MODEL_ROOTS            directories local model paths must live under (``:``-separated or JSON list)
ACTTAIL_RESULTS_DIR            where workers write artefacts (default ``$ACTTAIL_HOME/results``)
ACTTAIL_MAX_BODY_BYTES         request bodies above this size are refused with 413
ACTTAIL_DEVICE, ACTTAIL_DTYPE  where workers load models, unless a job says (default ``auto``: bf16 on CUDA, fp32 on CPU)
ACTTAIL_SESSION_SECRET         signs dashboard session cookies (default: generated into $ACTTAIL_HOME/session_secret)
ACTTAIL_API_WORKERS            uvicorn worker processes of ``acttail serve`` (default 1; >1 needs the celery executor)
ACTTAIL_DB_POOL_SIZE           database connections requests may hold at once, per API process (default 10)
ACTTAIL_DB_MAX_OVERFLOW        extra connections for readiness probes and embedded job threads (default 5)
ACTTAIL_DB_POOL_TIMEOUT_S      a request waits this long for a connection, then gets 503 + Retry-After (default 2)
ACTTAIL_DB_STATEMENT_TIMEOUT_S PostgreSQL statement and idle-in-transaction timeout of API connections (default 30)
ACTTAIL_AUTH_CACHE_TTL_S       how long a verified API key is trusted without asking the database (default 5; 0 = off)
ACTTAIL_JOB_HEARTBEAT_S        how often a running job's worker beats ``jobs.heartbeat_at``
ACTTAIL_JOB_STALE_AFTER_S      a running job without a beat, or a queued one the broker lost, for this long is dead
ACTTAIL_REAPER_INTERVAL_S      how often the API looks for dead jobs (0: never)
ACTTAIL_JOB_MAX_ATTEMPTS       dispatches of a job before the reaper gives up and fails it
=============================  ==================================================================
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Executor = Literal["embedded", "celery"]
Queue = Literal["cpu", "gpu"]


def default_home() -> Path:
    return Path("~/.acttail").expanduser()


class Settings(BaseSettings):
    """Everything the API, the CLI service commands and the workers read from the environment."""

    model_config = SettingsConfigDict(env_prefix="ACTTAIL_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="State directory.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty means SQLite under home.")
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", max_length=2048)
    executor: Executor = "embedded"
    model_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    results_dir: Path | None = None
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=256 * 1_048_576)
    default_queue: Queue = "cpu"
    embedded_workers: int = Field(default=1, ge=1, le=16, description="Threads running jobs in embedded mode.")
    broker_timeout_s: float = Field(default=2.0, gt=0, le=60, description="Broker connect/ping timeout.")
    auto_migrate: bool = Field(default=True, description="Run Alembic upgrade head when the API starts.")
    task_soft_time_limit_s: int = Field(default=6 * 3600, ge=10)
    task_hard_time_limit_s: int = Field(default=6 * 3600 + 600, ge=20)
    session_secret: SecretStr | None = Field(
        default=None, min_length=32, description="Signs dashboard session cookies; unset: $ACTTAIL_HOME/session_secret."
    )
    # Liveness of jobs (api.reaper): stale after several missed beats, and at most 2 minutes by default.
    job_heartbeat_s: float = Field(default=15.0, ge=0.1, le=600, description="Heartbeat period of a running job.")
    job_stale_after_s: float = Field(
        default=90.0, ge=1, le=3600, description="No heartbeat (running) or not in the broker (queued) this long: dead."
    )
    reaper_interval_s: float = Field(default=15.0, ge=0, le=3600, description="Reaper period in the API; 0 disables.")
    job_max_attempts: int = Field(default=3, ge=1, le=100, description="Dispatches before a dead job is failed.")
    session_https_only: bool = Field(default=False, description="Send the dashboard cookie over HTTPS only.")
    api_workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes (celery executor only).")
    api_keep_alive_s: float = Field(
        default=5.0, gt=0, le=300, description="Idle HTTP keep-alive connections close after this."
    )
    db_pool_size: int = Field(
        default=10, ge=1, le=500, description="Connections requests may hold at once, per API process."
    )
    db_max_overflow: int = Field(default=5, ge=0, le=500, description="Headroom for probes and embedded job threads.")
    db_pool_timeout_s: float = Field(
        default=2.0, gt=0, le=60, description="Wait for a connection this long, then answer 503 (never queue for long)."
    )
    db_statement_timeout_s: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="PostgreSQL statement/idle-in-transaction timeout of API connections (0 = off).",
    )
    auth_cache_ttl_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="Trust a verified API key this long without a database round trip (0 = off).",
    )
    device: str = Field(default="auto", description="Where workers load models: auto, cpu, cuda or cuda:N.")
    dtype: str = Field(default="auto", description="Worker dtype: auto (bf16 on CUDA, fp32 on CPU) or a dtype.")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    @field_validator("model_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        """Accept a JSON list or an ``os.pathsep``-separated string (like PATH)."""
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part]
        return value

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'acttail.db'}"
        # Plain postgres:// URLs (Heroku, docker docs) would pick psycopg2, which is not a dependency.
        for prefix in ("postgres://", "postgresql://"):
            if self.database_url.startswith(prefix):
                self.database_url = "postgresql+psycopg://" + self.database_url[len(prefix) :]
        if self.results_dir is None:
            self.results_dir = self.home / "results"
        self.model_roots = [Path(root).expanduser().resolve() for root in self.model_roots]
        if self.api_workers > 1 and self.executor == "embedded":
            raise ValueError("api_workers > 1 needs the celery executor: embedded jobs run inside the one API process")
        from acttail.errors import ActTailError
        from acttail.models.placement import Placement

        try:
            Placement(self.device, self.dtype).validate()
        except ActTailError as exc:
            raise ValueError(f"ACTTAIL_DEVICE / ACTTAIL_DTYPE: {exc}") from None
        if self.task_hard_time_limit_s <= self.task_soft_time_limit_s:
            raise ValueError("task_hard_time_limit_s must exceed task_soft_time_limit_s")
        if self.job_stale_after_s < 2 * self.job_heartbeat_s:
            raise ValueError("job_stale_after_s must be at least twice job_heartbeat_s (one late beat is not death)")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def session_secret_file(self) -> Path:
        """Where the dashboard's cookie-signing secret is generated and kept when none is configured (0600)."""
        return self.home / "session_secret"

    @property
    def api_key_file(self) -> Path:
        """Where ``acttail serve`` writes the default team's key on first start (mode 0600)."""
        return self.home / "api_key"
