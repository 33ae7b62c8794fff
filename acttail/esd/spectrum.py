"""Eigenvalues of WᵀW: the empirical spectral density (ESD) of one weight matrix.

For W of shape [d_out, d_in] the ESD is the set of min(d_out, d_in) eigenvalues λ = σ² of WᵀW
(σ the singular values of W), with no 1/N normalisation, as in WeightWatcher and AlphaPruning.
The power-law fit does not depend on scale, so the normalisation only matters for the norm
metrics, which we report in WeightWatcher's units.

Computed as the Gram matrix of the smaller side (WᵀW or WWᵀ, [m, m] with m = min(d_out, d_in))
followed by a symmetric eigensolver: the Gram costs 2·m²·max(d) flops and the eigensolver
~(4/3)·m³, about 3× cheaper than a full SVD of W on CPU. Precision: the eigenvalues near zero
carry an absolute error of about ε·λ_max, so an fp32 Gram (ε ≈ 6e-8) blurs the bottom of the
spectrum; the default computes Gram and eigensolver in fp64 (see ``benchmarks/results/esd_speed.md``
for the cost). Equal-shape matrices are batched into one [B, m, m] call; CUDA is used when present.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_GRAM_SLICE_BYTES = 64 << 20  # fp64 slice of W converted at a time while accumulating the Gram


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def eigenvalues(
    weight: torch.Tensor | np.ndarray,
    device: str | torch.device | None = None,
    *,
    dtype: torch.dtype = torch.float64,
) -> np.ndarray:
    """Ascending eigenvalues of WᵀW for ``weight`` W of shape [d_out, d_in] (length min(d_out, d_in)).

    Tiny negative values from rounding are clipped to 0 (eigenvalues of a Gram matrix are ≥ 0).
    """
    return eigenvalues_batch([torch.as_tensor(weight)], device, dtype=dtype)[0]


def eigenvalues_batch(
    weights: Sequence[torch.Tensor],
    device: str | torch.device | None = None,
    *,
    dtype: torch.dtype = torch.float64,
) -> list[np.ndarray]:
    """``eigenvalues`` of several matrices; runs of equal shape share one batched eigensolver call."""
    target = resolve_device(device)
    results: list[np.ndarray] = []
    start = 0
    while start < len(weights):
        stop = start + 1
        while stop < len(weights) and weights[stop].shape == weights[start].shape:
            stop += 1
        stacked = torch.stack([w.detach().to(target) for w in weights[start:stop]])  # [B, d_out, d_in]
        evals = gram_eigenvalues(stacked, dtype)
        results.extend(np.asarray(e) for e in evals.cpu().numpy())
        start = stop
    return results


def gram_eigenvalues(stacked: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Ascending eigenvalues [B, m] of the smaller-side Gram of each matrix in ``stacked`` [B, d_out, d_in]."""
    if stacked.ndim != 3:
        raise ValueError(f"expected a [B, d_out, d_in] stack, got shape {tuple(stacked.shape)}")
    evals = torch.linalg.eigvalsh(gram(stacked, dtype))
    return torch.clamp_min(evals, 0.0)


def gram(stacked: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """WᵀW (d_out ≥ d_in) or WWᵀ, [B, m, m] in ``dtype``, accumulated over slices of the long side.

    Slicing keeps the ``dtype`` copy of W to ~``_GRAM_SLICE_BYTES`` instead of a full fp64 copy
    (360 MB for an 11008×4096 matrix).
    """
    if stacked.shape[-2] < stacked.shape[-1]:
        stacked = stacked.transpose(-2, -1)  # WWᵀ = (Wᵀ)ᵀ(Wᵀ): always contract over the long side
    batch, long_side, m = stacked.shape
    step = max(1, _GRAM_SLICE_BYTES // (batch * m * torch.finfo(dtype).bits // 8))
    out = torch.zeros(batch, m, m, dtype=dtype, device=stacked.device)
    for start in range(0, long_side, step):
        part = stacked[:, start : start + step].to(dtype)  # [B, rows, m]
        out.baddbmm_(part.transpose(-2, -1), part)
    return out
