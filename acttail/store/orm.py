"""SQLAlchemy 2.x typed table definitions: the shared results database.

Natural keys carry unique constraints so that concurrent writers (two workers racing on the same
model, a worker re-running a job after a crash) converge on one row instead of duplicating it:

============== ===================================================================
table          natural key
============== ===================================================================
models         fingerprint (sha256 of the weights; the same weights under two IDs are one model)
esd_runs       (model, estimator)        - a cache every team's jobs reuse; read only by teams that
               worked on the model (``catalog.visible_to_team``)
esd_projections (run, name)
allocations    (model, method, target, params_hash, estimator, team)
benchmarks     (model, kind, metric, key_hash, team); key_hash covers allocation + settings
jobs           (team, idempotency_key) and (team, active_key); active_key = request_hash while
               the job is queued or running, NULL afterwards (NULLs never collide)
============== ===================================================================

Team scoping: every row a team writes has ``team_id`` and ``shared``; a team reads its own rows and
every shared row. Never change this file without a new Alembic revision in ``migrations/versions``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key: only its public prefix and the sha256 of the whole key are stored."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    team: Mapped[Team] = relationship(lazy="joined")


class Model(Base):
    """One set of weights, identified by its fingerprint (model_id is how it was first named)."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[str] = mapped_column(String(512), index=True)
    source: Mapped[str] = mapped_column(String(32))
    revision: Mapped[str | None] = mapped_column(String(128), default=None)
    fingerprint: Mapped[str] = mapped_column(String(128), unique=True)
    architecture: Mapped[str] = mapped_column(String(64), default="")
    num_layers: Mapped[int] = mapped_column(Integer, default=0)
    projection_params: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EsdRun(Base):
    """One ESD analysis of a model with one estimator: computed once, reused by every team's jobs."""

    __tablename__ = "esd_runs"
    __table_args__ = (UniqueConstraint("model_pk", "estimator"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_pk: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    estimator: Mapped[str] = mapped_column(String(32))
    elapsed_s: Mapped[float] = mapped_column(Float, default=0.0)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"), default=None)
    shared: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    model: Mapped[Model] = relationship(lazy="joined")
    projections: Mapped[list[EsdProjection]] = relationship(
        back_populates="run", order_by="EsdProjection.id", cascade="all, delete-orphan", passive_deletes=True
    )


class EsdProjection(Base):
    """The spectral statistics of one projection's W^T W (see acttail.esd.ProjectionESD)."""

    __tablename__ = "esd_projections"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("esd_runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(256))
    layer: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    d_out: Mapped[int] = mapped_column(Integer)
    d_in: Mapped[int] = mapped_column(Integer)
    param_count: Mapped[int] = mapped_column(BigInteger)
    alpha: Mapped[float | None] = mapped_column(Float, default=None)
    # "xmin" is a PostgreSQL system column; the attribute keeps the paper/ESD name.
    xmin: Mapped[float | None] = mapped_column("x_min", Float, default=None)
    ks_distance: Mapped[float | None] = mapped_column(Float, default=None)
    num_tail: Mapped[int | None] = mapped_column(Integer, default=None)
    spectral_norm: Mapped[float | None] = mapped_column(Float, default=None)
    log_frobenius_norm: Mapped[float | None] = mapped_column(Float, default=None)
    stable_rank: Mapped[float | None] = mapped_column(Float, default=None)
    alpha_weighted: Mapped[float | None] = mapped_column(Float, default=None)
    # All min(d_out, d_in) eigenvalues, ascending, float32 little-endian (acttail.store.spectra),
    # for the ESD histogram; NULL in runs stored before revision 20261130_0002. Deferred: reading
    # a run's alphas never loads them.
    eigenvalues: Mapped[bytes | None] = mapped_column(LargeBinary, default=None, deferred=True)

    run: Mapped[EsdRun] = relationship(back_populates="projections")


class AllocationRow(Base):
    """An allocation document (acttail.allocate.Allocation.to_dict()), validated before insert."""

    __tablename__ = "allocations"
    __table_args__ = (
        UniqueConstraint(
            "model_pk", "method", "target", "params_hash", "estimator", "team_id", name="uq_allocations_natural_key"
        ),
        Index("ix_allocations_model_pk_target", "model_pk", "target"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_pk: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(32))
    target: Mapped[float] = mapped_column(Float)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    params_hash: Mapped[str] = mapped_column(String(64))
    # "" rather than NULL when no estimator: NULLs never collide in a unique constraint.
    estimator: Mapped[str] = mapped_column(String(32), default="")
    document: Mapped[dict[str, Any]] = mapped_column()
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    model: Mapped[Model] = relationship(lazy="joined")


class Benchmark(Base):
    """One measured number: a metric of a model, dense or under an allocation, with its settings."""

    __tablename__ = "benchmarks"
    __table_args__ = (
        UniqueConstraint("model_pk", "kind", "metric", "key_hash", "team_id", name="uq_benchmarks_natural_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_pk: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    allocation_id: Mapped[int | None] = mapped_column(
        ForeignKey("allocations.id", ondelete="CASCADE"), default=None, index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    metric: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    key_hash: Mapped[str] = mapped_column(String(64))
    versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    model: Mapped[Model] = relationship(lazy="joined")
    allocation: Mapped[AllocationRow | None] = relationship(lazy="joined")


class Job(Base):
    """A submitted job. The database, not Celery's result backend, is the source of truth."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("team_id", "idempotency_key"),
        UniqueConstraint("team_id", "active_key"),
        Index("ix_jobs_team_id_created_at", "team_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    request: Mapped[dict[str, Any]] = mapped_column()
    request_hash: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[str] = mapped_column(String(512), index=True)
    queue: Mapped[str] = mapped_column(String(16), default="cpu")
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    stage: Mapped[str] = mapped_column(String(64), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), default=None)
    active_key: Mapped[str | None] = mapped_column(String(64), default=None)
    model_pk: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"), default=None)
    esd_run_id: Mapped[int | None] = mapped_column(ForeignKey("esd_runs.id", ondelete="SET NULL"), default=None)
    allocation_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    benchmark_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Liveness (revision 20261201_0003, see acttail.store.jobs and api.reaper): the delivery that
    # claimed the job, its last heartbeat, and when / how often the job was handed to the broker.
    claimed_by: Mapped[str | None] = mapped_column(String(64), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    dispatches: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    # Read with the job in one query (LEFT OUTER JOIN): every job view shows its model.
    model: Mapped[Model | None] = relationship(lazy="joined", viewonly=True)
