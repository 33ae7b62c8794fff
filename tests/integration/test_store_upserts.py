"""Natural keys + ON CONFLICT upserts: re-runs and concurrent writers never duplicate rows."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from acttail.store import catalog, results
from acttail.store.db import session_scope
from acttail.store.orm import AllocationRow, Benchmark, EsdProjection, EsdRun, Model
from tests.integration.conftest import allocation_document, esd_rows, model_description

pytestmark = pytest.mark.integration

THREADS = 6


def race(fn: Callable[[], Any], threads: int = THREADS) -> list[Any]:
    """Run ``fn`` in ``threads`` threads released together; re-raise the first error."""
    barrier = threading.Barrier(threads)
    out: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        barrier.wait()
        try:
            out.append(fn())
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=target) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    if errors:
        raise errors[0]
    return out


def count(session_factory: sessionmaker[Session], entity: Any, *where: Any) -> int:
    with session_scope(session_factory) as session:
        return int(session.scalar(select(func.count()).select_from(entity).where(*where)) or 0)


def test_concurrent_esd_writers_store_one_run(
    session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    description = model_description()

    def write() -> tuple[int, bool]:
        with session_scope(session_factory) as session:
            model = catalog.get_or_create_model(description, db_session=session)
            run, created = catalog.save_esd_run(model, "ks", esd_rows(), elapsed_s=1.5, db_session=session)
            return run.id, created

    outcomes = race(write)
    assert len({run_id for run_id, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1
    fingerprint = description["fingerprint"]
    assert count(session_factory, Model, Model.fingerprint == fingerprint) == 1
    run_id = outcomes[0][0]
    assert count(session_factory, EsdRun, EsdRun.id == run_id) == 1
    assert count(session_factory, EsdProjection, EsdProjection.run_id == run_id) == len(esd_rows())
    with session_scope(session_factory) as session:
        stored = catalog.get_esd_run(str(fingerprint), "ks", db_session=session)
        assert stored is not None
        assert [p.alpha for p in stored.projections] == [2.5, 3.0, 3.5, 4.0]
        assert stored.projections[0].xmin == pytest.approx(0.1)  # column x_min on PostgreSQL


def test_concurrent_allocation_and_benchmark_writers(
    session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    team_id, _ = make_team()
    description = model_description()
    doc = allocation_document(str(description["fingerprint"]))

    def write() -> tuple[int, int]:
        with session_scope(session_factory) as session:
            model = catalog.get_or_create_model(description, db_session=session)
            row, _ = results.save_allocation(doc, model=model, team_id=team_id, db_session=session)
            bench, _ = results.save_benchmark(
                model=model, kind="perplexity", metric="ppl", value=12.5, settings={"seqlen": 128},
                allocation_id=row.id, team_id=team_id, db_session=session,
            )  # fmt: skip
            return row.id, bench.id

    outcomes = race(write)
    assert len(set(outcomes)) == 1
    allocation_id, benchmark_id = outcomes[0]
    assert count(session_factory, AllocationRow, AllocationRow.team_id == team_id) == 1
    assert count(session_factory, Benchmark, Benchmark.team_id == team_id) == 1


def test_rerun_replaces_benchmark_value_keeps_first_allocation(
    session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    team_id, _ = make_team()
    description = model_description()
    with session_scope(session_factory) as session:
        model = catalog.get_or_create_model(description, db_session=session)
        first, created = results.save_allocation(
            allocation_document(str(description["fingerprint"])), model=model, team_id=team_id, db_session=session
        )
        again, created_again = results.save_allocation(
            first.document, model=model, team_id=team_id, shared=True, db_session=session
        )
        assert (created, created_again) == (True, False)
        assert again.id == first.id and again.shared  # publishing an existing row flips the flag only
        b1, c1 = results.save_benchmark(
            model=model, kind="speed", metric="tokens_per_s", value=10.0, team_id=team_id, db_session=session
        )
        b2, c2 = results.save_benchmark(
            model=model, kind="speed", metric="tokens_per_s", value=11.0, team_id=team_id, db_session=session
        )
        assert (c1, c2) == (True, False)
        assert b2.id == b1.id and b2.value == 11.0
        dense_and_sparse = results.save_benchmark(
            model=model,
            kind="speed",
            metric="tokens_per_s",
            value=9.0,
            allocation_id=first.id,
            team_id=team_id,
            db_session=session,
        )
        assert dense_and_sparse[0].id != b1.id  # the allocation is part of the natural key


def test_other_team_cannot_see_private_rows(
    session_factory: sessionmaker[Session], make_team: Callable[[], tuple[int, str]]
) -> None:
    (owner, _), (other, _) = make_team(), make_team()
    description = model_description()
    with session_scope(session_factory) as session:
        model = catalog.get_or_create_model(description, db_session=session)
        private, _ = results.save_allocation(
            allocation_document(str(description["fingerprint"]), 0.5), model=model, team_id=owner, db_session=session
        )
        shared, _ = results.save_allocation(
            allocation_document(str(description["fingerprint"]), 0.6),
            model=model,
            team_id=owner,
            shared=True,
            db_session=session,
        )
    with session_scope(session_factory) as session:
        visible, total = results.list_allocations(
            team_id=other, model=str(description["fingerprint"]), db_session=session
        )
        assert [row.id for row in visible] == [shared.id] and total == 1
        own, own_total = results.list_allocations(team_id=owner, model="org/tiny", target=0.5, db_session=session)
        assert private.id in [row.id for row in own]
        with pytest.raises(results.NotFoundError):
            results.get_allocation(private.id, team_id=other, db_session=session)
