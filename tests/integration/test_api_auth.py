"""Authentication (401) and team isolation (404 on another team's private data)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from acttail.store import catalog, results, teams
from acttail.store.db import session_scope
from tests.integration.conftest import Api, allocation_document, model_description

pytestmark = pytest.mark.integration

PROTECTED = [("get", "/v1/jobs"), ("post", "/v1/jobs"), ("get", "/v1/models"), ("get", "/v1/allocations"),
             ("post", "/v1/allocations"), ("get", "/v1/benchmarks"), ("get", "/v1/models/org/x/alphas")]  # fmt: skip


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_missing_key_is_401(api: Api, method: str, path: str) -> None:
    response = api.client.request(method, path, json={})
    assert response.status_code == 401
    assert response.json() == {"detail": "missing API key: send 'Authorization: Bearer <key>'"}
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header", ["Bearer act_000000000000_" + "x" * 43, "Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer "]
)
def test_invalid_key_is_401(api: Api, header: str) -> None:
    response = api.client.get("/v1/jobs", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json()["detail"] in (
        "invalid or revoked API key",
        "missing API key: send 'Authorization: Bearer <key>'",
    )


def test_tampered_and_revoked_keys(
    api: Api, make_team: Callable[[], tuple[int, str]], session_factory: sessionmaker[Session]
) -> None:
    _, key = make_team()
    assert api.client.get("/v1/jobs", headers=api.auth(key)).status_code == 200
    tampered = key[:-1] + ("A" if key[-1] != "A" else "B")  # right prefix, wrong secret
    assert api.client.get("/v1/jobs", headers=api.auth(tampered)).status_code == 401
    with session_scope(session_factory) as session:
        teams.revoke_api_key(key.split("_")[1], db_session=session)
    assert api.client.get("/v1/jobs", headers=api.auth(key)).status_code == 401


def test_keys_are_stored_hashed(
    make_team: Callable[[], tuple[int, str]], session_factory: sessionmaker[Session]
) -> None:
    from sqlalchemy import select

    from acttail.store.keys import hash_key
    from acttail.store.orm import ApiKey

    _, key = make_team()
    with session_scope(session_factory) as session:
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == key.split("_")[1]))
        assert row is not None and row.key_hash == hash_key(key) and key not in (row.key_hash, row.prefix)


def test_other_teams_private_data_is_404(
    api: Api, make_team: Callable[[], tuple[int, str]], session_factory: sessionmaker[Session]
) -> None:
    (owner_id, owner_key), (_, other_key) = make_team(), make_team()
    job = api.client.post("/v1/jobs", json={"model_id": "org/secret"}, headers=api.auth(owner_key)).json()
    description = model_description("org/secret")
    with session_scope(session_factory) as session:
        model = catalog.get_or_create_model(description, db_session=session)
        private, _ = results.save_allocation(
            allocation_document(str(description["fingerprint"]), 0.5), model=model, team_id=owner_id, db_session=session
        )
        shared, _ = results.save_allocation(
            allocation_document(str(description["fingerprint"]), 0.6),
            model=model,
            team_id=owner_id,
            shared=True,
            db_session=session,
        )
        bench, _ = results.save_benchmark(
            model=model,
            kind="perplexity",
            metric="ppl",
            value=20.0,
            allocation_id=private.id,
            team_id=owner_id,
            db_session=session,
        )

    other = api.auth(other_key)
    assert api.client.get(job["url"], headers=other).status_code == 404
    assert api.client.get(job["url"], headers=other).json() == {"detail": f"no job {job['id']}"}
    assert api.client.delete(job["url"], headers=other).status_code == 404
    assert api.client.get(job["url"], headers=api.auth(owner_key)).json()["status"] == "queued"  # untouched
    assert api.client.get(f"/v1/allocations/{private.id}", headers=other).status_code == 404
    assert api.client.get(f"/v1/allocations/{shared.id}", headers=other).status_code == 200
    listed = api.client.get("/v1/allocations?model=org/secret", headers=other).json()
    assert [a["id"] for a in listed["items"]] == [shared.id] and listed["items"][0]["own"] is False
    assert api.client.get("/v1/benchmarks?model=org/secret", headers=other).json()["total"] == 0
    assert (
        api.client.get("/v1/benchmarks?model=org/secret", headers=api.auth(owner_key)).json()["items"][0]["id"]
        == bench.id
    )
    assert api.client.get("/v1/jobs", headers=other).json()["total"] == 0
