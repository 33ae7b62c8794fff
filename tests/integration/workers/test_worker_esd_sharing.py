"""ESD runs are a cache across teams, model IDs are private: a real job (embedded executor, SQLite)
stores every projection's eigenvalues with its ESD run and the ESD plot draws them; another team
does not see the model until its own job for the same weights reuses that run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.integration.workers.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run_job(client: TestClient, headers: dict[str, str], model_id: str) -> dict[str, Any]:
    """Submit a job that stops after its allocation (no benchmarks) and wait for it to succeed."""
    response = client.post("/v1/jobs", json={"model_id": model_id, "targets": [0.5], "method": "uniform"},
                           headers=headers)  # fmt: skip
    assert response.status_code == 202, response.text

    def finished() -> dict[str, Any] | None:
        body = client.get(response.json()["url"], headers=headers).json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    job = wait_for(finished, 180, f"job {response.json()['id']}", interval=0.3)
    assert (job["status"], job["error"]) == ("succeeded", None), job
    return job


def _sees(client: TestClient, headers: dict[str, str], model_id: str) -> bool:
    return model_id in {m["model_id"] for m in client.get("/v1/models", headers=headers).json()}


def test_eigenvalues_are_stored_and_a_second_team_sees_the_model_only_after_its_own_job(
    tmp_path: Path, model_root: Path, tiny_llama_id: Any
) -> None:
    from acttail.settings import Settings
    from acttail.store import catalog, teams
    from acttail.store.db import session_scope
    from acttail.store.spectra import decode_eigenvalues
    from api.app import create_app

    model_id = tiny_llama_id(34)
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'esd.db'}", executor="embedded",
                        model_roots=[model_root], broker_url="redis://127.0.0.1:1/0")  # fmt: skip
    with TestClient(create_app(settings)) as client:
        factory = client.app.state.session_factory  # type: ignore[attr-defined]
        with session_scope(factory) as db:
            keys = [teams.create_api_key(teams.create_team(name, db_session=db), db_session=db) for name in "ab"]
        team_a, team_b = ({"Authorization": f"Bearer {key}"} for key in keys)

        job_a = _run_job(client, team_a, model_id)
        run_id = job_a["links"]["esd_run_id"]
        with session_scope(factory) as db:  # every eigenvalue, and the ones the fit saw: λ_max = spectral_norm
            run = catalog.get_esd_run_by_id(run_id, db_session=db)
            assert len(run.projections) == 14
            for row in run.projections:
                blob = catalog.projection_eigenvalues(run_id, row.name, db_session=db)
                assert blob is not None, row.name
                values = decode_eigenvalues(blob)
                assert values.size == min(row.d_out, row.d_in)
                assert values.max() == pytest.approx(row.spectral_norm, rel=1e-6)
            name = run.projections[0].name
        esd_url = f"/v1/models/{model_id}/plots/esd/{name}.svg"
        drawn = client.get(esd_url, headers=team_a)
        assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/svg+xml", drawn.text
        assert _sees(client, team_a, model_id)

        assert not _sees(client, team_b, model_id)
        for path in (f"/v1/models/{model_id}/alphas", esd_url):
            hidden = client.get(path, headers=team_b)
            assert (hidden.status_code, hidden.json()) == (404, {"detail": f"no ESD run for model {model_id!r}"})

        job_b = _run_job(client, team_b, model_id)
        assert job_b["links"]["esd_run_id"] == run_id  # the cache: computed once, by team a's job
        assert _sees(client, team_b, model_id)
        assert client.get(f"/v1/models/{model_id}/alphas", headers=team_b).json()["run"]["id"] == run_id
        again = client.get(esd_url, headers=team_b)
        assert again.status_code == 200 and again.headers["etag"] == drawn.headers["etag"]
