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
        stacked = torch.stack([w.detach().to(target, dtype) for w in weights[start:stop]])  # [B, d_out, d_in]
        evals = gram_eigenvalues(stacked)
        results.extend(np.asarray(e) for e in evals.cpu().numpy())
        start = stop
    return results


def gram_eigenvalues(stacked: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues [B, m] of the smaller-side Gram of each matrix in ``stacked`` [B, d_out, d_in]."""
    if stacked.ndim != 3:
        raise ValueError(f"expected a [B, d_out, d_in] stack, got shape {tuple(stacked.shape)}")
    d_out, d_in = stacked.shape[-2:]
    if d_out >= d_in:
        gram = stacked.transpose(-2, -1) @ stacked  # WᵀW: [B, d_in, d_in]
    else:
        gram = stacked @ stacked.transpose(-2, -1)  # WWᵀ: [B, d_out, d_out], same nonzero spectrum
    evals = torch.linalg.eigvalsh(gram)
    return torch.clamp_min(evals, 0.0)
