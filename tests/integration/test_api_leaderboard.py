"""GET /v1/leaderboard and its plots, from rows stored the way benchmarks/leaderboard.py stores them."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from acttail.allocate import allocate
from acttail.evaluate.perplexity import PerplexityResult
from acttail.pipeline import PipelineConfig, PipelineResult, VariantResult
from acttail.store.db import session_scope
from acttail.store.pipeline_results import save_pipeline_result
from acttail.store.requests import PerplexitySpec
from tests.integration.conftest import PROJECTION_NAMES, Api, model_description

pytestmark = pytest.mark.integration

COUNTS = {name: 4096 for name in PROJECTION_NAMES}
ALPHAS = {name: 2.5 + 0.5 * i for i, name in enumerate(PROJECTION_NAMES)}


def _ppl(window_nlls: list[float]) -> PerplexityResult:
    nll = sum(window_nlls) / len(window_nlls)
    return PerplexityResult(
        ppl=math.exp(nll), nll=nll, tokens_scored=255 * len(window_nlls), seqlen=256, windows=len(window_nlls),
        dataset="wikitext-2-raw-v1", split="test", corpus_tokens=1024, max_tokens=1024, window_nlls=tuple(window_nlls),
    )  # fmt: skip


def store_cell(session_factory: sessionmaker[Session], team_id: int, description: dict[str, Any],
           method: str | None, target: float, mode: str, scoring: str, nlls: list[float]) -> None:  # fmt: skip
    alloc = None
    if method is not None:
        alloc = allocate(ALPHAS, COUNTS, target, method=method, model_id=description["model_id"],
                         fingerprint=description["fingerprint"], estimator="ks")  # fmt: skip
    variant = VariantResult(
        label=method or "dense", method=method or "dense", target=target, perplexity=_ppl(nlls), zeroshot=None,
        mean_accuracy=None, realised_sparsity=target, realised_per_projection=None, allocation=alloc, elapsed_s=1.0,
    )  # fmt: skip
    config = PipelineConfig(targets=(target,), methods=(), mode=mode, scoring=scoring,
                            perplexity=PerplexitySpec(seqlen=256, max_tokens=1024))  # fmt: skip
    doc = PipelineResult(model=description, config=config, variants=(variant,), alphas=None,
                         versions={"acttail": "test", "cpu_capability": "AVX2"}, elapsed_s=1.0).to_dict()  # fmt: skip
    doc["protocol"].update(suite="leaderboard", window_rows=True)
    with session_scope(session_factory) as session:
        save_pipeline_result(doc, team_id=team_id, db_session=session)


@pytest.fixture
def stored(
    api: Api, make_team: Callable[[], tuple[int, str]], session_factory: sessionmaker[Session]
) -> tuple[str, str]:
    team_id, key = make_team()
    description = model_description("org/lb-" + key[4:12])
    uniform = [3.0, 3.2, 3.1, 3.4]
    store_cell(session_factory, team_id, description, None, 0.0, "topk", "magnitude", [2.0, 2.1, 2.0, 2.2])
    store_cell(session_factory, team_id, description, "uniform", 0.5, "topk", "magnitude", uniform)
    store_cell(session_factory, team_id, description, "acttail", 0.5, "topk", "magnitude", [3.1, 3.2, 3.3, 3.4])
    store_cell(session_factory, team_id, description, "uniform", 0.5, "topk", "wina", [2.9, 3.0, 3.0, 3.3])
    return key, description["model_id"]


def test_leaderboard_rows_carry_the_paired_change_against_uniform_topk(api: Api, stored: tuple[str, str]) -> None:
    key, model_id = stored
    response = api.client.get(f"/v1/leaderboard?model={model_id}&target=0.5", headers=api.auth(key))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["models"][0]["model_id"] == model_id
    rows = {(r["method"], r["mode"], r["scoring"]): r for r in body["rows"]}
    assert set(rows) == {("dense", "topk", "magnitude"), ("uniform", "topk", "magnitude"),
                         ("acttail", "topk", "magnitude"), ("uniform", "topk", "wina")}  # fmt: skip
    acttail = rows[("acttail", "topk", "magnitude")]
    diffs = [0.1, 0.0, 0.2, 0.0]  # acttail - uniform per window
    mean = sum(diffs) / 4
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3 / 4)
    assert acttail["change_vs_uniform_pct"] == pytest.approx(100 * (math.exp(mean) - 1))
    assert acttail["se_pct"] == pytest.approx(100 * se)
    assert acttail["ppl"] == pytest.approx(math.exp(3.25)) and acttail["tokens_scored"] == 1020
    wina = rows[("uniform", "topk", "wina")]
    assert wina["change_vs_uniform_pct"] == pytest.approx(100 * (math.exp(-0.125) - 1))
    assert rows[("uniform", "topk", "magnitude")]["change_vs_uniform_pct"] == pytest.approx(0.0)
    assert rows[("dense", "topk", "magnitude")]["change_vs_uniform_pct"] is None
    assert {r["cpu_capability"] for r in body["rows"]} == {"AVX2"}  # which kernels' rounding each cell carries


def test_leaderboard_is_per_team_and_filters_are_checked(
    api: Api, stored: tuple[str, str], make_team: Callable[[], tuple[int, str]]
) -> None:
    key, model_id = stored
    _, other = make_team()
    hidden = api.client.get(f"/v1/leaderboard?model={model_id}", headers=api.auth(other))
    assert hidden.status_code == 404 and model_id in hidden.json()["detail"]
    assert api.client.get("/v1/leaderboard?target=1.5", headers=api.auth(key)).status_code == 422
    assert api.client.get(f"/v1/leaderboard?model={model_id}&target=0.3", headers=api.auth(key)).status_code == 404
    assert api.client.get("/v1/leaderboard", headers={}).status_code == 401


def test_leaderboard_plots_are_svg(api: Api, stored: tuple[str, str]) -> None:
    key, model_id = stored
    sweep = api.client.get(f"/v1/leaderboard/plots/sweep.svg?model={model_id}", headers=api.auth(key))
    assert sweep.status_code == 200 and sweep.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in sweep.content
    scaling = api.client.get("/v1/leaderboard/plots/scaling.png?target=0.5", headers=api.auth(key))
    assert scaling.status_code == 200 and scaling.content[:4] == b"\x89PNG"
    none = api.client.get(f"/v1/leaderboard/plots/sweep.svg?model={model_id}&mode=threshold", headers=api.auth(key))
    assert none.status_code == 404


def test_leaderboard_page_renders_the_rows_and_refuses_a_bad_target(api: Api, stored: tuple[str, str]) -> None:
    from tests.integration.test_api_dashboard import _login

    key, model_id = stored
    assert _login(api.client, key).status_code == 303
    page = api.client.get(f"/ui/leaderboard?model={model_id}")
    assert page.status_code == 200, page.text[-2000:]
    assert (
        page.text.count('<tr data-method="') == 4 and f"/ui/plots/leaderboard/sweep.svg?model={model_id}" in page.text
    )
    image = api.client.get(f"/ui/plots/leaderboard/sweep.svg?model={model_id}")
    assert image.status_code == 200 and b"<svg" in image.content
    bad = api.client.get("/ui/leaderboard?target=2")
    assert bad.status_code == 400 and "target must be a number in [0, 1)" in bad.text
