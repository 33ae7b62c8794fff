"""``acttail run`` / ``acttail evaluate`` record their results where ``acttail serve`` and the API read them.

A tiny random Llama (tests/tiny_models.py) is evaluated by the real CLI into a temporary SQLite
database; the rows are read back through the store and through the API app with team
``default``'s key, and every number must equal the JSON document the same command wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from acttail.cli import main
from acttail.store import catalog, results, teams
from acttail.store.db import make_engine, make_session_factory, session_scope
from tests.integration.conftest import RecordingDispatcher
from tests.tiny_models import save_tiny_model

pytestmark = pytest.mark.integration

QUICK = ["--seqlen", "128", "--max-tokens", "256", "--calibration-tokens", "512", "--quiet"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture
def db_url(tmp_path: Path, acttail_home: Path) -> str:
    return f"sqlite:///{tmp_path / 'results.db'}"


def cli(*args: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    assert exc.value.code == 0


def stored(db_url: str, fingerprint: str) -> dict[str, Any]:
    """Everything the store holds for the model, read as team ``default``."""
    engine = make_engine(db_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            team = teams.get_team_by_name("default", db_session=session)
            run = catalog.get_esd_run(fingerprint, "ks", db_session=session)
            allocations, _ = results.list_allocations(team_id=team.id, model=fingerprint, limit=500, db_session=session)
            benchmarks, _ = results.list_benchmarks(team_id=team.id, model=fingerprint, limit=500, db_session=session)
            return {
                "models": catalog.find_models(fingerprint, db_session=session),
                "alphas": None if run is None else {p.name: p.alpha for p in run.projections},
                "allocations": {row.id: row.document for row in allocations},
                "benchmarks": {(row.allocation_id, row.kind, row.metric): row.value for row in benchmarks},
                "benchmark_ids": sorted(row.id for row in benchmarks),
                "versions": [row.versions for row in benchmarks],
            }
    finally:
        engine.dispose()


def expected_numbers(doc: dict[str, Any], allocation_ids: dict[str, int]) -> dict[tuple[int | None, str, str], float]:
    """(allocation row, kind, metric) -> value, straight from the JSON document."""
    out: dict[tuple[int | None, str, str], float] = {}
    for variant in doc["variants"]:
        alloc = None if variant["allocation"] is None else allocation_ids[variant["label"]]
        out[(alloc, "perplexity", "ppl")] = variant["ppl"]
        if variant["zeroshot"] is not None:
            out[(alloc, "zeroshot", "mean_accuracy")] = variant["mean_accuracy"]
            for task, result in variant["zeroshot"]["tasks"].items():
                out[(alloc, "zeroshot", f"{task}/acc")] = result["acc"]
                if result["acc_norm"] is not None:
                    out[(alloc, "zeroshot", f"{task}/acc_norm")] = result["acc_norm"]
    return out


def label_of(document: dict[str, Any]) -> str:
    return f"{document['method']}@{document['target']:g}"


def test_run_and_evaluate_land_in_the_store_and_the_api(
    model_dir: Path, tmp_path: Path, db_url: str, acttail_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    run_args = ["run", str(model_dir), "--sparsity", "0.5,0.8", "--tasks", "arc_easy", "--limit", "4", *QUICK,
                "--json", str(out), "--db", db_url]  # fmt: skip
    cli(*run_args)
    assert "Created team 'default'" in capsys.readouterr().err
    doc = json.loads(out.read_text())
    fingerprint = doc["model"]["fingerprint"]

    first = stored(db_url, fingerprint)
    assert [m.model_id for m in first["models"]] == [doc["model"]["model_id"]]
    assert first["alphas"] == doc["alphas"] and len(doc["alphas"]) == 14
    sparse = [v for v in doc["variants"] if v["allocation"] is not None]
    assert sorted(map(label_of, first["allocations"].values())) == sorted(v["label"] for v in sparse)
    allocation_ids = {label_of(d): row_id for row_id, d in first["allocations"].items()}
    for variant in sparse:  # the exact documents the JSON holds
        assert first["allocations"][allocation_ids[variant["label"]]] == variant["allocation"]
    expected = expected_numbers(doc, allocation_ids)
    assert (
        len(expected) == 7 * 4
    )  # dense + 6 allocations (uniform, acttail, auto), each ppl + mean + arc_easy acc, acc_norm
    assert first["benchmarks"] == expected
    assert all(v["torch"] == doc["versions"]["torch"] and v["device"] == "cpu" for v in first["versions"])
    assert any(v.get("peak_memory_measure") == "rss" and v["peak_memory_bytes"] > 0 for v in first["versions"])

    # The same command again converges on the same rows (upserts, like a re-delivered job).
    cli(*run_args)
    assert "Created team" not in capsys.readouterr().err
    again = stored(db_url, fingerprint)
    assert again["benchmark_ids"] == first["benchmark_ids"] and again["allocations"] == first["allocations"]
    assert again["benchmarks"] == expected

    # `evaluate` of one of those allocations, same protocol, no dense: the same row, no new one.
    alloc_path = tmp_path / "alloc.json"
    alloc_path.write_text(json.dumps(sparse[1]["allocation"]))
    cli("evaluate", str(model_dir), "--allocation", str(alloc_path), *QUICK, "--no-dense", "--db", db_url,
        "--json", str(tmp_path / "eval.json"))  # fmt: skip
    (evaluated,) = json.loads((tmp_path / "eval.json").read_text())["variants"]
    after_evaluate = stored(db_url, fingerprint)
    assert after_evaluate["benchmark_ids"] == first["benchmark_ids"]
    assert after_evaluate["benchmarks"][(allocation_ids[evaluated["label"]], "perplexity", "ppl")] == evaluated["ppl"]


def test_the_api_shows_cli_results_to_the_default_team(
    model_dir: Path, tmp_path: Path, db_url: str, acttail_home: Path
) -> None:
    out = tmp_path / "run.json"
    cli("run", str(model_dir), "--sparsity", "0.6", *QUICK, "--json", str(out), "--db", db_url)
    doc = json.loads(out.read_text())
    fingerprint = doc["model"]["fingerprint"]
    key = (acttail_home / "api_key").read_text().strip()
    assert (acttail_home / "api_key").stat().st_mode & 0o777 == 0o600

    from fastapi.testclient import TestClient

    from acttail.settings import Settings
    from api.app import create_app

    app = create_app(Settings(home=acttail_home, database_url=db_url), dispatcher=RecordingDispatcher())
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {key}"}
        models = client.get("/v1/models", headers=headers)
        assert models.status_code == 200 and [m["fingerprint"] for m in models.json()] == [fingerprint]
        alphas = client.get(f"/v1/models/{fingerprint}/alphas?estimator=ks", headers=headers)
        assert alphas.status_code == 200 and alphas.json()["alphas"] == doc["alphas"]
        for name in doc["alphas"]:  # `acttail run` stored every projection's eigenvalues: the ESD plot draws
            esd = client.get(f"/v1/models/{fingerprint}/plots/esd/{name}.png?estimator=ks", headers=headers)
            assert esd.status_code == 200 and esd.content.startswith(b"\x89PNG"), (name, esd.text[:200])
        listed = client.get(f"/v1/allocations?model={fingerprint}", headers=headers).json()
        assert listed["total"] == 3  # uniform, acttail, auto
        variants = {v["label"]: v for v in doc["variants"]}
        by_label = {}
        for item in listed["items"]:
            document = client.get(f"/v1/allocations/{item['id']}", headers=headers).json()
            by_label[label_of(document)] = item["id"]
            assert document == variants[label_of(document)]["allocation"]
        benchmarks = client.get(f"/v1/benchmarks?model={fingerprint}", headers=headers).json()
        got = {(b["allocation_id"], b["kind"], b["metric"]): b["value"] for b in benchmarks["items"]}
        assert got == expected_numbers(doc, by_label)
        dense = next(b for b in benchmarks["items"] if b["allocation_id"] is None)
        assert dense["settings"] == {"dataset": "wikitext-2-raw-v1", "split": "test", "seqlen": 128, "max_tokens": 256,
                                     "mode": "topk", "dtype": "float32", "tokens_scored": 2 * 127}  # fmt: skip
        assert dense["versions"]["transformers"] == doc["versions"]["transformers"]


def test_no_store_writes_no_database(model_dir: Path, tmp_path: Path, acttail_home: Path) -> None:
    cli("run", str(model_dir), "--sparsity", "0.5", "--method", "uniform", "--no-dense", *QUICK, "--no-store")
    assert not acttail_home.exists()


def test_unreachable_database_fails_before_the_model_loads(
    model_dir: Path, acttail_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "no-such-model", *QUICK, "--db", "postgresql+psycopg://nobody:secret@127.0.0.1:9/none"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: results database postgresql+psycopg://nobody:***@")
    assert "secret" not in err


def test_a_service_job_finds_the_cli_rows(model_dir: Path, tmp_path: Path, db_url: str, acttail_home: Path) -> None:
    """The same measurement as a job of team default: the job links the CLI's rows instead of adding any."""
    from acttail.settings import Settings
    from acttail.store.jobs import create_job, get_job
    from acttail.store.requests import JobRequest
    from workers.runner import run_job

    out = tmp_path / "run.json"
    cli("run", str(model_dir), "--sparsity", "0.5", "--method", "acttail", *QUICK, "--json", str(out), "--db", db_url)
    fingerprint = json.loads(out.read_text())["model"]["fingerprint"]
    before = stored(db_url, fingerprint)
    request = JobRequest.model_validate({
        "model_id": str(model_dir), "targets": [0.5], "method": "acttail",
        "evaluations": {"perplexity": {"seqlen": 128, "max_tokens": 256}},
    })  # fmt: skip
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    try:
        with session_scope(factory) as session:
            team = teams.get_team_by_name("default", db_session=session)
            job, _ = create_job(request.model_dump(mode="json"), team_id=team.id,
                                request_hash=request.request_hash(), db_session=session)  # fmt: skip
        run_job(job.id, session_factory=factory, settings=Settings(home=acttail_home, database_url=db_url,
                                                                    model_roots=[model_dir.parent]))  # fmt: skip
        with session_scope(factory) as session:
            job = get_job(job.id, db_session=session)
            run = catalog.get_esd_run(fingerprint, "ks", db_session=session)
    finally:
        engine.dispose()
    assert job.status == "succeeded", job.error
    assert job.esd_run_id == run.id
    assert job.allocation_ids == list(before["allocations"])
    assert sorted(job.benchmark_ids) == before["benchmark_ids"]  # dense and sparse perplexity: the CLI's rows
    after = stored(db_url, fingerprint)
    assert after["benchmark_ids"] == before["benchmark_ids"]
    assert after["benchmarks"] == pytest.approx(before["benchmarks"], rel=1e-9)


def test_wina_scoring_is_stored_with_its_rows_and_a_bad_scoring_is_one_line(
    model_dir: Path, db_url: str, acttail_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli("run", str(model_dir), "--sparsity", "0.5", "--method", "uniform", "--no-dense", *QUICK, "--db", db_url,
        "--scoring", "wina")  # fmt: skip
    engine = make_engine(db_url)
    with session_scope(make_session_factory(engine)) as db:
        team_id = teams.get_team_by_name("default", db_session=db).id
        rows, _ = results.list_benchmarks(team_id=team_id, kind="perplexity", db_session=db)
        assert [r.settings.get("scoring") for r in rows] == ["wina"]
    engine.dispose()
    capsys.readouterr()  # the first run's bars and notes
    with pytest.raises(SystemExit) as exc:
        main(["run", str(model_dir), *QUICK, "--scoring", "loudest", "--no-store"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown scoring 'loudest'; valid: magnitude, wina" in err
