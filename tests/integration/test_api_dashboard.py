"""The dashboard over HTTP (real app and database): login sessions, CSRF, team isolation, the job
form and its error messages, escaping, and the numbers and images the model page shows."""

from __future__ import annotations

import base64
import json
import re
import stat
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from acttail.store import catalog, jobs, results, teams
from acttail.store.db import session_scope
from acttail.store.keys import KEY_PATTERN
from tests.integration.conftest import (
    PROJECTION_NAMES,
    Api,
    allocation_document,
    esd_rows,
    esd_spectra,
    model_description,
)

pytestmark = pytest.mark.integration

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
ERROR = re.compile(r'id="error">([^<]*)<')


def _csrf(client: TestClient, path: str = "/ui/login") -> str:
    match = CSRF.search(client.get(path).text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def _login(client: TestClient, key: str) -> Any:
    return client.post("/ui/login", data={"key": key, "csrf_token": _csrf(client), "next": "/ui"},
                       follow_redirects=False)  # fmt: skip


def _error(response: Any) -> str:
    match = ERROR.search(response.text)
    assert match, response.text[:2000]
    return match.group(1)


def _second_client(api: Api) -> TestClient:
    """Another browser on the same running app (own cookie jar)."""
    return TestClient(api.client.app)


@pytest.fixture
def two_teams(make_team: Callable[[], tuple[int, str]]) -> tuple[tuple[int, str], tuple[int, str]]:
    return make_team(), make_team()


def _store_results(session_factory: sessionmaker[Session], team_id: int, job_id: str, tag: str) -> dict[str, Any]:
    """An ESD run, a private allocation with dense and sparse perplexity, linked to the team's job."""
    description = model_description(f"org/ui-{tag}")
    fingerprint = str(description["fingerprint"])
    with session_scope(session_factory) as db:
        model = catalog.get_or_create_model(description, db_session=db)
        run, _ = catalog.save_esd_run(model, "ks", esd_rows(2.5), eigenvalues=esd_spectra(2.5), db_session=db)
        doc = allocation_document(fingerprint, 0.5, model_id=str(description["model_id"]))
        alloc, _ = results.save_allocation(doc, model=model, team_id=team_id, db_session=db)
        settings = {"dataset": "wikitext2", "seqlen": 32, "max_tokens": 128}
        dense, _ = results.save_benchmark(model=model, kind="perplexity", metric="ppl", value=123.456789,
                                          settings=settings, team_id=team_id, db_session=db)  # fmt: skip
        sparse, _ = results.save_benchmark(model=model, kind="perplexity", metric="ppl", value=234.5678912,
                                           settings=settings, allocation_id=alloc.id, team_id=team_id,
                                           db_session=db)  # fmt: skip
        jobs.link_results(job_id, model_pk=model.id, esd_run_id=run.id, allocation_ids=[alloc.id],
                          benchmark_ids=[dense.id, sparse.id], db_session=db)  # fmt: skip
        jobs.mark_succeeded(job_id, db_session=db)
    return {"model_id": description["model_id"], "fingerprint": fingerprint, "allocation": alloc.id,
            "document": doc, "dense": dense.id, "sparse": sparse.id}  # fmt: skip


def test_login_session_and_logout(api: Api, two_teams: Any, session_factory: sessionmaker[Session]) -> None:
    (_, key), _ = two_teams
    first = api.client.get("/", follow_redirects=False)
    assert first.status_code == 307 and first.headers["location"] == "/ui"
    to_login = api.client.get("/ui/jobs?x=1", follow_redirects=False)
    assert to_login.status_code == 303 and to_login.headers["location"] == "/ui/login?next=/ui/jobs%3Fx%3D1"
    login_page = api.client.get("/ui/login")
    assert login_page.status_code == 200 and "script-src 'self'" in login_page.headers["content-security-policy"]

    wrong = api.client.post("/ui/login", data={"key": "act_nope", "csrf_token": _csrf(api.client)})
    assert wrong.status_code == 401 and _error(wrong) == "invalid or revoked API key"
    no_token = api.client.post("/ui/login", data={"key": key}, follow_redirects=False)
    assert no_token.status_code == 403 and "security token" in _error(no_token)

    form = {"key": key, "csrf_token": _csrf(api.client), "next": "https://evil.example/"}
    ok = api.client.post("/ui/login", data=form, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/ui"  # never an open redirect
    cookie = api.client.cookies["acttail_session"]
    session = json.loads(base64.b64decode(cookie.split(".")[0] + "=="))
    parsed = KEY_PATTERN.match(key)  # not key.split("_"): the secret itself may contain "_"
    assert parsed is not None
    prefix, secret = parsed.groups()
    assert session["key_prefix"] == prefix
    assert key not in cookie and secret not in json.dumps(session)  # never the secret
    assert api.client.get("/ui").status_code == 200

    tampered = _second_client(api)
    tampered.cookies.set("acttail_session", cookie[:-3] + ("AAA" if not cookie.endswith("AAA") else "BBB"))
    assert tampered.get("/ui", follow_redirects=False).status_code == 303

    logout_without_token = api.client.post("/ui/logout", follow_redirects=False)
    assert logout_without_token.status_code == 403
    logout = api.client.post("/ui/logout", data={"csrf_token": _csrf(api.client, "/ui")}, follow_redirects=False)
    assert logout.status_code == 303 and logout.headers["location"] == "/ui/login"
    assert api.client.get("/ui", follow_redirects=False).status_code == 303
    assert api.client.get("/ui/api/jobs").status_code == 401


def test_revoking_the_key_ends_the_session(api: Api, two_teams: Any, session_factory: sessionmaker[Session]) -> None:
    (_, key), _ = two_teams
    assert _login(api.client, key).status_code == 303
    assert api.client.get("/ui/api/jobs").status_code == 200
    with session_scope(session_factory) as db:
        teams.revoke_api_key(key.split("_")[1], db_session=db)
    assert api.client.get("/ui/api/jobs").json() == {"detail": "the API key of this session was revoked; log in again"}
    assert api.client.get("/ui", follow_redirects=False).headers["location"] == "/ui/login?next=/ui"


def test_model_page_shows_stored_numbers_and_plots(
    api: Api, two_teams: Any, session_factory: sessionmaker[Session]
) -> None:
    (team_id, key), _ = two_teams
    job = api.client.post("/v1/jobs", json={"model_id": "org/ui-job"}, headers=api.auth(key)).json()
    stored = _store_results(session_factory, team_id, job["id"], key[4:12])
    assert _login(api.client, key).status_code == 303

    models = api.client.get("/ui").text
    assert f"/ui/models/{stored['fingerprint']}" in models and stored["model_id"] in models
    page = api.client.get(f"/ui/models/{stored['fingerprint']}")
    assert page.status_code == 200
    table = page.text.split('<table id="benchmarks">')[1].split("</table>")[0]
    rows = re.findall(r'<tr data-id="(\d+)">(.*?)</tr>', table, re.S)
    values = {int(i): float(re.findall(r'class="num value" data-value="([^"]+)"', row)[0]) for i, row in rows}
    api_rows = api.client.get(f"/v1/benchmarks?model={stored['fingerprint']}", headers=api.auth(key)).json()["items"]
    assert values == {row["id"]: row["value"] for row in api_rows} == {stored["dense"]: 123.456789,
                                                                       stored["sparse"]: 234.5678912}  # fmt: skip
    assert ">123.457<" in page.text and ">234.568<" in page.text  # six significant digits on screen
    for src in re.findall(r'<img id="[a-z-]+" class="plot" alt="[^"]*"\s+src="([^"]+)"', page.text):
        image = api.client.get(src.replace("&amp;", "&"))
        assert image.status_code == 200 and image.headers["content-type"] == "image/svg+xml", src
    assert len(re.findall(r'<img id="(alphas-plot|sweep-plot|esd-plot)"', page.text)) == 3

    # ESD: a selector of the projections with stored eigenvalues, the first one drawn by default.
    options = re.findall(r'<option value="([^"]+)" (selected)?', page.text.split('id="esd-projection"')[1])
    assert [name for name, _ in options] == PROJECTION_NAMES and options[0][1] == "selected"
    esd_src = f"/ui/plots/models/{stored['fingerprint']}/esd/{PROJECTION_NAMES[0]}.svg?estimator=ks"
    assert f'src="{esd_src}"' in page.text
    chosen = api.client.get(f"/ui/models/{stored['fingerprint']}?estimator=ks&projection={PROJECTION_NAMES[2]}")
    assert f"/esd/{PROJECTION_NAMES[2]}.svg?estimator=ks" in chosen.text
    assert f'<option value="{PROJECTION_NAMES[2]}" selected>' in chosen.text
    esd_png = api.client.get(esd_src.replace(".svg", ".png"))
    assert esd_png.status_code == 200 and esd_png.content[:4] == b"\x89PNG"
    etag = api.client.get(esd_src).headers["etag"]
    assert api.client.get(esd_src, headers={"If-None-Match": etag}).status_code == 304
    unknown = api.client.get(f"/ui/models/{stored['fingerprint']}?projection=model.layers.7.mlp.up_proj")
    assert unknown.status_code == 404

    download = api.client.get(f"/ui/allocations/{stored['allocation']}.json")
    assert download.json() == stored["document"] and "attachment" in download.headers["content-disposition"]
    heatmap_page = api.client.get(f"/ui/allocations/{stored['allocation']}")
    assert f"/ui/plots/allocations/{stored['allocation']}/heatmap.svg" in heatmap_page.text
    assert api.client.get(f"/ui/plots/allocations/{stored['allocation']}/heatmap.png").content[:4] == b"\x89PNG"
    status = api.client.get(f"/ui/api/jobs/{job['id']}").json()
    assert (status["status"], status["progress"], status["model_url"]) == (
        "succeeded", 1.0, f"/ui/models/{stored['fingerprint']}")  # fmt: skip
    assert api.client.get(f"/ui/models/{stored['fingerprint']}?estimator=hill").status_code == 404


def test_another_team_sees_nothing(api: Api, two_teams: Any, session_factory: sessionmaker[Session]) -> None:
    (team_id, key), (_, other_key) = two_teams
    job = api.client.post("/v1/jobs", json={"model_id": "org/ui-private"}, headers=api.auth(key)).json()
    stored = _store_results(session_factory, team_id, job["id"], "p" + key[4:12])
    other = _second_client(api)
    assert _login(other, other_key).status_code == 303

    assert stored["fingerprint"] not in other.get("/ui").text
    fingerprint, allocation = stored["fingerprint"], stored["allocation"]
    for path in (f"/ui/models/{fingerprint}", f"/ui/jobs/{job['id']}", f"/ui/allocations/{allocation}"):
        assert other.get(path).status_code == 404, path
    assert other.get(f"/ui/api/jobs/{job['id']}").json() == {"detail": f"no job {job['id']}"}
    assert job["id"] not in other.get("/ui/jobs").text and other.get("/ui/api/jobs").json()["total"] == 0
    for path in (
        f"/ui/plots/models/{fingerprint}/alphas.svg",
        f"/ui/plots/models/{fingerprint}/sweep.svg",
        f"/ui/plots/models/{fingerprint}/esd/{PROJECTION_NAMES[0]}.svg",
        f"/ui/plots/allocations/{allocation}/heatmap.svg",
        f"/ui/allocations/{allocation}.json",
    ):
        assert other.get(path).status_code == 404, path
    assert stored["fingerprint"] not in api.client.get("/v1/models", headers=api.auth(other_key)).text  # same rule

    with session_scope(session_factory) as db:  # publishing the allocation shows the model to everyone
        model = catalog.get_model_by_fingerprint(stored["fingerprint"], db_session=db)
        assert model is not None
        results.save_allocation(stored["document"], model=model, team_id=team_id, shared=True, db_session=db)
    shared_page = other.get(f"/ui/models/{stored['fingerprint']}")
    assert shared_page.status_code == 200 and f'<tr data-id="{stored["allocation"]}">' in shared_page.text
    assert "No benchmarks visible to your team." in shared_page.text  # the benchmarks stay private


def test_job_form_submits_and_redirects(api: Api, two_teams: Any) -> None:
    (_, key), _ = two_teams
    _login(api.client, key)
    form = {
        "csrf_token": _csrf(api.client, "/ui/jobs/new"), "model_id": "org/form-model", "estimator": "hill",
        "targets": "0.7, 0.3", "method": "uniform", "epsilon": "0.2", "direction": "lower_alpha_sparser",
        "perplexity": "on", "seqlen": "64", "max_tokens": "256",
    }  # fmt: skip
    response = api.client.post("/ui/jobs", data=form, follow_redirects=False)
    assert response.status_code == 303
    job_id = response.headers["location"].removeprefix("/ui/jobs/")
    job = api.client.get(f"/v1/jobs/{job_id}", headers=api.auth(key)).json()
    assert job["request"]["targets"] == [0.3, 0.7] and job["request"]["estimator"] == "hill"
    assert (job["request"]["method"], job["request"]["epsilon"], job["request"]["direction"]) == (
        "uniform", 0.2, "lower_alpha_sparser")  # fmt: skip
    assert job["request"]["evaluations"]["perplexity"] == {"seqlen": 64, "max_tokens": 256}
    assert (job_id, "cpu") in api.dispatcher.sent  # type: ignore[attr-defined]
    page = api.client.get(response.headers["location"])
    assert page.status_code == 200 and f'data-poll="/ui/api/jobs/{job_id}"' in page.text
    assert job_id in api.client.get("/ui/jobs").text


def test_job_form_defaults_to_the_default_method(api: Api, two_teams: Any) -> None:
    (_, key), _ = two_teams
    _login(api.client, key)
    new = api.client.get("/ui/jobs/new")
    assert '<option value="auto" selected>auto</option>' in new.text
    form = {"csrf_token": _csrf(api.client, "/ui/jobs/new"), "model_id": "org/default-method", "targets": "0.5",
            "method": "auto", "epsilon": "", "direction": ""}  # fmt: skip
    response = api.client.post("/ui/jobs", data=form, follow_redirects=False)
    assert response.status_code == 303
    job = api.client.get(f"/v1/jobs/{response.headers['location'].removeprefix('/ui/jobs/')}", headers=api.auth(key))
    request = job.json()["request"]
    assert request["method"] == "auto"
    assert (request["epsilon"], request["direction"]) == (0.1, "higher_alpha_sparser")  # JobRequest's defaults


@pytest.mark.parametrize(
    ("changes", "status", "message"),
    [
        ({"targets": "0.5, 1.5"}, 422, "Target sparsities: Input should be less than or equal to 0.99 (got 1.5)"),
        ({"targets": "half"}, 422, "Target sparsities: 'half' is not a number"),
        ({"targets": ""}, 422, "Target sparsities: enter at least one, e.g. 0.5, 0.7"),
        ({"epsilon": "abc"}, 422, "Epsilon: 'abc' is not a number"),
        ({"seqlen": "8"}, 422, "Perplexity window (tokens): Input should be greater than or equal to 16 (got 8)"),
        ({"estimator": "bogus"}, 422, "Estimator: Input should be 'ks', 'ks_peak' or 'hill'"),
        ({"model_id": "../etc/passwd"}, 422, "model path '../etc/passwd' must not contain '..'"),
        (
            {"model_id": " "},
            422,
            "Model ID: enter a bundled alias, a hub ID 'org/name', or a path under the model roots",
        ),
        (
            {"csrf_token": "forged"},
            403,
            "the form's security token is missing or stale; reload the page and submit again",
        ),
    ],
)
def test_bad_form_input_shows_the_message(
    api: Api, two_teams: Any, changes: dict[str, str], status: int, message: str
) -> None:
    (_, key), _ = two_teams
    _login(api.client, key)
    form = {"csrf_token": _csrf(api.client, "/ui/jobs/new"), "model_id": "org/bad-form", "targets": "0.5",
            "epsilon": "0.1", "perplexity": "on", "seqlen": "64", "max_tokens": "256", **changes}  # fmt: skip
    response = api.client.post("/ui/jobs", data=form, follow_redirects=False)
    assert response.status_code == status
    assert _error(response).replace("&#39;", "'") == message
    if status == 422:  # the form comes back with what was typed
        assert f'value="{form["targets"]}"' in response.text
    assert api.client.get("/v1/jobs", headers=api.auth(key)).json()["total"] == 0
    assert api.dispatcher.sent == []  # type: ignore[attr-defined]


def test_text_from_the_database_is_escaped(api: Api, two_teams: Any) -> None:
    (_, key), _ = two_teams
    hostile = "<img src=x onerror=alert(1)>"  # a local path inside the model roots: accepted
    created = api.client.post("/v1/jobs", json={"model_id": hostile}, headers=api.auth(key))
    assert created.status_code == 202, created.text
    _login(api.client, key)
    for path in ("/ui/jobs", f"/ui/jobs/{created.json()['id']}"):
        text = api.client.get(path).text
        assert hostile not in text and "&lt;img src=x onerror=alert(1)&gt;" in text, path


def test_session_secret_is_generated_once_and_private(api: Api) -> None:
    from acttail.settings import Settings
    from api.ui.session import session_secret

    path = api.settings.session_secret_file  # type: ignore[attr-defined]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text().strip()
    assert len(first) >= 32 and session_secret(api.settings) == first  # type: ignore[arg-type]
    configured = Settings(home=path.parent, session_secret="s" * 40)
    assert session_secret(configured) == "s" * 40
    with pytest.raises(ValueError, match="at least 32"):
        Settings(home=path.parent, session_secret="short")
