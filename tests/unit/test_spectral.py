"""htsr-spectral: a calibration-free allocation from each projection's spectrum, at an exact budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from acttail.errors import AllocationError
from acttail.methods import METHODS, build_allocation
from acttail.methods.spectral import METHOD, allocate_spectral, propensities


@dataclass(frozen=True)
class _P:
    name: str
    alpha: float
    spectral_norm: float
    stable_rank: float
    num_evals: int
    param_count: int


@dataclass(frozen=True)
class _Report:
    projections: tuple[_P, ...]
    model: dict
    estimator: str = "ks"

    def alphas(self) -> dict[str, float]:
        return {p.name: p.alpha for p in self.projections}

    def param_counts(self) -> dict[str, int]:
        return {p.name: p.param_count for p in self.projections}


NAMES = [f"model.layers.0.self_attn.{k}_proj" for k in "qkvo"]
# q: concentrated spectrum (stable rank 2 of 64), v: flat (32 of 64); k, o in between.
REPORT = _Report(
    (
        _P(NAMES[0], 3.0, 100.0, 2.0, 64, 4096),
        _P(NAMES[1], 4.0, 10.0, 8.0, 64, 1024),
        _P(NAMES[2], 9.0, 1.0, 32.0, 64, 1024),
        _P(NAMES[3], 5.0, 50.0, 8.0, 64, 4096),
    ),
    {"model_id": "tiny", "fingerprint": "fp"},
)


def test_stable_rank_rule_sparsifies_concentrated_spectra_more_at_the_exact_budget() -> None:
    alloc = allocate_spectral(REPORT, 0.5, metric="stable_rank", epsilon=0.2)
    s = alloc.sparsities
    assert s[NAMES[0]] > s[NAMES[1]] > s[NAMES[2]]
    assert s[NAMES[1]] == pytest.approx(s[NAMES[3]])  # same normalised stable rank
    assert alloc.weighted_mean == pytest.approx(0.5, abs=1e-9)
    # the min-max map puts the extremes at (1 -+ eps) times one common scale
    assert s[NAMES[0]] / s[NAMES[2]] == pytest.approx(1.2 / 0.8)
    assert alloc.method == METHOD and alloc.params["metric"] == "stable_rank"


def test_each_metric_orders_the_projections_as_documented() -> None:
    alpha = propensities(REPORT.projections, "alpha")
    assert list(alpha) == [-3.0, -4.0, -9.0, -5.0]  # lower alpha sparser
    srank = propensities(REPORT.projections, "stable_rank")
    assert srank[0] == pytest.approx(-math.log(2 / 64))
    norm = propensities(REPORT.projections, "spectral_norm")
    assert norm.argmax() == 0 and norm.argmin() == 2
    combined = propensities(REPORT.projections, "combined")
    assert combined.argmax() == 0 and combined.argmin() == 2
    with pytest.raises(AllocationError, match="unknown spectral metric"):
        propensities(REPORT.projections, "kurtosis")


def test_registered_and_built_through_the_method_interface() -> None:
    assert METHOD in METHODS
    alloc = build_allocation(METHOD, report=REPORT, target=0.7, epsilon=0.1)
    assert alloc.weighted_mean == pytest.approx(0.7, abs=1e-9)
    with pytest.raises(AllocationError, match="unknown parameter"):
        build_allocation(METHOD, report=REPORT, target=0.7, direction="lower_alpha_sparser")


def test_an_alpha_table_without_spectra_is_refused() -> None:
    from acttail.methods import AlphaTable

    table = AlphaTable({"model_id": "tiny", "fingerprint": "fp"}, "ks", REPORT.alphas(), REPORT.param_counts())
    with pytest.raises(AllocationError, match="full ESD report"):
        build_allocation(METHOD, report=table, target=0.5)
