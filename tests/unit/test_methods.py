"""Allocation methods: exact budget for every method, auto's determinism and record, registry errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from acttail.allocate import Allocation
from acttail.errors import AllocationError
from acttail.esd import ESDReport, analyze_weights
from acttail.methods import (
    METHODS,
    build_allocation,
    build_allocations,
    calibration_from_ids,
    calibration_nll,
    method_knobs,
)
from acttail.methods.auto import DEFAULT_GRID, Candidate, auto_allocation
from acttail.methods.per_type import per_type_normalised
from acttail.methods.teal_greedy import greedy_trace
from acttail.models.architectures import find_projections, parse_projection_name
from acttail.models.base import ProjectionInfo
from tests.tiny_models import tiny_config

TARGETS = (0.3, 0.5, 0.7, 0.9)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.num_hidden_layers = 3
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def report(model: torch.nn.Module) -> ESDReport:
    weights = [
        (ProjectionInfo(ref, tuple(lin.weight.shape)), lin.weight.detach().float())
        for ref, lin in find_projections(model)
    ]
    return analyze_weights(
        weights,
        "ks",
        progress=False,
        model={"model_id": "tiny-llama", "fingerprint": "f" * 64},
    )


@pytest.fixture(scope="module")
def calibration():
    ids = torch.randint(0, 256, (4 * 32,), generator=torch.Generator().manual_seed(1))
    return calibration_from_ids(ids, seqlen=32, source="random ids")


def _check_budget(alloc: Allocation, target: float) -> None:
    counts = np.array([alloc.param_counts[n] for n in alloc.sparsities], dtype=np.float64)
    values = np.array(list(alloc.sparsities.values()))
    assert abs(float(values @ counts / counts.sum()) - target) < 1e-6
    assert values.min() >= 0.0 and values.max() <= 0.99
    Allocation.from_dict(json.loads(alloc.to_json()))  # the document validates


@pytest.mark.parametrize(
    "method",
    ["uniform", "acttail", "acttail-reverse", "acttail-block", "acttail-per-type"],
)
@pytest.mark.parametrize("target", TARGETS)
def test_alpha_methods_meet_the_budget_exactly(report: ESDReport, method: str, target: float) -> None:
    alloc = (
        build_allocation(method, report=report, target=target, epsilon=0.3)
        if method != "uniform"
        else build_allocation(method, report=report, target=target)
    )
    _check_budget(alloc, target)
    assert alloc.method == method
    if method != "uniform":
        assert len(set(np.round(list(alloc.sparsities.values()), 9))) > 1  # alpha actually moved sparsity


def test_reverse_direction_mirrors_the_scores(report: ESDReport) -> None:
    hi = build_allocation("acttail", report=report, target=0.5, epsilon=0.2)
    lo = build_allocation("acttail-reverse", report=report, target=0.5, epsilon=0.2)
    alphas = report.alphas()
    top = max(alphas, key=alphas.__getitem__)
    assert hi.sparsities[top] > 0.5 > lo.sparsities[top]


def test_per_type_normalisation_spans_each_kind() -> None:
    alphas = {f"model.layers.{i}.self_attn.q_proj": 2.0 + i for i in range(3)}
    alphas |= {f"model.layers.{i}.mlp.down_proj": 10.0 + 0.1 * i for i in range(3)}
    alphas |= {f"model.layers.{i}.mlp.up_proj": 4.0 for i in range(3)}
    norm = per_type_normalised(alphas)
    assert [norm[f"model.layers.{i}.self_attn.q_proj"] for i in range(3)] == [
        0.0,
        0.5,
        1.0,
    ]
    assert norm["model.layers.2.mlp.down_proj"] == pytest.approx(1.0)
    assert norm["model.layers.0.mlp.up_proj"] == 0.5  # constant kind sits in the middle


def test_per_type_keeps_each_kind_mean_score_equal(report: ESDReport) -> None:
    alloc = build_allocation("acttail-per-type", report=report, target=0.5, epsilon=0.2)
    by_kind: dict[str, list[float]] = {}
    for name, s in alloc.sparsities.items():
        by_kind.setdefault(str(parse_projection_name(name).kind), []).append(s)
    # min-max within a kind: every kind has one projection at the low end and one at the high end
    lows = {k: min(v) for k, v in by_kind.items()}
    highs = {k: max(v) for k, v in by_kind.items()}
    assert max(lows.values()) - min(lows.values()) < 1e-9
    assert max(highs.values()) - min(highs.values()) < 1e-9
    assert alloc.params["alpha_normalisation"] == "per_type"


def test_greedy_trace_is_monotone_and_every_target_is_exact(
    model: torch.nn.Module, report: ESDReport, calibration
) -> None:
    trace = greedy_trace(model, calibration, max_target=0.9, step=0.2, max_tokens=64)
    for block in trace.blocks:
        assert block.effective[0] == 0.0 and block.effective[-1] >= 0.9
        assert all(b >= a for a, b in zip(block.effective, block.effective[1:]))
        states = np.array(block.states)
        assert (np.diff(states, axis=0) >= 0).all()  # greedy only ever raises a sparsity
    for target in TARGETS:
        alloc = build_allocation("teal-greedy", report=report, target=target, model=model, trace=trace)
        _check_budget(alloc, target)
        assert alloc.method == "teal-greedy" and alloc.params["step"] == 0.2


def test_greedy_raises_cheap_projections_first(model: torch.nn.Module, calibration) -> None:
    trace = greedy_trace(model, calibration, max_target=0.3, step=0.1, max_tokens=64)
    block = trace.blocks[0]
    raised = np.flatnonzero(np.array(block.states[1]) > 0)
    assert raised.size == 1  # one projection per step
    assert 0.0 < block.effective[1] < 0.3


def test_greedy_without_trace_builds_one(model: torch.nn.Module, report: ESDReport, calibration) -> None:
    alloc = build_allocation(
        "teal-greedy",
        report=report,
        target=0.5,
        model=model,
        calibration=calibration,
        step=0.25,
        greedy_tokens=32,
    )
    _check_budget(alloc, 0.5)
    assert alloc.params["calibration"]["tokens"] == 128


SMALL_GRID = (
    DEFAULT_GRID[0],
    Candidate(epsilon=0.3),
    Candidate(epsilon=0.3, per_type=True),
)


def test_auto_is_deterministic_and_records_its_choice(model: torch.nn.Module, report: ESDReport, calibration) -> None:
    first = auto_allocation(report, 0.7, model, calibration, grid=SMALL_GRID, min_gain=0.0)
    second = auto_allocation(report, 0.7, model, calibration, grid=SMALL_GRID, min_gain=0.0)
    assert first.ppl == second.ppl and first.chosen == second.chosen
    assert first.allocation.sparsities == second.allocation.sparsities
    _check_budget(first.allocation, 0.7)
    params = first.allocation.params
    assert [g["label"] for g in params["grid"]] == list(first.labels)
    assert params["choice"]["label"] == first.labels[first.chosen]
    assert first.chosen == int(np.argmin(first.ppl))  # min_gain 0: plain argmin
    # the recorded score of the choice is the calibration perplexity of the returned sparsities
    nll = calibration_nll(model, calibration, first.allocation)
    assert np.exp(nll) == pytest.approx(first.ppl[first.chosen], rel=1e-9)
    assert params["calibration"]["tokens"] == 128 and first.allocation.method == "auto"


def test_auto_falls_back_to_uniform_inside_the_margin(model: torch.nn.Module, report: ESDReport, calibration) -> None:
    choice = auto_allocation(report, 0.7, model, calibration, grid=SMALL_GRID, min_gain=0.99)
    assert choice.chosen == 0 and choice.allocation.params["choice"]["method"] == "uniform"
    assert set(choice.allocation.sparsities.values()) == {0.7}


def test_auto_via_registry_meets_the_budget(model: torch.nn.Module, report: ESDReport, calibration) -> None:
    alloc = build_allocation(
        "auto",
        report=report,
        target=0.5,
        model=model,
        calibration=calibration,
        grid=SMALL_GRID,
    )
    _check_budget(alloc, 0.5)
    assert alloc.params["min_gain"] == 0.01


def test_calibration_refuses_the_test_split() -> None:
    from acttail.errors import ActTailError
    from acttail.methods import calibration_set

    with pytest.raises(ActTailError, match="test split"):
        calibration_set(None, split="test")  # type: ignore[arg-type]


def test_unknown_method_and_knob_list_the_valid_ones(report: ESDReport) -> None:
    with pytest.raises(AllocationError, match="valid: uniform, acttail") as exc:
        build_allocation("alphaprune", report=report, target=0.5)
    assert all(name in str(exc.value) for name in METHODS)
    with pytest.raises(AllocationError, match="unknown parameter.*epslion.*valid: direction, epsilon"):
        build_allocation("acttail", report=report, target=0.5, epslion=0.1)
    with pytest.raises(AllocationError, match="needs the loaded model"):
        build_allocation("auto", report=report, target=0.5)


def test_auto_can_pick_the_greedy_candidate(model: torch.nn.Module, report: ESDReport, calibration) -> None:
    trace = greedy_trace(model, calibration, max_target=0.7, step=0.25, max_tokens=64)
    grid = (DEFAULT_GRID[0], Candidate("teal-greedy"))
    choice = auto_allocation(report, 0.7, model, calibration, grid=grid, min_gain=0.0, trace=trace)
    assert choice.labels == ("uniform", "teal-greedy")
    _check_budget(choice.allocation, 0.7)
    if choice.chosen == 1:
        greedy = build_allocation("teal-greedy", report=report, target=0.7, model=model, trace=trace)
        assert choice.allocation.sparsities == greedy.sparsities
    assert DEFAULT_GRID[-1].method == "teal-greedy"


def test_build_allocations_shares_one_greedy_trace_across_targets(
    model: torch.nn.Module, report: ESDReport, calibration
) -> None:
    stages: list[tuple[str, float]] = []
    built = build_allocations(
        ["uniform", "teal-greedy", "auto"],
        report=report,
        targets=[0.3, 0.6],
        model=model,
        calibration=calibration,
        progress=lambda stage, fraction: stages.append((stage, fraction)),
        step=0.25,
        greedy_tokens=64,
        min_gain=0.0,
    )
    assert [(a.method, a.target) for a in built] == [
        (m, t) for t in (0.3, 0.6) for m in ("uniform", "teal-greedy", "auto")
    ]
    for alloc in built:
        _check_budget(alloc, alloc.target)
    names = [s for s, _ in stages]
    assert names.count("greedy search, block 1/3") == 1  # one trace for both targets and methods
    assert built[1].params["max_target"] == built[4].params["max_target"] == 0.6
    assert built[1].params["calibration"]["tokens"] == 128
    assert any(s.startswith("auto@0.6: candidate 6/6") for s in names)
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    greedy = build_allocation(
        "teal-greedy", report=report, target=0.6, model=model, calibration=calibration,
        step=0.25, greedy_tokens=64,
    )  # fmt: skip
    assert greedy.sparsities == built[4].sparsities  # the shared trace gives the single-target answer


def test_build_allocations_refuses_knobs_no_method_reads(report: ESDReport) -> None:
    with pytest.raises(AllocationError, match="unknown parameter.*min_gain; valid: direction, epsilon"):
        build_allocations(["uniform", "acttail"], report=report, targets=[0.5], min_gain=0.1)
    with pytest.raises(AllocationError, match="auto needs the loaded model"):
        build_allocations(["uniform", "auto"], report=report, targets=[0.5])
    assert build_allocations(["acttail"], report=report, targets=[]) == []
    assert method_knobs("auto") >= {"min_gain", "calibration_tokens", "calibration_seqlen"}
