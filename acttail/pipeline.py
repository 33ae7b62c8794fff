"""The one path from a model ID to stored results: resolve → alphas → allocations → variants → results.

``acttail run``, ``acttail evaluate`` and every service job (``workers.runner``: the Celery task and
the embedded executor) call ``run_pipeline``; only the ``ResultSink`` and the progress callback
differ. The stages, with the share of the run each reports in its ``progress(stage, fraction)``::

    stage         fraction    what
    resolve       0.00-0.02   acttail.models.resolve_model(model_id) → describe() → sink.model
    esd           0.02-0.40   sink.alphas: the stored ESD run of (fingerprint, estimator), else computed
                              here (about 20 reports) and stored with every eigenvalue
    allocate      0.40-0.45   acttail.methods.build_allocations(methods, targets) → sink.allocations
      (auto, teal-greedy: 0.40-0.75: "allocate: loading model", then "calibrating: ..." per greedy
      block and scored candidate, on WikiText-2 validation text; one greedy trace for all targets)
    benchmark     ..-0.98     dense + every allocation: perplexity, zero-shot, decode speed (what the
                              config asks for) → sink.variant after each; the loaded model is reused

The callback may raise (the workers raise ``JobCancelled`` from it): the run stops at that report.
No evaluation and no calibrated method means the model is never loaded. Every number a run stores
goes through ``acttail.store.pipeline_results`` whichever door it came through, so a CLI run and a
job that measured the same thing write the same rows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from acttail.errors import ActTailError
from acttail.models.placement import Placement
from acttail.registry import (
    DEFAULT_CALIBRATION_SEQLEN,
    DEFAULT_CALIBRATION_TOKENS,
    DEFAULT_ESTIMATOR,
    DEFAULT_MODE,
    DEFAULT_RUN_METHODS,
    DEFAULT_SCORING,
    ESTIMATORS,
    METHODS,
    SCORINGS,
    SPARSITY_MODES,
    check_target,
    method_spec,
)
from acttail.store.requests import PerplexitySpec, SpeedSpec, ZeroShotSpec, check_knob

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from acttail.allocate import Allocation
    from acttail.esd import ESDReport
    from acttail.evaluate.perplexity import PerplexityResult
    from acttail.methods import AlphaReport
    from acttail.models.base import ModelDescription, ModelSource
    from acttail.models.placement import ResolvedPlacement

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
Loaded = tuple["PreTrainedModel", "PreTrainedTokenizerBase"]
RESULT_FORMAT = "acttail.pipeline_result"
RESULT_VERSION = 2

RESOLVE_END = 0.02
ESD_SPAN = (RESOLVE_END, 0.40)
ALLOCATE_SPAN = (0.40, 0.45)
CALIBRATED_ALLOCATE_SPAN = (0.40, 0.75)  # auto / teal-greedy: model load and calibration passes
BENCHMARK_END = 0.98


@dataclass(frozen=True)
class PipelineConfig:
    """What to build and evaluate, under which protocol; the CLI and job requests both map onto it.

    ``knobs`` are the allocation methods' knobs the user set (``acttail.registry.METHODS``); each
    method receives the ones it reads. ``calibration_tokens`` of WikiText-2 validation are what
    auto and teal-greedy choose on (in windows of ``calibration_seqlen``) and what threshold mode
    calibrates on (in windows of the perplexity ``seqlen``: o_proj inputs depend on the position).
    """

    targets: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
    methods: tuple[str, ...] = DEFAULT_RUN_METHODS
    knobs: Mapping[str, Any] = field(default_factory=dict)
    estimator: str = DEFAULT_ESTIMATOR
    mode: str = DEFAULT_MODE
    # Which entries survive (acttail.scoring): |x| (ActTail, TEAL) or WINA's |x| * ||W[:, j]||.
    scoring: str = DEFAULT_SCORING
    perplexity: PerplexitySpec | None = field(default_factory=PerplexitySpec)
    zeroshot: ZeroShotSpec | None = None
    speed: SpeedSpec | None = None
    include_dense: bool = True
    calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS
    calibration_seqlen: int = DEFAULT_CALIBRATION_SEQLEN
    placement: Placement = field(default_factory=Placement)

    @property
    def calibrated_methods(self) -> tuple[str, ...]:
        """The methods that run the model on calibration text to build their allocation."""
        return tuple(m for m in self.methods if m in METHODS and METHODS[m].needs_model)

    @property
    def evaluates(self) -> bool:
        return any(spec is not None for spec in (self.perplexity, self.zeroshot, self.speed))

    @property
    def threshold_seqlen(self) -> int:
        return self.perplexity.seqlen if self.perplexity is not None else self.calibration_seqlen

    def validate(self) -> None:
        """Every problem as one readable ActTailError, before any model is loaded."""
        for target in self.targets:
            check_target(target)
        for method in self.methods:
            method_spec(method)
        accepted = frozenset().union(*(METHODS[m].accepted for m in self.methods))
        unknown = sorted(set(self.knobs) - accepted)
        if unknown:
            raise ActTailError(f"{', '.join(unknown)} does not apply to method(s) {', '.join(self.methods) or 'none'}")
        for knob, value in self.knobs.items():
            check_knob(knob, value)
        if self.estimator not in ESTIMATORS:
            raise ActTailError(f"unknown estimator {self.estimator!r}; valid: {', '.join(ESTIMATORS)}")
        if self.mode not in SPARSITY_MODES:
            raise ActTailError(f"unknown mode {self.mode!r}; valid: {', '.join(SPARSITY_MODES)}")
        if self.scoring not in SCORINGS:
            raise ActTailError(f"unknown scoring {self.scoring!r}; valid: {', '.join(SCORINGS)}")
        if self.calibrated_methods and self.calibration_tokens < self.calibration_seqlen:
            raise ActTailError(
                f"calibration_tokens ({self.calibration_tokens}) must be at least calibration_seqlen "
                f"({self.calibration_seqlen}) for {', '.join(self.calibrated_methods)}"
            )
        self.placement.validate()

    def to_dict(self) -> dict[str, Any]:
        """The protocol as stored in the result document."""
        wikitext = {"dataset": "wikitext-2-raw-v1", "split": "validation", "tokens": self.calibration_tokens}
        perplexity = None
        if self.perplexity is not None:
            perplexity = {"dataset": "wikitext-2-raw-v1", "split": "test", **self.perplexity.model_dump(),
                          "protocol": "rows joined with \\n\\n, tokenised once, non-overlapping windows"}  # fmt: skip
        calibration = None  # threshold mode: what the thresholds were measured on
        if self.mode == "threshold":
            calibration = {**wikitext, "seqlen": self.threshold_seqlen, "windows": "spread over the split",
                           "thresholds": "sequential"}  # fmt: skip
        method_calibration = None  # the text auto / teal-greedy chose on (their documents say more)
        if self.calibrated_methods:
            method_calibration = {
                **wikitext,
                "seqlen": self.calibration_seqlen,
                "methods": list(self.calibrated_methods),
            }
        device_map = self.placement.device_map
        return {
            "targets": list(self.targets),
            "methods": list(self.methods),
            "params": {k: str(v) if hasattr(v, "value") else v for k, v in self.knobs.items() if k != "trace"},
            "estimator": self.estimator,
            "mode": self.mode,
            "scoring": self.scoring,
            "perplexity": perplexity,
            "zeroshot": None if self.zeroshot is None else self.zeroshot.model_dump(),
            "speed": None if self.speed is None else self.speed.model_dump(),
            "calibration": calibration,
            "method_calibration": method_calibration,
            "placement": {
                "device": self.placement.device,
                "dtype": self.placement.dtype,
                "device_map": device_map if device_map is None or isinstance(device_map, str) else dict(device_map),
                "max_memory": None if self.placement.max_memory is None else dict(self.placement.max_memory),
            },
        }


@dataclass(frozen=True)
class VariantResult:
    """One evaluated model variant: dense, or one allocation applied.

    ``ppl_gain_vs_uniform_pct`` = 100 * (ppl_uniform - ppl) / ppl_uniform at the same target:
    positive means lower perplexity than uniform (the paper's "x% lower perplexity").
    """

    label: str
    method: str  # "dense" | allocation method
    target: float
    perplexity: PerplexityResult | None
    zeroshot: dict[str, Any] | None
    mean_accuracy: float | None
    realised_sparsity: float | None
    realised_per_projection: dict[str, float] | None
    allocation: Allocation | None
    elapsed_s: float
    speed: dict[str, Any] | None = None
    ppl_gain_vs_uniform_pct: float | None = None

    @property
    def ppl(self) -> float | None:
        return None if self.perplexity is None else self.perplexity.ppl

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "method": self.method,
            "target": self.target,
            "ppl": self.ppl,
            "ppl_gain_vs_uniform_pct": self.ppl_gain_vs_uniform_pct,
            "mean_accuracy": self.mean_accuracy,
            "realised_sparsity": self.realised_sparsity,
            "perplexity": None if self.perplexity is None else self.perplexity.to_dict(),
            "zeroshot": self.zeroshot,
            "speed": self.speed,
            "realised_per_projection": self.realised_per_projection,
            "allocation": None if self.allocation is None else self.allocation.to_dict(),
            "elapsed_s": self.elapsed_s,
        }


@dataclass(frozen=True)
class PipelineResult:
    """Everything one run measured, with its provenance; ``to_dict()`` is the CLI's JSON document."""

    model: dict[str, Any]  # ModelDescription.as_dict()
    config: PipelineConfig
    variants: tuple[VariantResult, ...]
    alphas: dict[str, float] | None
    versions: dict[str, Any]  # acttail.environment.environment(): versions, device, dtype
    elapsed_s: float
    allocations: tuple[Allocation, ...] = ()
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def variant(self, method: str, target: float | None = None) -> VariantResult:
        for v in self.variants:
            if v.method == method and (target is None or math.isclose(v.target, target)):
                return v
        raise KeyError((method, target))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RESULT_FORMAT,
            "version": RESULT_VERSION,
            "created_at": self.created_at,
            "model": dict(self.model),
            "protocol": self.config.to_dict(),
            "versions": dict(self.versions),
            "elapsed_s": self.elapsed_s,
            "alphas": self.alphas,
            "variants": [v.to_dict() for v in self.variants],
        }


class ResultSink(Protocol):
    """Where a run's results go: the results database (``acttail.store.pipeline_results.StoreSink``)
    or nowhere (``NullSink``). Each call happens as soon as its result exists."""

    def model(self, description: ModelDescription) -> None: ...

    def alphas(
        self, description: ModelDescription, estimator: str, compute: Callable[[], tuple[ESDReport, dict[str, Any]]],
        environment: Mapping[str, Any],
    ) -> AlphaReport: ...  # fmt: skip

    def allocations(self, allocations: Sequence[Allocation]) -> list[int | None]: ...

    def variant(
        self, variant: VariantResult, allocation_id: int | None, protocol: Mapping[str, Any],
        environment: Mapping[str, Any],
    ) -> None: ...  # fmt: skip


class NullSink:
    """Stores nothing: the alphas are computed every time (``acttail run --no-store``, the library)."""

    def model(self, description: ModelDescription) -> None:
        pass

    def alphas(
        self, description: ModelDescription, estimator: str, compute: Callable[[], tuple[ESDReport, dict[str, Any]]],
        environment: Mapping[str, Any],
    ) -> AlphaReport:  # fmt: skip
        return compute()[0]

    def allocations(self, allocations: Sequence[Allocation]) -> list[int | None]:
        return [None] * len(allocations)

    def variant(
        self, variant: VariantResult, allocation_id: int | None, protocol: Mapping[str, Any],
        environment: Mapping[str, Any],
    ) -> None:  # fmt: skip
        pass


def load_model(source: ModelSource, placement: ResolvedPlacement) -> Loaded:
    """The one place a run loads its causal LM: in the placement's dtype, on its device(s)."""
    return source.load_causal_lm(placement)


def run_pipeline(
    model: str | ModelSource,
    config: PipelineConfig | None = None,
    *,
    revision: str | None = None,
    model_roots: Sequence[Any] | None = None,
    allocations: Sequence[Allocation] | None = None,
    sink: ResultSink | None = None,
    loaded: Loaded | None = None,
    progress: Progress | None = None,
    show_progress: bool = False,
) -> PipelineResult:
    """Run the stages of the module docstring; returns what was measured.

    ``allocations`` given (``acttail evaluate``): they are checked against the model and evaluated
    instead of building ``config.methods`` x ``config.targets`` from alphas. ``loaded`` injects an
    already loaded ``(model, tokenizer)`` of the same weights.
    """
    config = config or PipelineConfig()
    config.validate()
    sink = sink or NullSink()
    report = progress or (lambda stage, fraction: None)
    began = time.perf_counter()
    report("resolve", 0.0)
    source = _resolve(model, revision, model_roots)
    description = source.describe()
    placement = config.placement.resolve()
    from acttail.environment import environment

    env = environment(placement)
    sink.model(description)
    log.info("model %s (%s, fingerprint %s…) on %s/%s", description.model_id, description.architecture,
             description.fingerprint[:12], placement.device, placement.dtype)  # fmt: skip
    alphas: dict[str, float] | None = None
    if allocations is None:
        report("esd", ESD_SPAN[0])
        alpha_report = sink.alphas(
            description, config.estimator,
            lambda: _compute_esd(source, description, config.estimator, placement.device, report, show_progress), env,
        )  # fmt: skip
        alphas = alpha_report.alphas()
        built, loaded, end = _allocate(source, alpha_report, config, placement, loaded, report)
    else:
        names = [p.name for p in source.projections()]
        for allocation in allocations:
            allocation.check_matches(description.fingerprint, names)
        built, end = list(allocations), ALLOCATE_SPAN[1]
    ids = sink.allocations(built)
    variants: tuple[VariantResult, ...] = ()
    if config.evaluates:
        if loaded is None:
            report("benchmark: loading model", end)
            loaded = load_model(source, placement)
        _check_loaded(loaded[0], description.fingerprint, built)
        pairs: list[tuple[int | None, Allocation | None]] = [(None, None)] if config.include_dense else []
        pairs += list(zip(ids, built, strict=True))
        variants = evaluate_variants(loaded, pairs, config, sink, env, report, start=end, show_progress=show_progress)
    report("benchmark", BENCHMARK_END)
    report("done", 1.0)
    return PipelineResult(
        model=description.as_dict(), config=config, variants=variants, alphas=alphas, versions=env,
        elapsed_s=time.perf_counter() - began, allocations=tuple(built),
    )  # fmt: skip


def evaluate_allocation(
    model: str | ModelSource, allocation: Allocation | None, config: PipelineConfig | None = None, **kwargs: Any
) -> PipelineResult:
    """Evaluate one allocation (and the dense model unless ``include_dense=False``); ``None``: dense only.

    The allocation must have been built for this model: same fingerprint and projection names
    (``Allocation.check_matches``), checked before the evaluation starts.
    """
    targets = () if allocation is None else (allocation.target,)
    config = replace(config or PipelineConfig(), targets=targets, methods=(), knobs={})
    if allocation is None:
        config = replace(config, include_dense=True)
    return run_pipeline(model, config, allocations=[] if allocation is None else [allocation], **kwargs)


def _resolve(model: str | ModelSource, revision: str | None, model_roots: Sequence[Any] | None) -> ModelSource:
    if isinstance(model, str):
        from acttail.models import resolve_model  # the first import of torch and transformers: seconds

        return resolve_model(model, revision, model_roots=model_roots)
    return model


def _compute_esd(
    source: ModelSource, description: ModelDescription, estimator: str, device: str, report: Progress, bar: bool
) -> tuple[ESDReport, dict[str, Any]]:
    """The streaming ESD analysis (one projection in memory at a time) and every eigenvalue (float32)."""
    from collections.abc import Iterator

    import numpy as np

    from acttail.esd import analyze_weights

    total = len(source.projections())
    start, stop = ESD_SPAN
    spectra: dict[str, Any] = {}  # filled from the analysis threads, one key each

    def keep(result: Any, evals: Any) -> None:
        spectra[result.name] = np.asarray(evals, dtype=np.float32)

    def weights() -> Iterator[Any]:
        for i, item in enumerate(source.iter_projection_weights()):
            if i and i % max(1, total // 20) == 0:  # about 20 reports, each a cancellation check
                report("esd", start + (stop - start) * i / total)
            yield item

    esd = analyze_weights(
        weights(), estimator, device=device, progress=bar, total=total, model=description.as_dict(), on_spectrum=keep
    )
    report("esd", stop)
    return esd, spectra


def _allocate(
    source: ModelSource,
    alphas: AlphaReport,
    config: PipelineConfig,
    placement: ResolvedPlacement,
    loaded: Loaded | None,
    report: Progress,
) -> tuple[list[Allocation], Loaded | None, float]:
    """One allocation per (target, method); the model is loaded only for auto / teal-greedy."""
    calibrated = bool(config.calibrated_methods)
    start, stop = CALIBRATED_ALLOCATE_SPAN if calibrated else ALLOCATE_SPAN
    report("allocate", start)
    if calibrated:
        report("allocate: loading model", start)
        loaded = loaded or load_model(source, placement)

    def calibrating(stage: str, fraction: float) -> None:
        report(f"calibrating: {stage}", start + (stop - start) * fraction)

    lm, tokenizer = loaded if loaded is not None else (None, None)
    built = build_allocations(alphas, config, lm, tokenizer, progress=calibrating if calibrated else None)
    for allocation in built:
        if "choice" in allocation.params:
            log.info("auto at %g chose %s", allocation.target, allocation.params["choice"]["label"])
    report("allocate", stop)
    return built, loaded, stop


def build_allocations(
    alphas: AlphaReport,
    config: PipelineConfig,
    model: Any = None,
    tokenizer: Any = None,
    progress: Progress | None = None,
) -> list[Allocation]:
    """One allocation per (target, method) of ``config``, target-major; auto / teal-greedy need the model.

    Each method gets the ``config.knobs`` it reads; the calibrated ones choose on
    ``calibration_tokens`` of WikiText-2 validation in windows of ``calibration_seqlen`` (one
    calibration set and one greedy trace shared by every target).
    """
    from acttail.methods import build_allocations as build

    knobs = dict(config.knobs)
    if config.calibrated_methods:
        knobs.update(calibration_tokens=config.calibration_tokens, calibration_seqlen=config.calibration_seqlen)
    return build(
        config.methods, report=alphas, targets=config.targets, model=model, tokenizer=tokenizer, progress=progress,
        **knobs,
    )  # fmt: skip


def _check_loaded(model: Any, fingerprint: str, allocations: Sequence[Allocation]) -> None:
    """The loaded model is the analysed one (its projection names match every allocation)."""
    from acttail.models.architectures import find_projections

    names = [ref.name for ref, _ in find_projections(model)]
    for allocation in allocations:
        allocation.check_matches(fingerprint, names)


#: Calibrated thresholds by what determines them (``_thresholds_key``), for ``evaluate_variants``.
ThresholdsCache = dict[tuple[Any, ...], dict[str, float]]


def _thresholds_key(alloc: Allocation, config: PipelineConfig) -> tuple[Any, ...]:
    """Everything a calibration depends on besides the model: the per-projection budgets, the
    scoring rule and the calibration windows."""
    budgets = tuple(sorted(alloc.sparsities.items()))
    return budgets, str(config.scoring), config.calibration_tokens, config.threshold_seqlen


def evaluate_variants(
    loaded: Loaded,
    variants: Sequence[tuple[int | None, Allocation | None]],
    config: PipelineConfig,
    sink: ResultSink | None = None,
    environment: Mapping[str, Any] | None = None,
    report: Progress | None = None,
    *,
    start: float = 0.0,
    show_progress: bool = False,
    thresholds_cache: ThresholdsCache | None = None,
) -> tuple[VariantResult, ...]:
    """Evaluate each (row id, allocation) (``None`` = dense) on one loaded model, handing each to the sink.

    Sparsity is applied for the perplexity and zero-shot passes and removed after them; decode
    speed is measured dense vs sparse kernels on the dense model (``acttail.evaluate.speed``).
    ``thresholds_cache``: a caller that evaluates the same allocation in several calls on the same
    model (a zero-shot cell scored one task per call) passes one dict to all of them, so the
    thresholds are calibrated once; calibration is deterministic, so a hit equals a recalibration.
    """
    from acttail.evaluate.perplexity import tokenize_split
    from acttail.sparsity import apply_sparsity, calibrate_thresholds

    model, tokenizer = loaded
    sink, environment = sink or NullSink(), environment or {}
    report = report or (lambda stage, fraction: None)
    protocol = config.to_dict()
    test_ids = None if config.perplexity is None else tokenize_split(tokenizer, "test", config.perplexity.max_tokens)
    calibration_ids = tokenize_split(tokenizer, "validation") if config.mode == "threshold" else None
    results: list[VariantResult] = []
    share = (BENCHMARK_END - start) / max(1, len(variants))
    for i, (allocation_id, alloc) in enumerate(variants):
        label = "dense" if alloc is None else f"{alloc.method}@{alloc.target:g}"
        report(f"benchmark: {label}", start + share * i)

        def on_window(done: int, total: int, label: str = label, base: float = start + share * i) -> None:
            weight = 0.5 if config.zeroshot is not None else 1.0  # zero-shot takes the other half
            report(f"benchmark: {label}: perplexity", base + share * weight * done / total)

        began = time.perf_counter()
        thresholds = None
        if alloc is not None and calibration_ids is not None:
            cache = {} if thresholds_cache is None else thresholds_cache
            key = _thresholds_key(alloc, config)
            if key not in cache:
                cache[key] = calibrate_thresholds(
                    model, None, alloc, token_ids=calibration_ids, max_tokens=config.calibration_tokens,
                    seqlen=config.threshold_seqlen, scoring=config.scoring,
                )  # fmt: skip
            thresholds = cache[key]
        handle = (
            None if alloc is None else apply_sparsity(model, alloc, config.mode, thresholds, scoring=config.scoring)
        )
        try:
            ppl = zeroshot = None
            if config.perplexity is not None:
                from acttail.evaluate.perplexity import evaluate_perplexity

                ppl = evaluate_perplexity(
                    model, token_ids=test_ids, seqlen=config.perplexity.seqlen,
                    max_tokens=config.perplexity.max_tokens, progress=show_progress, on_window=on_window,
                )  # fmt: skip
            # Read before zero-shot runs: the realised sparsity stored beside a perplexity is the test text's.
            realised = None if handle is None or ppl is None else handle.realised_sparsity()
            if config.zeroshot is not None:
                import torch

                report(f"benchmark: {label}: zero-shot", start + share * (i + 0.5))

                from acttail.evaluate.zeroshot import evaluate_zeroshot

                with torch.inference_mode():
                    zeroshot = evaluate_zeroshot(
                        model, tokenizer, list(config.zeroshot.tasks), limit=config.zeroshot.limit,
                        progress=show_progress,
                    )  # fmt: skip
            if realised is None and handle is not None:
                realised = handle.realised_sparsity()
        finally:
            if handle is not None:
                handle.remove()
        speed = None if config.speed is None or alloc is None else _speed(model, tokenizer, alloc, config, thresholds)
        variant = VariantResult(
            label=label, method="dense" if alloc is None else alloc.method, target=0.0 if alloc is None else alloc.target,
            perplexity=ppl, zeroshot=None if zeroshot is None else zeroshot.to_dict(),
            mean_accuracy=None if zeroshot is None else zeroshot.mean_accuracy,
            realised_sparsity=0.0 if realised is None else realised.total,
            realised_per_projection=None if realised is None else realised.per_projection, allocation=alloc,
            elapsed_s=time.perf_counter() - began, speed=speed,
        )  # fmt: skip
        sink.variant(variant, allocation_id, protocol, environment)
        results.append(variant)
        log.info("%s: ppl %s (%.1f s)", label, "-" if variant.ppl is None else f"{variant.ppl:.3f}", variant.elapsed_s)
    return _with_gains(results)


def _speed(
    model: Any, tokenizer: Any, alloc: Allocation, config: PipelineConfig, thresholds: Mapping[str, float] | None
) -> dict[str, Any]:
    """Greedy batch-1 decode tokens/s, dense vs the sparse kernels, interleaved; with its settings."""
    from acttail.evaluate.speed import measure_decode_speed

    assert config.speed is not None
    spec = config.speed
    result = measure_decode_speed(
        model, tokenizer, alloc, new_tokens=spec.new_tokens, warmup_tokens=spec.warmup_tokens, repeats=spec.repeats,
        mode=config.mode, thresholds=thresholds, check_reference=False,
    )  # fmt: skip
    return {
        "settings": {
            "new_tokens": result.new_tokens, "warmup_tokens": spec.warmup_tokens, "repeats": result.repeats,
            "prompt_tokens": result.prompt_tokens, "threads": result.threads, "backend": result.backend,
            "dtype": result.dtype, "mode": result.mode,
        },
        "dense_tokens_per_s": result.dense_tokens_per_s,
        "sparse_tokens_per_s": result.sparse_tokens_per_s,
        "speedup": result.speedup,
    }  # fmt: skip


def _with_gains(results: Sequence[VariantResult]) -> tuple[VariantResult, ...]:
    """Fill ``ppl_gain_vs_uniform_pct`` for every sparse variant whose target has a uniform run."""
    uniform = {round(v.target, 6): v.ppl for v in results if v.method == "uniform" and v.ppl}
    out = []
    for v in results:
        base = uniform.get(round(v.target, 6))
        if v.method != "dense" and base and v.ppl is not None:
            v = replace(v, ppl_gain_vs_uniform_pct=100.0 * (base - v.ppl) / base)
        out.append(v)
    return tuple(out)
