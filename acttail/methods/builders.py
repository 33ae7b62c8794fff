"""The builder of every registered allocation method (``acttail.registry.register_method(builder=...)``).

Each builder is ``(report, target, context, params) -> Allocation``: ``params`` are the knobs the
user set (already checked against the method's registration), ``context`` the loaded model and
calibration text for the methods that need them. ``acttail.methods.build_allocation`` looks the
builder up by name, so a new method is a registration plus one function here (or anywhere).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from acttail.allocate import Allocation, AllocationParams, Direction, Granularity, allocate, model_ident
from acttail.errors import AllocationError
from acttail.registry import ALPHA_KNOBS

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn

    from acttail.methods import AlphaReport
    from acttail.methods.calibration import CalibrationSet


@dataclass(frozen=True)
class BuildContext:
    """What the calibrated methods need besides the alphas (None for the alpha-only ones)."""

    model: nn.Module | None = None
    calibration: Callable[[], CalibrationSet] | None = None  # built on first use
    progress: Callable[[str, float], None] | None = None

    def require(self, method: str) -> tuple[nn.Module, CalibrationSet]:
        if self.model is None:
            raise AllocationError(f"{method} needs the loaded model (model=...)")
        if self.calibration is None:
            raise AllocationError(f"{method} needs calibration text: pass calibration= or tokenizer=")
        return self.model, self.calibration()


def alpha_params(params: Mapping[str, Any], **forced: Any) -> AllocationParams:
    """``AllocationParams`` from the alpha-map knobs set in ``params`` (enums parsed, one-line errors)."""
    values: dict[str, Any] = {k: params[k] for k in ALPHA_KNOBS if k in params}
    values.update(forced)
    try:
        if "direction" in values:
            values["direction"] = Direction(values["direction"])
        if "granularity" in values:
            values["granularity"] = Granularity(values["granularity"])
    except ValueError as exc:
        raise AllocationError(str(exc)) from None
    return AllocationParams(**values)


def uniform(report: AlphaReport, target: float, context: BuildContext, params: Mapping[str, Any]) -> Allocation:
    return allocate(report.alphas(), report.param_counts(), target, method="uniform", **model_ident(report.model))


#: The ActTail variants that are the paper's rule with one knob forced.
_FORCED: dict[str, dict[str, Any]] = {
    "acttail": {},
    "acttail-reverse": {"direction": Direction.LOWER_ALPHA_SPARSER},
    "acttail-block": {"granularity": Granularity.BLOCK},
}


def acttail(
    report: AlphaReport, target: float, context: BuildContext, params: Mapping[str, Any], *, method: str = "acttail"
) -> Allocation:
    alloc = allocate(
        report.alphas(), report.param_counts(), target, method="acttail",
        params=alpha_params(params, **_FORCED[method]), estimator=report.estimator, **model_ident(report.model),
    )  # fmt: skip
    return alloc if method == "acttail" else replace(alloc, method=method)


def acttail_reverse(report: AlphaReport, target: float, context: BuildContext, params: Mapping[str, Any]) -> Allocation:
    return acttail(report, target, context, params, method="acttail-reverse")


def acttail_block(report: AlphaReport, target: float, context: BuildContext, params: Mapping[str, Any]) -> Allocation:
    return acttail(report, target, context, params, method="acttail-block")


def per_type(report: AlphaReport, target: float, context: BuildContext, params: Mapping[str, Any]) -> Allocation:
    from acttail.methods.per_type import allocate_per_type

    return allocate_per_type(
        report.alphas(), report.param_counts(), target, alpha_params(params), estimator=report.estimator,
        **model_ident(report.model),
    )  # fmt: skip


def teal_greedy(report: AlphaReport, target: float, context: BuildContext, params: Mapping[str, Any]) -> Allocation:
    from acttail.methods.teal_greedy import allocation_from_trace, greedy_trace

    bounds = AllocationParams(s_min=float(params.get("s_min", 0.0)), s_max=float(params.get("s_max", 0.99)))
    trace = params.get("trace")
    extra: dict[str, Any] = {}
    if trace is None or trace.max_target < target:
        model, calibration = context.require("teal-greedy")
        trace = greedy_trace(
            model, calibration, max_target=max(target, 0.0), s_max=bounds.s_max, progress=context.progress,
            **greedy_knobs(params),
        )  # fmt: skip
        extra["calibration"] = calibration.describe()
    elif context.calibration is not None:  # a reused trace: record the text it was measured on
        extra["calibration"] = context.calibration().describe()
    return allocation_from_trace(
        trace, report.param_counts(), target, bounds, extra_params=extra, **model_ident(report.model)
    )


def auto(report: AlphaReport, target: float, context: BuildContext, params: Mapping[str, Any]) -> Allocation:
    from acttail.methods.auto import DEFAULT_GRID, DEFAULT_MIN_GAIN, auto_allocation

    model, calibration = context.require("auto")
    choice = auto_allocation(
        report, target, model, calibration, grid=params.get("grid", DEFAULT_GRID),
        min_gain=float(params.get("min_gain", DEFAULT_MIN_GAIN)), s_min=float(params.get("s_min", 0.0)),
        s_max=float(params.get("s_max", 0.99)), trace=params.get("trace"), progress=context.progress,
    )  # fmt: skip
    return choice.allocation


#: Registry knob names -> ``teal_greedy.greedy_trace`` keywords.
_GREEDY_KNOBS = {"step": "step", "greedy_tokens": "max_tokens", "last_fraction": "last_fraction"}


def greedy_knobs(params: Mapping[str, Any]) -> dict[str, Any]:
    """``greedy_trace`` keywords from the registry's knob names (s_max is passed by the caller)."""
    return {_GREEDY_KNOBS[k]: v for k, v in params.items() if k in _GREEDY_KNOBS}
