"""Plot endpoints: images of stored results, team authorisation, ETag/304, the LRU, no torch."""

from __future__ import annotations

import inspect
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session, sessionmaker

from acttail.store import catalog, results
from acttail.store.db import session_scope
from api.plot_images import sweep_input
from tests.integration.conftest import (
    PROJECTION_NAMES,
    Api,
    allocation_document,
    esd_rows,
    esd_spectra,
    model_description,
)

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PPL_SETTINGS = {"dataset": "wikitext2", "split": "test", "seqlen": 128, "max_tokens": 4096, "mode": "topk"}


@pytest.fixture
def teams(make_team: Callable[[], tuple[int, str]]) -> tuple[tuple[int, str], tuple[int, str]]:
    return make_team(), make_team()


def _store_model(session_factory: sessionmaker[Session], team_id: int, key: str) -> dict[str, Any]:
    """A model with a ks ESD run (with eigenvalues) and a hill one stored without them (as before
    revision 20261130_0002), a private and a shared allocation, and a small sweep."""
    description = model_description(f"org/plots-{key[4:12]}")
    fingerprint = str(description["fingerprint"])
    with session_scope(session_factory) as db:
        model = catalog.get_or_create_model(description, db_session=db)
        catalog.save_esd_run(model, "ks", esd_rows(2.5), eigenvalues=esd_spectra(2.5), db_session=db)
        catalog.save_esd_run(model, "hill", esd_rows(4.0), db_session=db)
        allocations = {}
        for target in (0.3, 0.5):
            doc = allocation_document(fingerprint, target, model_id=str(description["model_id"]))
            row, _ = results.save_allocation(doc, model=model, team_id=team_id, shared=target == 0.5, db_session=db)
            allocations[target] = row.id
        uniform = {**allocation_document(fingerprint, 0.5), "method": "uniform",
                   "sparsities": {name: 0.5 for name in PROJECTION_NAMES}}  # fmt: skip
        uniform_row, _ = results.save_allocation(uniform, model=model, team_id=team_id, db_session=db)

        def bench(value: float, allocation_id: int | None, settings: dict[str, Any] = PPL_SETTINGS) -> None:
            results.save_benchmark(model=model, kind="perplexity", metric="ppl", value=value, settings=settings,
                                   allocation_id=allocation_id, team_id=team_id, db_session=db)  # fmt: skip

        bench(20.0, None)
        bench(24.0, allocations[0.3])
        bench(31.0, allocations[0.5])
        bench(29.0, uniform_row.id)
        bench(55.0, allocations[0.5], {**PPL_SETTINGS, "seqlen": 32})  # another setting, fewer points: not drawn
    return {"model_id": description["model_id"], "fingerprint": fingerprint, "allocations": allocations,
            "uniform": uniform_row.id}  # fmt: skip


def test_alpha_plot_svg_png_etag_and_304(api: Api, teams: Any, session_factory: sessionmaker[Session]) -> None:
    (team_id, key), (_, other_key) = teams
    stored = _store_model(session_factory, team_id, key)
    url = f"/v1/models/{stored['model_id']}/plots/alphas"
    svg = api.client.get(url + ".svg?estimator=ks", headers=api.auth(key))
    assert svg.status_code == 200, svg.text
    assert svg.headers["content-type"] == "image/svg+xml"
    assert ET.fromstring(svg.content).tag.endswith("svg")
    assert svg.headers["cache-control"] == "private, no-cache"
    assert svg.headers["content-security-policy"].startswith("default-src 'none'")
    etag = svg.headers["etag"]
    assert etag.startswith('"') and len(etag) == 42

    cached = api.client.get(url + ".svg?estimator=ks", headers=api.auth(key))
    assert cached.content == svg.content and cached.headers["etag"] == etag
    assert api.client.app.state.image_cache.hits >= 1  # type: ignore[attr-defined]
    not_modified = api.client.get(url + ".svg?estimator=ks", headers={**api.auth(key), "If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    listed = api.client.get(url + ".svg?estimator=ks", headers={**api.auth(key), "If-None-Match": f'"x", W/{etag}'})
    assert listed.status_code == 304

    png = api.client.get(url + ".png?estimator=ks", headers=api.auth(key))
    assert png.status_code == 200 and png.content.startswith(PNG_SIGNATURE)
    assert png.headers["content-type"] == "image/png" and png.headers["etag"] != etag
    hill = api.client.get(url + ".svg?estimator=hill", headers={**api.auth(key), "If-None-Match": etag})
    assert hill.status_code == 200 and hill.headers["etag"] != etag  # other alphas, other picture
    by_fingerprint = api.client.get(f"/v1/models/{stored['fingerprint']}/plots/alphas.svg?estimator=ks",
                                    headers=api.auth(other_key))  # fmt: skip
    assert by_fingerprint.status_code == 200  # the other team sees the model through the shared allocation
    assert by_fingerprint.headers["etag"] == etag

    assert api.client.get(url + ".svg").status_code == 401
    bad_format = api.client.get(url + ".gif", headers=api.auth(key))
    assert bad_format.status_code == 422 and "svg" in bad_format.json()["detail"]
    missing = api.client.get("/v1/models/org/never-seen/plots/alphas.svg", headers=api.auth(key))
    assert missing.status_code == 404 and missing.json() == {"detail": "no ESD run for model 'org/never-seen'"}


def test_heatmap_follows_allocation_visibility(api: Api, teams: Any, session_factory: sessionmaker[Session]) -> None:
    (team_id, key), (_, other_key) = teams
    stored = _store_model(session_factory, team_id, key)
    private, shared = stored["allocations"][0.3], stored["allocations"][0.5]
    own = api.client.get(f"/v1/allocations/{private}/plots/heatmap.png", headers=api.auth(key))
    assert own.status_code == 200 and own.content.startswith(PNG_SIGNATURE)
    hidden = api.client.get(f"/v1/allocations/{private}/plots/heatmap.png", headers=api.auth(other_key))
    assert hidden.status_code == 404 and hidden.json() == {"detail": f"no allocation {private}"}
    assert api.client.get(f"/v1/allocations/{shared}/plots/heatmap.svg", headers=api.auth(other_key)).status_code == 200
    etag = own.headers["etag"]
    url = f"/v1/allocations/{private}/plots/heatmap.png"
    again = api.client.get(url, headers={**api.auth(key), "If-None-Match": etag})
    assert again.status_code == 304
    assert api.client.get("/v1/allocations/0/plots/heatmap.svg", headers=api.auth(key)).status_code == 422


def test_sweep_draws_one_setting_per_variant(api: Api, teams: Any, session_factory: sessionmaker[Session]) -> None:
    (team_id, key), (other_id, other_key) = teams
    stored = _store_model(session_factory, team_id, key)
    with session_scope(session_factory) as db:
        rows, title = sweep_input(stored["fingerprint"], team_id=team_id, db_session=db)
    by_series = {(r["method"], r.get("target")): r["perplexity"] for r in rows}
    assert by_series == {("dense", None): 20.0, ("acttail", 0.3): 24.0, ("acttail", 0.5): 31.0, ("uniform", 0.5): 29.0}
    assert title == f"{stored['model_id']} · perplexity · wikitext2 · seqlen 128 · 4096 tokens"

    url = f"/v1/models/{stored['model_id']}/plots/sweep.svg"
    first = api.client.get(url, headers=api.auth(key))
    assert first.status_code == 200, first.text
    with session_scope(session_factory) as db:  # a new point changes the picture and its tag
        model = catalog.get_model_by_fingerprint(stored["fingerprint"], db_session=db)
        assert model is not None
        results.save_benchmark(model=model, kind="perplexity", metric="ppl", value=60.0, settings=PPL_SETTINGS,
                               allocation_id=stored["uniform"], team_id=team_id, db_session=db)  # fmt: skip
    second = api.client.get(url, headers={**api.auth(key), "If-None-Match": first.headers["etag"]})
    assert second.status_code == 200 and second.headers["etag"] != first.headers["etag"]

    # The other team sees only the shared allocation; the benchmarks stay private: nothing to draw.
    hidden = api.client.get(url, headers=api.auth(other_key))
    assert hidden.status_code == 404
    expected = f"no perplexity benchmark of a sparse allocation of model {stored['model_id']!r} to plot"
    assert hidden.json()["detail"] == expected
    with session_scope(session_factory) as db:
        rows, _ = sweep_input(stored["fingerprint"], team_id=team_id, db_session=db)
    assert {(r["method"], r.get("target")): r["perplexity"] for r in rows}[("uniform", 0.5)] == 60.0


def test_sweep_labels_configs_of_one_method_apart(api: Api, teams: Any, session_factory: sessionmaker[Session]) -> None:
    (team_id, key), _ = teams
    description = model_description(f"org/eps-{key[4:12]}")
    fingerprint = str(description["fingerprint"])
    from acttail.allocate import AllocationParams, allocate

    alphas = {name: 2.5 + 0.5 * i for i, name in enumerate(PROJECTION_NAMES)}
    counts = {name: 4096 for name in PROJECTION_NAMES}
    with session_scope(session_factory) as db:
        model = catalog.get_or_create_model(description, db_session=db)
        for value, epsilon in ((30.0, 0.1), (35.0, 0.2)):
            doc = allocate(alphas, counts, 0.5, params=AllocationParams(epsilon=epsilon), model_id="m",
                           fingerprint=fingerprint, estimator="ks").to_dict()  # fmt: skip
            row, _ = results.save_allocation(doc, model=model, team_id=team_id, db_session=db)
            results.save_benchmark(model=model, kind="perplexity", metric="ppl", value=value, settings=PPL_SETTINGS,
                                   allocation_id=row.id, team_id=team_id, db_session=db)  # fmt: skip
        rows, _ = sweep_input(fingerprint, team_id=team_id, db_session=db)
    by_label = {r["method"]: r["perplexity"] for r in rows}
    assert by_label == {"acttail (epsilon=0.1)": 30.0, "acttail (epsilon=0.2)": 35.0}
    assert api.client.get(f"/v1/models/{fingerprint}/plots/sweep.png", headers=api.auth(key)).status_code == 200


def test_esd_plot_draws_the_stored_eigenvalues(api: Api, teams: Any, session_factory: sessionmaker[Session]) -> None:
    (team_id, key), _ = teams
    stored = _store_model(session_factory, team_id, key)
    base = f"/v1/models/{stored['model_id']}/plots/esd"
    url = f"{base}/{PROJECTION_NAMES[1]}.svg?estimator=ks"
    svg = api.client.get(url, headers=api.auth(key))
    assert svg.status_code == 200, svg.text
    assert svg.headers["content-type"] == "image/svg+xml" and ET.fromstring(svg.content).tag.endswith("svg")
    assert svg.headers["cache-control"] == "private, no-cache"
    etag = svg.headers["etag"]
    hits = api.client.app.state.image_cache.hits  # type: ignore[attr-defined]
    again = api.client.get(url, headers=api.auth(key))
    assert again.content == svg.content and again.headers["etag"] == etag
    assert api.client.app.state.image_cache.hits == hits + 1  # type: ignore[attr-defined]
    not_modified = api.client.get(url, headers={**api.auth(key), "If-None-Match": etag})
    assert (not_modified.status_code, not_modified.content, not_modified.headers["etag"]) == (304, b"", etag)

    png = api.client.get(f"{base}/{PROJECTION_NAMES[1]}.png?estimator=ks", headers=api.auth(key))
    assert png.status_code == 200 and png.content.startswith(PNG_SIGNATURE) and png.headers["etag"] != etag
    other = api.client.get(
        f"{base}/{PROJECTION_NAMES[2]}.svg?estimator=ks", headers={**api.auth(key), "If-None-Match": etag}
    )
    assert other.status_code == 200 and other.headers["etag"] != etag  # other eigenvalues, other picture
    with session_scope(session_factory) as db:  # the picture is drawn from the stored bytes, float32 LE
        run = catalog.latest_esd_run(stored["fingerprint"], team_id=team_id, estimator="ks", db_session=db)
        blob = catalog.projection_eigenvalues(run.id, PROJECTION_NAMES[1], db_session=db)
    assert blob is not None and len(blob) == 64 * 4
    assert np.frombuffer(blob, "<f4").tolist() == pytest.approx(esd_spectra(2.5)[PROJECTION_NAMES[1]], rel=1e-6)

    # The hill run was stored without eigenvalues: a clear 404, as is an unknown projection.
    old_run = api.client.get(f"{base}/{PROJECTION_NAMES[0]}.svg?estimator=hill", headers=api.auth(key))
    assert old_run.status_code == 404
    assert old_run.json()["detail"].startswith("eigenvalues are not stored: ESD run ")
    unknown = api.client.get(f"{base}/model.layers.9.mlp.up_proj.png", headers=api.auth(key))
    assert unknown.status_code == 404
    assert unknown.json()["detail"].startswith("no projection 'model.layers.9.mlp.up_proj' in ESD run ")


def test_esd_plot_of_a_failed_fit_is_404(api: Api, teams: Any, session_factory: sessionmaker[Session]) -> None:
    (team_id, key), _ = teams
    description = model_description(f"org/nofit-{key[4:12]}")
    rows = esd_rows()
    rows[0].update(alpha=None, xmin=None)  # the fit failed; the eigenvalues are still stored
    with session_scope(session_factory) as db:
        model = catalog.get_or_create_model(description, db_session=db)
        run, _ = catalog.save_esd_run(model, "ks", rows, eigenvalues=esd_spectra(), db_session=db)
        results.save_benchmark(model=model, kind="perplexity", metric="ppl", value=20.0, team_id=team_id,
                               db_session=db)  # fmt: skip
        run_id = run.id
    response = api.client.get(f"/v1/models/{description['fingerprint']}/plots/esd/{PROJECTION_NAMES[0]}.svg",
                              headers=api.auth(key))  # fmt: skip
    assert response.status_code == 404
    assert response.json() == {
        "detail": f"no power-law fit to draw: the fit of {PROJECTION_NAMES[0]} failed in ESD run {run_id}"
    }


def test_undrawable_allocation_is_422(api: Api, teams: Any, session_factory: sessionmaker[Session]) -> None:
    (team_id, key), _ = teams
    description = model_description(f"org/gpt2-{key[4:12]}")
    name = "transformer.h.0.attn.c_attn"
    doc = allocation_document(str(description["fingerprint"]))
    doc.update(sparsities={name: 0.5}, param_counts={name: 10})
    with session_scope(session_factory) as db:
        model = catalog.get_or_create_model(description, db_session=db)
        row, _ = results.save_allocation(doc, model=model, team_id=team_id, db_session=db)
    response = api.client.get(f"/v1/allocations/{row.id}/plots/heatmap.svg", headers=api.auth(key))
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "cannot draw the stored data: 'transformer.h.0.attn.c_attn' is not a q/k/v/o/gate/up/down projection name "
        "(nor a fused qkv/gate_up) of a block"
    )


def test_plot_routes_run_on_the_thread_pool(api: Api) -> None:
    """matplotlib is CPU-bound: the handlers must be plain functions (Starlette's thread pool)."""
    from api.routers import plots

    paths = api.client.get("/openapi.json").json()["paths"]
    assert "/v1/models/{model}/plots/alphas.{fmt}" in paths
    assert "/v1/allocations/{allocation_id}/plots/heatmap.{fmt}" in paths
    endpoints = [route.endpoint for route in plots.router.routes]  # type: ignore[attr-defined]
    assert len(endpoints) == 4
    assert not any(inspect.iscoroutinefunction(endpoint) for endpoint in endpoints)


def test_rendering_through_the_api_does_not_import_torch(tmp_path: Path) -> None:
    code = f"""
import sys
from fastapi.testclient import TestClient
from acttail.settings import Settings
from acttail.store import catalog, results, teams
from acttail.store.db import make_engine, make_session_factory, session_scope
from api.app import create_app
from tests.integration.conftest import esd_rows, esd_spectra, model_description
settings = Settings(home={str(tmp_path)!r}, executor="celery", broker_url="redis://127.0.0.1:1/0")
with TestClient(create_app(settings)) as client:
    factory = make_session_factory(make_engine(settings.database_url))
    with session_scope(factory) as db:
        team = teams.create_team("t", db_session=db)
        key = teams.create_api_key(team, db_session=db)
        model = catalog.get_or_create_model(model_description("org/m"), db_session=db)
        catalog.save_esd_run(model, "ks", esd_rows(), eigenvalues=esd_spectra(), db_session=db)
        results.save_benchmark(model=model, kind="perplexity", metric="ppl", value=9.0, team_id=team.id,
                               db_session=db)  # the team worked on the model: it may see it
    headers = {{"Authorization": "Bearer " + key}}
    alphas = client.get("/v1/models/org/m/plots/alphas.png", headers=headers)
    esd = client.get("/v1/models/org/m/plots/esd/{PROJECTION_NAMES[0]}.png", headers=headers)
    print(alphas.status_code, esd.status_code, "matplotlib" in sys.modules, "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["200", "200", "True", "False"]
