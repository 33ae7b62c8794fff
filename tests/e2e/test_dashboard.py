"""The dashboard in a real browser against the real stack (uvicorn + Celery worker + Redis + PostgreSQL).

A user logs in with the team key, submits a job for a tiny local model from the form (after
a refused one), watches it reach ``succeeded`` in the job list, and finds on the model page the
plots rendered and the numbers the API returns. Another team's key sees none of it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.slow]

VIEWPORT = {"width": 1280, "height": 860}
JOB_TIMEOUT_MS = 90_000


def _log_in(page: Any, stack: Stack, team: str) -> None:
    page.fill("#key", stack.keys[team])
    page.click("#login-form button[type=submit]")
    expect(page).to_have_url(f"{stack.base_url}/ui")


def _image_width(page: Any, selector: str) -> int:
    """naturalWidth of an <img> once loaded (0 when the image failed). Polled from Python: the
    page's CSP forbids the eval that ``wait_for_function`` would need, and that CSP is under test."""
    image = page.locator(selector)
    for _ in range(200):
        if image.evaluate("img => img.complete"):
            break
        page.wait_for_timeout(100)
    return int(image.evaluate("img => img.naturalWidth"))


def _fill_job_form(page: Any, model_id: str, targets: str) -> None:
    page.fill("#model_id", model_id)
    page.select_option("#estimator", "ks")
    page.fill("#targets", targets)
    page.select_option("#method", "acttail")
    page.fill("#epsilon", "0.1")
    page.check("#perplexity")
    page.fill("#seqlen", "32")
    page.fill("#max_tokens", "128")


def _submit(page: Any) -> Any:
    """Click submit; return the response to the form POST (before any redirect is followed)."""
    with page.expect_response(lambda r: r.url.endswith("/ui/jobs") and r.request.method == "POST") as info:
        page.click("#job-form button[type=submit]")
    return info.value


def test_submit_watch_and_inspect_a_job(stack: Stack, browser: Any, screenshots: Any) -> None:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.goto(stack.base_url + "/")
    expect(page).to_have_url(f"{stack.base_url}/ui/login?next=/ui")
    screenshots(page, "login")
    _log_in(page, stack, "vision")

    # A refused request shows the reason on the page, keeps what was typed, and creates nothing.
    page.goto(stack.base_url + "/ui/jobs/new")
    _fill_job_form(page, stack.tiny_model, "0.3, 0.6")
    screenshots(page, "submit", full_page=True)
    page.fill("#targets", "0.3, 1.5")
    refused = _submit(page)
    assert refused.status == 422
    expect(page.locator("#error")).to_have_text(
        "Target sparsities: Input should be less than or equal to 0.99 (got 1.5)"
    )
    expect(page.locator("#targets")).to_have_value("0.3, 1.5")
    with stack.api(stack.keys["vision"]) as api:
        assert api.get("/v1/jobs").json()["total"] == 0

    page.fill("#targets", "0.3, 0.6")
    accepted = _submit(page)
    assert accepted.status == 303
    expect(page).to_have_url(re.compile(rf"{re.escape(stack.base_url)}/ui/jobs/[0-9a-f-]{{36}}$"))
    job_id = page.url.rsplit("/", 1)[1]

    # The job list polls /ui/api/jobs and shows the job finishing without a reload.
    polls: list[str] = []
    page.on("request", lambda request: polls.append(request.url) if "/ui/api/jobs" in request.url else None)
    page.goto(stack.base_url + "/ui/jobs")
    row = page.locator(f'tr[data-job="{job_id}"]')
    first_status = row.locator('[data-field="status"]').inner_text()
    expect(row.locator('[data-field="status"]')).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(row.locator('[data-field="percent"]')).to_have_text("100%")
    if first_status in ("queued", "running"):
        assert polls, "the status changed, so the page must have polled"
    screenshots(page, "jobs")

    with stack.api(stack.keys["vision"]) as api:
        job = api.get(f"/v1/jobs/{job_id}").json()
        fingerprint = job["links"]["alphas"].split("/")[3]
        allocations = api.get("/v1/allocations", params={"model": fingerprint}).json()["items"]
        benchmarks = api.get("/v1/benchmarks", params={"model": fingerprint, "limit": 200}).json()["items"]
    assert job["status"] == "succeeded" and len(allocations) == 2 and len(benchmarks) == 3  # ppl: dense + 2

    page.goto(stack.base_url + "/ui")
    screenshots(page, "models")
    page.click(f'a[href="/ui/models/{fingerprint}"]')
    expect(page.locator("h1")).to_have_text(stack.tiny_model)
    assert _image_width(page, "#alphas-plot") > 0
    assert _image_width(page, "#sweep-plot") > 0
    # The ESD of one projection: the first by default; choosing another swaps the image in place.
    names = page.eval_on_selector_all("#esd-projection option", "options => options.map(o => o.value)")
    assert len(names) == 14 and page.input_value("#esd-projection") == names[0]
    assert _image_width(page, "#esd-plot") > 0
    page.select_option("#esd-projection", names[-1])
    expect(page.locator("#esd-plot")).to_have_attribute("src", re.compile(rf"/esd/{re.escape(names[-1])}\.svg"))
    assert _image_width(page, "#esd-plot") > 0
    assert page.url.endswith(f"projection={names[-1]}")

    shown = page.eval_on_selector_all(
        "#allocations tbody tr", "rows => rows.map(r => [Number(r.dataset.id), Number(r.cells[2].dataset.value)])"
    )
    assert sorted(shown) == sorted([a["id"], a["target"]] for a in allocations)
    cells = page.eval_on_selector_all(
        "#benchmarks tbody tr",
        "rows => rows.map(r => [Number(r.dataset.id), r.querySelector('.value').dataset.value,"
        " r.querySelector('.value').textContent])",
    )
    by_id = {b["id"]: b["value"] for b in benchmarks}
    assert {int(i) for i, _, _ in cells} == set(by_id)
    for benchmark_id, exact, text in cells:
        assert float(exact) == by_id[benchmark_id] and text == f"{by_id[benchmark_id]:.6g}"
    screenshots(page, "model", full_page=True)

    # The JSON download is the allocation document the API serves.
    with page.expect_download() as download_info:
        page.click(f'#allocations tr[data-id="{allocations[0]["id"]}"] a[download]')
    with stack.api(stack.keys["vision"]) as api:
        document = api.get(f"/v1/allocations/{allocations[0]['id']}").json()
    assert json.loads(Path(download_info.value.path()).read_text(encoding="utf-8")) == document

    # Another team: a fresh browser, its own key; nothing of this job is visible.
    other = browser.new_context(viewport=VIEWPORT)
    other_page = other.new_page()
    other_page.goto(stack.base_url + "/ui/login")
    _log_in(other_page, stack, "speech")
    expect(other_page.locator(f'a[href="/ui/models/{fingerprint}"]')).to_have_count(0)
    assert stack.tiny_model not in other_page.content()
    for path in (f"/ui/models/{fingerprint}", f"/ui/jobs/{job_id}", f"/ui/allocations/{allocations[0]['id']}"):
        assert other_page.goto(stack.base_url + path).status == 404, path
    other_page.goto(stack.base_url + "/ui/jobs")
    expect(other_page.locator("tr[data-job]")).to_have_count(0)
    with stack.api(stack.keys["speech"]) as api:
        assert api.get("/v1/benchmarks", params={"model": fingerprint}).json()["total"] == 0
        assert api.get("/v1/allocations", params={"model": fingerprint}).json()["total"] == 0
        assert fingerprint not in api.get("/v1/models").text  # the ESD run is shared as a cache, the model ID is not
        assert api.get(f"/v1/models/{fingerprint}/alphas").status_code == 404

    page.click("form.logout button")
    expect(page).to_have_url(f"{stack.base_url}/ui/login")
    assert page.goto(f"{stack.base_url}/ui/models/{fingerprint}").url.startswith(f"{stack.base_url}/ui/login")
    other.close()
    context.close()
