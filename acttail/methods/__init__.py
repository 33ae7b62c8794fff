"""Allocation methods behind one interface: ``build_allocation(method, report=..., target=...)``.

Every method returns an ``acttail.allocate.Allocation`` whose parameter-weighted mean sparsity
is exactly the target (``sum_i N_i s_i / sum_i N_i = S``, N_i = numel(W_i)). Where each comes from:

* ``uniform``: s_i = S everywhere (TEAL's uniform setting; the baseline).
* ``acttail``: AlphaPruning's linear alpha map (Lu et al. 2024, Sec. 3.2) per projection, as
  ActTail describes it; knobs ``epsilon``, ``direction``, ``granularity``, ``s_min``, ``s_max``.
* ``acttail-reverse`` / ``acttail-block``: the same with lower-alpha-sparser / block-averaged alpha.
* ``acttail-per-type``: alpha min-max normalised within each projection kind (``per_type``).
* ``teal-greedy``: TEAL's block-wise greedy search on calibration activations (Liu et al.
  2025, Sec. 4.2; ``teal_greedy``), needs ``model`` and calibration text.
* ``auto``: best of uniform and a small ActTail grid by calibration perplexity, uniform unless the
  best wins by ``min_gain`` (``auto``), needs ``model`` and calibration text.

Calibration text is WikiText-2 raw validation (``calibration_set``), never the test split.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from acttail.allocate import (
    Allocation,
    AllocationParams,
    Direction,
    Granularity,
    allocate,
)
from acttail.errors import AllocationError
from acttail.methods.calibration import (
    DEFAULT_CALIBRATION_SEQLEN,
    DEFAULT_CALIBRATION_TOKENS,
    CalibrationSet,
    calibration_from_ids,
    calibration_nll,
    calibration_set,
)

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

    from acttail.esd import ESDReport

METHODS: dict[str, str] = {
    "uniform": "every projection at the target (baseline)",
    "acttail": "alpha mapped linearly into [1-eps, 1+eps], higher alpha sparser, per projection (ActTail/AlphaPruning)",
    "acttail-reverse": "acttail with lower alpha sparser",
    "acttail-block": "acttail with alpha averaged per transformer block (AlphaPruning's block-wise)",
    "acttail-per-type": "acttail with alpha min-max normalised within each projection kind",
    "teal-greedy": "TEAL's block-wise greedy search on calibration activations (needs the model)",
    "auto": "best of uniform and an ActTail grid by calibration perplexity (needs the model)",
}
DEFAULT_METHOD = "auto"

_ALPHA_KNOBS = {"epsilon", "direction", "granularity", "s_min", "s_max"}
_KNOBS: dict[str, set[str]] = {
    "uniform": set(),
    "acttail": _ALPHA_KNOBS,
    "acttail-reverse": _ALPHA_KNOBS - {"direction"},
    "acttail-block": _ALPHA_KNOBS - {"granularity"},
    "acttail-per-type": _ALPHA_KNOBS,
    "teal-greedy": {
        "s_min",
        "s_max",
        "step",
        "greedy_tokens",
        "last_fraction",
        "trace",
    },
    "auto": {"s_min", "s_max", "grid", "min_gain", "trace"},
}
_CALIBRATION_KNOBS = {"calibration_tokens", "calibration_seqlen"}

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "CalibrationSet",
    "build_allocation",
    "calibration_from_ids",
    "calibration_nll",
    "calibration_set",
    "greedy_trace",
]


def greedy_trace(
    model: nn.Module,
    calibration: CalibrationSet,
    *,
    max_target: float = 0.9,
    **knobs: Any,
) -> Any:
    """TEAL's greedy trace up to ``max_target`` (compute once, pass as ``trace=`` to every target)."""
    from acttail.methods.teal_greedy import greedy_trace as _trace

    return _trace(model, calibration, max_target=max_target, **knobs)


def _alpha_params(params: Mapping[str, Any], **forced: Any) -> AllocationParams:
    values: dict[str, Any] = {k: params[k] for k in _ALPHA_KNOBS if k in params}
    values.update(forced)
    try:
        if "direction" in values:
            values["direction"] = Direction(values["direction"])
        if "granularity" in values:
            values["granularity"] = Granularity(values["granularity"])
    except ValueError as exc:
        raise AllocationError(str(exc)) from None
    return AllocationParams(**values)


def _calibration(
    calibration: CalibrationSet | None,
    tokenizer: PreTrainedTokenizerBase | None,
    params: Mapping[str, Any],
) -> CalibrationSet:
    if calibration is not None:
        return calibration
    if tokenizer is None:
        raise AllocationError(
            "this method needs calibration text: pass calibration= or tokenizer="
        )
    return calibration_set(
        tokenizer,
        max_tokens=int(params.get("calibration_tokens", DEFAULT_CALIBRATION_TOKENS)),
        seqlen=int(params.get("calibration_seqlen", DEFAULT_CALIBRATION_SEQLEN)),
    )


def build_allocation(
    method: str,
    *,
    report: ESDReport,
    target: float,
    model: nn.Module | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    calibration: CalibrationSet | None = None,
    **params: Any,
) -> Allocation:
    """Build the ``method`` allocation of ``report``'s model at parameter-weighted sparsity ``target``.

    ``params`` are the method's knobs (see ``METHODS`` and each module); an unknown method or
    knob raises AllocationError naming the valid ones. ``teal-greedy`` and ``auto`` need the
    loaded ``model`` and calibration text (``calibration`` or a ``tokenizer`` to build the default
    ``calibration_tokens`` x ``calibration_seqlen`` set from WikiText-2 validation).
    """
    if method not in METHODS:
        raise AllocationError(
            f"unknown allocation method {method!r}; valid: {', '.join(METHODS)}"
        )
    unknown = sorted(set(params) - _KNOBS[method] - _CALIBRATION_KNOBS)
    if unknown:
        valid = sorted(
            _KNOBS[method]
            | (_CALIBRATION_KNOBS if method in {"teal-greedy", "auto"} else set())
        )
        raise AllocationError(
            f"{method}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(valid) or 'none'}"
        )
    ident = {
        "model_id": str(report.model.get("model_id", "")),
        "fingerprint": str(report.model.get("fingerprint", "")),
    }
    alphas, counts = report.alphas(), report.param_counts()
    if method == "uniform":
        return allocate(alphas, counts, target, method="uniform", **ident)
    if method in {"acttail", "acttail-reverse", "acttail-block"}:
        forced: dict[str, Any] = {}
        if method == "acttail-reverse":
            forced["direction"] = Direction.LOWER_ALPHA_SPARSER
        if method == "acttail-block":
            forced["granularity"] = Granularity.BLOCK
        alloc = allocate(
            alphas,
            counts,
            target,
            method="acttail",
            params=_alpha_params(params, **forced),
            estimator=report.estimator,
            **ident,
        )
        return alloc if method == "acttail" else _renamed(alloc, method)
    if method == "acttail-per-type":
        from acttail.methods.per_type import allocate_per_type

        return allocate_per_type(
            alphas,
            counts,
            target,
            _alpha_params(params),
            estimator=report.estimator,
            **ident,
        )
    if model is None:
        raise AllocationError(f"{method} needs the loaded model (model=...)")
    if method == "teal-greedy":
        return _teal_greedy(
            report, target, model, tokenizer, calibration, params, ident
        )
    from acttail.methods.auto import DEFAULT_GRID, DEFAULT_MIN_GAIN, auto_allocation

    choice = auto_allocation(
        report,
        target,
        model,
        _calibration(calibration, tokenizer, params),
        grid=params.get("grid", DEFAULT_GRID),
        min_gain=float(params.get("min_gain", DEFAULT_MIN_GAIN)),
        s_min=float(params.get("s_min", 0.0)),
        s_max=float(params.get("s_max", 0.99)),
        trace=params.get("trace"),
    )
    return choice.allocation


def _renamed(alloc: Allocation, method: str) -> Allocation:
    from dataclasses import replace

    return replace(alloc, method=method)


def _teal_greedy(
    report: ESDReport,
    target: float,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    calibration: CalibrationSet | None,
    params: Mapping[str, Any],
    ident: Mapping[str, str],
) -> Allocation:
    from acttail.methods.teal_greedy import (
        DEFAULT_GREEDY_TOKENS,
        DEFAULT_LAST_FRACTION,
        DEFAULT_STEP,
        allocation_from_trace,
        greedy_trace,
    )

    bounds = AllocationParams(
        s_min=float(params.get("s_min", 0.0)), s_max=float(params.get("s_max", 0.99))
    )
    trace = params.get("trace")
    if trace is None or trace.max_target < target:
        cal = _calibration(calibration, tokenizer, params)
        trace = greedy_trace(
            model,
            cal,
            max_target=max(target, 0.0),
            step=float(params.get("step", DEFAULT_STEP)),
            max_tokens=int(params.get("greedy_tokens", DEFAULT_GREEDY_TOKENS)),
            last_fraction=float(params.get("last_fraction", DEFAULT_LAST_FRACTION)),
            s_max=bounds.s_max,
        )
        extra = {"calibration": cal.describe()}
    else:
        extra = {}
    return allocation_from_trace(
        trace, report.param_counts(), target, bounds, extra_params=extra, **ident
    )
