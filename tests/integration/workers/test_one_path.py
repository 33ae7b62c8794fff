"""One path: ``acttail run`` and a service job with the same values store identical rows.

The same request goes through the CLI (SQLite results store), the API's embedded executor (its own
SQLite) and a real Celery worker process (PostgreSQL + Redis), for uniform, acttail, auto and
teal-greedy in TopK and threshold mode, on a tiny random Llama under the model root. The three
databases must hold the same allocation documents and the same benchmark rows: same settings,
same values, bit for bit (every process runs torch on one thread, so the sums are the same).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from acttail.cli import main
from tests.integration.workers.support import submit, wait_job

pytestmark = pytest.mark.integration

METHODS = ("uniform", "acttail", "auto", "teal-greedy")
MODES = ("topk", "threshold")
TARGET = 0.5
PPL = {"seqlen": 64, "max_tokens": 128}
CALIBRATION = {"calibration_tokens": 256, "calibration_seqlen": 64}


def job_request(model_id: str, method: str, mode: str) -> dict[str, Any]:
    """What a job needs to say to match the CLI run below (calibration knobs only where they apply)."""
    request: dict[str, Any] = {"model_id": model_id, "targets": [TARGET], "method": method, "mode": mode,
                               "evaluations": {"perplexity": PPL}}  # fmt: skip
    if method in ("auto", "teal-greedy"):
        request.update(CALIBRATION)
    elif mode == "threshold":
        request["calibration_tokens"] = CALIBRATION["calibration_tokens"]
    return request


def stored_rows(database_url: str, team_id: int | None = None) -> dict[str, Any]:
    """Allocation documents by (method, target) and benchmark values by (allocation, kind, metric, settings)."""
    from acttail.store import results, teams
    from acttail.store.db import make_engine, make_session_factory, session_scope

    engine = make_engine(database_url)
    try:
        with session_scope(make_session_factory(engine)) as db:
            if team_id is None:
                team_id = teams.get_team_by_name("default", db_session=db).id
            allocations, _ = results.list_allocations(team_id=team_id, limit=500, db_session=db)
            benchmarks, _ = results.list_benchmarks(team_id=team_id, limit=500, db_session=db)
            label = {row.id: (row.document["method"], row.document["target"]) for row in allocations}
            docs = {label[row.id]: {k: v for k, v in row.document.items() if k != "created_at"} for row in allocations}
            values = {
                (
                    label.get(row.allocation_id),
                    row.kind,
                    row.metric,
                    json.dumps(row.settings, sort_keys=True),
                ): row.value
                for row in benchmarks
            }
            return {"allocations": docs, "benchmarks": values}
    finally:
        engine.dispose()


@pytest.fixture
def one_thread() -> Any:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the Celery workers run with OMP_NUM_THREADS=1
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_cli_embedded_and_celery_store_identical_rows(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model_root: Path,
    tiny_llama_id: Callable[[int], str],
    pg_url: str,
    redis_url: str,
    session_factory: Any,
    team: tuple[int, str],
    start_worker: Callable[..., Any],
) -> None:
    model_id = tiny_llama_id(41)  # its own fingerprint: no other test's rows in PostgreSQL
    monkeypatch.chdir(model_root)  # the CLI resolves the same relative ID the jobs use
    monkeypatch.setenv("ACTTAIL_HOME", str(tmp_path / "cli-home"))

    cli_db = f"sqlite:///{tmp_path / 'cli.db'}"
    for mode in MODES:
        with pytest.raises(SystemExit) as exc:
            main(["run", model_id, "--method", ",".join(METHODS), "--sparsity", str(TARGET), "--mode", mode,
                  "--seqlen", str(PPL["seqlen"]), "--max-tokens", str(PPL["max_tokens"]),
                  "--calibration-tokens", str(CALIBRATION["calibration_tokens"]),
                  "--calibration-seqlen", str(CALIBRATION["calibration_seqlen"]), "--quiet", "--db", cli_db])  # fmt: skip
        assert exc.value.code == 0
    cli = stored_rows(cli_db)
    assert sorted(cli["allocations"]) == sorted((m, TARGET) for m in METHODS)
    modes = {json.loads(key[3])["mode"] for key in cli["benchmarks"]}
    realised = {key[0] for key in cli["benchmarks"] if key[1:3] == ("sparsity", "realised")}
    assert realised == set(cli["allocations"])  # threshold mode stores the sparsity it reached, TopK needs not
    # dense once, 4 x 2 sparse perplexities, and 4 realised-sparsity rows beside the threshold ones
    assert modes == set(MODES) and len(cli["benchmarks"]) == 1 + 3 * len(METHODS)

    embedded = _through_embedded(tmp_path / "embedded-home", model_root, model_id)
    assert embedded == cli

    worker = start_worker("one-path")
    team_id = team[0]
    job_ids = [
        submit(session_factory, redis_url, job_request(model_id, m, mode), team_id=team_id)
        for mode in MODES
        for m in METHODS
    ]
    for job_id in job_ids:
        job = wait_job(session_factory, job_id, timeout=600)
        assert (job.status, job.error) == ("succeeded", None), worker.log()[-2000:]
    celery = stored_rows(pg_url, team_id)
    assert celery["allocations"] == cli["allocations"]
    assert celery["benchmarks"] == cli["benchmarks"]


def _through_embedded(home: Path, model_root: Path, model_id: str) -> dict[str, Any]:
    """Every job through the API (``POST /v1/jobs``) and its embedded thread pool; the rows it stored."""
    from fastapi.testclient import TestClient

    from acttail.settings import Settings
    from api.app import create_app

    settings = Settings(home=home, executor="embedded", model_roots=[model_root])
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {(home / 'api_key').read_text().strip()}"}
        urls = []
        for mode in MODES:
            for method in METHODS:
                response = client.post("/v1/jobs", json=job_request(model_id, method, mode), headers=headers)
                assert response.status_code == 202, response.text
                urls.append(response.json()["url"])
        for url in urls:
            deadline = time.monotonic() + 600
            while (job := client.get(url, headers=headers).json())["status"] in ("queued", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(0.2)
            assert (job["status"], job["error"]) == ("succeeded", None), job
    return stored_rows(settings.database_url)
