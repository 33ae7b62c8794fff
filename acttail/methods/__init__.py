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
* ``auto``: best of uniform, a small ActTail grid and TEAL-greedy by calibration perplexity,
  uniform unless the best wins by ``min_gain`` (``auto``), needs ``model`` and calibration text.
  ``DEFAULT_METHOD``: on the small models we measured, the paper's rule loses to uniform while
  ``auto`` can only keep uniform or pick what beat it on calibration text (docs/science.md).

Calibration text is WikiText-2 raw validation (``calibration_set``), never the test split.
``build_allocations`` builds several (method, target) pairs at once and shares the calibration set
and the greedy trace between them; the CLI, the pipeline and the workers use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from acttail.allocate import (
    Allocation,
    AllocationParams,
    Direction,
    Granularity,
    ModelIdent,
    allocate,
    model_ident,
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

#: ``progress(stage, fraction)``: what the allocation is doing now, fraction of the whole build in [0, 1].
Progress = Callable[[str, float], None]

METHODS: dict[str, str] = {
    "uniform": "every projection at the target (baseline)",
    "acttail": "alpha mapped linearly into [1-eps, 1+eps], higher alpha sparser, per projection (ActTail/AlphaPruning)",
    "acttail-reverse": "acttail with lower alpha sparser",
    "acttail-block": "acttail with alpha averaged per transformer block (AlphaPruning's block-wise)",
    "acttail-per-type": "acttail with alpha min-max normalised within each projection kind",
    "teal-greedy": "TEAL's block-wise greedy search on calibration activations (needs the model)",
    "auto": "best of uniform, an ActTail grid and TEAL-greedy by calibration perplexity (needs the model)",
}
DEFAULT_METHOD = "auto"
#: Methods that run the model on calibration text (``build_allocation`` needs ``model=``).
NEEDS_MODEL = frozenset({"teal-greedy", "auto"})

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
    "NEEDS_MODEL",
    "AlphaReport",
    "AlphaTable",
    "CalibrationSet",
    "build_allocation",
    "build_allocations",
    "calibration_from_ids",
    "calibration_nll",
    "calibration_set",
    "greedy_trace",
    "method_knobs",
]


class AlphaReport(Protocol):
    """What the methods read of an ESD analysis: ``acttail.esd.ESDReport`` or an ``AlphaTable``."""

    @property
    def model(self) -> Mapping[str, Any]: ...

    @property
    def estimator(self) -> str: ...

    def alphas(self) -> dict[str, float]: ...

    def param_counts(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class AlphaTable:
    """Alphas and parameter counts without the spectra (e.g. an ESD run read back from the database)."""

    model: Mapping[str, Any]  # at least model_id and fingerprint
    estimator: str
    alpha: Mapping[str, float]
    counts: Mapping[str, int]

    def alphas(self) -> dict[str, float]:
        return dict(self.alpha)

    def param_counts(self) -> dict[str, int]:
        return dict(self.counts)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise AllocationError(f"unknown allocation method {method!r}; valid: {', '.join(METHODS)}")


def method_knobs(method: str) -> frozenset[str]:
    """The keyword parameters ``build_allocation(method, ...)`` accepts (besides ``trace``'s reuse)."""
    _check_method(method)
    calibration = _CALIBRATION_KNOBS if method in NEEDS_MODEL else set()
    return frozenset(_KNOBS[method] | calibration)


def greedy_trace(
    model: nn.Module,
    calibration: CalibrationSet,
    *,
    max_target: float = 0.9,
    **knobs: Any,
) -> Any:
    """TEAL's greedy trace up to ``max_target`` (compute once, pass as ``trace=`` to every target).

    ``knobs``: ``step``, ``max_tokens``, ``last_fraction``, ``s_max``, ``progress``.
    """
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
        raise AllocationError("this method needs calibration text: pass calibration= or tokenizer=")
    return calibration_set(
        tokenizer,
        max_tokens=int(params.get("calibration_tokens", DEFAULT_CALIBRATION_TOKENS)),
        seqlen=int(params.get("calibration_seqlen", DEFAULT_CALIBRATION_SEQLEN)),
    )


def build_allocation(
    method: str,
    *,
    report: AlphaReport,
    target: float,
    model: nn.Module | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    calibration: CalibrationSet | None = None,
    progress: Progress | None = None,
    **params: Any,
) -> Allocation:
    """Build the ``method`` allocation of ``report``'s model at parameter-weighted sparsity ``target``.

    ``params`` are the method's knobs (see ``METHODS`` and each module); an unknown method or
    knob raises AllocationError naming the valid ones. ``teal-greedy`` and ``auto`` need the
    loaded ``model`` and calibration text (``calibration`` or a ``tokenizer`` to build the default
    ``calibration_tokens`` x ``calibration_seqlen`` set from WikiText-2 validation).
    ``progress(stage, fraction)`` hears about the greedy search and every scored ``auto`` candidate.
    """
    _check_method(method)
    unknown = sorted(set(params) - _KNOBS[method] - _CALIBRATION_KNOBS)
    if unknown:
        valid = sorted(method_knobs(method))
        raise AllocationError(
            f"{method}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(valid) or 'none'}"
        )
    ident = model_ident(report.model)
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
        return _teal_greedy(report, target, model, tokenizer, calibration, params, ident, progress)
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
        progress=progress,
    )
    return choice.allocation


def build_allocations(
    methods: Sequence[str],
    *,
    report: AlphaReport,
    targets: Sequence[float],
    model: nn.Module | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    calibration: CalibrationSet | None = None,
    progress: Progress | None = None,
    **params: Any,
) -> list[Allocation]:
    """One allocation per (target, method), target-major, in the given orders.

    The methods that need the model share one calibration set and one TEAL greedy trace computed up
    to the largest target (the search costs about as much as scoring a few candidates, once instead
    of once per target). Each method receives the ``params`` it accepts (``method_knobs``); a knob
    that no requested method accepts raises AllocationError naming the valid ones.
    """
    for method in methods:
        _check_method(method)
    accepted = frozenset().union(*(method_knobs(m) for m in methods)) | {"trace"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise AllocationError(
            f"{', '.join(methods)}: unknown parameter(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(accepted - {'trace'})) or 'none'}"
        )
    if not targets:
        return []
    calibrated = [m for m in methods if m in NEEDS_MODEL]
    steps = (1 if _needs_trace(calibrated, params) else 0) + len(calibrated) * len(targets)
    done = 0

    def report_(stage: str, within: float = 0.0) -> None:
        if progress is not None:
            progress(stage, min(1.0, (done + within) / max(1, steps)))

    trace = params.get("trace")
    if calibrated:
        if model is None:
            raise AllocationError(f"{calibrated[0]} needs the loaded model (model=...)")
        report_("calibration text")
        calibration = _calibration(calibration, tokenizer, params)
        if trace is None and _needs_trace(calibrated, params):
            trace = greedy_trace(
                model,
                calibration,
                max_target=max(targets),
                progress=lambda stage, f: report_(stage, f),
                **_greedy_knobs(params),
            )
            done += 1
    out: list[Allocation] = []
    for target in targets:
        for method in methods:
            knobs = {k: v for k, v in params.items() if k in method_knobs(method) and k != "trace"}
            if method not in NEEDS_MODEL:
                out.append(build_allocation(method, report=report, target=target, **knobs))
                continue
            report_(f"{method}@{target:g}")

            def step(stage: str, f: float, m: str = method, t: float = target) -> None:
                report_(f"{m}@{t:g}: {stage}", f)

            out.append(
                build_allocation(
                    method,
                    report=report,
                    target=target,
                    model=model,
                    calibration=calibration,
                    trace=trace,
                    progress=step,
                    **knobs,
                )
            )
            done += 1
    report_("allocations built")
    return out


def _needs_trace(methods: Sequence[str], params: Mapping[str, Any]) -> bool:
    if "teal-greedy" in methods:
        return True
    if "auto" not in methods:
        return False
    from acttail.methods.auto import DEFAULT_GRID

    return any(c.method == "teal-greedy" for c in params.get("grid", DEFAULT_GRID))


def _greedy_knobs(params: Mapping[str, Any]) -> dict[str, Any]:
    """``greedy_trace`` keywords from the registry's knob names."""
    names = {"step": "step", "greedy_tokens": "max_tokens", "last_fraction": "last_fraction", "s_max": "s_max"}
    return {names[k]: v for k, v in params.items() if k in names}


def _renamed(alloc: Allocation, method: str) -> Allocation:
    from dataclasses import replace

    return replace(alloc, method=method)


def _teal_greedy(
    report: AlphaReport,
    target: float,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    calibration: CalibrationSet | None,
    params: Mapping[str, Any],
    ident: ModelIdent,
    progress: Progress | None = None,
) -> Allocation:
    from acttail.methods.teal_greedy import (
        DEFAULT_GREEDY_TOKENS,
        DEFAULT_LAST_FRACTION,
        DEFAULT_STEP,
        allocation_from_trace,
        greedy_trace,
    )

    bounds = AllocationParams(s_min=float(params.get("s_min", 0.0)), s_max=float(params.get("s_max", 0.99)))
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
            progress=progress,
        )
        extra = {"calibration": cal.describe()}
    else:  # a reused trace: record the text it was measured on when the caller says
        extra = {} if calibration is None else {"calibration": calibration.describe()}
    return allocation_from_trace(trace, report.param_counts(), target, bounds, extra_params=extra, **ident)
