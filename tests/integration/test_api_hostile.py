"""Hostile teams: what one team uploads can neither break another team's reads nor relabel a model
another team's data or job refers to, and a team can take its own uploads back.

Real app on real PostgreSQL and SQLite; a job's model and ESD run are stored as the worker's
resolve and ESD stages store them (``catalog.get_or_create_model``, ``save_esd_run``).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from acttail.store import catalog, results
from acttail.store.db import session_scope
from tests.integration.conftest import (
    PROJECTION_NAMES,
    Api,
    allocation_document,
    esd_rows,
    link_job,
    model_description,
    unique_fingerprint,
)

pytestmark = pytest.mark.integration


def _nested_params_body(doc: dict[str, object], depth: int) -> str:
    """The document as JSON with ``params`` nested ``depth`` objects deep (built as text: json.dumps
    itself would recurse)."""
    doc = {**doc, "params": {}}
    return json.dumps(doc).replace('"params": {}', '"params": ' + '{"a": ' * depth + "{}" + "}" * depth)


def _document(fingerprint: str, names: list[str], first_count: int = 4096) -> dict[str, object]:
    """An allocation document built by acttail.allocate for ``names`` (the first with ``first_count`` parameters)."""
    from acttail.allocate import allocate

    alphas = {name: 2.5 + 0.5 * i for i, name in enumerate(names)}
    counts = {name: first_count if i == 0 else 4096 for i, name in enumerate(names)}
    return allocate(alphas, counts, 0.5, model_id="evil/renamed", fingerprint=fingerprint, estimator="ks").to_dict()


def _listing_ok(api: Api, key: str) -> int:
    listed = api.client.get("/v1/allocations?limit=200", headers=api.auth(key))
    assert listed.status_code == 200, listed.text
    return int(listed.json()["total"])


@pytest.mark.parametrize("depth", [17, 260, 600, 2000])
def test_deep_params_upload_is_refused_and_every_listing_stays_200(
    api: Api, make_team: Callable[[], tuple[int, str]], depth: int
) -> None:
    (_, key_a), (_, key_b) = make_team(), make_team()
    before = (_listing_ok(api, key_a), _listing_ok(api, key_b))
    body = _nested_params_body(allocation_document(unique_fingerprint()), depth)
    response = api.client.post(
        "/v1/allocations?shared=true", content=body, headers={**api.auth(key_a), "content-type": "application/json"}
    )
    # Up to the JSON parser's own limit the bound answers 422 and names itself; beyond it the body
    # cannot even be parsed (400). Never a 500, and nothing is stored.
    if depth < 1000:
        assert response.status_code == 422, response.text
        assert response.json() == {"detail": "allocation document is nested deeper than 16 levels"}
    else:
        assert response.status_code == 400, response.text
    assert (_listing_ok(api, key_a), _listing_ok(api, key_b)) == before


def test_params_nested_within_the_bound_are_stored_and_listed(
    api: Api, make_team: Callable[[], tuple[int, str]]
) -> None:
    (_, key_a), (_, key_b) = make_team(), make_team()
    body = _nested_params_body(allocation_document(unique_fingerprint()), 14)  # 1 (doc) + 1 (params) + 14
    created = api.client.post(
        "/v1/allocations?shared=true", content=body, headers={**api.auth(key_a), "content-type": "application/json"}
    )
    assert created.status_code == 201, created.text
    for key in (key_a, key_b):
        assert created.json()["id"] in {i["id"] for i in api.client.get("/v1/allocations?limit=200",
                                                                        headers=api.auth(key)).json()["items"]}  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"epsilon": NaN}', "NaN or Infinity"),
        ('{"epsilon": Infinity}', "NaN or Infinity"),
        ('{"n": 100000000000000000000}', "outside the 64-bit range"),
        ('{"s": "' + "x" * 5000 + '"}', "longer than 4096"),
        ('{"s": "a\\u0000b"}', "with a NUL"),
    ],
)
def test_unstorable_values_are_422(api: Api, make_team: Callable[[], tuple[int, str]], raw: str, message: str) -> None:
    _, key = make_team()
    before = _listing_ok(api, key)  # other tests' shared uploads in the session's PostgreSQL count too
    doc = {**allocation_document(unique_fingerprint()), "params": {}}
    body = json.dumps(doc).replace('"params": {}', f'"params": {{"x": {raw}}}')
    response = api.client.post("/v1/allocations", content=body,
                               headers={**api.auth(key), "content-type": "application/json"})  # fmt: skip
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert _listing_ok(api, key) == before


def test_too_many_values_are_422(make_api: Callable[..., Api], make_team: Callable[[], tuple[int, str]]) -> None:
    api = make_api(max_body_bytes=1_048_576)
    _, key = make_team()
    doc = {**allocation_document(unique_fingerprint()), "params": {"x": [0] * 60_000}}
    response = api.client.post("/v1/allocations", json=doc, headers=api.auth(key))
    assert response.status_code == 422 and "more than 50000 values" in response.json()["detail"]


def test_projection_names_with_a_trailing_newline_are_refused(
    api: Api, make_team: Callable[[], tuple[int, str]]
) -> None:
    _, key = make_team()
    doc = allocation_document(unique_fingerprint())
    name = PROJECTION_NAMES[0]
    for field in ("sparsities", "param_counts"):
        doc[field] = {(k + "\n" if k == name else k): v for k, v in doc[field].items()}  # type: ignore[attr-defined]
    response = api.client.post("/v1/allocations", json=doc, headers=api.auth(key))
    assert response.status_code == 422 and "projection name" in response.json()["detail"]


def test_an_upload_cannot_relabel_a_model_another_teams_job_already_loaded(
    api: Api, make_team: Callable[[], tuple[int, str]], session_factory: sessionmaker[Session]
) -> None:
    """B's job loaded the weights (model row, ESD run); A uploads an allocation with their real
    fingerprint and a made-up name. B's job, models and alphas keep the truth."""
    (team_b, key_b), (_, key_a) = make_team(), make_team()
    description = model_description("org/real-model")
    fingerprint = str(description["fingerprint"])
    with session_scope(session_factory) as session:
        model = catalog.get_or_create_model(description, db_session=session)
        catalog.save_esd_run(model, "ks", esd_rows(), team_id=team_b, db_session=session)
        model_pk = model.id
    job_id = link_job(api, key_b, session_factory, "org/real-model", model_pk)

    wrong_sizes = api.client.post("/v1/allocations?shared=true", headers=api.auth(key_a),
                                  json=_document(fingerprint, PROJECTION_NAMES, first_count=1))  # fmt: skip
    assert wrong_sizes.status_code == 422 and "is not the model's 4096" in wrong_sizes.json()["detail"]
    other_names = [name.replace("model.layers", "model.decoder.layers") for name in PROJECTION_NAMES]
    wrong_names = api.client.post("/v1/allocations?shared=true", headers=api.auth(key_a),
                                  json=_document(fingerprint, other_names))  # fmt: skip
    assert wrong_names.status_code == 422 and "are not the 4 of the model" in wrong_names.json()["detail"]

    renamed = api.client.post(
        "/v1/allocations?shared=true", json=allocation_document(fingerprint, model_id="evil/renamed"),
        headers=api.auth(key_a),
    )  # fmt: skip
    assert renamed.status_code == 201, renamed.text  # matches the weights: stored, under the true name
    job = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(key_b)).json()
    assert job["links"]["model"] == "org/real-model"
    models = {m["fingerprint"]: m for m in api.client.get("/v1/models?limit=200", headers=api.auth(key_b)).json()}
    assert (models[fingerprint]["model_id"], models[fingerprint]["source"]) == ("org/real-model", "hub")
    assert api.client.get(job["links"]["alphas"], headers=api.auth(key_b)).status_code == 200
    listed = api.client.get(f"/v1/allocations?model={fingerprint}", headers=api.auth(key_b)).json()["items"]
    assert [(i["model_id"], i["model_verified"], i["own"]) for i in listed] == [("org/real-model", True, False)]


def test_an_upload_for_unknown_weights_is_only_a_claim(
    api: Api, make_team: Callable[[], tuple[int, str]], session_factory: sessionmaker[Session]
) -> None:
    """A uploads first, for weights nobody loaded, under a made-up name; C claims another name for
    the same fingerprint. Each sees its own claim on its own upload, the shared row names nothing,
    and when B's job loads the weights the row takes their facts: B never sees a claim."""
    (_, key_a), (team_b, key_b), (_, key_c) = make_team(), make_team(), make_team()
    fingerprint = unique_fingerprint()
    for key, name in ((key_a, "evil/renamed"), (key_c, "other/claim")):
        posted = api.client.post("/v1/allocations?shared=true", json=allocation_document(fingerprint, model_id=name),
                                 headers=api.auth(key))  # fmt: skip
        assert posted.status_code == 201, posted.text
    claims = {(i["model_id"], i["own"]) for i in api.client.get(f"/v1/allocations?model={fingerprint}",
                                                                headers=api.auth(key_a)).json()["items"]}  # fmt: skip
    assert claims == {("evil/renamed", True), ("other/claim", False)}
    assert api.client.get("/v1/allocations?model=evil/renamed", headers=api.auth(key_a)).json()["total"] == 1
    with session_scope(session_factory) as session:
        placeholder = catalog.get_model_by_fingerprint(fingerprint, db_session=session)
        assert placeholder is not None
        assert (placeholder.model_id, placeholder.source, placeholder.num_layers) == (fingerprint, "upload", 0)

    with session_scope(session_factory) as session:  # B's job resolves the real weights
        model = catalog.get_or_create_model(model_description("org/real-model", fingerprint), db_session=session)
        catalog.save_esd_run(model, "ks", esd_rows(), team_id=team_b, db_session=session)
        model_pk = model.id
    job_id = link_job(api, key_b, session_factory, "org/real-model", model_pk)
    job = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(key_b)).json()
    assert job["links"]["model"] == "org/real-model"
    alphas = api.client.get(job["links"]["alphas"], headers=api.auth(key_b))
    assert alphas.status_code == 200, alphas.text
    assert (alphas.json()["model"]["model_id"], alphas.json()["model"]["num_layers"]) == ("org/real-model", 2)
    for key in (key_a, key_b):
        items = api.client.get(f"/v1/allocations?model={fingerprint}", headers=api.auth(key)).json()["items"]
        assert {(i["model_id"], i["model_verified"]) for i in items} == {("org/real-model", True)}


def test_a_team_deletes_its_own_upload_and_nothing_else(
    api: Api, make_team: Callable[[], tuple[int, str]], session_factory: sessionmaker[Session]
) -> None:
    (team_a, key_a), (_, key_b) = make_team(), make_team()
    fingerprint = unique_fingerprint()
    own = api.client.post("/v1/allocations?shared=true", json=allocation_document(fingerprint, 0.5),
                          headers=api.auth(key_a)).json()["id"]  # fmt: skip
    kept = api.client.post("/v1/allocations?shared=true", json=allocation_document(fingerprint, 0.6),
                           headers=api.auth(key_a)).json()["id"]  # fmt: skip
    theirs = api.client.post("/v1/allocations?shared=true", json=allocation_document(fingerprint, 0.5),
                             headers=api.auth(key_b)).json()["id"]  # fmt: skip
    with session_scope(session_factory) as session:
        row = results.get_allocation(kept, team_id=team_a, db_session=session)
        results.save_benchmark(model=row.model, kind="perplexity", metric="ppl", value=12.5, settings={},
                               allocation_id=kept, team_id=team_a, db_session=session)  # fmt: skip

    assert api.client.delete(f"/v1/allocations/{theirs}", headers=api.auth(key_a)).status_code == 404
    measured = api.client.delete(f"/v1/allocations/{kept}", headers=api.auth(key_a))
    assert measured.status_code == 409 and "benchmark" in measured.json()["detail"]
    deleted = api.client.delete(f"/v1/allocations/{own}", headers=api.auth(key_a))
    assert deleted.status_code == 204 and deleted.content == b""
    assert api.client.get(f"/v1/allocations/{own}", headers=api.auth(key_a)).status_code == 404
    assert api.client.delete(f"/v1/allocations/{own}", headers=api.auth(key_a)).status_code == 404
    for key in (key_a, key_b):
        ids = {i["id"] for i in api.client.get("/v1/allocations?limit=200", headers=api.auth(key)).json()["items"]}
        assert own not in ids and {kept, theirs} <= ids
    benchmarks = api.client.get(f"/v1/benchmarks?allocation_id={kept}", headers=api.auth(key_a)).json()
    assert benchmarks["total"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {"model_id": "org/name", "revision": "main\n"},
        {"model_id": "org/name\n"},
        {"model_id": "org/name", "revision": "v1.0\n"},
    ],
)
def test_trailing_newlines_are_refused(
    api: Api, make_team: Callable[[], tuple[int, str]], body: dict[str, str]
) -> None:
    _, key = make_team()
    response = api.client.post("/v1/jobs", json=body, headers=api.auth(key))
    assert response.status_code == 422, response.text
    assert api.dispatcher.sent == []
