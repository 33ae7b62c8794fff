"""``acttail alphas`` and ``acttail allocate``: the ESD analysis and the allocation it drives."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from acttail.allocate import AllocationParams, Direction, Granularity, allocate

if TYPE_CHECKING:
    from acttail.esd import ESDReport

console = Console()

ESTIMATORS = ("ks", "ks_peak", "hill")


def _check_estimator(value: str) -> str:
    if value not in ESTIMATORS:
        raise typer.BadParameter(f"unknown estimator {value!r}; valid: {', '.join(ESTIMATORS)}")
    return value


ModelArg = Annotated[str, typer.Argument(help="Bundled alias (smollm2-135m, gemma3-270m), local path, or hub ID.")]
EstimatorOpt = Annotated[
    str, typer.Option("--estimator", "-e", help="x_min rule: ks | ks_peak | hill.", callback=_check_estimator)
]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit).")]


def compute_report(model: str, revision: str | None, estimator: str, progress: bool = True) -> ESDReport:
    """Resolve the model and run the streaming ESD analysis (one projection in memory at a time)."""
    from acttail.esd import analyze_source
    from acttail.models import resolve_model

    source = resolve_model(model, revision)
    return analyze_source(source, estimator=estimator, progress=progress)


def print_report(report: ESDReport) -> None:
    """Per-projection-type means, then the per-layer view (rows: layers, columns: q..down)."""
    means = report.per_type_means()
    table = Table(title=f"alpha ({report.estimator}) — mean per projection type", show_lines=False)
    for kind in means:
        table.add_column(kind, justify="right")
    table.add_row(*(f"{value:.2f}" for value in means.values()))
    console.print(table)
    layers = report.per_layer()
    kinds = list(means)
    by_layer = Table(title="alpha per layer")
    by_layer.add_column("layer", justify="right")
    for kind in kinds:
        by_layer.add_column(kind, justify="right")
    for layer, row in layers.items():
        by_layer.add_row(str(layer), *(f"{row[k]:.2f}" if k in row else "-" for k in kinds))
    console.print(by_layer)


def write_csv(report: ESDReport, path: Path) -> None:
    rows = [p.to_dict() if hasattr(p, "to_dict") else dict(p.__dict__) for p in report.projections]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def alphas(
    model: ModelArg,
    estimator: EstimatorOpt = "ks",
    revision: RevisionOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON.")] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write one row per projection as CSV.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No tables, no progress bar.")] = False,
) -> None:
    """Heavy-tail exponent alpha of every q/k/v/o/gate/up/down projection's ESD."""
    report = compute_report(model, revision, estimator, progress=not quiet)
    if not quiet:
        print_report(report)
    if json_path:
        json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    if csv_path:
        write_csv(report, csv_path)


def allocate_command(
    model: ModelArg,
    sparsity: Annotated[float, typer.Option("--sparsity", "-s", min=0.0, max=0.99, help="Target mean sparsity.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Allocation JSON document to write.")],
    method: Annotated[str, typer.Option("--method", help="acttail | uniform.")] = "acttail",
    epsilon: Annotated[float, typer.Option("--epsilon", min=0.0, max=0.99, help="Half-width of the alpha map.")] = 0.1,
    direction: Annotated[Direction, typer.Option("--direction")] = Direction.HIGHER_ALPHA_SPARSER,
    granularity: Annotated[Granularity, typer.Option("--granularity")] = Granularity.PROJECTION,
    estimator: EstimatorOpt = "ks",
    revision: RevisionOpt = None,
    alphas_json: Annotated[
        Path | None, typer.Option("--alphas", help="Reuse a report written by `acttail alphas --json`.")
    ] = None,
) -> None:
    """Per-projection sparsities whose parameter-weighted mean is the target."""
    if method not in ("acttail", "uniform"):
        raise typer.BadParameter(f"unknown method {method!r}; valid: acttail, uniform", param_hint="--method")
    report = _load_or_compute(model, revision, estimator, alphas_json)
    description = report.model
    document = allocate(
        report.alphas(),
        report.param_counts(),
        sparsity,
        method=method,
        params=AllocationParams(epsilon=epsilon, direction=direction, granularity=granularity),
        model_id=description["model_id"],
        fingerprint=description["fingerprint"],
        estimator=report.estimator,
    )
    document.save(output)
    console.print(
        f"wrote {output}: {method} at {sparsity:.0%} over {len(document.sparsities)} projections, "
        f"range {min(document.sparsities.values()):.3f}–{max(document.sparsities.values()):.3f}, "
        f"weighted mean {document.weighted_mean:.6f}"
    )


def _load_or_compute(model: str, revision: str | None, estimator: str, alphas_json: Path | None) -> ESDReport:
    from acttail.esd import ESDReport

    if alphas_json is None:
        return compute_report(model, revision, estimator)
    try:
        return ESDReport.from_dict(json.loads(alphas_json.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise typer.BadParameter(f"cannot read {alphas_json}: {exc}", param_hint="--alphas") from None


def register(app: typer.Typer) -> None:
    app.command("alphas")(alphas)
    app.command("allocate")(allocate_command)
