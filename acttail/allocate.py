"""Alpha -> per-projection sparsity under a parameter-weighted budget.

AlphaPruning's rule (Lu et al., NeurIPS 2024, Sec. 3.2), as ActTail uses it for activations:

    r_i = s1 + (phi_i - phi_min) / (phi_max - phi_min) * (s2 - s1),   s1 = 1 - eps, s2 = 1 + eps
    s_i = r_i * S * sum_j N_j / sum_j N_j r_j

so the mean of s_i weighted by N_i = numel(W_i) is exactly S: skipping input channel j of W
(d_out x d_in) skips d_out weights, so this mean is the fraction of weight traffic saved.
Higher alpha (lighter tail, "less trained") gets *more* sparsity in the default direction.
Unlike AlphaPruning we clip to [s_min, s_max] and redistribute the clipped mass so the budget
still holds exactly at S = 0.9 with large eps (water-filling over the free projections).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from acttail.errors import AllocationError
from acttail.models.architectures import parse_projection_name
from acttail.registry import check_target

ALLOCATION_FORMAT = "acttail.allocation"
ALLOCATION_VERSION = 1
BUDGET_TOLERANCE = 1e-6


class Direction(StrEnum):
    """Which end of the alpha range gets more sparsity."""

    HIGHER_ALPHA_SPARSER = "higher_alpha_sparser"  # AlphaPruning / ActTail default
    LOWER_ALPHA_SPARSER = "lower_alpha_sparser"  # the opposite rule, for experiments


class Granularity(StrEnum):
    PROJECTION = "projection"  # one alpha per projection (ActTail: "projection-specific")
    BLOCK = "block"  # alpha averaged per transformer block (AlphaPruning's default)


@dataclass(frozen=True)
class AllocationParams:
    """Knobs of the alpha mapping; stored verbatim in the allocation document."""

    epsilon: float = 0.1
    direction: Direction = Direction.HIGHER_ALPHA_SPARSER
    granularity: Granularity = Granularity.PROJECTION
    s_min: float = 0.0
    s_max: float = 0.99


class ModelIdent(TypedDict):
    """The model an allocation belongs to (the keyword arguments the builders take)."""

    model_id: str
    fingerprint: str


def model_ident(model: Mapping[str, Any]) -> ModelIdent:
    """The identity of a report's ``model`` mapping (missing keys become empty strings)."""
    return ModelIdent(model_id=str(model.get("model_id", "")), fingerprint=str(model.get("fingerprint", "")))


@dataclass(frozen=True)
class Allocation:
    """A versioned allocation document: one sparsity per projection name.

    ``sparsities`` and ``param_counts`` are keyed by projection module path
    (``model.layers.0.self_attn.q_proj``). JSON via ``to_dict``/``from_dict``.
    """

    model_id: str
    fingerprint: str
    estimator: str | None
    method: str
    target: float
    sparsities: dict[str, float]
    param_counts: dict[str, int]
    params: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    format: str = ALLOCATION_FORMAT
    version: int = ALLOCATION_VERSION

    @property
    def weighted_mean(self) -> float:
        """Parameter-weighted mean sparsity (equals ``target`` for every built allocation)."""
        return weighted_mean(self.sparsities, self.param_counts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Allocation:
        return validate_allocation_document(doc)

    @classmethod
    def load(cls, path: str | Path) -> Allocation:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AllocationError(f"allocation file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise AllocationError(f"allocation file {path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
        return validate_allocation_document(doc)

    def check_matches(self, fingerprint: str, projection_names: Sequence[str]) -> None:
        """Refuse to apply this allocation to a different model."""
        if self.fingerprint and fingerprint and self.fingerprint != fingerprint:
            raise AllocationError(
                f"allocation was built for fingerprint {self.fingerprint[:16]}…, model has {fingerprint[:16]}…"
            )
        missing = sorted(set(projection_names) - set(self.sparsities))
        extra = sorted(set(self.sparsities) - set(projection_names))
        if missing or extra:
            raise AllocationError(
                f"allocation does not match the model's projections: {len(missing)} missing "
                f"(e.g. {missing[:2]}), {len(extra)} unknown (e.g. {extra[:2]})"
            )


def weighted_mean(sparsities: Mapping[str, float], param_counts: Mapping[str, int]) -> float:
    total = sum(param_counts[name] for name in sparsities)
    return sum(s * param_counts[name] for name, s in sparsities.items()) / total


def validate_allocation_document(doc: Any) -> Allocation:
    """Parse and check an allocation document; every problem is one readable AllocationError."""
    if not isinstance(doc, Mapping):
        raise AllocationError("allocation document must be a JSON object")
    if doc.get("format") != ALLOCATION_FORMAT:
        raise AllocationError(f"allocation document: 'format' must be {ALLOCATION_FORMAT!r}")
    if doc.get("version") != ALLOCATION_VERSION:
        raise AllocationError(f"allocation document: unsupported version {doc.get('version')!r}")
    for key, kind in (("model_id", str), ("fingerprint", str), ("method", str)):
        if not isinstance(doc.get(key), kind):
            raise AllocationError(f"allocation document: {key!r} must be a string")
    target = check_target(doc.get("target"), "allocation document: 'target'", AllocationError)
    sparsities, counts = doc.get("sparsities"), doc.get("param_counts")
    if not isinstance(sparsities, Mapping) or not sparsities:
        raise AllocationError("allocation document: 'sparsities' must be a non-empty object")
    for name in sparsities:
        try:
            parse_projection_name(name)
        except ValueError as exc:
            raise AllocationError(f"allocation document: {exc}") from None
    if not isinstance(counts, Mapping) or set(counts) != set(sparsities):
        raise AllocationError("allocation document: 'param_counts' must have exactly the keys of 'sparsities'")
    for name, value in sparsities.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value < 1.0:
            raise AllocationError(f"allocation document: sparsity of {name} must be in [0, 1), got {value!r}")
        count = counts[name]
        if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
            raise AllocationError(f"allocation document: param_count of {name} must be a positive integer")
    mean = weighted_mean(sparsities, counts)
    if abs(mean - target) > 1e-4:
        raise AllocationError(f"allocation document: weighted mean sparsity {mean:.6f} != target {target}")
    estimator = doc.get("estimator")
    if estimator is not None and not isinstance(estimator, str):
        raise AllocationError("allocation document: 'estimator' must be a string or null")
    params = doc.get("params", {})
    if not isinstance(params, Mapping):
        raise AllocationError("allocation document: 'params' must be an object")
    return Allocation(
        model_id=doc["model_id"],
        fingerprint=doc["fingerprint"],
        estimator=estimator,
        method=doc["method"],
        target=float(target),
        sparsities={k: float(v) for k, v in sparsities.items()},
        param_counts={k: int(v) for k, v in counts.items()},
        params=dict(params),
        created_at=str(doc.get("created_at", "")),
    )


def linear_scores(alphas: np.ndarray, epsilon: float, direction: Direction) -> np.ndarray:
    """Min-max map alpha into [1 - eps, 1 + eps] (all ones when alpha is constant)."""
    if not 0.0 <= epsilon < 1.0:
        raise AllocationError(f"epsilon must be in [0, 1), got {epsilon}")
    span = float(alphas.max() - alphas.min())
    unit = np.zeros_like(alphas) if span == 0.0 else (alphas - alphas.min()) / span
    if direction is Direction.LOWER_ALPHA_SPARSER:
        unit = 1.0 - unit
    return (1.0 - epsilon) + unit * (2.0 * epsilon)


def budgeted_sparsities(
    scores: np.ndarray, weights: np.ndarray, target: float, s_min: float = 0.0, s_max: float = 0.99
) -> np.ndarray:
    """s_i = c * scores_i with sum(w s)/sum(w) = target, then clip to [s_min, s_max] keeping the budget.

    Water-filling: projections pinned at a bound keep it; the rest share the remaining budget in
    proportion to their scores. Terminates in at most len(scores) rounds. Raises if infeasible.
    """
    if not s_min <= target <= s_max:
        raise AllocationError(f"target {target} outside the clipping bounds [{s_min}, {s_max}]")
    weights = weights.astype(np.float64)
    scores = scores.astype(np.float64)
    out = np.empty_like(scores)
    free = np.ones(len(scores), dtype=bool)
    budget = target * weights.sum()
    for _ in range(len(scores) + 1):
        remaining = budget - float((out[~free] * weights[~free]).sum())
        denom = float((scores[free] * weights[free]).sum())
        scale = remaining / denom if denom > 0 else 0.0
        trial = scores[free] * scale
        low, high = trial < s_min, trial > s_max
        if not low.any() and not high.any():
            out[free] = trial
            return out
        idx = np.flatnonzero(free)
        # Pin only the side that overshoots most, then re-solve; pinning both at once can oscillate.
        if high.any() and (not low.any() or (trial[high] - s_max).max() >= (s_min - trial[low]).max()):
            out[idx[high]] = s_max
            free[idx[high]] = False
        else:
            out[idx[low]] = s_min
            free[idx[low]] = False
        if not free.any():
            break
    mean = float((out * weights).sum() / weights.sum())
    if abs(mean - target) > BUDGET_TOLERANCE:
        raise AllocationError(f"cannot meet target {target} within bounds [{s_min}, {s_max}]")
    return out


def block_average(values: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    """Replace each value by the mean over its transformer block (AlphaPruning 'block_wise')."""
    layer_arr = np.asarray(layers)
    out = np.empty_like(values, dtype=np.float64)
    for layer in np.unique(layer_arr):
        mask = layer_arr == layer
        out[mask] = values[mask].mean()
    return out


def allocate(
    alphas: Mapping[str, float],
    param_counts: Mapping[str, int],
    target: float,
    *,
    method: str = "acttail",
    params: AllocationParams | None = None,
    model_id: str = "",
    fingerprint: str = "",
    estimator: str | None = None,
) -> Allocation:
    """Build an allocation: ``uniform`` (every projection at ``target``) or ``acttail`` (alpha-guided)."""
    params = params or AllocationParams()
    names = list(param_counts)
    if not names:
        raise AllocationError("no projections to allocate")
    check_target(target, error=AllocationError)
    weights = np.array([param_counts[n] for n in names], dtype=np.float64)
    if method == "uniform":
        values = np.full(len(names), float(target))
        stored_params: dict[str, Any] = {}
    elif method == "acttail":
        missing = [n for n in names if n not in alphas]
        if missing:
            raise AllocationError(f"no alpha for {len(missing)} projections (e.g. {missing[0]})")
        phi = np.array([alphas[n] for n in names], dtype=np.float64)
        if not np.isfinite(phi).all():
            raise AllocationError("alphas contain NaN or infinity; re-run the ESD analysis")
        if params.granularity is Granularity.BLOCK:
            phi = block_average(phi, [parse_projection_name(n).layer for n in names])
        scores = linear_scores(phi, params.epsilon, params.direction)
        values = budgeted_sparsities(scores, weights, target, params.s_min, params.s_max)
        stored_params = {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in asdict(params).items()}
    else:
        raise AllocationError(f"unknown allocation method {method!r}; valid: acttail, uniform")
    return Allocation(
        model_id=model_id,
        fingerprint=fingerprint,
        estimator=estimator if method != "uniform" else None,
        method=method,
        target=float(target),
        sparsities={n: float(v) for n, v in zip(names, values, strict=True)},
        param_counts={n: int(param_counts[n]) for n in names},
        params=stored_params,
    )
