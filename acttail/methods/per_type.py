"""ActTail with alpha normalised *within each projection type* (``acttail-per-type``).

Why: alpha differs systematically between kinds (on SmolLM2-135M and Gemma-3-270M the MLP
and attention matrices sit in different alpha ranges, see docs/science.md), so the plain global
min-max map of AlphaPruning/ActTail mostly decides *how much each kind* is sparsified, not which
layer. The kinds also differ in how much an extra point of sparsity costs, and that cost is not
what alpha measures. Normalising inside each kind keeps only the across-layer signal:

    u_i = (alpha_i - min_{j in kind(i)} alpha_j) / (max_{j in kind(i)} alpha_j - min_{j in kind(i)} alpha_j)

(u_i = 1/2 for a kind whose alphas are all equal), then the usual map r_i = 1 - eps + 2 eps u_i
(reversed for lower-alpha-sparser) and the exact parameter-weighted budget of
``acttail.allocate.budgeted_sparsities``. Every kind then has the same mean score, so the
allocation only moves sparsity between layers of the same kind. This is our variant, not from
the ActTail or AlphaPruning papers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from acttail.allocate import Allocation, AllocationParams, allocate
from acttail.errors import AllocationError
from acttail.models.architectures import parse_projection_name

METHOD = "acttail-per-type"


def per_type_normalised(alphas: Mapping[str, float]) -> dict[str, float]:
    """Min-max normalise alpha within each projection kind into [0, 1] (see module docstring)."""
    by_kind: dict[str, list[str]] = {}
    for name in alphas:
        by_kind.setdefault(str(parse_projection_name(name).kind), []).append(name)
    out: dict[str, float] = {}
    for names in by_kind.values():
        values = np.array([alphas[n] for n in names], dtype=np.float64)
        if not np.isfinite(values).all():
            raise AllocationError("alphas contain NaN or infinity; re-run the ESD analysis")
        span = float(values.max() - values.min())
        unit = np.full_like(values, 0.5) if span == 0.0 else (values - values.min()) / span
        out.update({n: float(u) for n, u in zip(names, unit, strict=True)})
    return out


def allocate_per_type(
    alphas: Mapping[str, float],
    param_counts: Mapping[str, int],
    target: float,
    params: AllocationParams | None = None,
    *,
    model_id: str = "",
    fingerprint: str = "",
    estimator: str | None = None,
) -> Allocation:
    """``acttail`` on per-type normalised alphas; the document records ``alpha_normalisation``."""
    params = params or AllocationParams()
    normalised = per_type_normalised({n: alphas[n] for n in param_counts if n in alphas})
    base = allocate(
        normalised,
        param_counts,
        target,
        method="acttail",
        params=params,
        model_id=model_id,
        fingerprint=fingerprint,
        estimator=estimator,
    )
    return replace(base, method=METHOD, params={**base.params, "alpha_normalisation": "per_type"})
