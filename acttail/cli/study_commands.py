"""``acttail sensitivity`` and ``acttail allocate-search``: the allocation study and data-driven methods.

Both load the model once, read calibration text from WikiText-2 raw *validation* (never test),
and reuse an ESD report written by ``acttail alphas --json`` when given ``--alphas``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from acttail.cli.esd_commands import (
    ModelArg,
    ReportEstimatorOpt,
    RevisionOpt,
    _load_or_compute,
)
from acttail.cli.paths import output_file
from acttail.cli.placement_options import DeviceMapOpt, DeviceOpt, DtypeOpt, MaxMemoryOpt, placement_from
from acttail.registry import (
    DEFAULT_CALIBRATION_SEQLEN,
    DEFAULT_CALIBRATION_TOKENS,
    ESTIMATORS,
    METHODS,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from acttail.methods import CalibrationSet
    from acttail.models.placement import Placement

console = Console()
SEARCH_METHODS = tuple(name for name, spec in METHODS.items() if spec.needs_model)

AlphasOpt = Annotated[
    Path | None,
    typer.Option("--alphas", help="Reuse a report written by `acttail alphas --json`."),
]
TokensOpt = Annotated[
    int,
    typer.Option("--max-tokens", min=64, help="Calibration tokens (WikiText-2 validation)."),
]
SeqlenOpt = Annotated[int, typer.Option("--seqlen", min=16, help="Calibration window length.")]


def _calibration(
    model: str, revision: str | None, max_tokens: int, seqlen: int, placement: Placement
) -> tuple[PreTrainedModel, CalibrationSet]:
    from acttail.methods import calibration_set
    from acttail.models import resolve_model
    from acttail.pipeline import load_model

    loaded, tokenizer = load_model(resolve_model(model, revision), placement.resolve())
    return loaded, calibration_set(tokenizer, max_tokens=max_tokens, seqlen=seqlen)


def sensitivity(
    model: ModelArg,
    level: Annotated[
        float,
        typer.Option("--level", min=0.01, max=0.99, help="Sparsity of the probed cell."),
    ] = 0.7,
    groups: Annotated[int, typer.Option("--groups", min=1, help="Layer groups per projection kind.")] = 3,
    max_tokens: TokensOpt = 4096,
    seqlen: SeqlenOpt = 512,
    estimator: ReportEstimatorOpt = None,
    all_estimators: Annotated[
        bool,
        typer.Option("--all-estimators", help="Correlate alpha of ks, ks_peak and hill."),
    ] = False,
    alphas_json: AlphasOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the figure as PNG.", callback=output_file)] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON.", callback=output_file)
    ] = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Sparsify one projection kind in one layer group at a time; rank-correlate the damage with alpha & co."""
    from acttail.sensitivity import plot_sensitivity, predictor_table, sensitivity_study

    reports = [_load_or_compute(model, revision, estimator, alphas_json)]
    if all_estimators:
        reports += [_load_or_compute(model, revision, e, None) for e in ESTIMATORS if e != reports[0].estimator]
    placement = placement_from(device, dtype, device_map, max_memory)
    loaded, calibration = _calibration(model, revision, max_tokens, seqlen, placement)
    result = sensitivity_study(loaded, calibration, reports, level=level, groups=groups, model_id=model)
    kinds, matrix = result.matrix("delta_nll")
    table = Table(title=f"{model}: dNLL when one cell is sparsified at {level:g} (dense PPL {result.dense_ppl:.3f})")
    table.add_column("kind")
    for g in range(result.groups):
        table.add_column(f"group {g}", justify="right")
    for kind, row in zip(kinds, matrix, strict=True):
        table.add_row(kind, *(f"{v:.4f}" for v in row))
    console.print(table)
    rho = Table(title="Spearman rho with sensitivity (negative = higher value, less sensitive)")
    for column in ("predictor", "dNLL", "dNLL per M weights"):
        rho.add_column(column, justify="right")
    for name, a, b in predictor_table(result):
        rho.add_row(name, f"{a:+.2f}", f"{b:+.2f}")
    console.print(rho)
    if json_path is not None:
        json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    if plot is not None:
        plot_sensitivity(result, plot)


def allocate_search(
    model: ModelArg,
    sparsity: Annotated[
        float,
        typer.Option("--sparsity", "-s", min=0.0, max=0.99, help="Target mean sparsity."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Allocation JSON document to write.", callback=output_file)
    ],
    method: Annotated[str, typer.Option("--method", help=" | ".join(SEARCH_METHODS) + ".")] = "auto",
    max_tokens: TokensOpt = DEFAULT_CALIBRATION_TOKENS,
    seqlen: SeqlenOpt = DEFAULT_CALIBRATION_SEQLEN,
    estimator: ReportEstimatorOpt = None,
    alphas_json: AlphasOpt = None,
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Build an allocation that needs the model and calibration text (auto or TEAL's greedy search)."""
    if method not in SEARCH_METHODS:
        raise typer.BadParameter(
            f"unknown method {method!r}; valid: {', '.join(SEARCH_METHODS)}",
            param_hint="--method",
        )
    from acttail.methods import build_allocation

    report = _load_or_compute(model, revision, estimator, alphas_json)
    placement = placement_from(device, dtype, device_map, max_memory)
    loaded, calibration = _calibration(model, revision, max_tokens, seqlen, placement)
    alloc = build_allocation(method, report=report, target=sparsity, model=loaded, calibration=calibration)
    alloc.save(output)
    if method == "auto":
        console.print(f"auto chose: {alloc.params['choice']['label']}")
        for row in alloc.params["grid"]:
            console.print(f"  {row['label']:<45} calibration PPL {row['calibration_ppl']:.4f}")
    console.print(f"wrote {output} (mean sparsity {alloc.weighted_mean:.4f})")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the main app."""
    app.command("sensitivity")(sensitivity)
    app.command("allocate-search")(allocate_search)
