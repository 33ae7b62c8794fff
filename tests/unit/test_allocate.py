"""Allocation invariants: exact budget, bounds, monotone in alpha, valid documents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acttail.allocate import (
    Allocation,
    AllocationParams,
    Direction,
    Granularity,
    allocate,
    budgeted_sparsities,
)
from acttail.errors import AllocationError

KINDS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]


def names(layers: int) -> list[str]:
    return [f"model.layers.{i}.{k}" for i in range(layers) for k in KINDS]


@st.composite
def problems(draw):
    layers = draw(st.integers(1, 6))
    projection_names = names(layers)
    alphas = draw(st.lists(st.floats(1.5, 9.0), min_size=len(projection_names), max_size=len(projection_names)))
    counts = draw(st.lists(st.integers(1, 50_000_000), min_size=len(projection_names), max_size=len(projection_names)))
    target = draw(st.floats(0.0, 0.95))
    epsilon = draw(st.floats(0.0, 0.9))
    return dict(zip(projection_names, alphas)), dict(zip(projection_names, counts)), target, epsilon


@settings(max_examples=300, deadline=None)
@given(problems(), st.sampled_from(list(Direction)), st.sampled_from(list(Granularity)))
def test_budget_is_exact_and_bounds_hold(problem, direction, granularity) -> None:
    alphas, counts, target, epsilon = problem
    params = AllocationParams(epsilon=epsilon, direction=direction, granularity=granularity)
    doc = allocate(alphas, counts, target, params=params)
    values = np.array(list(doc.sparsities.values()))
    assert abs(doc.weighted_mean - target) < 1e-6
    assert values.min() >= params.s_min - 1e-12 and values.max() <= params.s_max + 1e-12


@settings(max_examples=200, deadline=None)
@given(problems())
def test_higher_alpha_never_gets_less_sparsity(problem) -> None:
    alphas, counts, target, epsilon = problem
    doc = allocate(alphas, counts, target, params=AllocationParams(epsilon=epsilon))
    order = sorted(alphas, key=alphas.get)
    sparsities = [doc.sparsities[n] for n in order]
    assert all(b >= a - 1e-9 for a, b in zip(sparsities, sparsities[1:]))
    reverse = allocate(
        alphas, counts, target, params=AllocationParams(epsilon=epsilon, direction=Direction.LOWER_ALPHA_SPARSER)
    )
    rev = [reverse.sparsities[n] for n in order]
    assert all(b <= a + 1e-9 for a, b in zip(rev, rev[1:]))


def test_clipping_redistributes_at_high_target_and_large_epsilon() -> None:
    alphas = {n: a for n, a in zip(names(4), np.linspace(2, 7, 28))}
    counts = {n: 1000 for n in alphas}
    doc = allocate(alphas, counts, 0.9, params=AllocationParams(epsilon=0.5))
    values = np.array(list(doc.sparsities.values()))
    assert (values == 0.99).sum() > 0, "large epsilon at 90% must hit the upper bound"
    assert abs(values.mean() - 0.9) < 1e-9


def test_unclipped_case_matches_alphapruning_formula() -> None:
    alphas = {n: a for n, a in zip(names(1), [2.0, 2.5, 3.0, 4.0, 3.5, 5.0, 4.5])}
    counts = {n: c for n, c in zip(alphas, [4, 1, 1, 4, 10, 10, 10])}
    eps, target = 0.2, 0.5
    phi = np.array(list(alphas.values()))
    n = np.array(list(counts.values()), dtype=float)
    r = (phi - phi.min()) / (phi.max() - phi.min()) * 2 * eps + (1 - eps)
    expected = r * target * n.sum() / (n * r).sum()
    doc = allocate(alphas, counts, target, params=AllocationParams(epsilon=eps))
    np.testing.assert_allclose(list(doc.sparsities.values()), expected, rtol=1e-12)


def test_block_granularity_gives_one_value_per_block() -> None:
    alphas = {n: a for n, a in zip(names(3), np.random.default_rng(0).uniform(2, 6, 21))}
    doc = allocate(alphas, {n: 7 for n in alphas}, 0.5, params=AllocationParams(granularity=Granularity.BLOCK))
    for layer in range(3):
        assert len({round(v, 12) for k, v in doc.sparsities.items() if f".{layer}." in k}) == 1


def test_uniform_and_errors() -> None:
    counts = {n: 10 for n in names(1)}
    doc = allocate({}, counts, 0.7, method="uniform")
    assert set(doc.sparsities.values()) == {0.7} and doc.estimator is None
    with pytest.raises(AllocationError, match="unknown allocation method 'magic'; valid: acttail, uniform"):
        allocate({}, counts, 0.7, method="magic")
    with pytest.raises(AllocationError, match="no alpha"):
        allocate({}, counts, 0.7)
    with pytest.raises(AllocationError, match=r"sparsity target must be in \[0, 0.99\]"):
        allocate({}, counts, 1.0, method="uniform")
    with pytest.raises(AllocationError, match="outside the clipping bounds"):
        budgeted_sparsities(np.ones(3), np.ones(3), 0.995)


def test_document_round_trip_and_validation(tmp_path: Path) -> None:
    alphas = {n: a for n, a in zip(names(2), np.linspace(2, 5, 14))}
    doc = allocate(alphas, {n: 100 for n in alphas}, 0.8, model_id="m", fingerprint="f" * 64, estimator="ks")
    path = doc.save(tmp_path / "a.json")
    loaded = Allocation.load(path)
    assert loaded == doc
    raw = json.loads(path.read_text())
    for mutate, message in [
        (lambda d: d.update(format="other"), "'format' must be"),
        (lambda d: d.update(target=1.5), "'target' must be"),
        (lambda d: d["sparsities"].update({next(iter(d["sparsities"])): 1.2}), r"must be in \[0, 1\)"),
        (lambda d: d["sparsities"].update({"model.layers.0.mlp.act_fn": 0.1}), "not a q/k/v/o"),
        (lambda d: d["param_counts"].popitem(), "exactly the keys"),
        (lambda d: d.update(target=0.5), "weighted mean"),
    ]:
        bad = json.loads(json.dumps(raw))
        mutate(bad)
        with pytest.raises(AllocationError, match=message):
            Allocation.from_dict(bad)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(AllocationError, match="not valid JSON"):
        Allocation.load(tmp_path / "broken.json")
    with pytest.raises(AllocationError, match="fingerprint"):
        loaded.check_matches("0" * 64, list(doc.sparsities))
    with pytest.raises(AllocationError, match="1 missing"):
        loaded.check_matches(doc.fingerprint, [*list(doc.sparsities), "model.layers.9.mlp.up_proj"])
