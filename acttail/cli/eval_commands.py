"""``acttail run`` (the paper's sweep) and ``acttail evaluate`` (one allocation).

Both call ``acttail.pipeline``; this module only parses options, draws progress, prints the
table and hands the result to the JSON file and the results database (``acttail.cli.results_store``).
Bad option values raise ActTailError, which ``acttail.cli.main`` prints as one line
(exit 2).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from acttail.cli.paths import output_file
from acttail.cli.progress import progress_reporter
from acttail.cli.results_store import DbOpt, NoStoreOpt, ResultsStore, open_results_store, record_result
from acttail.cli.summary import print_allocations, print_alphas
from acttail.errors import ActTailError

if TYPE_CHECKING:
    from acttail.pipeline import PipelineResult

console = Console()

ModelArg = Annotated[str, typer.Argument(help="Bundled alias (smollm2-135m, gemma3-270m), local path, or hub ID.")]
TasksOpt = Annotated[
    str, typer.Option("--tasks", help="Comma-separated zero-shot tasks (e.g. arc_easy,piqa) or 'all'; empty: none.")
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="First N items of each zero-shot task.")]
SeqlenOpt = Annotated[int, typer.Option("--seqlen", help="Perplexity window length (tokens).")]
MaxTokensOpt = Annotated[
    int | None, typer.Option("--max-tokens", help="Cap WikiText-2 test tokens (quick runs); default: full split.")
]
ModeOpt = Annotated[str, typer.Option("--mode", help="topk (exact per token) | threshold (TEAL, calibrated).")]
ScoringOpt = Annotated[
    str,
    typer.Option(
        "--scoring", help="Which entries survive: magnitude (|x|) | wina (|x| times the weight's column norm)."
    ),
]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Write the full result document here.", callback=output_file)
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
NoDenseOpt = Annotated[bool, typer.Option("--no-dense", help="Skip the dense baseline.")]
CalibOpt = Annotated[
    int,
    typer.Option(
        "--calibration-tokens",
        help="WikiText-2 validation tokens: threshold mode, and what auto/teal-greedy choose on.",
    ),
]


def parse_sparsities(text: str) -> tuple[float, ...]:
    """``"0.5,0.7"`` -> (0.5, 0.7); every value must lie in (0, 1)."""
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise ActTailError(f"--sparsity: {part!r} is not a number (use e.g. 0.5,0.7,0.8)") from None
        if not (math.isfinite(value) and 0.0 < value < 1.0):
            raise ActTailError(f"--sparsity: {part} is outside (0, 1)")
        values.append(value)
    return tuple(values)


def parse_tasks(text: str) -> tuple[str, ...]:
    if not text.strip():
        return ()
    from acttail.evaluate.tasks import ALL_TASKS, get_task

    if text.strip() == "all":
        return tuple(ALL_TASKS)
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    for name in names:
        get_task(name)  # UnknownTaskError lists the valid names
    return names


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_result(result: PipelineResult) -> None:
    """The paper-style table: one row per (target, method)."""
    ppl = result.config.to_dict()["perplexity"]
    windows = result.variants[0].perplexity.windows if result.variants and result.variants[0].perplexity else 0
    title = (
        f"{result.model.get('model_id')} — WikiText-2 ppl (seqlen {ppl['seqlen']}, {windows} windows), "
        f"mode {result.config.mode}, scoring {result.config.scoring}"
    )
    table = Table(title=title)
    for column in ("target", "method", "perplexity", "vs uniform", "mean acc", "realised"):
        table.add_column(column, justify="right" if column != "method" else "left")
    for v in result.variants:
        gain = v.ppl_gain_vs_uniform_pct
        gain_text = "-" if gain is None or v.method == "uniform" else f"{gain:+.1f}%"
        table.add_row(
            "dense" if v.method == "dense" else f"{v.target:.0%}",
            v.method,
            _fmt(v.ppl, ".3f"),
            gain_text,
            _fmt(None if v.mean_accuracy is None else 100 * v.mean_accuracy, ".1f"),
            _fmt(v.realised_sparsity, ".3f"),
        )
    console.print(table)
    console.print("vs uniform: perplexity reduction against uniform at the same target (positive = better).")


def _finish(result: PipelineResult, json_path: Path | None, store: ResultsStore | None) -> None:
    """Alphas, allocations and the perplexity table, then the JSON file, then the results database
    (a database error cannot lose the file) and how to open it in the dashboard."""
    if result.alphas:
        print_alphas(console, result.alphas, result.config.estimator)
    print_allocations(console, result)
    print_result(result)
    if json_path is not None:
        json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {json_path}")
    if store is not None:
        recorded = record_result(store, result)
        console.print(
            f"recorded in {store.shown_url} (team 'default'): {len(recorded.allocation_ids)} allocations, "
            f"{len(recorded.benchmark_ids)} benchmark rows",
            highlight=False,
            soft_wrap=True,
        )
        console.print(store.browse_hint, highlight=False, soft_wrap=True)


def _evaluate(
    call: Callable[..., PipelineResult],
    *,
    targets: tuple[float, ...],
    methods: tuple[str, ...] = (),
    epsilon: float = 0.1,
    direction: str = "higher_alpha_sparser",
    granularity: str = "projection",
    estimator: str = "ks",
    mode: str,
    seqlen: int,
    max_tokens: int | None,
    tasks: str,
    scoring: str = "magnitude",
    limit: int | None,
    no_dense: bool,
    calibration_tokens: int,
    quiet: bool,
    command: str,
    db: str | None,
    no_store: bool,
) -> tuple[PipelineResult, ResultsStore | None]:
    """Validate the options into one PipelineConfig, open the results store (unless ``no_store``),
    then ``call(config, progress=...)`` under the bar.

    ``run`` and ``evaluate`` share this, so an option is parsed and checked the same way in both,
    and a bad option or database fails before any model is loaded.
    """
    from acttail.allocate import AllocationParams, Direction, Granularity
    from acttail.pipeline import PipelineConfig

    try:
        params = AllocationParams(epsilon=epsilon, direction=Direction(direction), granularity=Granularity(granularity))
    except ValueError as exc:
        raise ActTailError(str(exc)) from None
    config = PipelineConfig(
        targets=targets,
        methods=methods,
        params=params,
        estimator=estimator,
        mode=mode,
        scoring=scoring,
        seqlen=seqlen,
        max_tokens=max_tokens,
        tasks=parse_tasks(tasks),
        limit=limit,
        include_dense=not no_dense,
        calibration_tokens=calibration_tokens,
    )
    config.validate()
    store = None if no_store else open_results_store(db, command=command)
    try:
        with progress_reporter(console, quiet=quiet) as report:
            return call(config, progress=report), store
    except BaseException:
        if store is not None:
            store.engine.dispose()
        raise


def run(
    model: ModelArg,
    sparsity: Annotated[
        str, typer.Option("--sparsity", "-s", help="Comma-separated targets in (0, 1).")
    ] = "0.5,0.7,0.8,0.9",
    epsilon: Annotated[float, typer.Option("--epsilon", help="Alpha mapping range [1-eps, 1+eps].")] = 0.1,
    estimator: Annotated[str, typer.Option("--estimator", "-e", help="ks | ks_peak | hill.")] = "ks",
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="Comma-separated allocation methods (acttail allocate --help lists them); auto and "
            "teal-greedy calibrate on the loaded model.",
        ),
    ] = "uniform,acttail,auto",
    direction: Annotated[
        str, typer.Option("--direction", help="higher_alpha_sparser | lower_alpha_sparser.")
    ] = "higher_alpha_sparser",
    granularity: Annotated[str, typer.Option("--granularity", help="projection | block.")] = "projection",
    tasks: TasksOpt = "",
    limit: LimitOpt = None,
    seqlen: SeqlenOpt = 2048,
    max_tokens: MaxTokensOpt = None,
    mode: ModeOpt = "topk",
    scoring: ScoringOpt = "magnitude",
    calibration_tokens: CalibOpt = 16_384,
    no_dense: NoDenseOpt = False,
    json_path: JsonOpt = None,
    quiet: QuietOpt = False,
    no_store: NoStoreOpt = False,
    db: DbOpt = None,
) -> None:
    """Alphas once; uniform, the paper's rule (acttail) and auto (the default) per target; every variant evaluated.

    Results go to the table, the ``--json`` file and the results database (``--db``; team
    ``default``), where ``acttail serve`` and the API read them; ``--no-store`` skips the database.
    """
    from acttail.pipeline import run_pipeline

    result, store = _evaluate(
        lambda config, **kw: run_pipeline(model, config, **kw),
        targets=parse_sparsities(sparsity),
        methods=tuple(m.strip() for m in method.split(",") if m.strip()),
        epsilon=epsilon,
        direction=direction,
        granularity=granularity,
        estimator=estimator,
        mode=mode,
        scoring=scoring,
        seqlen=seqlen,
        max_tokens=max_tokens,
        tasks=tasks,
        limit=limit,
        no_dense=no_dense,
        calibration_tokens=calibration_tokens,
        quiet=quiet,
        command="run",
        db=db,
        no_store=no_store,
    )
    _finish(result, json_path, store)


def evaluate(
    model: ModelArg,
    allocation: Annotated[Path, typer.Option("--allocation", "-a", help="Allocation JSON (from `acttail allocate`).")],
    tasks: TasksOpt = "",
    limit: LimitOpt = None,
    seqlen: SeqlenOpt = 2048,
    max_tokens: MaxTokensOpt = None,
    mode: ModeOpt = "topk",
    scoring: ScoringOpt = "magnitude",
    calibration_tokens: CalibOpt = 16_384,
    no_dense: NoDenseOpt = False,
    json_path: JsonOpt = None,
    quiet: QuietOpt = False,
    no_store: NoStoreOpt = False,
    db: DbOpt = None,
) -> None:
    """Evaluate one allocation on MODEL (refused if it was built for another model).

    Recorded in the results database like ``run`` (``--db``, ``--no-store``).
    """
    from acttail.allocate import Allocation
    from acttail.pipeline import evaluate_allocation

    alloc = Allocation.load(allocation)
    result, store = _evaluate(
        lambda config, **kw: evaluate_allocation(model, alloc, config, **kw),
        targets=(alloc.target,),
        estimator=alloc.estimator or "ks",
        mode=mode,
        scoring=scoring,
        seqlen=seqlen,
        max_tokens=max_tokens,
        tasks=tasks,
        limit=limit,
        no_dense=no_dense,
        calibration_tokens=calibration_tokens,
        quiet=quiet,
        command="evaluate",
        db=db,
        no_store=no_store,
    )
    _finish(result, json_path, store)


def register(app: typer.Typer) -> None:
    """Attach ``run`` and ``evaluate`` to the main app."""
    app.command("run")(run)
    app.command("evaluate")(evaluate)
