"""Input validation at the API boundary: model IDs, targets, bodies; 4xx JSON messages."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from acttail.registry import METHODS
from tests.integration.conftest import MAX_BODY, Api

pytestmark = pytest.mark.integration


@pytest.fixture
def key(make_team: Callable[[], tuple[int, str]]) -> str:
    return make_team()[1]


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        ("../../etc/passwd", "must not contain '..'"),
        ("local-model/../../outside", "must not contain '..'"),
        ("/etc", "outside the configured model roots"),
        ("/tmp/../etc/shadow", "must not contain '..'"),
        ("org/name\nx", "single-line"),
        ("a" * 513, "at most 512 characters"),
    ],
)
def test_bad_model_ids_are_422(api: Api, key: str, model_id: str, message: str) -> None:
    response = api.client.post("/v1/jobs", json={"model_id": model_id}, headers=Api.auth(key))
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_symlink_out_of_root_is_422(api: Api, key: str, model_root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (model_root / "escape").symlink_to(outside)
    response = api.client.post("/v1/jobs", json={"model_id": "escape"}, headers=Api.auth(key))
    assert response.status_code == 422
    assert "outside the configured model roots" in response.json()["detail"]


@pytest.mark.parametrize("model_id", ["HuggingFaceTB/SmolLM2-135M", "gemma3-270m", "local-model"])
def test_good_model_ids_are_accepted(api: Api, key: str, model_id: str) -> None:
    assert api.client.post("/v1/jobs", json={"model_id": model_id}, headers=Api.auth(key)).status_code == 202


def test_absolute_path_inside_root_is_accepted(api: Api, key: str, model_root: Path) -> None:
    response = api.client.post("/v1/jobs", json={"model_id": str(model_root / "local-model")}, headers=Api.auth(key))
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"targets": [1.0]}, "targets.0: Input should be less than or equal to 0.99"),
        ({"targets": [-0.1]}, "targets.0: Input should be greater than or equal to 0"),
        ({"targets": []}, "targets: List should have at least 1 item"),
        ({"targets": [0.5, 0.5]}, "targets must not repeat"),
        ({"targets": [round(0.01 * i, 2) for i in range(33)]}, "at most 32 items"),
        ({"targets": ["half"]}, "targets.0"),
        ({"estimator": "magic"}, "estimator"),
        (
            {"method": "random"},
            # pydantic's literal message over the registry's names: a new method needs no edit here
            "method: Input should be "
            + ", ".join(f"'{m}'" for m in tuple(METHODS)[:-1])
            + f" or '{tuple(METHODS)[-1]}'",
        ),
        ({"method": "uniform", "min_gain": 0.05}, "min_gain does not apply to method 'uniform' (only to auto)"),
        (
            {"method": "acttail", "calibration_tokens": 4096},
            "does not apply to method 'acttail' (only to teal-greedy, auto)",
        ),
        ({"greedy_step": 0.2}, "greedy_step does not apply to method 'auto' (only to teal-greedy)"),
        ({"calibration_tokens": 256}, "calibration_tokens (256) must be at least calibration_seqlen (512)"),
        ({"calibration_tokens": 10**7}, "calibration_tokens: Input should be less than or equal to 262144"),
        ({"calibration_seqlen": 8}, "calibration_seqlen: Input should be greater than or equal to 16"),
        ({"min_gain": 0.9}, "min_gain: Input should be less than or equal to 0.5"),
        ({"method": "teal-greedy", "greedy_step": 0.0}, "greedy_step: Input should be greater than 0"),
        ({"epsilon": 2}, "epsilon"),
        ({"targets": [0.95], "s_max": 0.9}, "outside [s_min, s_max]"),
        ({"evaluations": {"zeroshot": {"tasks": ["mmlu"]}}}, "evaluations.zeroshot.tasks.0"),
        ({"evaluations": {"perplexity": {"seqlen": 10**9}}}, "seqlen"),
        ({"surprise": 1}, "Extra inputs are not permitted"),
        ({"revision": "../main"}, "revision"),
    ],
)
def test_bad_job_bodies_are_422(api: Api, key: str, overrides: dict[str, object], message: str) -> None:
    response = api.client.post("/v1/jobs", json={"model_id": "org/m", **overrides}, headers=Api.auth(key))
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


@pytest.mark.parametrize("method", tuple(METHODS))
def test_every_registry_method_is_accepted(api: Api, key: str, method: str) -> None:
    response = api.client.post("/v1/jobs", json={"model_id": "local-model", "method": method}, headers=Api.auth(key))
    assert response.status_code == 202, response.text
    job = api.client.get(response.json()["url"], headers=Api.auth(key)).json()
    assert job["request"]["method"] == method


def test_default_method_is_auto_with_its_calibration_knobs(api: Api, key: str) -> None:
    body = {"model_id": "local-model", "targets": [0.7], "calibration_tokens": 1024, "calibration_seqlen": 128,
            "min_gain": 0.02}  # fmt: skip
    response = api.client.post("/v1/jobs", json=body, headers=Api.auth(key))
    assert response.status_code == 202, response.text
    request = api.client.get(response.json()["url"], headers=Api.auth(key)).json()["request"]
    assert (request["method"], request["calibration_tokens"], request["min_gain"]) == ("auto", 1024, 0.02)


def test_malformed_json_is_422(api: Api, key: str) -> None:
    headers = {**Api.auth(key), "Content-Type": "application/json"}
    for body in (b'{"model_id": ', b"[1, 2]", b"not json"):
        response = api.client.post("/v1/jobs", content=body, headers=headers)
        assert response.status_code == 422
        assert isinstance(response.json()["detail"], str)
    assert api.client.post("/v1/allocations", content=b"{oops", headers=headers).status_code == 422


def test_oversized_bodies_are_413(api: Api, key: str) -> None:
    huge = {"model_id": "org/m", "padding": "x" * (MAX_BODY + 1)}
    response = api.client.post("/v1/jobs", json=huge, headers=Api.auth(key))
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body exceeds {MAX_BODY} bytes"}

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(MAX_BODY // 1024 + 2):
            yield b" " * 1024

    streamed = api.client.post(
        "/v1/allocations", content=chunks(), headers={**Api.auth(key), "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413


def test_api_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, api.app; api.app.create_app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
    assert re.match(r"^\s*$", out.stderr)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/allocations/99999999999999999999",
        "/v1/benchmarks?allocation_id=99999999999999",
        "/v1/allocations?model=a%00b",
        "/v1/jobs/a%00b",
        "/v1/models/a%00/alphas",
        "/v1/allocations?target=nan",
    ],
)
def test_hostile_path_and_query_values_are_not_500(api: Api, key: str, path: str) -> None:
    """Out-of-range integers and NUL bytes never reach a 500: PostgreSQL refuses NUL (422), SQLite
    simply finds nothing (200 empty list or 404)."""
    response = api.client.get(path, headers=Api.auth(key))
    assert response.status_code in (200, 404, 422)
    if response.status_code == 200:
        assert response.json()["total"] == 0
