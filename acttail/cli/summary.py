"""What ``acttail run`` shows besides the perplexity table: the alphas it measured and the
allocations they led to, side by side per projection kind, so one screen tells the whole story
(alpha -> per-projection sparsity -> perplexity against uniform)."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from acttail.allocate import weighted_mean
from acttail.models.architectures import PROJECTION_ORDER, parse_projection_name

if TYPE_CHECKING:
    from acttail.allocate import Allocation
    from acttail.pipeline import PipelineResult


def print_alphas(console: Console, alphas: dict[str, float], estimator: str) -> None:
    """Mean, lowest and highest alpha per projection kind (q, k, v, o, gate, up, down)."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for name, alpha in alphas.items():
        by_kind[str(parse_projection_name(name).kind)].append(alpha)
    console.print(f"alpha ({estimator}) per projection kind, {len(alphas)} projections", highlight=False)
    table = Table()
    table.add_column("", justify="left")
    kinds = [str(k) for k in PROJECTION_ORDER if str(k) in by_kind]
    for kind in kinds:
        table.add_column(kind, justify="right")
    for label, pick in (("mean", lambda v: sum(v) / len(v)), ("min", min), ("max", max)):
        table.add_row(label, *(f"{pick(by_kind[k]):.2f}" for k in kinds))
    console.print(table)


def _kind_means(allocation: Allocation) -> dict[str, float]:
    """Parameter-weighted mean sparsity per projection kind (the budget is this mean over all)."""
    by_kind: dict[str, dict[str, float]] = defaultdict(dict)
    for name, sparsity in allocation.sparsities.items():
        by_kind[str(parse_projection_name(name).kind)][name] = sparsity
    return {kind: weighted_mean(part, allocation.param_counts) for kind, part in by_kind.items()}


def print_allocations(console: Console, result: PipelineResult) -> None:
    """Per target, one column per method: the mean sparsity of each projection kind and the range."""
    by_target: dict[float, list[Allocation]] = defaultdict(list)
    for variant in result.variants:
        if variant.allocation is not None:
            by_target[variant.target].append(variant.allocation)
    for target, allocations in sorted(by_target.items()):
        console.print(f"allocations at {target:.0%}: mean sparsity per projection kind", highlight=False)
        table = Table()
        table.add_column("kind", justify="left")
        for allocation in allocations:
            table.add_column(_label(allocation), justify="right")
        means = [_kind_means(a) for a in allocations]
        for kind in (str(k) for k in PROJECTION_ORDER):
            if any(kind in m for m in means):
                table.add_row(kind, *(f"{m[kind]:.3f}" if kind in m else "-" for m in means))
        table.add_row(
            "range", *(f"{min(a.sparsities.values()):.2f}–{max(a.sparsities.values()):.2f}" for a in allocations)
        )
        console.print(table)


def _label(allocation: Allocation) -> str:
    choice = allocation.params.get("choice")
    if allocation.method == "auto" and isinstance(choice, dict) and "label" in choice:
        return f"auto ({choice['label']})"
    return allocation.method
