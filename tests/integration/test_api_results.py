"""Reading results back: alphas, allocations (exact documents, validated uploads), benchmarks, models."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from acttail.store import catalog, jobs, results
from acttail.store.db import session_scope
from tests.integration.conftest import (
    PROJECTION_NAMES,
    Api,
    allocation_document,
    esd_rows,
    link_job,
    model_description,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def team(make_team: Callable[[], tuple[int, str]]) -> tuple[int, str]:
    return make_team()


def test_allocation_upload_round_trip(api: Api, team: tuple[int, str]) -> None:
    _, key = team
    doc = allocation_document("fp-upload-" + key[4:16], 0.6, model_id="org/uploaded")
    created = api.client.post("/v1/allocations", json=doc, headers=api.auth(key))
    assert created.status_code == 201, created.text
    assert created.json()["created"] is True and created.headers["location"] == created.json()["url"]
    fetched = api.client.get(created.json()["url"], headers=api.auth(key))
    assert fetched.status_code == 200
    assert fetched.json() == doc  # exactly the document the CLI writes
    assert list(fetched.json()) == list(doc)  # key order too (JSON, not JSONB)

    again = api.client.post("/v1/allocations", json=doc, headers=api.auth(key))
    assert again.status_code == 200 and again.json() == {**created.json(), "created": False}
    listed = api.client.get("/v1/allocations?model=org/uploaded&target=0.6&method=acttail", headers=api.auth(key))
    item = listed.json()["items"][0]
    assert listed.json()["total"] == 1 and item["id"] == created.json()["id"] and item["own"] is True
    assert item["params"]["epsilon"] == 0.1
    assert api.client.get("/v1/allocations?target=0.61&model=org/uploaded", headers=api.auth(key)).json()["total"] == 0
    assert item["model_id"] == "org/uploaded" and item["model_verified"] is False  # the uploader's claim
    # ... which names nothing shared: the model row of weights no job loaded is a placeholder
    models = api.client.get("/v1/models", headers=api.auth(key)).json()
    assert {"model_id": doc["fingerprint"], "source": "upload", "num_layers": 0} in [
        {k: m[k] for k in ("model_id", "source", "num_layers")}
        for m in models
        if m["fingerprint"] == doc["fingerprint"]
    ]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="other"), "'format' must be 'acttail.allocation'"),
        (lambda d: d.update(target=0.9), "weighted mean sparsity"),
        (lambda d: d["sparsities"].update({PROJECTION_NAMES[0]: 1.5}), "must be in [0, 1)"),
        (lambda d: d.update(fingerprint=""), "'fingerprint' must be non-empty"),
        (lambda d: d.update(model_id="m" * 600), "longer than 512"),
        (lambda d: d["param_counts"].pop(PROJECTION_NAMES[0]), "param_counts"),
    ],
)
def test_invalid_allocation_upload_is_422(
    api: Api, team: tuple[int, str], mutate: Callable[[dict], object], message: str
) -> None:
    doc = copy.deepcopy(allocation_document("fp-bad"))
    mutate(doc)
    response = api.client.post("/v1/allocations", json=doc, headers=api.auth(team[1]))
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_alphas_latest_run_by_model_id_and_estimator(
    api: Api, team: tuple[int, str], session_factory: sessionmaker[Session]
) -> None:
    description = model_description("org-" + team[1][4:10] + "/llama-tiny")
    with session_scope(session_factory) as session:
        model = catalog.get_or_create_model(description, db_session=session)
        catalog.save_esd_run(model, "ks", esd_rows(2.0), elapsed_s=3.0, db_session=session)
        catalog.save_esd_run(model, "hill", esd_rows(5.0), db_session=session)
        model_pk = model.id
    link_job(api, team[1], session_factory, str(description["model_id"]), model_pk)

    url = f"/v1/models/{description['model_id']}/alphas"
    ks = api.client.get(url + "?estimator=ks", headers=api.auth(team[1]))
    assert ks.status_code == 200, ks.text
    body = ks.json()
    assert body["run"]["estimator"] == "ks" and body["run"]["elapsed_s"] == 3.0
    assert body["alphas"] == {name: 2.0 + 0.5 * i for i, name in enumerate(PROJECTION_NAMES)}
    first = body["projections"][0]
    assert (first["d_out"], first["d_in"], first["param_count"], first["xmin"]) == (64, 64, 4096, 0.1)
    latest = api.client.get(url, headers=api.auth(team[1])).json()
    assert latest["run"]["estimator"] == "hill"  # newest run without a filter
    by_fingerprint = api.client.get(f"/v1/models/{description['fingerprint']}/alphas", headers=api.auth(team[1]))
    assert by_fingerprint.json()["model"]["model_id"] == description["model_id"]
    missing = api.client.get("/v1/models/org/never-seen/alphas", headers=api.auth(team[1]))
    assert missing.status_code == 404 and missing.json() == {"detail": "no ESD run for model 'org/never-seen'"}
    assert api.client.get(url + "?estimator=bogus", headers=api.auth(team[1])).status_code == 422


def test_models_and_alphas_show_only_models_the_team_worked_on(
    api: Api, make_team: Callable[[], tuple[int, str]], session_factory: sessionmaker[Session], model_root: Path
) -> None:
    """ESD runs are a shared cache, model IDs are not: team B cannot list or read team A's private
    model (a local path here) until B has its own job for it; then B reads the same cached run."""
    (team_a, key_a), (_, key_b) = make_team(), make_team()
    model_id = str(model_root / "local-model")
    description = model_description(model_id)
    with session_scope(session_factory) as session:  # what A's job leaves behind: model, ESD run
        model = catalog.get_or_create_model(description, db_session=session)
        run, _ = catalog.save_esd_run(model, "ks", esd_rows(), team_id=team_a, db_session=session)
        model_pk, run_id = model.id, run.id
    link_job(api, key_a, session_factory, model_id, model_pk)
    fingerprint = str(description["fingerprint"])

    def visible(key: str) -> bool:
        listed = api.client.get("/v1/models?limit=200", headers=api.auth(key))
        assert listed.status_code == 200
        return fingerprint in {m["fingerprint"] for m in listed.json()}

    assert visible(key_a)
    assert api.client.get(f"/v1/models/{fingerprint}/alphas", headers=api.auth(key_a)).json()["run"]["id"] == run_id

    assert not visible(key_b) and model_id not in api.client.get("/v1/models", headers=api.auth(key_b)).text
    for name in (model_id, fingerprint):  # the same 404 as a model nobody analysed: nothing leaks
        for path in (
            f"/v1/models/{name}/alphas",
            f"/v1/models/{name}/alphas?format=csv",
            f"/v1/models/{name}/plots/alphas.svg",
            f"/v1/models/{name}/plots/esd/{PROJECTION_NAMES[0]}.svg",
        ):
            hidden = api.client.get(path, headers=api.auth(key_b))
            assert hidden.status_code == 404, path
            assert hidden.json() == {"detail": f"no ESD run for model {name!r}"}, path

    link_job(api, key_b, session_factory, model_id, model_pk)  # B's own job resolves to the same weights
    assert visible(key_b)
    reused = api.client.get(f"/v1/models/{model_id}/alphas", headers=api.auth(key_b))
    assert reused.status_code == 200 and reused.json()["run"]["id"] == run_id  # one run, computed once


def test_benchmarks_filters_and_job_links(
    api: Api, team: tuple[int, str], session_factory: sessionmaker[Session]
) -> None:
    team_id, key = team
    description = model_description("org/bench-" + key[4:10])
    job = api.client.post("/v1/jobs", json={"model_id": description["model_id"]}, headers=api.auth(key)).json()
    with session_scope(session_factory) as session:
        model = catalog.get_or_create_model(description, db_session=session)
        run, _ = catalog.save_esd_run(model, "ks", esd_rows(), db_session=session)
        alloc, _ = results.save_allocation(
            allocation_document(str(description["fingerprint"]), 0.5), model=model, team_id=team_id, db_session=session
        )
        dense, _ = results.save_benchmark(
            model=model,
            kind="perplexity",
            metric="ppl",
            value=20.0,
            settings={"seqlen": 128},
            versions={"torch": "2.13.0"},
            team_id=team_id,
            db_session=session,
        )
        sparse, _ = results.save_benchmark(
            model=model,
            kind="perplexity",
            metric="ppl",
            value=23.0,
            settings={"seqlen": 128},
            allocation_id=alloc.id,
            team_id=team_id,
            db_session=session,
        )
        jobs.link_results(
            job["id"],
            model_pk=model.id,
            esd_run_id=run.id,
            allocation_ids=[alloc.id],
            benchmark_ids=[dense.id, sparse.id],
            db_session=session,
        )
        jobs.mark_succeeded(job["id"], db_session=session)

    polled = api.client.get(job["url"], headers=api.auth(key)).json()
    assert polled["status"] == "succeeded" and polled["progress"] == 1.0
    assert polled["links"]["allocations"] == [f"/v1/allocations/{alloc.id}"]
    assert api.client.get(polled["links"]["alphas"], headers=api.auth(key)).status_code == 200
    by_job = api.client.get(polled["links"]["benchmarks"], headers=api.auth(key)).json()
    assert {b["id"] for b in by_job["items"]} == {dense.id, sparse.id}
    only_sparse = api.client.get(f"/v1/benchmarks?allocation_id={alloc.id}", headers=api.auth(key)).json()
    assert [b["value"] for b in only_sparse["items"]] == [23.0]
    assert (only_sparse["items"][0]["method"], only_sparse["items"][0]["target"]) == ("acttail", 0.5)
    dense_row = next(b for b in by_job["items"] if b["allocation_id"] is None)
    assert (dense_row["method"], dense_row["target"], dense_row["value"]) == (None, None, 20.0)
    first = api.client.get(
        f"/v1/benchmarks?model={description['model_id']}&kind=perplexity&metric=ppl&limit=1", headers=api.auth(key)
    ).json()
    assert first["total"] == 2 and first["next_offset"] == 1
    assert (
        api.client.get("/v1/benchmarks?kind=speed&model=" + str(description["model_id"]), headers=api.auth(key)).json()[
            "total"
        ]
        == 0
    )


def test_openapi_documents_every_endpoint(api: Api) -> None:
    paths = api.client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/models",
        "/v1/models/{model}/alphas",
        "/v1/allocations",
        "/v1/allocations/{allocation_id}",
        "/v1/benchmarks",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path
    schema = api.client.get("/openapi.json").json()["components"]["schemas"]["JobRequest"]["properties"]
    assert schema["targets"]["maxItems"] == 32 and schema["model_id"]["maxLength"] == 512


def test_csv_next_to_json(api: Api, team: tuple[int, str], session_factory: sessionmaker[Session]) -> None:
    import csv
    import io

    team_id, key = team
    description = model_description("=cmd/csv-" + key[4:10])  # a formula-looking ID must not run in a spreadsheet
    doc = allocation_document(str(description["fingerprint"]), 0.5, model_id=str(description["model_id"]))
    with session_scope(session_factory) as session:
        model = catalog.get_or_create_model(description, db_session=session)
        catalog.save_esd_run(model, "ks", esd_rows(), db_session=session)
        alloc, _ = results.save_allocation(doc, model=model, team_id=team_id, db_session=session)
        results.save_benchmark(model=model, kind="perplexity", metric="ppl", value=20.0, settings={"seqlen": 128},
                               allocation_id=alloc.id, team_id=team_id, db_session=session)  # fmt: skip

    def table(url: str) -> list[dict[str, str]]:
        response = api.client.get(url, headers=api.auth(key))
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        return list(csv.DictReader(io.StringIO(response.text)))

    alphas = table(f"/v1/models/{description['fingerprint']}/alphas?format=csv")
    assert [row["name"] for row in alphas] == PROJECTION_NAMES and float(alphas[1]["alpha"]) == 3.0
    per_projection = table(f"/v1/allocations/{alloc.id}?format=csv")
    assert {row["name"]: float(row["sparsity"]) for row in per_projection} == doc["sparsities"]
    listed = table(f"/v1/allocations?model={description['fingerprint']}&format=csv")
    assert len(listed) == 1 and listed[0]["model_id"] == "'" + str(description["model_id"])
    benches = table(f"/v1/benchmarks?allocation_id={alloc.id}&format=csv")
    assert float(benches[0]["value"]) == 20.0 and benches[0]["settings"] == '{"seqlen":128}'
    assert api.client.get("/v1/benchmarks?format=xml", headers=api.auth(key)).status_code == 422
