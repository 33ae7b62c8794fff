"""``acttail run`` (the paper's sweep) and ``acttail evaluate`` (one allocation, or the dense model).

Both call ``acttail.pipeline.run_pipeline``, the path service jobs take too; this module only maps
options onto a ``PipelineConfig`` (with the job request's own specs and defaults), draws progress,
prints the table and writes the JSON file. Results are recorded in the results database as they
come (``acttail.cli.results_store``), through the sink jobs use, and stored alphas are reused.
Bad option values raise ActTailError, which ``acttail.cli.main`` prints as one line (exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from acttail.cli.paths import output_file
from acttail.cli.placement_options import DeviceMapOpt, DeviceOpt, DtypeOpt, MaxMemoryOpt, placement_from
from acttail.cli.progress import progress_reporter
from acttail.cli.results_store import DbOpt, NoStoreOpt, ResultsStore, database_error, open_results_store
from acttail.cli.summary import print_allocations, print_alphas
from acttail.errors import ActTailError
from acttail.registry import (
    DEFAULT_CALIBRATION_SEQLEN,
    DEFAULT_CALIBRATION_TOKENS,
    DEFAULT_ESTIMATOR,
    DEFAULT_MODE,
    DEFAULT_RUN_METHODS,
    DEFAULT_SCORING,
    ESTIMATORS,
    SCORINGS,
    SPARSITY_MODES,
    ZEROSHOT_TASKS,
    check_target,
    check_tasks,
)
from acttail.store.requests import PerplexitySpec, SpeedSpec, ZeroShotSpec

if TYPE_CHECKING:
    from acttail.pipeline import PipelineConfig, PipelineResult

console = Console()

ModelArg = Annotated[str, typer.Argument(help="Bundled alias (smollm2-135m, gemma3-270m), local path, or hub ID.")]
_PPL, _SPEED = PerplexitySpec(), SpeedSpec()
TasksOpt = Annotated[
    str, typer.Option("--tasks", help="Comma-separated zero-shot tasks (e.g. arc_easy,piqa) or 'all'; empty: none.")
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="First N items of each zero-shot task [all].")]
SeqlenOpt = Annotated[int, typer.Option("--seqlen", help="Perplexity window length (tokens).")]
MaxTokensOpt = Annotated[
    int | None, typer.Option("--max-tokens", help="Cap WikiText-2 test tokens (quick runs); default: full split.")
]
NoPerplexityOpt = Annotated[bool, typer.Option("--no-perplexity", help="Skip WikiText-2 perplexity.")]
SpeedOpt = Annotated[bool, typer.Option("--speed", help="Also measure batch-1 decode tokens/s, dense vs sparse.")]
SpeedTokensOpt = Annotated[int, typer.Option("--speed-tokens", help="--speed: tokens decoded per repeat.")]
SpeedRepeatsOpt = Annotated[int, typer.Option("--speed-repeats", help="--speed: interleaved repeats.")]
ModeOpt = Annotated[
    str, typer.Option("--mode", help=f"{' | '.join(SPARSITY_MODES)}: exact per token, or TEAL's calibrated thresholds.")
]
ScoringOpt = Annotated[
    str,
    typer.Option(
        "--scoring", help=f"Which entries survive: {' | '.join(SCORINGS)} (|x|, or |x| times the weight's column norm)."
    ),
]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Write the full result document here.", callback=output_file)
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
NoDenseOpt = Annotated[bool, typer.Option("--no-dense", help="Skip the dense baseline.")]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit).")]
CalibOpt = Annotated[
    int,
    typer.Option(
        "--calibration-tokens",
        help="WikiText-2 validation tokens: threshold mode, and what auto/teal-greedy choose on.",
    ),
]
CalibSeqlenOpt = Annotated[
    int, typer.Option("--calibration-seqlen", help="auto, teal-greedy: calibration window length.")
]


def parse_sparsities(text: str) -> tuple[float, ...]:
    """``"0.5,0.7"`` -> (0.5, 0.7); every value within the one target range (``registry.check_target``)."""
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise ActTailError(f"--sparsity: {part!r} is not a number (use e.g. 0.5,0.7,0.8)") from None
        values.append(check_target(value, "--sparsity"))
    return tuple(values)


def parse_tasks(text: str) -> tuple[str, ...]:
    if not text.strip():
        return ()
    if text.strip() == "all":
        return ZEROSHOT_TASKS
    return check_tasks(tuple(t.strip() for t in text.split(",") if t.strip()))


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_result(result: PipelineResult) -> None:
    """The paper-style table: one row per (target, method)."""
    ppl = result.config.perplexity
    windows = result.variants[0].perplexity.windows if result.variants and result.variants[0].perplexity else 0
    protocol = "no perplexity" if ppl is None else f"WikiText-2 ppl (seqlen {ppl.seqlen}, {windows} windows)"
    title = f"{result.model.get('model_id')} — {protocol}, mode {result.config.mode}, scoring {result.config.scoring}"
    table = Table(title=title)
    for column in ("target", "method", "perplexity", "vs uniform", "mean acc", "realised", "speed-up"):
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
            _fmt(None if v.speed is None else v.speed.get("speedup"), ".2f"),
        )
    console.print(table)
    console.print("vs uniform: perplexity reduction against uniform at the same target (positive = better).")


def _finish(result: PipelineResult, json_path: Path | None, store: ResultsStore | None) -> None:
    """Alphas, allocations and the perplexity table, the JSON file, where the results database has them
    and how to open it in the dashboard."""
    if result.alphas:
        print_alphas(console, result.alphas, result.config.estimator)
    print_allocations(console, result)
    print_result(result)
    if json_path is not None:
        json_path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
        console.print(f"wrote {json_path}")
    if store is not None:
        sink = store.sink
        console.print(
            f"recorded in {store.shown_url} (team 'default'): {len(sink.allocation_ids)} allocations, "
            f"{len(set(sink.benchmark_ids))} benchmark rows",
            highlight=False,
            soft_wrap=True,
        )
        console.print(store.browse_hint, highlight=False, soft_wrap=True)


def build_config(
    *,
    targets: tuple[float, ...],
    methods: tuple[str, ...] = (),
    knobs: dict[str, object] | None = None,
    estimator: str = DEFAULT_ESTIMATOR,
    mode: str,
    scoring: str = DEFAULT_SCORING,
    seqlen: int,
    max_tokens: int | None,
    no_perplexity: bool,
    tasks: str,
    limit: int | None,
    speed: bool,
    speed_tokens: int,
    speed_repeats: int,
    no_dense: bool,
    calibration_tokens: int,
    calibration_seqlen: int = DEFAULT_CALIBRATION_SEQLEN,
    device: str,
    dtype: str,
    device_map: str | None,
    max_memory: str | None,
) -> PipelineConfig:
    """The options as the pipeline config a job request with the same values maps to (same specs, limits)."""
    import pydantic

    from acttail.pipeline import PipelineConfig

    names = parse_tasks(tasks)
    try:
        perplexity = None if no_perplexity else PerplexitySpec(seqlen=seqlen, max_tokens=max_tokens)
        zeroshot = ZeroShotSpec(tasks=list(names), limit=limit) if names else None
        speed_spec = SpeedSpec(new_tokens=speed_tokens, repeats=speed_repeats) if speed else None
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        message = str(error["msg"]).removeprefix("Value error, ")
        if error.get("loc"):
            message = f"--{str(error['loc'][-1]).replace('_', '-')}: {message}"
        raise ActTailError(message) from None
    config = PipelineConfig(
        targets=targets, methods=methods, knobs=dict(knobs or {}), estimator=estimator, mode=mode, scoring=scoring,
        perplexity=perplexity, zeroshot=zeroshot, speed=speed_spec, include_dense=not no_dense,
        calibration_tokens=calibration_tokens, calibration_seqlen=calibration_seqlen,
        placement=placement_from(device, dtype, device_map, max_memory),
    )  # fmt: skip
    config.validate()
    return config


def _execute(
    model: str, config: PipelineConfig, *, revision: str | None, allocations: list[Any] | None, quiet: bool,
    command: str, db: str | None, no_store: bool, json_path: Path | None,
) -> None:  # fmt: skip
    """Open the results store (a bad ``--db`` fails before any model is loaded), run under the bar, finish."""
    from sqlalchemy.exc import SQLAlchemyError

    from acttail.pipeline import run_pipeline

    store = None if no_store else open_results_store(db, command=command)
    try:
        kwargs: dict[str, Any] = {"revision": revision, "allocations": allocations}
        if store is not None:
            kwargs["sink"] = store.sink
        with progress_reporter(console, quiet=quiet) as report:
            result = run_pipeline(model, config, progress=report, **kwargs)
        _finish(result, json_path, store)
    except SQLAlchemyError as exc:
        assert store is not None
        raise database_error(store.shown_url, exc) from None
    finally:
        if store is not None:
            store.engine.dispose()


def _knobs(**given: object) -> dict[str, object]:
    """The method options the user set (``PipelineConfig.validate`` refuses those no method reads)."""
    return {name: value for name, value in given.items() if value is not None}


def run(
    model: ModelArg,
    sparsity: Annotated[
        str, typer.Option("--sparsity", "-s", help="Comma-separated targets in [0, 0.99].")
    ] = "0.5,0.7,0.8,0.9",
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="Comma-separated allocation methods (acttail allocate --help lists them); auto and "
            "teal-greedy calibrate on the loaded model.",
        ),
    ] = ",".join(DEFAULT_RUN_METHODS),
    estimator: Annotated[str, typer.Option("--estimator", "-e", help=" | ".join(ESTIMATORS) + ".")] = DEFAULT_ESTIMATOR,
    epsilon: Annotated[
        float | None, typer.Option("--epsilon", help="ActTail methods: alpha map [1-eps, 1+eps] [0.1].")
    ] = None,
    direction: Annotated[
        str | None, typer.Option("--direction", help="higher_alpha_sparser (default) | lower_alpha_sparser.")
    ] = None,
    granularity: Annotated[str | None, typer.Option("--granularity", help="projection (default) | block.")] = None,
    s_min: Annotated[float | None, typer.Option("--s-min", help="Lowest per-projection sparsity [0].")] = None,
    s_max: Annotated[float | None, typer.Option("--s-max", help="Highest per-projection sparsity [0.99].")] = None,
    min_gain: Annotated[
        float | None, typer.Option("--min-gain", help="auto: keep uniform unless a candidate wins by this [0.01].")
    ] = None,
    greedy_tokens: Annotated[int | None, typer.Option("--greedy-tokens", help="teal-greedy: search tokens.")] = None,
    greedy_step: Annotated[float | None, typer.Option("--greedy-step", help="teal-greedy: sparsity step.")] = None,
    calibration_tokens: CalibOpt = DEFAULT_CALIBRATION_TOKENS,
    calibration_seqlen: CalibSeqlenOpt = DEFAULT_CALIBRATION_SEQLEN,
    mode: ModeOpt = DEFAULT_MODE,
    scoring: ScoringOpt = DEFAULT_SCORING,
    seqlen: SeqlenOpt = _PPL.seqlen,
    max_tokens: MaxTokensOpt = _PPL.max_tokens,
    no_perplexity: NoPerplexityOpt = False,
    tasks: TasksOpt = "",
    limit: LimitOpt = None,
    speed: SpeedOpt = False,
    speed_tokens: SpeedTokensOpt = _SPEED.new_tokens,
    speed_repeats: SpeedRepeatsOpt = _SPEED.repeats,
    no_dense: NoDenseOpt = False,
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    json_path: JsonOpt = None,
    quiet: QuietOpt = False,
    no_store: NoStoreOpt = False,
    db: DbOpt = None,
) -> None:
    """Alphas once; uniform, the paper's rule (acttail) and auto (the default) per target; every variant evaluated.

    Results go to the table, the ``--json`` file and the results database (``--db``; team
    ``default``), where ``acttail serve`` and the API read them; alphas already stored there are
    reused. ``--no-store`` skips the database. A service job with the same values stores the same rows.
    """
    config = build_config(
        targets=parse_sparsities(sparsity), methods=tuple(m.strip() for m in method.split(",") if m.strip()),
        knobs=_knobs(epsilon=epsilon, direction=direction, granularity=granularity, s_min=s_min, s_max=s_max,
                     min_gain=min_gain, greedy_tokens=greedy_tokens, step=greedy_step),
        estimator=estimator, mode=mode, scoring=scoring, seqlen=seqlen, max_tokens=max_tokens,
        no_perplexity=no_perplexity,
        tasks=tasks, limit=limit, speed=speed, speed_tokens=speed_tokens, speed_repeats=speed_repeats,
        no_dense=no_dense, calibration_tokens=calibration_tokens, calibration_seqlen=calibration_seqlen,
        device=device, dtype=dtype, device_map=device_map, max_memory=max_memory,
    )  # fmt: skip
    _execute(model, config, revision=revision, allocations=None, quiet=quiet, command="run", db=db,
             no_store=no_store, json_path=json_path)  # fmt: skip


def evaluate(
    model: ModelArg,
    allocation: Annotated[
        Path | None,
        typer.Option("--allocation", "-a", help="Allocation JSON (from `acttail allocate`); none: the dense model."),
    ] = None,
    tasks: TasksOpt = "",
    limit: LimitOpt = None,
    seqlen: SeqlenOpt = _PPL.seqlen,
    max_tokens: MaxTokensOpt = _PPL.max_tokens,
    no_perplexity: NoPerplexityOpt = False,
    speed: SpeedOpt = False,
    speed_tokens: SpeedTokensOpt = _SPEED.new_tokens,
    speed_repeats: SpeedRepeatsOpt = _SPEED.repeats,
    mode: ModeOpt = DEFAULT_MODE,
    scoring: ScoringOpt = DEFAULT_SCORING,
    calibration_tokens: CalibOpt = DEFAULT_CALIBRATION_TOKENS,
    no_dense: NoDenseOpt = False,
    revision: RevisionOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    json_path: JsonOpt = None,
    quiet: QuietOpt = False,
    no_store: NoStoreOpt = False,
    db: DbOpt = None,
) -> None:
    """Evaluate one allocation on MODEL (refused if it was built for another model), or the dense model alone.

    Recorded in the results database like ``run`` (``--db``, ``--no-store``).
    """
    from acttail.allocate import Allocation

    alloc = None if allocation is None else Allocation.load(allocation)
    if alloc is None and no_dense:
        raise ActTailError("--no-dense without --allocation leaves nothing to evaluate")
    config = build_config(
        targets=() if alloc is None else (alloc.target,), estimator=(alloc and alloc.estimator) or DEFAULT_ESTIMATOR,
        mode=mode, scoring=scoring, seqlen=seqlen, max_tokens=max_tokens, no_perplexity=no_perplexity, tasks=tasks,
        limit=limit,
        speed=speed, speed_tokens=speed_tokens, speed_repeats=speed_repeats, no_dense=no_dense,
        calibration_tokens=calibration_tokens, device=device, dtype=dtype, device_map=device_map,
        max_memory=max_memory,
    )  # fmt: skip
    _execute(model, config, revision=revision, allocations=[] if alloc is None else [alloc], quiet=quiet,
             command="evaluate", db=db, no_store=no_store, json_path=json_path)  # fmt: skip


def register(app: typer.Typer) -> None:
    """Attach ``run`` and ``evaluate`` to the main app."""
    app.command("run")(run)
    app.command("evaluate")(evaluate)
