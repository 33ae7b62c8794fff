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

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from acttail.allocate import Allocation
from acttail.errors import ActTailError, AllocationError
from acttail.methods.builders import BuildContext, greedy_knobs
from acttail.methods.calibration import (
    CalibrationSet,
    calibration_from_ids,
    calibration_nll,
    calibration_set,
)
from acttail.registry import (
    DEFAULT_CALIBRATION_SEQLEN,
    DEFAULT_CALIBRATION_TOKENS,
    DEFAULT_METHOD,
    METHODS,
    MethodSpec,
    method_spec,
)

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase

#: ``progress(stage, fraction)``: what the allocation is doing now, fraction of the whole build in [0, 1].
Progress = Callable[[str, float], None]

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
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


def _spec(method: str) -> MethodSpec:
    try:
        return method_spec(method)
    except ActTailError as exc:
        raise AllocationError(str(exc)) from None


def method_knobs(method: str) -> frozenset[str]:
    """The keyword parameters ``build_allocation(method, ...)`` accepts (``trace`` is internal reuse)."""
    return _spec(method).accepted - {"trace"}


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


def _builder(spec: MethodSpec) -> Callable[..., Allocation]:
    module, _, function = spec.builder.partition(":")
    return getattr(importlib.import_module(module), function)


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

    ``params`` are the method's knobs (``acttail.registry.METHODS``); an unknown method or knob
    raises AllocationError naming the valid ones. The methods that need the model (``teal-greedy``,
    ``auto``) read the loaded ``model`` and calibration text (``calibration``, or a ``tokenizer`` to
    build the default ``calibration_tokens`` x ``calibration_seqlen`` set from WikiText-2 validation).
    ``progress(stage, fraction)`` hears about the greedy search and every scored ``auto`` candidate.
    """
    spec = _spec(method)
    unknown = sorted(set(params) - spec.accepted)
    if unknown:
        valid = sorted(method_knobs(method))
        raise AllocationError(
            f"{method}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(valid) or 'none'}"
        )
    context = BuildContext()
    if spec.needs_model:
        if model is None:
            raise AllocationError(f"{method} needs the loaded model (model=...)")
        text = (
            None
            if calibration is None and tokenizer is None
            else (lambda: _calibration(calibration, tokenizer, params))
        )
        context = BuildContext(model, text, progress)
    return _builder(spec)(report, target, context, params)


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
    specs = [_spec(method) for method in methods]
    accepted = frozenset().union(*(method_knobs(m) for m in methods)) | {"trace"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise AllocationError(
            f"{', '.join(methods)}: unknown parameter(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(accepted - {'trace'})) or 'none'}"
        )
    if not targets:
        return []
    calibrated = [spec.name for spec in specs if spec.needs_model]
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
                **greedy_knobs(params),
                **({"s_max": params["s_max"]} if "s_max" in params else {}),
            )
            done += 1
    out: list[Allocation] = []
    for target in targets:
        for method in methods:
            knobs = {k: v for k, v in params.items() if k in method_knobs(method) and k != "trace"}
            if method not in calibrated:
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
