"""The API keeps its own contract: schemathesis drives every operation of the app's OpenAPI document
against the real app, served by uvicorn on loopback, on real PostgreSQL and SQLite, authenticated.

Every response must be a non-5xx whose status, content type, headers and body the document
declares. Two of schemathesis's checks are about the requests, not the responses, and are left
out on purpose: ``positive_data_acceptance`` (the schema cannot say which model IDs exist, so a
well-formed job for an unknown model is rightly a 422) and ``negative_data_rejection`` (unknown
query parameters are ignored, as HTTP APIs do, and the key is added to every request here, also
to the "negative" ones schemathesis sends without it). Negative cases still run: they must not 500.
The job dispatcher records instead of enqueueing (no worker runs random model IDs).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from acttail.store import catalog, migrate, results, teams
from acttail.store.db import make_engine, make_session_factory, session_scope
from tests.integration.conftest import RecordingDispatcher, allocation_document, esd_rows, model_description

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25  # per operation and backend: 16 operations, about a minute in all


class LiveApi:
    """``uvicorn`` serving ``create_app`` in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveApi:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _seed(database_url: str) -> str:
    """Two teams' worth of data (a model with an ESD run, a job, allocations, a benchmark), so
    reads answer 200 too, not only 404; returns the first team's key."""
    engine = make_engine(database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            key = ""
            for name in ("contract-a", "contract-b"):
                team = teams.create_team(f"{name}-{uuid.uuid4().hex[:6]}", db_session=session)
                key = key or teams.create_api_key(team, db_session=session)
                model = catalog.get_or_create_model(model_description(f"org/{name}"), db_session=session)
                catalog.save_esd_run(model, "ks", esd_rows(), team_id=team.id, db_session=session)
                doc = allocation_document(model.fingerprint, 0.5, model_id=model.model_id)
                from acttail.allocate import Allocation

                row, _ = results.save_allocation(
                    Allocation.from_dict(doc), model=model, team_id=team.id, shared=True, db_session=session
                )
                results.save_benchmark(model=model, kind="perplexity", metric="ppl", value=20.0, settings={},
                                       allocation_id=row.id, team_id=team.id, shared=True, db_session=session)  # fmt: skip
            return key
    finally:
        engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live_api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveApi, str]]:
    from acttail.settings import Settings
    from api.app import create_app

    home = tmp_path_factory.mktemp("contract")
    if request.param == "sqlite":
        url = f"sqlite:///{home / 'acttail.db'}"
    else:
        url = request.getfixturevalue("new_pg_database")()
    migrate.upgrade(url)
    key = _seed(url)
    (home / "models").mkdir()
    settings = Settings(home=home, database_url=url, model_roots=[Path(home / "models")])
    with LiveApi(create_app(settings, dispatcher=RecordingDispatcher())) as live:
        yield live, key


def _app_schema() -> dict[str, Any]:
    """The document the app serves at /openapi.json (it depends on no database: an in-memory one)."""
    import tempfile

    from acttail.settings import Settings
    from api.app import create_app

    return create_app(Settings(home=Path(tempfile.gettempdir()), database_url="sqlite://")).openapi()


# Built at import, not from a fixture: schemathesis's lazy fixture loader does not run on pytest 9.
schema = schemathesis.openapi.from_dict(_app_schema())


def test_the_served_document_is_the_one_under_test(live_api: tuple[LiveApi, str]) -> None:
    import httpx

    live, _ = live_api
    assert httpx.get(f"{live.url}/openapi.json").json() == _app_schema()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_operation_keeps_the_contract(case: Any, live_api: tuple[LiveApi, str]) -> None:
    live, key = live_api
    case.call_and_validate(
        base_url=live.url,
        headers={"Authorization": f"Bearer {key}"},
        excluded_checks=[positive_data_acceptance, negative_data_rejection],
    )
