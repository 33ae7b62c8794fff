"""POST/GET/DELETE /v1/jobs against the real app and database (both backends)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from acttail.store import jobs
from acttail.store.db import session_scope
from acttail.store.orm import Job
from tests.integration.conftest import Api

pytestmark = pytest.mark.integration

BODY = {
    "model_id": "smollm2-135m",
    "targets": [0.5, 0.7],
    "evaluations": {"perplexity": {"seqlen": 128, "max_tokens": 1024}},
}


def test_submit_returns_202_and_dispatches(api: Api, make_team: Callable[[], tuple[int, str]]) -> None:
    _, key = make_team()
    response = api.client.post("/v1/jobs", json=BODY, headers=api.auth(key))
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["created"] is True
    assert body["url"] == f"/v1/jobs/{body['id']}" == response.headers["location"]
    assert api.dispatcher.sent == [(body["id"], "cpu")]

    job = api.client.get(body["url"], headers=api.auth(key)).json()
    assert job["status"] == "queued" and job["progress"] == 0.0
    assert job["request"]["targets"] == [0.5, 0.7] and job["request"]["queue"] == "cpu"
    assert job["created_at"].endswith("Z") or job["created_at"].endswith("+00:00")


def test_identical_request_while_queued_returns_same_job(api: Api, make_team: Callable[[], tuple[int, str]]) -> None:
    _, key = make_team()
    first = api.client.post("/v1/jobs", json=BODY, headers=api.auth(key))
    # Same request after normalisation: alias case and target order do not matter.
    same = {**BODY, "model_id": "SmolLM2-135M", "targets": [0.7, 0.5]}
    second = api.client.post("/v1/jobs", json=same, headers=api.auth(key))
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json()["id"] == first.json()["id"] and second.json()["created"] is False
    assert len(api.dispatcher.sent) == 1  # not enqueued twice
    _, other_key = make_team()
    third = api.client.post("/v1/jobs", json=BODY, headers=api.auth(other_key))
    assert third.status_code == 202 and third.json()["id"] != first.json()["id"]  # teams are separate


def test_idempotency_key(api: Api, make_team: Callable[[], tuple[int, str]]) -> None:
    _, key = make_team()
    headers = {**api.auth(key), "Idempotency-Key": "retry-7f3a"}
    first = api.client.post("/v1/jobs", json=BODY, headers=headers)
    api.client.delete(first.json()["url"], headers=api.auth(key))  # finished: dedup by hash no longer applies
    replay = api.client.post("/v1/jobs", json=BODY, headers=headers)
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    assert replay.json()["status"] == "cancelled"
    conflict = api.client.post("/v1/jobs", json={**BODY, "targets": [0.2]}, headers=headers)
    assert conflict.status_code == 422
    assert conflict.json() == {"detail": "Idempotency-Key was already used for a different request"}
    too_long = api.client.post("/v1/jobs", json=BODY, headers={**api.auth(key), "Idempotency-Key": "k" * 129})
    assert too_long.status_code == 422


def test_cancel(api: Api, make_team: Callable[[], tuple[int, str]], session_factory: sessionmaker[Session]) -> None:
    _, key = make_team()
    url = api.client.post("/v1/jobs", json=BODY, headers=api.auth(key)).json()["url"]
    cancelled = api.client.delete(url, headers=api.auth(key))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    assert api.client.delete(url, headers=api.auth(key)).status_code == 200  # idempotent

    done = api.client.post("/v1/jobs", json={**BODY, "targets": [0.4]}, headers=api.auth(key)).json()
    with session_scope(session_factory) as session:
        jobs.mark_succeeded(done["id"], db_session=session)
    refused = api.client.delete(done["url"], headers=api.auth(key))
    assert refused.status_code == 409
    assert "already succeeded" in refused.json()["detail"]
    assert api.client.delete("/v1/jobs/00000000-0000-0000-0000-000000000000", headers=api.auth(key)).status_code == 404


def test_list_filters_and_paginates(api: Api, make_team: Callable[[], tuple[int, str]]) -> None:
    _, key = make_team()
    ids = [
        api.client.post("/v1/jobs", json={**BODY, "targets": [t]}, headers=api.auth(key)).json()["id"]
        for t in (0.1, 0.2, 0.3)
    ]
    api.client.delete(f"/v1/jobs/{ids[0]}", headers=api.auth(key))
    page = api.client.get("/v1/jobs?limit=2", headers=api.auth(key)).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["next_offset"] == 2
    rest = api.client.get("/v1/jobs?limit=2&offset=2", headers=api.auth(key)).json()
    assert rest["next_offset"] is None
    assert {j["id"] for j in page["items"] + rest["items"]} == set(ids)
    queued = api.client.get("/v1/jobs?status=queued&model=smollm2-135m", headers=api.auth(key)).json()
    assert {j["id"] for j in queued["items"]} == set(ids[1:])
    assert api.client.get("/v1/jobs?status=bogus", headers=api.auth(key)).status_code == 422
    assert api.client.get("/v1/jobs?limit=1000", headers=api.auth(key)).status_code == 422


def test_broker_down_answers_503_and_leaves_no_job(
    api: Api, make_team: Callable[[], tuple[int, str]], session_factory: sessionmaker[Session]
) -> None:
    team_id, key = make_team()
    api.dispatcher.down = True
    response = api.client.post("/v1/jobs", json=BODY, headers=api.auth(key))
    assert response.status_code == 503
    assert response.json() == {"detail": "message broker unreachable (test)"}
    with session_scope(session_factory) as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.team_id == team_id)) == 0
    assert api.client.get("/readyz").status_code == 503
    api.dispatcher.down = False  # recovers by itself: the same request now goes through
    assert api.client.post("/v1/jobs", json=BODY, headers=api.auth(key)).status_code == 202
    assert api.client.get("/readyz").json() == {"status": "ok", "checks": {"database": "ok", "executor": "ok"}}
