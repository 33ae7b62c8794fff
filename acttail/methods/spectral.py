"""``htsr-spectral``: a calibration-free allocation from the weights' spectra alone.

The ESD of W (eigenvalues of W^T W) says how a projection passes a perturbation of its input.
Dropping input entries perturbs x by e and the output by W e. For e spread over many directions
||W e||^2 ~ ||W||_F^2 ||e||^2 / d_in, while the signal W x of a trained model lives mostly in the
top singular directions, ||W x|| ~ ||W||_2 ||x||; the relative output error then grows with the
normalised stable rank ||W||_F^2 / (||W||_2^2 d). A concentrated spectrum (heavy tail, low alpha,
low stable rank) hides input error, a flat one (light tail, high alpha) passes it on. That is the
sign our sensitivity study measured on SmolLM2-135M (higher alpha = *more* sensitive,
docs/science.md): the opposite of the paper's higher-alpha-sparser rule.

Each metric is a *propensity* (higher = sparser) mapped by AlphaPruning's linear map into
[1 - eps, 1 + eps] and scaled to the parameter-weighted budget (``acttail.allocate``):

* ``alpha``: -alpha (lower alpha sparser).
* ``stable_rank``: -log(stable_rank / min(d_out, d_in)).
* ``spectral_norm``: log lambda_max (larger weights cheaper per weight skipped on SmolLM2).
* ``combined``: the mean of the three z-scored propensities.

The default (``DEFAULT_METRIC`` alpha, ``DEFAULT_EPSILON`` 0.2) was chosen by the lowest mean
log-PPL ratio to uniform TopK on WikiText-2 *validation* text of the two design models only
(SmolLM2-135M at 50/70%, Gemma-3-270M at 50%; ``benchmarks/results/htsr_design.md``), then frozen
before any held-out (Qwen) model or test text was scored with it. The stable-rank rule the argument
above suggests lost at 70% on SmolLM2; alpha carries the same sign and more of the signal there.
With eps 0.2 the rule is the reversed AlphaPruning map with twice the paper's range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from acttail.allocate import Allocation, budgeted_sparsities, linear_scores
from acttail.allocate import Direction as _Direction
from acttail.errors import AllocationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from acttail.methods.builders import BuildContext

METHOD = "htsr-spectral"
METRICS: tuple[str, ...] = ("alpha", "stable_rank", "spectral_norm", "combined")
DEFAULT_METRIC = "alpha"
DEFAULT_EPSILON = 0.2


class _Projection(Protocol):
    name: str
    alpha: float
    spectral_norm: float
    stable_rank: float
    num_evals: int
    param_count: int


def propensities(projections: Sequence[_Projection], metric: str) -> np.ndarray:
    """Higher = sparser, one per projection, in order."""
    if metric not in METRICS:
        raise AllocationError(f"unknown spectral metric {metric!r}; valid: {', '.join(METRICS)}")
    alpha = -np.array([p.alpha for p in projections], dtype=np.float64)
    srank = -np.log(np.array([p.stable_rank / max(1, p.num_evals) for p in projections], dtype=np.float64))
    norm = np.log(np.array([p.spectral_norm for p in projections], dtype=np.float64))
    if metric == "alpha":
        return alpha
    if metric == "stable_rank":
        return srank
    if metric == "spectral_norm":
        return norm
    return np.mean([_z(alpha), _z(srank), _z(norm)], axis=0)


def _z(values: np.ndarray) -> np.ndarray:
    std = float(values.std())
    return np.zeros_like(values) if std == 0.0 else (values - values.mean()) / std


def allocate_spectral(
    report: Any,
    target: float,
    *,
    metric: str = DEFAULT_METRIC,
    epsilon: float = DEFAULT_EPSILON,
    s_min: float = 0.0,
    s_max: float = 0.99,
) -> Allocation:
    """The ``htsr-spectral`` allocation of an ``ESDReport`` (needs every projection's spectral statistics)."""
    projections = getattr(report, "projections", None)
    if not projections:
        raise AllocationError(f"{METHOD} needs the full ESD report (stable rank, spectral norm), not only alphas")
    if not 0.0 <= target < 1.0:
        raise AllocationError(f"target sparsity must be in [0, 1), got {target}")
    phi = propensities(projections, metric)
    if not np.isfinite(phi).all():
        raise AllocationError("spectral statistics contain NaN or infinity; re-run the ESD analysis")
    weights = np.array([p.param_count for p in projections], dtype=np.float64)
    values = budgeted_sparsities(
        linear_scores(phi, epsilon, _Direction.HIGHER_ALPHA_SPARSER), weights, target, s_min, s_max
    )
    model = report.model
    return Allocation(
        model_id=str(model.get("model_id", "")),
        fingerprint=str(model.get("fingerprint", "")),
        estimator=report.estimator,
        method=METHOD,
        target=float(target),
        sparsities={p.name: float(v) for p, v in zip(projections, values, strict=True)},
        param_counts={p.name: int(p.param_count) for p in projections},
        params={"metric": metric, "epsilon": epsilon, "s_min": s_min, "s_max": s_max, "calibration": None},
    )


def build(report: Any, target: float, context: BuildContext, params: Mapping[str, Any]) -> Allocation:
    """The registry's builder (``acttail.registry``): no model, no calibration text."""
    return allocate_spectral(report, target, **params)
