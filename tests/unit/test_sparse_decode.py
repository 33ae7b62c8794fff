"""Sparse decode (kernel path) against the reference TopK masking, on tiny random models.

"Identical greedy tokens" holds as long as no TopK boundary is a floating-point tie: the kernel
sums in another order than the dense BLAS product, so values differ by ~1 ulp, and where the
k-th and (k+1)-th largest |x| are within 1 ulp (a relative gap of ~1e-7) the two paths keep
different channels. Random tiny models that lock onto one repeated token produce exactly such
ties (identical value rows averaged by attention); the initialisations below were chosen so
the tiny models generate varied text, which is what real models do.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from acttail import kernels
from acttail.allocate import allocate
from acttail.errors import AllocationError
from acttail.evaluate.speed import SpeedResult, greedy_decode, measure_decode_speed
from acttail.models.architectures import find_projections
from acttail.sparse_decode import SparseDecodeLinear, enable_reference_decode, enable_sparse_decode
from acttail.sparsity import apply_sparsity
from tests.tiny_models import build_tiny_model

NEW_TOKENS = 16


def _tiny(arch: str) -> nn.Module:
    """Qwen2's q/k/v carry a bias: exercises the bias path."""
    extra: dict[str, object] = {}
    if arch == "gemma3":
        extra = {"sliding_window": 8, "layer_types": ["sliding_attention", "sliding_attention", "full_attention"]}
    # initializer_range larger than HF's 0.02 so a random model's logits are not near-ties everywhere, small
    # enough for Gemma3 that greedy decoding does not lock onto one repeated token (see module docstring).
    return build_tiny_model(
        arch, {"llama": 0, "qwen2": 1, "gemma3": 2}[arch], intermediate_size=176, num_hidden_layers=3,
        initializer_range=0.05 if arch == "gemma3" else 0.25, **extra,
    )  # fmt: skip


@pytest.fixture(scope="module", params=["llama", "qwen2", "gemma3"])
def tiny(request: pytest.FixtureRequest) -> nn.Module:
    return _tiny(request.param)


PROMPT = torch.tensor([[5, 17, 99, 3, 42, 7, 250, 11, 64, 128, 1, 33]])


def _per_projection(model: nn.Module, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    return {ref.name: rng.choice([0.0, 0.3, 0.5, 0.7, 0.85, 0.9]) for ref, _ in find_projections(model)}


@pytest.mark.parametrize("setting", ["0.5", "0.8", "0.9", "per-projection"])
def test_sparse_decode_greedy_tokens_identical_to_reference(tiny: nn.Module, setting: str) -> None:
    sparsities = _per_projection(tiny, 3) if setting == "per-projection" else float(setting)
    dense = greedy_decode(tiny, PROMPT, NEW_TOKENS).tokens
    with apply_sparsity(tiny, sparsities, "topk", track=False):
        reference = greedy_decode(tiny, PROMPT, NEW_TOKENS).tokens
    with enable_sparse_decode(tiny, sparsities) as handle:
        assert handle.backend == "c-openmp"
        kernel = greedy_decode(tiny, PROMPT, NEW_TOKENS).tokens
    assert kernel == reference
    assert len(kernel) == NEW_TOKENS
    if setting == "0.9":
        assert kernel != dense  # sparsity this high must change a random model's output


@pytest.mark.parametrize("setting", ["0.5", "0.9", "per-projection"])
def test_exact_kernel_decode_is_bitwise_the_fp64_reference(tiny: nn.Module, setting: str) -> None:
    sparsities = _per_projection(tiny, 7) if setting == "per-projection" else float(setting)
    step = torch.tensor([[77]])
    with torch.inference_mode():
        with enable_reference_decode(tiny, sparsities) as handle:
            assert handle.backend == "torch-reference-fp64"
            cache = tiny(input_ids=PROMPT, use_cache=True).cache
            expected = tiny(input_ids=step, cache=cache, use_cache=True).logits
            reference = greedy_decode(tiny, PROMPT, 3 * NEW_TOKENS).tokens
        with enable_sparse_decode(tiny, sparsities, exact=True) as handle:
            assert handle.backend == "c-openmp-exact"
            cache = tiny(input_ids=PROMPT, use_cache=True).cache
            got = tiny(input_ids=step, cache=cache, use_cache=True).logits
            kernel = greedy_decode(tiny, PROMPT, 3 * NEW_TOKENS).tokens
    assert torch.equal(got, expected)  # every projection output is the correctly rounded value
    assert kernel == reference


def test_exact_general_path_matches_exact_fast_path(tiny: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    sparsities = _per_projection(tiny, 11)
    with enable_sparse_decode(tiny, sparsities, exact=True):
        fast = greedy_decode(tiny, PROMPT, NEW_TOKENS).tokens
        monkeypatch.setattr(SparseDecodeLinear, "_fast_path", lambda self, x: False)
        general = greedy_decode(tiny, PROMPT, NEW_TOKENS).tokens
    assert fast == general


def test_decode_step_logits_match_reference(tiny: nn.Module) -> None:
    sparsities = _per_projection(tiny, 5)
    step = torch.tensor([[77]])
    with torch.inference_mode():
        with apply_sparsity(tiny, sparsities, "topk", track=False):
            cache = tiny(input_ids=PROMPT, use_cache=True).cache
            expected = tiny(input_ids=step, cache=cache, use_cache=True).logits
        with enable_sparse_decode(tiny, sparsities):
            cache = tiny(input_ids=PROMPT, use_cache=True).cache
            got = tiny(input_ids=step, cache=cache, use_cache=True).logits
        cache = tiny(input_ids=PROMPT, use_cache=True).cache
        dense = tiny(input_ids=step, cache=cache, use_cache=True).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert (got - dense).abs().max() > 1e-2  # the sparsity is really applied


def test_decode_steps_run_the_kernel_for_every_sparsified_projection(
    tiny: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = kernels.cpu.topk_rows_f32_into

    def counting(weight_t: torch.Tensor, x: torch.Tensor, k: int, *args: object) -> None:
        calls.append(k)
        real(weight_t, x, k, *args)

    monkeypatch.setattr(kernels.cpu, "topk_rows_f32_into", counting)
    sparsities = _per_projection(tiny, 7)
    swapped = sum(1 for s in sparsities.values() if s > 0)
    with enable_sparse_decode(tiny, sparsities) as handle:
        assert len(handle.originals) == swapped
        greedy_decode(tiny, PROMPT, 4)
    assert len(calls) == 3 * swapped  # prefill is dense-masked; each of the 3 decode steps hits the kernel


def test_general_path_matches_the_fp32_fast_path(tiny: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    sparsities = _per_projection(tiny, 9)
    with enable_sparse_decode(tiny, sparsities):
        fast = greedy_decode(tiny, PROMPT, 12).tokens
    monkeypatch.setattr(SparseDecodeLinear, "_fast_path", lambda self, x: False)  # kernels.topk_gemv route
    with enable_sparse_decode(tiny, sparsities):
        general = greedy_decode(tiny, PROMPT, 12).tokens
    assert general == fast


def test_bf16_model_decodes_through_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny("llama").to(torch.bfloat16)
    with apply_sparsity(model, 0.5, "topk", track=False):
        reference = greedy_decode(model, PROMPT, 8).tokens
    with enable_sparse_decode(model, 0.5) as handle:
        assert handle.backend == "c-openmp"
        with torch.inference_mode():
            cache = model(input_ids=PROMPT, use_cache=True).cache
            logits = model(input_ids=torch.tensor([[9]]), cache=cache, use_cache=True).logits
        assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
        kernel = greedy_decode(model, PROMPT, 8).tokens
    # bf16 rounding differs between the paths, so only the first tokens are compared.
    assert kernel[:3] == reference[:3]


def test_restore_puts_back_the_original_modules(tiny: nn.Module) -> None:
    before = {name: module for name, module in tiny.named_modules()}
    keys = set(tiny.state_dict())
    with torch.inference_mode():
        dense_logits = tiny(input_ids=PROMPT).logits
    handle = enable_sparse_decode(tiny, 0.5)
    assert all(isinstance(tiny.get_submodule(n), SparseDecodeLinear) for n in handle.originals)
    assert set(tiny.state_dict()) == keys  # W^T is a non-persistent buffer
    handle.restore()
    handle.restore()  # idempotent
    after = {name: module for name, module in tiny.named_modules()}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    with torch.inference_mode():
        assert torch.equal(tiny(input_ids=PROMPT).logits, dense_logits)
    handle.reapply()
    assert all(isinstance(tiny.get_submodule(n), SparseDecodeLinear) for n in handle.originals)
    handle.restore()


def test_zero_sparsity_projections_stay_dense(tiny: nn.Module) -> None:
    sparsities = {ref.name: 0.0 for ref, _ in find_projections(tiny)}
    first = next(iter(sparsities))
    sparsities[first] = 0.5
    with enable_sparse_decode(tiny, sparsities) as handle:
        assert list(handle.originals) == [first]


def test_allocation_documents_are_accepted(tiny: nn.Module) -> None:
    projections = find_projections(tiny)
    counts = {ref.name: lin.weight.numel() for ref, lin in projections}
    alphas = {ref.name: 2.0 + 0.1 * i for i, (ref, _) in enumerate(projections)}
    allocation = allocate(alphas, counts, 0.6, method="acttail")
    with apply_sparsity(tiny, allocation, "topk", track=False):
        reference = greedy_decode(tiny, PROMPT, 12).tokens
    with enable_sparse_decode(tiny, allocation) as handle:
        assert handle.sparsities == allocation.sparsities
        assert greedy_decode(tiny, PROMPT, 12).tokens == reference


def test_threshold_mode_matches_reference(tiny: nn.Module) -> None:
    thresholds = {ref.name: 0.3 for ref, _ in find_projections(tiny)}
    with apply_sparsity(tiny, 0.5, "threshold", thresholds, track=False):
        reference = greedy_decode(tiny, PROMPT, 12).tokens
    with enable_sparse_decode(tiny, 0.5, "threshold", thresholds):
        assert greedy_decode(tiny, PROMPT, 12).tokens == reference


def test_bad_sparsities_raise(tiny: nn.Module) -> None:
    with pytest.raises(AllocationError, match="missing"):
        enable_sparse_decode(tiny, {"model.layers.0.self_attn.q_proj": 0.5})
    with pytest.raises(AllocationError, match=r"\[0, 1\)"):
        enable_sparse_decode(tiny, 1.0)
    with pytest.raises(AllocationError, match="thresholds"):
        enable_sparse_decode(tiny, 0.5, "threshold")
    partial = {ref.name: 0.3 for ref, _ in find_projections(tiny)[1:]}
    with pytest.raises(AllocationError, match="no threshold for 1 projections"):
        enable_sparse_decode(tiny, 0.5, "threshold", partial)
    assert not any(isinstance(m, SparseDecodeLinear) for m in tiny.modules())


class _ByteTokenizer:
    """Just enough tokenizer for measure_decode_speed: bytes mod the vocabulary."""

    def __call__(self, text: str, return_tensors: str = "pt") -> object:
        ids = torch.tensor([[b % 256 for b in text.encode()]])
        return type("Encoded", (), {"input_ids": ids})()


def test_measure_decode_speed_reports_both_paths() -> None:
    model = _tiny("llama")
    result = measure_decode_speed(
        model,
        _ByteTokenizer(),
        0.5,
        "a fixed prompt",
        new_tokens=10,
        warmup_tokens=2,
        repeats=2,
        check_exact=True,
    )
    assert isinstance(result, SpeedResult)
    assert result.tokens_match_reference is True and result.matching_prefix == 10
    assert result.exact_tokens_match_reference is True and result.exact_matching_prefix == 10
    assert result.exact_tokens_per_s is not None and result.exact_tokens_per_s > 0
    assert result.backend == "c-openmp" and result.mode == "topk"
    assert result.target_sparsity == pytest.approx(0.5, abs=0.01)
    assert result.timed_steps == 7 and len(result.dense_runs_tokens_per_s) == 2
    assert result.dense_tokens_per_s > 0 and result.sparse_tokens_per_s is not None and result.sparse_tokens_per_s > 0
    assert result.speedup == pytest.approx(result.sparse_tokens_per_s / result.dense_tokens_per_s)
    doc = result.to_dict()
    assert doc["prompt_tokens"] == len("a fixed prompt") and doc["new_tokens"] == 10
    assert not any(isinstance(m, SparseDecodeLinear) for m in model.modules())  # left as found
    dense_only = measure_decode_speed(
        model,
        _ByteTokenizer(),
        None,
        "a fixed prompt",
        new_tokens=8,
        warmup_tokens=1,
        repeats=1,
    )
    assert dense_only.sparse_tokens_per_s is None and dense_only.speedup is None
    with pytest.raises(ValueError, match="warmup"):
        measure_decode_speed(model, _ByteTokenizer(), 0.5, new_tokens=3, warmup_tokens=2)


@pytest.fixture(scope="module")
def smollm2() -> tuple[nn.Module, object]:
    from acttail.models import resolve_model

    return resolve_model("smollm2-135m").load_causal_lm()


@pytest.mark.slow
def test_smollm2_sparse_decode_tokens_identical_to_reference(
    smollm2: tuple[nn.Module, object],
) -> None:
    model, tokenizer = smollm2
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    sparsities = {ref.name: 0.5 + 0.4 * (ref.layer % 2) for ref, _ in find_projections(model)}  # 0.5 / 0.9 alternating
    for setting in (0.5, sparsities):
        with apply_sparsity(model, setting, "topk", track=False):
            reference = greedy_decode(model, ids, 8).tokens
        with enable_sparse_decode(model, setting) as handle:
            assert handle.backend == "c-openmp" and len(handle.originals) == 7 * 30
            kernel = greedy_decode(model, ids, 8).tokens
        assert kernel == reference
    assert not any(isinstance(m, SparseDecodeLinear) for m in model.modules())


@pytest.mark.slow
def test_smollm2_exact_kernel_decode_tokens_identical_to_fp64_reference(
    smollm2: tuple[nn.Module, object],
) -> None:
    model, tokenizer = smollm2
    ids = tokenizer("The history of the printing press", return_tensors="pt").input_ids
    with enable_reference_decode(model, 0.7) as handle:
        reference = greedy_decode(model, ids, 24).tokens
        handle.restore()
    with enable_sparse_decode(model, 0.7, exact=True):
        kernel = greedy_decode(model, ids, 24).tokens
    assert kernel == reference
