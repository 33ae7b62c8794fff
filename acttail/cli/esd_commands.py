"""``acttail alphas`` and ``acttail allocate``: the ESD analysis and the allocation it drives.

``allocate`` builds any method of ``acttail.methods``; its default, ``auto``, loads the model and
chooses on WikiText-2 validation text (the paper's rule lost to uniform on the models we measured).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from acttail.allocate import Direction, Granularity
from acttail.cli.paths import output_dir, output_file
from acttail.cli.placement_options import DeviceMapOpt, DeviceOpt, DtypeOpt, MaxMemoryOpt, placement_from
from acttail.errors import ActTailError, AllocationError
from acttail.registry import (
    DEFAULT_CALIBRATION_SEQLEN,
    DEFAULT_CALIBRATION_TOKENS,
    DEFAULT_ESTIMATOR,
    DEFAULT_METHOD,
    ESTIMATORS,
    METHODS,
    TARGET_MAX,
    TARGET_MIN,
    method_spec,
)

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    from acttail.allocate import Allocation
    from acttail.esd import ESDReport, ProjectionESD
    from acttail.models.placement import Placement

console = Console()

METHOD_HELP = " | ".join(METHODS)


def _check_estimator(value: str | None) -> str | None:
    if value is not None and value not in ESTIMATORS:
        raise typer.BadParameter(f"unknown estimator {value!r}; valid: {', '.join(ESTIMATORS)}")
    return value


ModelArg = Annotated[str, typer.Argument(help="Bundled alias (smollm2-135m, gemma3-270m), local path, or hub ID.")]
EstimatorOpt = Annotated[
    str, typer.Option("--estimator", "-e", help=f"x_min rule: {' | '.join(ESTIMATORS)}.", callback=_check_estimator)
]
# Commands that also take --alphas FILE: unset means ks, or the file's estimator (a different one is refused).
ReportEstimatorOpt = Annotated[
    str | None,
    typer.Option(
        "--estimator", "-e", help=f"x_min rule: {' | '.join(ESTIMATORS)} [{DEFAULT_ESTIMATOR}; with --alphas: the file's].",
        callback=_check_estimator,
    ),
]  # fmt: skip
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit).")]
PlotOpt = Annotated[
    Path | None,
    typer.Option("--plot", help="Write the figures here as PNG and SVG (the folder is created).", callback=output_dir),
]


def compute_report(
    model: str,
    revision: str | None,
    estimator: str,
    progress: bool = True,
    keep_spectra: str | bool = False,
) -> tuple[ESDReport, dict[str, np.ndarray]]:
    """Resolve the model and run the streaming ESD analysis (one projection in memory at a time).

    ``keep_spectra``: True keeps every projection's eigenvalues, a projection name keeps that
    one's (checked before the analysis starts), False none. They are for ESD plots only.
    """
    from acttail.esd import analyze_source
    from acttail.models import resolve_model

    source = resolve_model(model, revision)
    if isinstance(keep_spectra, str):
        names = [info.name for info in source.projections()]
        if keep_spectra not in names:
            raise ActTailError(
                f"--esd-projection: {model} has no projection {keep_spectra!r}; e.g. {', '.join(names[:3])}"
            )
    spectra: dict[str, np.ndarray] = {}

    def keep(result: ProjectionESD, evals: np.ndarray) -> None:
        if keep_spectra is True or keep_spectra == result.name:
            spectra[result.name] = evals

    report = analyze_source(source, estimator=estimator, progress=progress, on_spectrum=keep if keep_spectra else None)
    return report, spectra


def save_png_and_svg(fig: Figure, base: Path) -> list[Path]:
    """``base``.png and ``base``.svg (``acttail.plots`` renders both deterministically)."""
    from acttail.plots import save_figure

    return [save_figure(fig, base.with_name(f"{base.name}.{fmt}")) for fmt in ("png", "svg")]


def write_esd_plots(report: ESDReport, spectra: dict[str, np.ndarray], directory: Path) -> list[Path]:
    """``alphas.{png,svg}`` and ``esd/<projection>.{png,svg}`` for every kept spectrum."""
    from acttail.plots import plot_alphas, plot_esd

    written = save_png_and_svg(plot_alphas(report), directory / "alphas")
    for row in report.projections:
        if row.name in spectra:
            fig = plot_esd(spectra[row.name], row, title=f"{row.name}\nESD, α = {row.alpha:.2f} ({report.estimator})")
            written += save_png_and_svg(fig, directory / "esd" / row.name)
    return written


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
    estimator: EstimatorOpt = DEFAULT_ESTIMATOR,
    revision: RevisionOpt = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the full report as JSON.", callback=output_file)
    ] = None,
    csv_path: Annotated[
        Path | None, typer.Option("--csv", help="Write one row per projection as CSV.", callback=output_file)
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No tables, no progress bar.")] = False,
    plot: PlotOpt = None,
    esd_projection: Annotated[
        str | None,
        typer.Option("--esd-projection", help="With --plot: the ESD histogram of this projection only (default: all)."),
    ] = None,
) -> None:
    """Heavy-tail exponent alpha of every q/k/v/o/gate/up/down projection's ESD."""
    if esd_projection is not None and plot is None:
        raise ActTailError("--esd-projection needs --plot DIR")
    keep_spectra: str | bool = False if plot is None else esd_projection or True
    report, spectra = compute_report(model, revision, estimator, progress=not quiet, keep_spectra=keep_spectra)
    if not quiet:
        print_report(report)
    if json_path:
        json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    if csv_path:
        write_csv(report, csv_path)
    if plot:
        written = write_esd_plots(report, spectra, plot)
        if not quiet:
            console.print(f"wrote {len(written)} figures to {plot}")


def allocate_command(
    model: ModelArg,
    sparsity: Annotated[
        float, typer.Option("--sparsity", "-s", min=TARGET_MIN, max=TARGET_MAX, help="Target mean sparsity.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Allocation JSON document to write.", callback=output_file)
    ],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            "-m",
            help=f"{METHOD_HELP}. auto (default) and teal-greedy load the model and run it on WikiText-2 "
            "validation text: minutes on a CPU for a 135M model.",
        ),
    ] = DEFAULT_METHOD,
    epsilon: Annotated[
        float | None, typer.Option("--epsilon", min=0.0, max=0.99, help="ActTail methods: half-width of the alpha map.")
    ] = None,
    direction: Annotated[
        Direction | None, typer.Option("--direction", help="acttail, acttail-block, acttail-per-type.")
    ] = None,
    granularity: Annotated[
        Granularity | None, typer.Option("--granularity", help="acttail, acttail-reverse, acttail-per-type.")
    ] = None,
    calibration_tokens: Annotated[
        int | None,
        typer.Option(
            "--calibration-tokens",
            min=64,
            help=f"auto, teal-greedy: WikiText-2 validation tokens [{DEFAULT_CALIBRATION_TOKENS}].",
        ),
    ] = None,
    calibration_seqlen: Annotated[
        int | None,
        typer.Option(
            "--calibration-seqlen", min=16, help=f"auto, teal-greedy: window length [{DEFAULT_CALIBRATION_SEQLEN}]."
        ),
    ] = None,
    min_gain: Annotated[
        float | None,
        typer.Option("--min-gain", min=0.0, max=0.5, help="auto: keep uniform unless a candidate wins by this [0.01]."),
    ] = None,
    estimator: ReportEstimatorOpt = None,
    revision: RevisionOpt = None,
    alphas_json: Annotated[
        Path | None, typer.Option("--alphas", help="Reuse a report written by `acttail alphas --json`.")
    ] = None,
    plot: PlotOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or stage lines.")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
) -> None:
    """Per-projection sparsities whose parameter-weighted mean is the target.

    The default method, auto, scores uniform, ActTail variants and TEAL's greedy search on
    WikiText-2 validation text and keeps uniform unless another wins there by --min-gain, so it
    needs the model loaded; the alpha-only methods (uniform, acttail...) need just the alphas.
    """
    from acttail.methods import method_knobs

    spec = method_spec(method)
    knobs = _method_knobs(
        method, method_knobs(method), epsilon=epsilon, direction=direction, granularity=granularity,
        calibration_tokens=calibration_tokens, calibration_seqlen=calibration_seqlen, min_gain=min_gain,
    )  # fmt: skip
    report = _load_or_compute(model, revision, estimator, alphas_json, progress=not quiet)
    placement = placement_from(device, dtype, device_map, max_memory)
    document = _build(
        model, revision, method, sparsity, report, knobs, needs_model=spec.needs_model, quiet=quiet, placement=placement
    )
    document.save(output)
    if "choice" in document.params:
        console.print(f"auto chose: {document.params['choice']['label']}", highlight=False)
        for row in document.params["grid"]:
            console.print(f"  {row['label']:<45} calibration PPL {row['calibration_ppl']:.4f}", highlight=False)
    console.print(
        f"wrote {output}: {method} at {sparsity:.0%} over {len(document.sparsities)} projections, "
        f"range {min(document.sparsities.values()):.3f}–{max(document.sparsities.values()):.3f}, "
        f"weighted mean {document.weighted_mean:.6f}"
    )
    if plot:
        from acttail.plots import plot_allocation

        written = save_png_and_svg(plot_allocation(document), plot / "allocation")
        console.print(f"wrote {len(written)} figures to {plot}")


def _method_knobs(method: str, accepted: frozenset[str], **given: object) -> dict[str, Any]:
    """The options the user set, refused (one line) where ``method`` does not read them."""
    knobs = {name: value for name, value in given.items() if value is not None}
    for name in knobs:
        if name not in accepted:
            raise AllocationError(f"--{name.replace('_', '-')} does not apply to method {method!r}")
    return knobs


def _build(
    model: str, revision: str | None, method: str, target: float, report: ESDReport, knobs: dict[str, Any],
    *, needs_model: bool, quiet: bool, placement: Placement,
) -> Allocation:  # fmt: skip
    """The allocation; for auto and teal-greedy the model is loaded and every stage is drawn."""
    from acttail.methods import build_allocations

    if not needs_model:
        return build_allocations([method], report=report, targets=[target], **knobs)[0]
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from acttail.models import resolve_model
    from acttail.pipeline import load_model

    source = resolve_model(model, revision)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TimeElapsedColumn(), console=console, transient=True, disable=quiet)  # fmt: skip
    shown: list[str] = []

    def progress(stage: str, fraction: float) -> None:
        bar.update(task, completed=fraction, description=f"{method}: {stage}")
        head = stage.split(",")[0]  # a line per stage, not per greedy block
        if not quiet and (not shown or shown[-1] != head):
            bar.console.print(f"{method}: {stage}", highlight=False)
            shown.append(head)

    with bar:
        task = bar.add_task(f"{method}: loading model", total=1.0)
        if not quiet:
            bar.console.print(f"{method}: loading model (it runs on WikiText-2 validation text)", highlight=False)
        loaded, tokenizer = load_model(source, placement.resolve())
        return build_allocations(
            [method], report=report, targets=[target], model=loaded, tokenizer=tokenizer, progress=progress, **knobs
        )[0]


def _load_or_compute(
    model: str, revision: str | None, estimator: str | None, alphas_json: Path | None, progress: bool = True
) -> ESDReport:
    """The alphas of ``model``: computed (``estimator`` or ks), or read from ``alphas_json``, which
    must be this model's (same fingerprint) and, when ``estimator`` is given, that estimator's."""
    from acttail.esd import ESDReport
    from acttail.models import resolve_model

    if alphas_json is None:
        return compute_report(model, revision, estimator or DEFAULT_ESTIMATOR, progress=progress)[0]
    try:
        report = ESDReport.from_dict(json.loads(alphas_json.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise typer.BadParameter(f"cannot read {alphas_json}: {exc}", param_hint="--alphas") from None
    if estimator is not None and estimator != report.estimator:
        raise ActTailError(
            f"--estimator {estimator} differs from the estimator of --alphas {alphas_json} ({report.estimator}); "
            "drop --estimator or recompute the alphas with it"
        )
    computed_for = report.model.get("fingerprint") or ""
    fingerprint = resolve_model(model, revision).describe().fingerprint
    if computed_for and computed_for != fingerprint:
        raise ActTailError(
            f"--alphas {alphas_json} was computed for another model ({report.model.get('model_id')!r}, "
            f"fingerprint {computed_for[:16]}…), not {model!r} (fingerprint {fingerprint[:16]}…)"
        )
    return report


def register(app: typer.Typer) -> None:
    app.command("alphas")(alphas)
    app.command("allocate")(allocate_command)
