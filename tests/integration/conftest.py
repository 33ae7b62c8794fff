"""Fixtures for the store/API/migration tests: real PostgreSQL and SQLite, the real app.

* PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth): ``acttail_test_<random>`` databases
  created for this test session and dropped at its end (``ACTTAIL_TEST_PG_ADMIN_URL`` overrides).
* SQLite: a file under pytest's tmp_path (WAL mode, like ``acttail serve``).
* ``db_url`` is parametrised, so a test that takes it runs once per backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from acttail.store import migrate
from acttail.store.db import make_engine, make_session_factory, session_scope

PG_ADMIN_URL = os.environ.get("ACTTAIL_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def new_pg_database() -> Iterator[Callable[[], str]]:
    """``new_pg_database()`` -> URL of an empty database; all are dropped after the session."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def create() -> str:
        name = f"acttail_test_{uuid.uuid4().hex[:12]}"
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # any failure here means "no PostgreSQL"
            pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({type(exc).__name__}); start it first")
        created.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield create
    with admin.connect() as conn:
        for name in created:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_session_url(new_pg_database: Callable[[], str]) -> str:
    """One migrated PostgreSQL database shared by the session's tests (they use unique names)."""
    url = new_pg_database()
    migrate.upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database URL: a fresh SQLite file, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'acttail.db'}"
        migrate.upgrade(url)
        return url
    return request.getfixturevalue("pg_session_url")


@pytest.fixture
def session_factory(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def make_team(session_factory: sessionmaker[Session]) -> Callable[[], tuple[int, str]]:
    """``make_team()`` -> (team id, API key) of a new uniquely named team."""
    from acttail.store import teams

    def create() -> tuple[int, str]:
        with session_scope(session_factory) as session:
            team = teams.create_team(f"team-{uuid.uuid4().hex[:8]}", db_session=session)
            return team.id, teams.create_api_key(team, db_session=session)

    return create


def unique_fingerprint() -> str:
    return "fp-" + uuid.uuid4().hex


def model_description(model_id: str = "org/tiny", fingerprint: str | None = None) -> dict[str, object]:
    """Valid defaults for a models row (test-data factory)."""
    return {
        "model_id": model_id, "source": "hub", "revision": None, "fingerprint": fingerprint or unique_fingerprint(),
        "architecture": "llama", "num_layers": 2, "projection_params": 4 * 64 * 64,
    }  # fmt: skip


PROJECTION_NAMES = [f"model.layers.{layer}.self_attn.{kind}_proj" for layer in (0, 1) for kind in ("q", "k")]


def esd_rows(alpha0: float = 2.5) -> list[dict[str, object]]:
    """ESD statistics for four 64x64 projections (plausible values; the store does not judge them)."""
    return [
        {
            "name": name, "layer": int(name.split(".")[2]), "kind": name.split(".")[-1][0], "shape": (64, 64),
            "param_count": 4096, "alpha": alpha0 + 0.5 * i, "xmin": 0.1, "ks_distance": 0.05, "num_tail": 20,
            "spectral_norm": 3.0, "log_frobenius_norm": 1.2, "stable_rank": 4.0, "alpha_weighted": 1.1,
        }
        for i, name in enumerate(PROJECTION_NAMES)
    ]  # fmt: skip


def esd_spectra(alpha0: float = 2.5) -> dict[str, list[float]]:
    """64 eigenvalues per projection of ``esd_rows(alpha0)``: 44 in the bulk below x_min = 0.1 and a
    tail of 20 (= num_tail) at the quantiles of a power law with that row's alpha above it."""
    spectra = {}
    for i, name in enumerate(PROJECTION_NAMES):
        alpha = alpha0 + 0.5 * i
        bulk = [0.01 * 9 ** (k / 43) for k in range(44)]  # 0.01 … 0.09
        tail = [0.1 * (1 - k / 20) ** (-1 / (alpha - 1)) for k in range(20)]  # 0.1 … (Pareto quantiles)
        spectra[name] = bulk + tail
    return spectra


def link_job(api: Api, key: str, session_factory: sessionmaker[Session], model_id: str, model_pk: int) -> str:
    """Submit a job for ``model_id`` as ``key``'s team and link it to the model row, as the worker's
    resolve stage does (the team has then worked on the model); returns the job ID."""
    from acttail.store import jobs

    response = api.client.post("/v1/jobs", json={"model_id": model_id}, headers=api.auth(key))
    assert response.status_code == 202, response.text
    with session_scope(session_factory) as session:
        jobs.link_results(response.json()["id"], model_pk=model_pk, db_session=session)
    return str(response.json()["id"])


def allocation_document(fingerprint: str, target: float = 0.5, model_id: str = "org/tiny") -> dict[str, object]:
    """An allocation document exactly as ``acttail allocate`` writes it (built by acttail.allocate)."""
    from acttail.allocate import allocate

    alphas = {name: 2.5 + 0.5 * i for i, name in enumerate(PROJECTION_NAMES)}
    counts = {name: 4096 for name in PROJECTION_NAMES}
    return allocate(alphas, counts, target, model_id=model_id, fingerprint=fingerprint, estimator="ks").to_dict()


# --- the app -------------------------------------------------------------------------------------


class RecordingDispatcher:
    """A JobDispatcher that records what it was asked to enqueue; ``down`` simulates a dead broker,
    ``held`` what it still holds (``held.clear()``: a flushed Redis)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.held: set[str] = set()
        self.down = False

    def dispatch(self, job_id: str, queue: str) -> None:
        from api.dispatch import BrokerUnavailableError

        if self.down:
            raise BrokerUnavailableError("message broker unreachable (test)")
        self.sent.append((job_id, queue))
        self.held.add(job_id)

    def pending(self) -> set[str] | None:
        self.check()
        return set(self.held)

    def check(self) -> None:
        from api.dispatch import BrokerUnavailableError

        if self.down:
            raise BrokerUnavailableError("message broker unreachable (test)")

    def close(self) -> None:
        pass


class Api:
    """A TestClient on a real app and database, plus the dispatcher it enqueues to."""

    def __init__(self, client: object, dispatcher: object, settings: object) -> None:
        self.client = client
        self.dispatcher = dispatcher
        self.settings = settings

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


MAX_BODY = 64 * 1024


@pytest.fixture
def model_root(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    (root / "local-model").mkdir(parents=True)
    return root


@pytest.fixture
def make_api(db_url: str, tmp_path: Path, model_root: Path) -> Iterator[Callable[..., Api]]:
    """``make_api(**settings)`` -> an Api on the real app with those settings overridden (closed after the test)."""
    from contextlib import ExitStack

    from fastapi.testclient import TestClient

    from acttail.settings import Settings
    from api.app import create_app

    with ExitStack() as stack:

        def make(**overrides: object) -> Api:
            values: dict[str, object] = {
                "home": tmp_path / "home", "database_url": db_url, "model_roots": [model_root],
                "max_body_bytes": MAX_BODY,
                # No reaper: tests share one PostgreSQL database, and tests/integration/test_reaper.py runs its own.
                "reaper_interval_s": 0, **overrides,
            }  # fmt: skip
            settings = Settings(**values)  # type: ignore[arg-type]
            dispatcher = RecordingDispatcher()
            client = stack.enter_context(TestClient(create_app(settings, dispatcher=dispatcher)))
            return Api(client, dispatcher, settings)

        yield make


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()
