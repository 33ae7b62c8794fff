"""CUDA sparse GEMV in Triton (TEAL-style), used only when CUDA and ``triton`` are present.

Grid: (input-channel blocks, output blocks). Each program loads BLOCK_N entries of x, keeps
those with |x| > t, loads only the kept rows of its W^T tile (masked-off rows issue no memory
transactions) and atomically adds its partial sums into an fp32 y:

    y[o] = bias[o] + sum_{j : |x_j| > t} x_j * W^T[j, o]

TopK is run as a threshold of 0 on x with the non-selected entries zeroed (exact selection,
and a zero that was selected contributes nothing either way). ``triton`` is imported lazily
and guarded, so CPU-only installs never need it; without it the callers use torch.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import torch

BLOCK_N = 32  # input channels per program
BLOCK_M = 256  # outputs per program


@functools.cache
def triton_available() -> bool:
    """True when CUDA is usable and ``triton`` can be imported."""
    if not torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return False
    try:
        _kernel()
    except ImportError:
        return False
    return True


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def gemv_t_threshold(wt_ptr, x_ptr, y_ptr, d_in, d_out, threshold, BN: tl.constexpr, BM: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        rn = pid_n * BN + tl.arange(0, BN)
        rm = pid_m * BM + tl.arange(0, BM)
        in_n = rn < d_in
        in_m = rm < d_out
        x = tl.load(x_ptr + rn, mask=in_n, other=0.0).to(tl.float32)
        keep = (tl.abs(x) > threshold) & in_n
        w = tl.load(
            wt_ptr + rn[:, None] * d_out + rm[None, :],
            mask=keep[:, None] & in_m[None, :],
            other=0.0,
        )
        acc = tl.sum(w.to(tl.float32) * x[:, None], axis=0)
        tl.atomic_add(y_ptr + rm, acc, mask=in_m)

    return triton, gemv_t_threshold


def threshold_gemv(
    weight_t: torch.Tensor,
    x: torch.Tensor,
    threshold: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = W (x * [|x| > t]) + bias on CUDA; weight_t: [d_in, d_out] contiguous, x: [d_in]."""
    triton, kernel = _kernel()
    d_in, d_out = weight_t.shape
    x = x.reshape(-1).contiguous()
    y = torch.zeros(d_out, dtype=torch.float32, device=weight_t.device)
    grid = (triton.cdiv(d_in, BLOCK_N), triton.cdiv(d_out, BLOCK_M))
    kernel[grid](
        weight_t,
        x,
        y,
        d_in,
        d_out,
        float(threshold),
        BN=BLOCK_N,
        BM=BLOCK_M,
        num_warps=4,
    )
    if bias is not None:
        y += bias.to(torch.float32)
    return y.to(weight_t.dtype)


def topk_gemv(weight_t: torch.Tensor, x: torch.Tensor, k: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = W topk_k(x) + bias on CUDA: zero all but the k largest |x|, then the threshold kernel at 0."""
    x = x.reshape(-1)
    idx = torch.topk(x.abs(), k, sorted=False).indices
    kept = torch.zeros_like(x).index_copy_(0, idx, x[idx])
    return threshold_gemv(weight_t, kept, 0.0, bias)
