"""Which benchmark rows one evaluated variant becomes (``variant_measurements``): the realised-sparsity rule."""

from __future__ import annotations

from typing import Any

import pytest

from acttail.evaluate.perplexity import DATASET, PerplexityResult
from acttail.store.measurements import REALISED_KIND
from acttail.store.pipeline_results import variant_measurements

PERPLEXITY = PerplexityResult(ppl=31.5, nll=3.45, tokens_scored=126, seqlen=64, windows=2, split="test",
                              dataset=DATASET, corpus_tokens=128, max_tokens=128, window_nlls=(3.4, 3.5))  # fmt: skip


def variant(allocation: dict[str, Any] | None, realised: float | None) -> dict[str, Any]:
    return {"perplexity": PERPLEXITY.to_dict(), "allocation": allocation, "realised_sparsity": realised}


def kinds(mode: str, allocation: dict[str, Any] | None, realised: float | None, **protocol: Any) -> list[str]:
    rows = variant_measurements(variant(allocation, realised), {"mode": mode, **protocol}, {"dtype": "float32"})
    return [f"{m.kind}/{m.metric}" for m in rows]


SPARSE = {"method": "uniform", "target": 0.5}


@pytest.mark.parametrize(
    ("mode", "allocation", "protocol", "expect_realised"),
    [
        ("threshold", SPARSE, {}, True),  # calibrated thresholds only approximate their target: always stored
        ("topk", SPARSE, {}, False),  # TopK meets its target by construction
        ("topk", SPARSE, {"realised_rows": True}, True),  # a suite that asks for every cell's
        ("threshold", None, {"realised_rows": True}, False),  # dense zeroes nothing worth a row
    ],
)
def test_realised_row_where_it_says_something(
    mode: str, allocation: dict[str, Any] | None, protocol: dict[str, Any], expect_realised: bool
) -> None:
    assert (f"{REALISED_KIND}/realised" in kinds(mode, allocation, 0.48, **protocol)) is expect_realised


def test_realised_row_pairs_with_its_perplexity() -> None:
    rows = variant_measurements(variant(SPARSE, 0.4875), {"mode": "threshold", "calibration": {"tokens": 256}}, {})
    ppl = next(m for m in rows if (m.kind, m.metric) == ("perplexity", "ppl"))
    realised = next(m for m in rows if m.kind == REALISED_KIND)
    assert realised.value == pytest.approx(0.4875)
    assert realised.settings == ppl.settings  # same key: the two rows are read side by side


def test_no_realised_row_without_a_measured_value() -> None:
    assert f"{REALISED_KIND}/realised" not in kinds("threshold", SPARSE, None)
