"""Scoring rules (|x|, WINA) and CATS keep exactly the right entries on hand-made examples."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from acttail.cats import apply_cats, calibrate_cats, cats_allocation, gate_sparsity, mlp_share
from acttail.errors import AllocationError
from acttail.scoring import Scoring, channel_scale, column_norms
from acttail.sparsity import apply_sparsity, calibrate_thresholds, magnitude_quantile, threshold_sparsify, topk_sparsify
from tests.unit.test_sparsity import projection_names, random_ids, tiny_model


def _linear(weight: list[list[float]]) -> nn.Linear:
    w = torch.tensor(weight)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


# Columns of W have norms 1, 10, 0.1, 3 (W is [2, 4]: column j reads x_j).
W = [[1.0, 6.0, 0.0, 3.0], [0.0, 8.0, 0.1, 0.0]]
X = torch.tensor([[4.0, -0.5, 3.0, 1.0]])


def test_column_norms_are_the_norms_of_the_columns_that_read_each_input() -> None:
    assert column_norms(torch.tensor(W)).tolist() == pytest.approx([1.0, 10.0, 0.1, 3.0])


def test_wina_topk_keeps_the_largest_abs_x_times_column_norm() -> None:
    scale = channel_scale(_linear(W), Scoring.WINA)
    # scores |x| * c = [4, 5, 0.3, 3]: top 2 are x_1 (5) and x_0 (4); |x| alone keeps x_0 and x_2.
    assert topk_sparsify(X, 2, scale).tolist() == [[4.0, -0.5, 0.0, 0.0]]
    assert topk_sparsify(X, 2).tolist() == [[4.0, 0.0, 3.0, 0.0]]
    # the drop branch (k > d_in / 2): drop only the lowest score, x_2 (0.3), although |x_2| = 3
    assert topk_sparsify(X, 3, scale).tolist() == [[4.0, -0.5, 0.0, 1.0]]


def test_wina_threshold_zeroes_scores_at_or_below_t() -> None:
    scale = channel_scale(_linear(W), Scoring.WINA)
    assert threshold_sparsify(X, 3.0, scale).tolist() == [[4.0, -0.5, 0.0, 0.0]]  # scores 4, 5 > 3
    assert magnitude_quantile(X, 0.5, scale) == pytest.approx(3.0)  # 2nd smallest of [0.3, 3, 4, 5]


def test_magnitude_scoring_has_no_scale() -> None:
    assert channel_scale(_linear(W), "magnitude") is None
    with pytest.raises(ValueError):
        channel_scale(_linear(W), "nope")


def test_apply_sparsity_with_wina_keeps_the_wina_entries_in_the_model() -> None:
    model = tiny_model("llama")
    names = projection_names(model)
    ids = random_ids(16)
    seen: dict[str, torch.Tensor] = {}
    target = dict(model.named_modules())[names[0]]  # layer 0 q_proj
    probe = target.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].clone()))
    with torch.inference_mode():
        model(input_ids=ids.unsqueeze(0))
    probe.remove()
    x = seen["x"]
    expected = topk_sparsify(x, 16, column_norms(target.weight))  # keep 16 of 64
    with apply_sparsity(model, 0.75, scoring="wina"):
        probe = target.register_forward_pre_hook(lambda m, a: seen.__setitem__("sparse", a[0].clone()), prepend=False)
        with torch.inference_mode():
            model(input_ids=ids.unsqueeze(0))
        probe.remove()
    assert torch.equal(seen["sparse"], expected)
    assert not torch.equal(expected, topk_sparsify(x, 16))  # WINA picks different entries than |x| here


def test_wina_threshold_calibration_hits_the_target_in_sample() -> None:
    model = tiny_model("qwen2")
    ids = random_ids(128)
    thresholds = calibrate_thresholds(model, None, 0.6, token_ids=ids, max_tokens=128, seqlen=64, scoring="wina")
    with apply_sparsity(model, 0.6, "threshold", thresholds, scoring="wina") as handle:
        with torch.inference_mode():
            model.model(input_ids=ids.view(2, 64), use_cache=False)
        realised = handle.realised_sparsity()
    assert all(abs(s - 0.6) < 0.02 for s in realised.per_projection.values())
    plain = calibrate_thresholds(model, None, 0.6, token_ids=ids, max_tokens=128, seqlen=64)
    assert plain != thresholds


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = _linear([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
        self.up_proj = _linear([[1.0, 1.0]] * 4)
        self.down_proj = _linear([[1.0, 2.0, 3.0, 4.0]])
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def test_cats_zeroes_exactly_the_small_gate_activations() -> None:
    from acttail.cats import _GateHook

    mlp = _MLP()
    x = torch.tensor([[2.0, -0.1]])  # gate = [2, -0.1, 1.9, -2]; |silu| = [1.76, 0.048, 1.66, 0.238]
    hook = _GateHook(mlp.act_fn, threshold=0.3)
    handle = mlp.gate_proj.register_forward_hook(hook)
    out = mlp(x)
    handle.remove()
    a = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    kept = torch.tensor([[1.0, 0.0, 1.0, 0.0]])  # entries 1 and 3 are skipped: up rows and down columns 1, 3
    assert torch.allclose(out, mlp.down_proj(a * kept))
    assert hook.zeros == 2 and hook.elements == 4


def test_cats_on_a_model_calibrates_the_gate_sparsity_and_reports_the_effective_sparsity() -> None:
    model = tiny_model("llama")
    ids = random_ids(128)
    names = projection_names(model)
    counts = {n: m.weight.numel() for n, m in dict(model.named_modules()).items() if n in names}
    share = mlp_share(counts)
    thresholds = calibrate_cats(model, ids, 0.5, max_tokens=128, seqlen=64)
    with apply_cats(model, thresholds) as handle:
        with torch.inference_mode():
            model.model(input_ids=ids.view(2, 64), use_cache=False)
        gate = handle.gate_sparsity()
        assert all(abs(z - 0.5) < 0.02 for z in gate.values())
        assert handle.effective_sparsity() == pytest.approx(0.5 * share, abs=0.01)
    record = cats_allocation(counts, 0.5)
    assert record.weighted_mean == pytest.approx(0.5 * share)
    assert gate_sparsity(0.3, counts) == pytest.approx(0.3 / share)
    with pytest.raises(AllocationError, match="cannot reach"):
        gate_sparsity(0.7, counts)
