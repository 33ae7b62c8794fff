"""bf16/fp16 on the CPU: TopK, threshold calibration and the decode kernel work in the model's dtype."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from acttail.evaluate.perplexity import evaluate_perplexity
from acttail.models.architectures import find_projections
from acttail.sparse_decode import SparseDecodeLinear, enable_sparse_decode
from acttail.sparsity import SparsityMode, apply_sparsity, calibrate_thresholds, topk_sparsify
from tests.tiny_models import build_tiny_model

IDS = (torch.arange(1024) * 37 + 11) % 249 + 1  # no padding id 0 (its embedding is all zeros)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_topk_in_half_precision_keeps_exactly_k_and_tracks_fp32(dtype: torch.dtype) -> None:
    fp32 = build_tiny_model("qwen2")
    half = build_tiny_model("qwen2").to(dtype)
    with apply_sparsity(fp32, 0.5):
        reference = evaluate_perplexity(fp32, token_ids=IDS, seqlen=128, progress=False)
    with apply_sparsity(half, 0.5) as handle:
        result = evaluate_perplexity(half, token_ids=IDS, seqlen=128, progress=False)
        realised = handle.realised_sparsity()
    assert all(s == pytest.approx(0.5, abs=1e-3) for s in realised.per_projection.values())
    assert result.ppl == pytest.approx(reference.ppl, rel=0.01)  # bf16 PPL within 1% of fp32
    x = torch.randn(3, 64, dtype=dtype)
    kept = topk_sparsify(x, 20)
    assert kept.dtype == dtype and torch.all((kept != 0).sum(-1) == 20)


def test_threshold_calibration_in_bf16_reaches_the_target() -> None:
    model = build_tiny_model("llama").to(torch.bfloat16)
    thresholds = calibrate_thresholds(model, None, 0.6, token_ids=IDS, seqlen=128)
    with apply_sparsity(model, 0.6, SparsityMode.THRESHOLD, thresholds) as handle:
        evaluate_perplexity(model, token_ids=IDS, seqlen=128, progress=False)
        realised = handle.realised_sparsity()
    # In-sample, sequential calibration: each projection's sparsity is its target (bf16 ties aside).
    assert all(s == pytest.approx(0.6, abs=0.02) for s in realised.per_projection.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_kernel_in_half_precision_accumulates_in_fp32(dtype: torch.dtype) -> None:
    model = build_tiny_model("llama").to(dtype)
    with enable_sparse_decode(model, 0.5) as handle:
        module = next(m for m in model.modules() if isinstance(m, SparseDecodeLinear))
        x = torch.randn(1, 1, module.in_features, dtype=dtype)
        y = module(x)
        expected = F.linear(topk_sparsify(x, module.k).float(), module.weight.float()).to(dtype)
        assert handle.wrappers and y.dtype == dtype
        # One rounding of the fp32 sum: at most one unit in the last place of the half type.
        ulp = torch.finfo(dtype).eps * expected.abs().clamp_min(1e-3)
        assert torch.all((y.float() - expected.float()).abs() <= ulp.float() + 1e-6)
    assert all(not isinstance(m, SparseDecodeLinear) for _, m in find_projections(model))
