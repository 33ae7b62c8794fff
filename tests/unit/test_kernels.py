"""Sparse GEMV kernels against the dense product of the masked input (the definition)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from acttail import kernels
from acttail.kernels import cpu
from acttail.sparsity import keep_count

SPARSITIES = (0.0, 0.4, 0.5, 0.7, 0.8, 0.9)
SHAPES = (
    (1, 1),
    (5, 7),
    (64, 33),
    (192, 576),
    (1536, 576),
    (576, 1536),
    (300, 1001),
)  # (d_out, d_in)


def _masked_reference(w: torch.Tensor, x: torch.Tensor, idx: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[idx] = True
    return F.linear((x * mask).double(), w.double(), None if bias is None else bias.double())


def _case(d_out: int, d_in: int, seed: int, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=gen).to(dtype)
    x = torch.randn(d_in, generator=gen).to(dtype)
    bias = torch.randn(d_out, generator=gen).to(dtype)
    return w, w.t().contiguous(), x, bias


def test_compiled_kernel_builds_here() -> None:
    status = cpu.cpu_kernel_status()
    assert status.available, status.reason
    assert kernels.backend_name("cpu", torch.float32) == "c-openmp"
    assert kernels.backend_name("meta", torch.float32) == "torch-gather"


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize(("d_out", "d_in"), SHAPES)
def test_topk_gemv_matches_dense_on_masked_input_fp32(d_out: int, d_in: int, sparsity: float) -> None:
    w, wt, x, bias = _case(d_out, d_in, seed=d_out * 31 + d_in)
    k = keep_count(sparsity, d_in)
    idx, vals = kernels.select_topk(x, k)
    assert idx.numel() == k
    expected_idx = torch.topk(x.abs(), k).indices.sort().values
    assert torch.equal(idx, expected_idx)
    assert torch.equal(vals, x[idx])
    reference = _masked_reference(w, x, idx, bias)
    for got in (
        kernels.sparse_gemv(wt, idx, vals, bias),
        kernels.topk_gemv(wt, x, k, bias),
    ):
        assert got.dtype == torch.float32 and got.shape == (d_out,)
        torch.testing.assert_close(got.double(), reference, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize(("d_out", "d_in"), ((192, 576), (577, 129), (1536, 576)))
def test_sparse_gemv_bf16_close_to_dense(d_out: int, d_in: int, sparsity: float) -> None:
    w, wt, x, bias = _case(d_out, d_in, seed=7, dtype=torch.bfloat16)
    k = keep_count(sparsity, d_in)
    idx, vals = kernels.select_topk(x, k)
    got = kernels.sparse_gemv(wt, idx, vals, bias)
    assert got.dtype == torch.bfloat16
    reference = _masked_reference(w.float(), x.float(), idx, bias.float())
    # bf16 keeps 8 bits of mantissa: compare at the scale of the outputs.
    scale = reference.abs().max().item()
    torch.testing.assert_close(got.double(), reference, rtol=2e-2, atol=2e-2 * scale)


@pytest.mark.parametrize("threshold", (0.0, 0.3, 1.0, 2.5, 100.0))
def test_threshold_selection_is_abs_greater_than_t(threshold: float) -> None:
    w, wt, x, bias = _case(257, 513, seed=3)
    idx, vals = kernels.select_threshold(x, threshold)
    assert torch.equal(idx, torch.nonzero(x.abs() > threshold).flatten())
    assert torch.equal(vals, x[idx])
    expected = F.linear((x * (x.abs() > threshold)).double(), w.double(), bias.double())
    torch.testing.assert_close(
        kernels.threshold_gemv(wt, x, threshold, bias).double(),
        expected,
        rtol=1e-5,
        atol=1e-4,
    )


def test_threshold_strictness_on_exact_ties() -> None:
    x = torch.tensor([0.5, -0.5, 0.25, 1.0, -2.0])
    idx, _ = kernels.select_threshold(x, 0.5)
    assert idx.tolist() == [3, 4]


def test_all_zero_input_gives_bias() -> None:
    _, wt, _, bias = _case(96, 80, seed=1)
    x = torch.zeros(80)
    for k in (0, 1, 40, 80):
        assert torch.equal(kernels.topk_gemv(wt, x, k, bias), bias)
    assert torch.equal(kernels.topk_gemv(wt, x, 10), torch.zeros(96))
    assert torch.equal(kernels.threshold_gemv(wt, x, 0.0, bias), bias)


def test_no_zero_input_with_k_equal_d_in_is_the_dense_product() -> None:
    w, wt, x, bias = _case(333, 222, seed=2)
    x = x.abs() + 0.1  # no zero anywhere
    idx, _ = kernels.select_topk(x, 222)
    assert idx.tolist() == list(range(222))
    torch.testing.assert_close(kernels.topk_gemv(wt, x, 222, bias), F.linear(x, w, bias), rtol=1e-5, atol=1e-4)


def test_k_one_picks_the_largest_magnitude_column() -> None:
    w, wt, x, _ = _case(50, 40, seed=4)
    x[17] = -9.0
    torch.testing.assert_close(kernels.topk_gemv(wt, x, 1), -9.0 * w[:, 17], rtol=0, atol=1e-6)


def test_topk_ties_at_the_boundary_go_to_lowest_indices() -> None:
    x = torch.tensor([1.0, -3.0, 2.0, 2.0, -2.0, 0.5])
    idx, vals = kernels.select_topk(x, 3)
    assert idx.tolist() == [1, 2, 3]
    assert vals.tolist() == [-3.0, 2.0, 2.0]


def test_many_ties_select_exactly_k() -> None:
    x = torch.ones(1000)
    x[::7] = -1.0
    for k in (1, 3, 500, 999):
        idx, _ = kernels.select_topk(x, k)
        assert idx.tolist() == list(range(k))


def test_torch_fallback_matches_compiled_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _w, wt, x, bias = _case(700, 300, seed=5)
    idx, vals = kernels.select_topk(x, 120)
    compiled = kernels.sparse_gemv(wt, idx, vals, bias)
    monkeypatch.setattr(cpu, "_load", lambda: None)
    fallback_idx, fallback_vals = kernels.select_topk(x, 120)
    assert torch.equal(fallback_idx, idx) and torch.equal(fallback_vals, vals)
    torch.testing.assert_close(kernels.sparse_gemv(wt, idx, vals, bias), compiled, rtol=1e-5, atol=1e-4)
    assert torch.equal(kernels.select_threshold(x, 0.7)[0], torch.nonzero(x.abs() > 0.7).flatten())


def test_threads_split_outputs_without_overlap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "PARALLEL_MIN_WORK", 0)  # always take the OpenMP path
    # Odd d_out exercises the ragged last range.
    w, wt, x, bias = _case(4099, 512, seed=6)
    idx, vals = kernels.select_topk(x, 256)
    previous = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(kernels.sparse_gemv(wt, idx, vals, bias))
    finally:
        torch.set_num_threads(previous)
    reference = _masked_reference(w, x, idx, bias)
    for got in results:
        torch.testing.assert_close(got.double(), reference, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("d_in", "sparsity", "k"),
    (
        (576, 0.0, 576),
        (576, 0.5, 288),
        (1536, 0.9, 154),
        (10, 0.45, 6),
        (10, 0.35, 6),
        (10, 1.0, 0),
    ),
)
def test_keep_count(d_in: int, sparsity: float, k: int) -> None:
    assert keep_count(sparsity, d_in) == k


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="sparsity"):
        keep_count(1.5, 10)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.sparse_gemv(torch.randn(4, 6).t(), torch.tensor([0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="equal length"):
        kernels.sparse_gemv(torch.randn(4, 6), torch.tensor([0, 1]), torch.tensor([1.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run by benchmarks/gpu_check.sh)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_cuda_kernels_match_dense_on_masked_input(sparsity: float, dtype: torch.dtype) -> None:
    from acttail.kernels import triton_gemv

    assert triton_gemv.triton_available()
    for d_out, d_in in ((192, 576), (4096, 4096), (11008, 4096), (333, 1001)):
        w, _, x, bias = _case(d_out, d_in, seed=11)
        w, x, bias = w.cuda().to(dtype), x.cuda().to(dtype), bias.cuda().to(dtype)
        wt = w.t().contiguous()
        k = keep_count(sparsity, d_in)
        idx, vals = kernels.select_topk(x, k)
        reference = _masked_reference(w.float(), x.float(), idx, bias.float())
        tol = (
            {"rtol": 1e-4, "atol": 1e-3}
            if dtype == torch.float32
            else {"rtol": 2e-2, "atol": 2e-2 * reference.abs().max().item()}
        )
        torch.testing.assert_close(kernels.topk_gemv(wt, x, k, bias).double(), reference, **tol)
        torch.testing.assert_close(kernels.sparse_gemv(wt, idx, vals, bias).double(), reference, **tol)
        t = 0.8
        expected = F.linear((x * (x.abs() > t)).double(), w.double(), bias.double())
        torch.testing.assert_close(kernels.threshold_gemv(wt, x, t, bias).double(), expected, **tol)


@pytest.mark.parametrize(("d_out", "d_in", "k"), ((4099, 512, 256), (576, 1536, 1), (1536, 576, 576), (300, 700, 0)))
@pytest.mark.parametrize("threads", [1, 2])
def test_exact_kernel_is_the_correctly_rounded_fp64_product(
    d_out: int, d_in: int, k: int, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu, "PARALLEL_MIN_WORK", 0)
    _w, wt, x, bias = _case(d_out, d_in, seed=d_out + k)
    idx, vals = kernels.select_topk(x, k)
    expected = cpu.torch_gather_gemv(wt, idx, vals, bias, exact=True)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        rows = cpu.gather_rows_gemv(wt, idx, vals, bias, exact=True)
        fused = cpu.fused_topk_gemv(wt, x, k, bias, exact=True)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(rows, expected)  # bit for bit, not within a tolerance
    assert torch.equal(fused, expected)
    fp32 = cpu.gather_rows_gemv(wt, idx, vals, bias)
    torch.testing.assert_close(fp32, expected, rtol=1e-5, atol=1e-4)
