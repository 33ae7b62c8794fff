"""ESD analysis: eigenvalues of WᵀW per projection and the heavy-tail exponent alpha of their tail.

``analyze_source(resolve_model("smollm2-135m"))`` streams every q/k/v/o/gate/up/down weight,
computes its eigenvalues (Gram + symmetric eigensolver, fp64) and fits a power law
p(λ) ∝ λ^{-α} above x_min by the continuous MLE with one of three x_min rules (``Estimator``):
``ks`` (WeightWatcher's default), ``ks_peak`` (AlphaPruning's default) and ``hill`` (k = n/2).
The resulting ``ESDReport`` holds one ``ProjectionESD`` per projection; its alphas drive the
allocation (``acttail.allocate``).
"""

from acttail.esd.analyze import analyze_source, analyze_weights
from acttail.esd.powerlaw import EVALS_THRESH, MIN_EVALS, Estimator, PowerLawFit, estimate_alpha, ks_scan
from acttail.esd.report import ESDReport, ProjectionESD
from acttail.esd.spectrum import eigenvalues, eigenvalues_batch

__all__ = [
    "EVALS_THRESH",
    "MIN_EVALS",
    "ESDReport",
    "Estimator",
    "PowerLawFit",
    "ProjectionESD",
    "analyze_source",
    "analyze_weights",
    "eigenvalues",
    "eigenvalues_batch",
    "estimate_alpha",
    "ks_scan",
]
