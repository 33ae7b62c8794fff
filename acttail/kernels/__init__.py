"""Sparse GEMV for batch-1 decode with sparse input activations (ActTail / TEAL).

For one token, ``y = W x`` with W: [d_out, d_in] and only k of the d_in entries of x kept
(TopK by magnitude, or |x| > t). Keeping a copy ``W^T``: [d_in, d_out] contiguous makes each
kept channel one contiguous row, so the product reads k * d_out weights instead of
d_in * d_out: ideal speed-up 1 / (1 - s) with s = 1 - k / d_in, because batch-1 GEMV is
memory-bound.

Backends, chosen per call from the tensors' device and dtype:

- CPU, fp32/bf16: compiled C kernel (``cpu.py``, OpenMP over output ranges); torch gather + mv
  when no compiler is available.
- CUDA: Triton kernel (``triton_gemv.py``) when ``triton`` imports; otherwise torch gather + mv.
- anything else: torch gather + mv.

``backend_name(device, dtype)`` says which one a call will use (benchmarks record it).
"""

from __future__ import annotations

import torch

from acttail.kernels import cpu, triton_gemv

__all__ = [
    "backend_name",
    "select_threshold",
    "select_topk",
    "sparse_gemv",
    "threshold_gemv",
    "topk_gemv",
]


def backend_name(device: torch.device | str, dtype: torch.dtype) -> str:
    """'c-openmp', 'triton' or 'torch-gather': the path ``sparse_gemv`` takes for these tensors."""
    device = torch.device(device)
    if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and cpu.cpu_kernel_available():
        return "c-openmp"
    if device.type == "cuda" and triton_gemv.triton_available():
        return "triton"
    return "torch-gather"


def select_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx ascending int64 [k], x[idx]) for the k entries of largest |x| of a 1-D vector."""
    k = max(0, min(int(k), x.numel()))
    if x.device.type == "cpu":
        return cpu.select_topk_c(x, k)
    idx = torch.topk(x.abs(), k, sorted=False).indices.sort().values
    return idx, x[idx]


def select_threshold(x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx ascending, x[idx]) for the entries with |x| > threshold of a 1-D vector."""
    if x.device.type == "cpu":
        return cpu.select_threshold_c(x, threshold)
    idx = torch.nonzero(x.abs() > threshold).flatten()
    return idx, x[idx]


def sparse_gemv(
    weight_t: torch.Tensor,
    idx: torch.Tensor,
    vals: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = bias + sum_j vals[j] * weight_t[idx[j], :]  ->  [d_out] in weight_t.dtype.

    weight_t: [d_in, d_out] contiguous (input-channel-major W); idx: int64 [k]; vals: [k].
    Equals ``F.linear(x_masked, W, bias)`` where x_masked keeps x[idx] and zeroes the rest.
    """
    if weight_t.device.type == "cpu":
        return cpu.gather_rows_gemv(weight_t, idx, vals, bias)
    if weight_t.device.type == "cuda" and triton_gemv.triton_available():
        dense = torch.zeros(weight_t.shape[0], dtype=vals.dtype, device=vals.device).index_copy_(0, idx, vals)
        return triton_gemv.threshold_gemv(weight_t, dense, 0.0, bias)
    return cpu.torch_gather_gemv(weight_t, idx, vals, bias)


def topk_gemv(weight_t: torch.Tensor, x: torch.Tensor, k: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Fused TopK selection + sparse GEMV for one token: W (topk_k(x)) + bias, x: [d_in]."""
    if weight_t.device.type == "cuda" and triton_gemv.triton_available():
        return triton_gemv.topk_gemv(weight_t, x, k, bias)
    if weight_t.device.type == "cpu":
        return cpu.fused_topk_gemv(weight_t, x, k, bias)
    idx, vals = select_topk(x, k)
    return sparse_gemv(weight_t, idx, vals, bias)


def threshold_gemv(
    weight_t: torch.Tensor,
    x: torch.Tensor,
    threshold: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused threshold selection + sparse GEMV: W (x * [|x| > t]) + bias, x: [d_in]."""
    if weight_t.device.type == "cuda" and triton_gemv.triton_available():
        return triton_gemv.threshold_gemv(weight_t, x, threshold, bias)
    if weight_t.device.type == "cpu":
        return cpu.fused_threshold_gemv(weight_t, x, threshold, bias)
    idx, vals = select_threshold(x, threshold)
    return sparse_gemv(weight_t, idx, vals, bias)
