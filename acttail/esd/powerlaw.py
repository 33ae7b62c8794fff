"""Power-law fits of an eigenvalue spectrum: alpha, x_min and the KS distance.

For a tail λ_i ≤ λ_{i+1} ≤ … ≤ λ_{N-1} above a candidate x_min = λ_i (n = N − i points), the
continuous power-law MLE (the Hill form) is

    α(i) = 1 + n / Σ_{j≥i} ln(λ_j / λ_i),

and its Kolmogorov–Smirnov distance, exactly as WeightWatcher's ``WWFit`` writes it (empirical
CDF 0, 1/n, …, (n−1)/n against the fitted CDF), is

    D(i) = max_{j≥i} | 1 − (λ_j / λ_i)^{1−α(i)} − (j − i)/n |.

The three x_min rules (``Estimator``):

- ``ks``: scan every candidate except the largest eigenvalue and keep the smallest D
  (WeightWatcher 0.7.7 ``analyze()`` default, ``pl_package='ww'``); a candidate with α ≤ 1 or a
  zero log-sum is invalid (D = 1, as WeightWatcher initialises it). Ties go to the smallest x_min.
- ``ks_peak``: the same scan over candidates λ_i ≤ 1.5 · peak, where peak = 10^(left edge of the
  fullest bin of a 100-bin histogram of log10 λ) (AlphaPruning's ``xmin_peak`` default;
  AlphaPruning's lower bound log10(0.95 · peak) compares log units with linear ones and is
  omitted here).
- ``hill``: x_min at the median, i = N // 2, k = N − i tail points (TempBalance / AlphaPruning
  ``xmin_mid``, "PL_Alpha_Hill"); no scan.

Eigenvalues ≤ 1e-5 are dropped first, as WeightWatcher does. The scan is vectorised: all α(i)
come from one suffix cumulative sum of ln λ, and all D(i) from blocks of a candidate × eigenvalue
matrix (bounded memory, so n = 11008 costs ~40 MB at a time), computed in fp64 with torch (CUDA
when the spectrum lives there).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch

from acttail.errors import EstimationError

EVALS_THRESH = 1e-5  # WeightWatcher's EVALS_THRESH: smaller eigenvalues are numerical zeros
MIN_EVALS = 8  # WeightWatcher analyze(min_evals=8): fewer eigenvalues cannot support a tail fit
PEAK_BINS = 100  # histogram bins of log10 λ for ks_peak (WeightWatcher and AlphaPruning)
PEAK_FACTOR = 1.5  # ks_peak: x_min ≤ 1.5 · peak
_MIN_MEAN_LOG_SPREAD = 1e-9  # mean ln(λ_j/x_min) below this is a constant tail, not a power law
_BLOCK_ELEMENTS = 1 << 22  # candidate × eigenvalue entries per KS block (32 MiB in fp64)


class Estimator(StrEnum):
    """How x_min is chosen (see the module docstring)."""

    KS = "ks"
    KS_PEAK = "ks_peak"
    HILL = "hill"


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted tail: exponent, its lower bound, goodness of fit and size."""

    alpha: float
    xmin: float
    ks_distance: float
    num_tail: int  # eigenvalues ≥ x_min that the MLE used


def nonzero_eigenvalues(evals: np.ndarray | torch.Tensor, threshold: float = EVALS_THRESH) -> torch.Tensor:
    """Sorted fp64 eigenvalues above ``threshold`` (WeightWatcher's ``evals[evals > thresh]``)."""
    x = torch.as_tensor(evals).detach().to(torch.float64).flatten()
    x = torch.sort(x[x > threshold]).values
    return x


def estimate_alpha(
    evals: np.ndarray | torch.Tensor,
    estimator: Estimator | str = Estimator.KS,
    *,
    threshold: float = EVALS_THRESH,
) -> PowerLawFit:
    """Fit a power law to the tail of ``evals`` (any order; CPU or CUDA tensor, or numpy).

    Raises EstimationError when fewer than ``MIN_EVALS`` eigenvalues exceed ``threshold`` or no
    candidate x_min gives a proper fit (e.g. all eigenvalues equal).
    """
    estimator = _parse_estimator(estimator)
    x = nonzero_eigenvalues(evals, threshold)
    if x.numel() < MIN_EVALS:
        raise EstimationError(
            f"too few eigenvalues for a power-law fit: {x.numel()} above {threshold:g}, need at least {MIN_EVALS}"
        )
    if estimator is Estimator.HILL:
        return _hill(x)
    num_candidates = x.numel() - 1
    if estimator is Estimator.KS_PEAK:
        cap = PEAK_FACTOR * histogram_peak(x)
        num_candidates = int(torch.count_nonzero(x[:-1] <= cap))  # x is sorted: a prefix
    alphas, ds = ks_scan(x, num_candidates)
    best = int(torch.argmin(ds))  # first minimum, like numpy/torch argmin in the references
    if float(ds[best]) >= 1.0:  # every candidate invalid (D = 1): nothing was fitted
        raise EstimationError(f"degenerate spectrum: no x_min gives alpha > 1 among {x.numel()} eigenvalues")
    return PowerLawFit(
        alpha=float(alphas[best]),
        xmin=float(x[best]),
        ks_distance=float(ds[best]),
        num_tail=int(x.numel() - best),
    )


def ks_scan(x: torch.Tensor, num_candidates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """α(i) and D(i) for candidates i = 0 … num_candidates−1 of sorted fp64 ``x`` (shape [N]).

    Invalid candidates (α ≤ 1, or α > 1e9 from a log-sum at rounding level) get D = 1. Memory is
    bounded by computing D in blocks of rows of the (candidate, eigenvalue) matrix; each block
    only spans the columns j ≥ its first candidate.
    """
    n_total = x.numel()
    log_x = torch.log(x)
    # suffix[i] = Σ_{j≥i} ln λ_j, so Σ_{j≥i} ln(λ_j/λ_i) = suffix[i] − n_i ln λ_i.
    suffix = torch.flip(torch.cumsum(torch.flip(log_x, (0,)), 0), (0,))
    idx = torch.arange(num_candidates, device=x.device)
    n = (n_total - idx).to(torch.float64)
    log_sums = suffix[:num_candidates] - n * log_x[:num_candidates]
    alphas = 1.0 + n / log_sums  # a zero log-sum gives inf, marked invalid below
    # A log-sum at rounding level (tail of equal eigenvalues) is no fit: alpha would exceed 1e9.
    valid = (log_sums > _MIN_MEAN_LOG_SPREAD * n) & (alphas > 1.0)
    ds = torch.ones(num_candidates, dtype=torch.float64, device=x.device)
    start = 0
    while start < num_candidates:
        rows = max(1, min(num_candidates - start, _BLOCK_ELEMENTS // max(1, n_total - start)))
        stop = start + rows
        ds[start:stop] = _ks_block(log_x, alphas, start, stop)
        start = stop
    ds = torch.where(valid, ds, torch.ones_like(ds))
    return alphas, ds


def _ks_block(log_x: torch.Tensor, alphas: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """D(i) for candidates start ≤ i < stop: a [rows, N − start] slab of the triangular KS matrix.

    Row r is candidate i = start + r, column c is eigenvalue j = start + c. With β = 1 − α(i),
    (λ_j/λ_i)^β = exp(β·(ln λ_j − ln λ_i)), and |1 − (λ_j/λ_i)^β − (j − i)/n| is evaluated in
    place as |(λ_j/λ_i)^β + c/n − (1 + r/n)|; entries with j < i (c < r) are zeroed by ``triu_``.
    """
    rows = stop - start
    inv_n = 1.0 / (log_x.numel() - start - torch.arange(rows, device=log_x.device, dtype=torch.float64))[:, None]
    slab = log_x[None, start:] - log_x[start:stop, None]  # [rows, N − start]: ln(λ_j / λ_i)
    slab.mul_(1.0 - alphas[start:stop, None]).exp_()  # fitted survival (λ_j/λ_i)^(1−α)
    cols = torch.arange(slab.shape[1], device=log_x.device, dtype=torch.float64)[None, :]
    slab.addcmul_(cols, inv_n)
    slab.sub_(1.0 + torch.arange(rows, device=log_x.device, dtype=torch.float64)[:, None] * inv_n)
    slab.abs_().triu_()
    return slab.amax(dim=1)


def histogram_peak(x: torch.Tensor) -> float:
    """10^(left edge of the fullest of ``PEAK_BINS`` equal bins of log10 λ over [min, max])."""
    logs = torch.log10(x).cpu().numpy()
    counts, edges = np.histogram(logs, bins=PEAK_BINS)
    return float(10.0 ** edges[int(np.argmax(counts))])


def _hill(x: torch.Tensor) -> PowerLawFit:
    """Fixed-k Hill estimator: x_min = λ_{N//2}, α = 1 + k / Σ_{j≥N//2} ln(λ_j / x_min)."""
    i = x.numel() // 2
    tail = x[i:]
    k = tail.numel()
    log_sum = float(torch.sum(torch.log(tail / tail[0])))
    if log_sum <= _MIN_MEAN_LOG_SPREAD * k:
        raise EstimationError(f"degenerate spectrum: the upper half of {x.numel()} eigenvalues is constant")
    alpha = 1.0 + k / log_sum
    empirical = torch.arange(k, device=x.device, dtype=torch.float64) / k
    ks = float(torch.max(torch.abs(1.0 - torch.pow(tail / tail[0], 1.0 - alpha) - empirical)))
    return PowerLawFit(alpha=alpha, xmin=float(tail[0]), ks_distance=ks, num_tail=k)


def _parse_estimator(estimator: Estimator | str) -> Estimator:
    try:
        return Estimator(estimator)
    except ValueError:
        valid = ", ".join(e.value for e in Estimator)
        raise EstimationError(f"unknown estimator {estimator!r}; valid: {valid}") from None
