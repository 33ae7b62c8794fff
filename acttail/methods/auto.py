"""``auto``: choose, on calibration text only, between uniform, a small grid of ActTail settings
and TEAL's greedy allocation.

For the requested target S every candidate allocation c of the grid is applied (TopK) and scored
by its perplexity on the calibration set (WikiText-2 raw *validation*, ``CalibrationSet``):

    PPL_c = exp(mean NLL on the calibration windows)
    choice = argmin_c PPL_c   if  PPL_choice <= (1 - min_gain) * PPL_uniform,   else uniform

Ties go to the earlier grid entry (uniform is first), so the choice is a deterministic function
of the alphas, the grid and the calibration tokens. The ``min_gain`` margin keeps uniform unless
a candidate wins by more than calibration noise, which is what makes the choice carry over to
held-out text. The grid, every score, the margin, the calibration set's description and the
chosen candidate are recorded in the allocation document's ``params``; the sparsities are those
of the chosen candidate (so the budget holds exactly, as for every method). The ``teal-greedy``
candidate reads a ``GreedyTrace`` (pass ``trace=`` to reuse one across targets; otherwise it is
computed on the calibration set); it was added after a first SmolLM2 sweep where the ActTail-only
grid's calibration winner lost to uniform on the test split (docs/science.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from torch import nn

from acttail.allocate import (
    Allocation,
    AllocationParams,
    Direction,
    Granularity,
    allocate,
    model_ident,
)
from acttail.errors import AllocationError
from acttail.methods.calibration import CalibrationSet, calibration_nll
from acttail.methods.per_type import allocate_per_type
from acttail.methods.teal_greedy import GreedyTrace, allocation_from_trace, greedy_trace

if TYPE_CHECKING:
    from acttail.methods import AlphaReport

logger = logging.getLogger(__name__)

METHOD = "auto"
DEFAULT_MIN_GAIN = 0.01


@dataclass(frozen=True)
class Candidate:
    """One grid entry: uniform, or ActTail with these knobs (``per_type``: alpha normalised per kind)."""

    method: str = "acttail"  # "uniform" | "acttail" | "teal-greedy"
    epsilon: float = 0.1
    direction: Direction = Direction.HIGHER_ALPHA_SPARSER
    granularity: Granularity = Granularity.PROJECTION
    per_type: bool = False

    @property
    def label(self) -> str:
        if self.method in ("uniform", "teal-greedy"):
            return self.method
        direction = "hi" if self.direction is Direction.HIGHER_ALPHA_SPARSER else "lo"
        norm = "/per-type" if self.per_type else ""
        gran = "block" if self.granularity is Granularity.BLOCK else "proj"
        return f"acttail eps={self.epsilon:g} {direction}-alpha-sparser {gran}{norm}"

    def to_dict(self) -> dict[str, Any]:
        if self.method in ("uniform", "teal-greedy"):
            return {"method": self.method, "label": self.label}
        return {
            "method": self.method,
            "epsilon": self.epsilon,
            "direction": str(self.direction),
            "granularity": str(self.granularity),
            "per_type": self.per_type,
            "label": self.label,
        }

    def build(
        self,
        report: AlphaReport,
        target: float,
        s_min: float,
        s_max: float,
        trace: GreedyTrace | None = None,
    ) -> Allocation:
        ident = model_ident(report.model)
        if self.method == "teal-greedy":
            if trace is None:
                raise AllocationError("the teal-greedy candidate needs a greedy trace")
            return allocation_from_trace(
                trace,
                report.param_counts(),
                target,
                AllocationParams(s_min=s_min, s_max=s_max),
                **ident,
            )
        if self.method == "uniform":
            return allocate(
                report.alphas(),
                report.param_counts(),
                target,
                method="uniform",
                **ident,
            )
        params = AllocationParams(self.epsilon, self.direction, self.granularity, s_min, s_max)
        if self.per_type:
            return allocate_per_type(
                report.alphas(),
                report.param_counts(),
                target,
                params,
                estimator=report.estimator,
                **ident,
            )
        return allocate(
            report.alphas(),
            report.param_counts(),
            target,
            method="acttail",
            params=params,
            estimator=report.estimator,
            **ident,
        )


_HI, _LO = Direction.HIGHER_ALPHA_SPARSER, Direction.LOWER_ALPHA_SPARSER

DEFAULT_GRID: tuple[Candidate, ...] = (
    Candidate("uniform"),
    Candidate(epsilon=0.1, direction=_HI),  # the ActTail/AlphaPruning rule
    Candidate(epsilon=0.1, direction=_LO),
    Candidate(epsilon=0.1, direction=_HI, per_type=True),
    Candidate(epsilon=0.1, direction=_LO, per_type=True),
    Candidate("teal-greedy"),  # measured block-output error; see teal_greedy
)


@dataclass(frozen=True)
class AutoChoice:
    """The scored grid for one target and the pick."""

    target: float
    labels: tuple[str, ...]
    ppl: tuple[float, ...]
    chosen: int
    best: int  # argmin before the margin rule
    allocation: Allocation


def auto_allocation(
    report: AlphaReport,
    target: float,
    model: nn.Module,
    calibration: CalibrationSet,
    *,
    grid: Sequence[Candidate] = DEFAULT_GRID,
    min_gain: float = DEFAULT_MIN_GAIN,
    s_min: float = 0.0,
    s_max: float = 0.99,
    trace: GreedyTrace | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> AutoChoice:
    """Score every grid candidate on ``calibration`` and return the choice (see module docstring).

    ``progress(stage, fraction)`` is called before the greedy search and before every candidate.
    """
    if not grid or grid[0].method != "uniform":
        raise AllocationError("the auto grid must start with the uniform candidate (its fallback)")
    if not 0.0 <= min_gain < 1.0:
        raise AllocationError(f"min_gain must be in [0, 1), got {min_gain}")
    if trace is None and any(c.method == "teal-greedy" for c in grid):
        on_block = None if progress is None else (lambda stage, _f: progress(stage, 0.0))
        trace = greedy_trace(model, calibration, max_target=target, s_max=s_max, progress=on_block)
    allocations, ppl = [], []
    for i, candidate in enumerate(grid):
        if progress is not None:
            progress(f"candidate {i + 1}/{len(grid)}: {candidate.label}", i / len(grid))
        alloc = candidate.build(report, target, s_min, s_max, trace)
        allocations.append(alloc)
        ppl.append(math.exp(calibration_nll(model, calibration, alloc)))
        logger.info("auto %.2f %-45s calibration ppl %.4f", target, candidate.label, ppl[-1])
    best = min(range(len(grid)), key=lambda i: (ppl[i], i))
    chosen = best if ppl[best] <= (1.0 - min_gain) * ppl[0] else 0
    picked = allocations[chosen]
    params = {
        "choice": grid[chosen].to_dict(),
        "chosen_params": picked.params,
        "selection": "argmin calibration perplexity; uniform unless the best beats it by min_gain",
        "min_gain": min_gain,
        "calibration": calibration.describe(),
        "grid": [{**c.to_dict(), "calibration_ppl": round(p, 6)} for c, p in zip(grid, ppl, strict=True)],
    }
    allocation = replace(picked, method=METHOD, estimator=report.estimator, params=params)
    return AutoChoice(
        float(target),
        tuple(c.label for c in grid),
        tuple(ppl),
        chosen,
        best,
        allocation,
    )
