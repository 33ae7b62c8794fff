"""The paper's experiment as one function: alphas -> allocations -> dense and sparse evaluations.

``run_pipeline`` resolves the model, computes the ESD alphas once, loads the causal LM once, builds
one allocation per (method, target) with ``acttail.methods`` (by default uniform, the paper's
ActTail rule and ``auto``, the default method, which chooses on WikiText-2 validation text) and
evaluates the dense model and every sparse variant (sparsity applied and removed in place per
variant): WikiText-2 perplexity, optionally zero-shot accuracy, and the realised sparsity. ``evaluate_allocation`` does the same for one given
allocation. Both return a frozen ``PipelineResult`` whose ``to_dict()`` is the JSON document the
CLI writes and the workers store.

Progress goes to an optional ``progress(stage, fraction)`` callback (fraction of the whole run in
[0, 1]), so the CLI can draw bars and the Celery workers can write the job row.
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from acttail.allocate import Allocation, AllocationParams
from acttail.errors import ActTailError
from acttail.registry import (
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
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from acttail.esd import ESDReport
    from acttail.evaluate.perplexity import PerplexityResult
    from acttail.models.base import ModelSource

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
RESULT_FORMAT = "acttail.pipeline_result"
RESULT_VERSION = 1

# Share of the progress bar taken by the ESD analysis, the model load and (auto, teal-greedy) the
# calibration passes; variants share the rest.
_ESD_SHARE, _LOAD_SHARE, _CALIBRATE_SHARE = 0.10, 0.05, 0.25


@dataclass(frozen=True)
class PipelineConfig:
    """What to evaluate and under which protocol; stored verbatim in the result."""

    targets: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
    methods: tuple[str, ...] = DEFAULT_RUN_METHODS
    params: AllocationParams = field(default_factory=AllocationParams)
    estimator: str = DEFAULT_ESTIMATOR
    mode: str = DEFAULT_MODE
    # Which entries survive (acttail.scoring): |x| (ActTail, TEAL) or WINA's |x| * ||W[:, j]||.
    scoring: str = DEFAULT_SCORING
    seqlen: int = 2048
    max_tokens: int | None = None
    tasks: tuple[str, ...] = ()
    limit: int | None = None
    include_dense: bool = True
    # WikiText-2 validation tokens (windows of ``seqlen``): threshold calibration, and the text
    # auto and teal-greedy choose on.
    calibration_tokens: int = DEFAULT_CALIBRATION_TOKENS

    @property
    def calibrated_methods(self) -> tuple[str, ...]:
        """The methods that run the model on calibration text to build their allocation."""
        return tuple(m for m in self.methods if m in METHODS and METHODS[m].needs_model)

    def validate(self) -> None:
        """Every problem as one readable ActTailError, before any model is loaded."""
        for target in self.targets:
            check_target(target)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ActTailError(f"unknown method {unknown[0]!r}; valid: {', '.join(METHODS)}")
        if self.estimator not in ESTIMATORS:
            raise ActTailError(f"unknown estimator {self.estimator!r}; valid: {', '.join(ESTIMATORS)}")
        if self.mode not in SPARSITY_MODES:
            raise ActTailError(f"unknown mode {self.mode!r}; valid: {', '.join(SPARSITY_MODES)}")
        if self.scoring not in SCORINGS:
            raise ActTailError(f"unknown scoring {self.scoring!r}; valid: {', '.join(SCORINGS)}")
        if not 0.0 <= self.params.epsilon < 1.0:
            raise ActTailError(f"epsilon must be in [0, 1), got {self.params.epsilon}")
        if self.seqlen < 2:
            raise ActTailError(f"seqlen must be at least 2, got {self.seqlen}")
        if self.max_tokens is not None and self.max_tokens < self.seqlen:
            raise ActTailError(f"max_tokens ({self.max_tokens}) must be at least seqlen ({self.seqlen})")
        if self.calibrated_methods and self.calibration_tokens < self.seqlen:
            raise ActTailError(
                f"calibration_tokens ({self.calibration_tokens}) must be at least seqlen ({self.seqlen}) "
                f"for {', '.join(self.calibrated_methods)}"
            )
        if self.limit is not None and self.limit < 1:
            raise ActTailError(f"limit must be positive, got {self.limit}")
        if self.tasks:
            from acttail.evaluate.tasks import get_task

            for task in self.tasks:
                get_task(task)  # UnknownTaskError lists the valid names

    def to_dict(self) -> dict[str, Any]:
        return {
            "targets": list(self.targets),
            "methods": list(self.methods),
            "params": {k: str(v) if hasattr(v, "value") else v for k, v in vars(self.params).items()},
            "estimator": self.estimator,
            "mode": self.mode,
            "scoring": self.scoring,
            "perplexity": {
                "dataset": "wikitext-2-raw-v1",
                "split": "test",
                "seqlen": self.seqlen,
                "max_tokens": self.max_tokens,
                "protocol": "rows joined with \\n\\n, tokenised once, non-overlapping windows",
            },
            "zeroshot": {"tasks": list(self.tasks), "limit": self.limit},
            "calibration": (
                {
                    "dataset": "wikitext-2-raw-v1",
                    "split": "validation",
                    "tokens": self.calibration_tokens,
                    "seqlen": self.seqlen,
                    "windows": "spread over the split",
                    "thresholds": "sequential",
                }
                if self.mode == "threshold"
                else None
            ),
            "method_calibration": (  # the text auto / teal-greedy chose on (their documents say more)
                {
                    "dataset": "wikitext-2-raw-v1",
                    "split": "validation",
                    "tokens": self.calibration_tokens,
                    "seqlen": self.seqlen,
                    "methods": list(self.calibrated_methods),
                }
                if self.calibrated_methods
                else None
            ),
        }


@dataclass(frozen=True)
class VariantResult:
    """One evaluated model variant: dense, or one allocation applied.

    ``ppl_gain_vs_uniform_pct`` = 100 * (ppl_uniform - ppl) / ppl_uniform at the same target:
    positive means lower perplexity than uniform (the paper's "x% lower perplexity").
    """

    label: str
    method: str  # "dense" | "uniform" | "acttail" | allocation method
    target: float
    perplexity: PerplexityResult | None
    zeroshot: dict[str, Any] | None
    mean_accuracy: float | None
    realised_sparsity: float | None
    realised_per_projection: dict[str, float] | None
    allocation: Allocation | None
    elapsed_s: float
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
            "realised_per_projection": self.realised_per_projection,
            "allocation": None if self.allocation is None else self.allocation.to_dict(),
            "elapsed_s": self.elapsed_s,
        }


@dataclass(frozen=True)
class PipelineResult:
    """Everything one ``acttail run`` / ``acttail evaluate`` measured, with its provenance."""

    model: dict[str, Any]  # ModelDescription.as_dict()
    config: PipelineConfig
    variants: tuple[VariantResult, ...]
    alphas: dict[str, float] | None
    versions: dict[str, str]
    elapsed_s: float
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # The ESD report behind ``alphas`` (every statistic per projection), for the results store;
    # not part of the JSON document, which keeps only the alphas.
    esd: ESDReport | None = field(default=None, repr=False, compare=False)
    # Every projection's eigenvalues (float32, min(d_out, d_in) each) when this run computed the
    # ESD, for the results store's ESD plots; None when the alphas were reused.
    spectra: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

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


def library_versions() -> dict[str, str]:
    import torch
    import transformers

    import acttail

    return {
        "acttail": acttail.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "torch_threads": str(torch.get_num_threads()),
    }


class _Reporter:
    """Maps per-stage fractions onto the whole run and forwards them to the callback."""

    def __init__(self, callback: Progress | None, start: float = 0.0) -> None:
        self.callback, self.position = callback, start

    def __call__(self, stage: str, within: float, share: float) -> None:
        if self.callback is not None:
            self.callback(stage, min(1.0, self.position + share * within))

    def advance(self, share: float) -> None:
        self.position += share


def build_allocations(
    report: ESDReport,
    config: PipelineConfig,
    lm: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    progress: Progress | None = None,
) -> list[Allocation]:
    """One allocation per (target, method), in target order, in ``config.methods`` order.

    Each method gets the ``config.params`` knobs it reads; auto and teal-greedy need ``lm`` and
    ``tokenizer`` and calibrate on ``calibration_tokens`` of WikiText-2 validation in windows of
    ``seqlen`` (one set and one greedy trace shared by every target).
    """
    from acttail.methods import build_allocations as build
    from acttail.methods import method_knobs

    accepted = frozenset().union(*(method_knobs(m) for m in config.methods))
    knobs: dict[str, Any] = {k: v for k, v in vars(config.params).items() if k in accepted}
    if config.calibrated_methods:
        knobs.update(calibration_tokens=config.calibration_tokens, calibration_seqlen=config.seqlen)
    return build(
        config.methods, report=report, targets=config.targets, model=lm, tokenizer=tokenizer, progress=progress,
        **knobs,
    )  # fmt: skip


def evaluate_variants(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    allocations: Sequence[Allocation | None],
    config: PipelineConfig,
    *,
    progress: Progress | None = None,
    show_progress: bool = False,
    start: float = 0.0,
) -> tuple[VariantResult, ...]:
    """Evaluate each allocation (``None`` = dense) on one loaded model; sparsity is removed after each."""
    import torch

    from acttail.evaluate.perplexity import evaluate_perplexity, tokenize_split
    from acttail.sparsity import apply_sparsity, calibrate_thresholds

    reporter = _Reporter(progress, start)
    share = (1.0 - start) / max(1, len(allocations))
    test_ids = tokenize_split(tokenizer, "test", config.max_tokens)
    calibration_ids = None
    if config.mode == "threshold":
        # The whole split: calibrate_thresholds spreads its calibration_tokens over it, in windows of seqlen.
        calibration_ids = tokenize_split(tokenizer, "validation")
    results: list[VariantResult] = []
    for alloc in allocations:
        label = "dense" if alloc is None else f"{alloc.method}@{alloc.target:g}"
        began = time.perf_counter()
        thresholds = None
        if alloc is not None and calibration_ids is not None:
            reporter(f"{label}: calibrating", 0.0, share)
            thresholds = calibrate_thresholds(
                model,
                None,
                alloc,
                token_ids=calibration_ids,
                max_tokens=config.calibration_tokens,
                seqlen=config.seqlen,
                scoring=config.scoring,
            )
        handle = (
            None if alloc is None else apply_sparsity(model, alloc, config.mode, thresholds, scoring=config.scoring)
        )
        try:
            weight = 0.5 if config.tasks else 1.0

            def on_window(done: int, total: int, label: str = label, weight: float = weight) -> None:
                reporter(f"{label}: perplexity", weight * done / total, share)

            ppl = evaluate_perplexity(
                model,
                token_ids=test_ids,
                seqlen=config.seqlen,
                max_tokens=config.max_tokens,
                progress=show_progress,
                on_window=on_window,
            )
            zeroshot = None
            if config.tasks:
                from acttail.evaluate.zeroshot import evaluate_zeroshot

                reporter(f"{label}: zero-shot", 0.5, share)
                with torch.inference_mode():
                    zeroshot = evaluate_zeroshot(
                        model, tokenizer, config.tasks, limit=config.limit, progress=show_progress
                    )
            realised = None if handle is None else handle.realised_sparsity()
        finally:
            if handle is not None:
                handle.remove()
        reporter(f"{label}: done", 1.0, share)
        reporter.advance(share)
        results.append(
            VariantResult(
                label=label,
                method="dense" if alloc is None else alloc.method,
                target=0.0 if alloc is None else alloc.target,
                perplexity=ppl,
                zeroshot=None if zeroshot is None else zeroshot.to_dict(),
                mean_accuracy=None if zeroshot is None else zeroshot.mean_accuracy,
                realised_sparsity=0.0 if realised is None else realised.total,
                realised_per_projection=None if realised is None else realised.per_projection,
                allocation=alloc,
                elapsed_s=time.perf_counter() - began,
            )
        )
        log.info("%s: ppl %.3f (%.1f s)", label, ppl.ppl, results[-1].elapsed_s)
    return _with_gains(results)


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


def _resolve(model: str | ModelSource, revision: str | None, model_roots: Sequence[Any] | None) -> ModelSource:
    if isinstance(model, str):
        from acttail.models import resolve_model

        return resolve_model(model, revision, model_roots=model_roots)
    return model


def run_pipeline(
    model: str | ModelSource,
    config: PipelineConfig | None = None,
    *,
    revision: str | None = None,
    model_roots: Sequence[Any] | None = None,
    esd_report: ESDReport | None = None,
    loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None,
    progress: Progress | None = None,
    show_progress: bool = False,
) -> PipelineResult:
    """Alphas once, one allocation per (target, method), dense + every variant evaluated.

    The default methods are uniform, the paper's ActTail rule and ``auto``; auto (and teal-greedy)
    choose on WikiText-2 validation text with the loaded model ("calibrating: ..." stages).

    ``esd_report`` reuses stored alphas (the workers cache them per fingerprint and estimator);
    ``loaded`` injects an already loaded ``(model, tokenizer)`` of the same weights.
    """
    config = config or PipelineConfig()
    config.validate()
    began = time.perf_counter()
    source = _resolve(model, revision, model_roots)
    description = source.describe().as_dict()
    reporter = _Reporter(progress)
    spectra: dict[str, Any] = {}  # stays empty when the alphas are reused
    if esd_report is None:
        import numpy as np

        from acttail.esd import analyze_source

        reporter("alphas", 0.0, _ESD_SHARE)

        def keep(result: Any, evals: Any) -> None:  # float32: what the store keeps, half the memory
            spectra[result.name] = np.asarray(evals, dtype=np.float32)

        esd_report = analyze_source(source, estimator=config.estimator, progress=show_progress, on_spectrum=keep)
    reporter.advance(_ESD_SHARE)
    reporter("loading model", 0.0, _LOAD_SHARE)
    lm, tokenizer = loaded if loaded is not None else source.load_causal_lm()
    reporter.advance(_LOAD_SHARE)
    share = _CALIBRATE_SHARE if config.calibrated_methods else 0.0
    allocations: list[Allocation | None] = [None] if config.include_dense else []
    allocations += build_allocations(
        esd_report, config, lm, tokenizer, progress=lambda stage, f: reporter(f"calibrating: {stage}", f, share)
    )
    reporter.advance(share)
    names = _projection_names(lm)
    for alloc in allocations:
        if alloc is not None:
            alloc.check_matches(description["fingerprint"], names)  # the loaded model is the analysed one
    variants = evaluate_variants(
        lm, tokenizer, allocations, config, progress=progress, show_progress=show_progress, start=reporter.position
    )
    return PipelineResult(
        model=description,
        config=config,
        variants=variants,
        alphas=esd_report.alphas(),
        versions={**library_versions(), "device": _device_of(lm)},
        elapsed_s=time.perf_counter() - began,
        esd=esd_report,
        spectra=spectra or None,
    )


def evaluate_allocation(
    model: str | ModelSource,
    allocation: Allocation,
    config: PipelineConfig | None = None,
    *,
    revision: str | None = None,
    model_roots: Sequence[Any] | None = None,
    loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None,
    progress: Progress | None = None,
    show_progress: bool = False,
) -> PipelineResult:
    """Evaluate one allocation (and the dense model unless ``include_dense=False``).

    The allocation must have been built for this model: same fingerprint and projection names
    (``Allocation.check_matches``), checked before the evaluation starts.
    """
    config = replace(config or PipelineConfig(), targets=(allocation.target,), methods=())
    config.validate()
    began = time.perf_counter()
    source = _resolve(model, revision, model_roots)
    description = source.describe().as_dict()
    allocation.check_matches(description["fingerprint"], [p.name for p in source.projections()])
    reporter = _Reporter(progress)
    reporter("loading model", 0.0, _LOAD_SHARE)
    lm, tokenizer = loaded if loaded is not None else source.load_causal_lm()
    reporter.advance(_LOAD_SHARE)
    allocations: list[Allocation | None] = [None, allocation] if config.include_dense else [allocation]
    variants = evaluate_variants(
        lm, tokenizer, allocations, config, progress=progress, show_progress=show_progress, start=reporter.position
    )
    return PipelineResult(
        model=description,
        config=config,
        variants=variants,
        alphas=None,
        versions={**library_versions(), "device": _device_of(lm)},
        elapsed_s=time.perf_counter() - began,
    )


def _projection_names(model: Any) -> list[str]:
    from acttail.models.architectures import find_projections

    return [ref.name for ref, _ in find_projections(model)]


def _device_of(model: Any) -> str:
    """``cpu`` or ``cuda``: stored with the versions, like the workers do."""
    return next(model.parameters()).device.type
