"""Every shared name and rule, defined once and importable without torch.

The API validates requests with it, the workers and the CLI parse options with it, the science core
dispatches on it: estimators, allocation methods (what they read, whether they need the model),
sparsity modes, zero-shot tasks, bundled aliases, the model-ID rules, the sparsity-target range and
the Celery task name. Adding an allocation method is one ``register_method`` call below plus its
builder function (``module:function``, imported only when the method is built, so this module stays
torch-free).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from acttail.errors import ActTailError

# --------------------------------------------------------------------------------------------
# ESD estimators (acttail.esd.powerlaw: how x_min of the power-law fit is chosen)

ESTIMATORS: tuple[str, ...] = ("ks", "ks_peak", "hill")
DEFAULT_ESTIMATOR = "ks"

# --------------------------------------------------------------------------------------------
# Sparsity modes (acttail.sparsity): TopK per token (ActTail) or calibrated thresholds (TEAL)

SPARSITY_MODES: tuple[str, ...] = ("topk", "threshold")
DEFAULT_MODE = "topk"
#: Which entries a sparsified projection keeps (acttail.scoring): |x|, or WINA's |x| * ||W[:, j]||.
SCORINGS: tuple[str, ...] = ("magnitude", "wina")
DEFAULT_SCORING = "magnitude"

# --------------------------------------------------------------------------------------------
# Sparsity targets: the parameter-weighted mean sparsity an allocation must meet.

#: Inclusive bounds. 0.99 is the default per-projection ceiling ``s_max``, so every method can meet
#: any target in range; 0 is the dense model expressed as an allocation.
TARGET_MIN, TARGET_MAX = 0.0, 0.99
TARGET_RANGE_TEXT = f"[{TARGET_MIN:g}, {TARGET_MAX:g}]"


def check_target(value: object, what: str = "sparsity target", error: type[Exception] = ActTailError) -> float:
    """``value`` as a float in ``[TARGET_MIN, TARGET_MAX]``, or ``error`` saying the range.

    The one rule of the CLI, the job request (pydantic fields use the same two constants), the
    pipeline config, the allocation builder and allocation documents.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise error(f"{what} must be a number in {TARGET_RANGE_TEXT}, got {value!r}")
    if not TARGET_MIN <= value <= TARGET_MAX:
        raise error(f"{what} must be in {TARGET_RANGE_TEXT}, got {value:g}")
    return float(value)


# --------------------------------------------------------------------------------------------
# Allocation methods (acttail.methods)

#: The knobs of AlphaPruning's alpha map (acttail.allocate.AllocationParams).
ALPHA_KNOBS = frozenset({"epsilon", "direction", "granularity", "s_min", "s_max"})
#: Knobs every method that runs the model reads: which WikiText-2 validation text it chooses on,
#: and a precomputed TEAL greedy trace to share between targets.
CALIBRATION_KNOBS = frozenset({"calibration_tokens", "calibration_seqlen", "trace"})
#: Calibration defaults of every door (CLI, jobs, the library): 16,384 WikiText-2 validation
#: tokens in 32 windows of 512 spread over the split. The CLI used 16,384 at the perplexity seqlen
#: and the workers 8,192 at 512: the CLI's token count (more text, a steadier choice), the workers'
#: window (a method scores allocations, which needs many windows more than long ones; threshold
#: mode still calibrates at the evaluation's seqlen, see ``acttail.sparsity.calibration_windows``).
DEFAULT_CALIBRATION_TOKENS = 16_384
DEFAULT_CALIBRATION_SEQLEN = 512


@dataclass(frozen=True)
class MethodSpec:
    """One allocation method: what it is, which knobs it reads, where its builder lives."""

    name: str
    description: str
    knobs: frozenset[str]
    needs_model: bool
    builder: str  # "module:function" with signature (report, target, context, params) -> Allocation

    @property
    def accepted(self) -> frozenset[str]:
        """Every keyword ``acttail.methods.build_allocation(name, ...)`` accepts."""
        return self.knobs | (CALIBRATION_KNOBS if self.needs_model else frozenset())


METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str, description: str, knobs: Iterable[str] = (), *, builder: str, needs_model: bool = False
) -> MethodSpec:
    """Add a method; the CLI, the job request and the dashboard offer it from then on."""
    if name in METHODS:
        raise ValueError(f"method {name!r} is already registered")
    spec = MethodSpec(name, description, frozenset(knobs), needs_model, builder)
    METHODS[name] = spec
    return spec


_B = "acttail.methods.builders"
register_method("uniform", "every projection at the target (baseline)", builder=f"{_B}:uniform")
register_method(
    "acttail",
    "alpha mapped linearly into [1-eps, 1+eps], higher alpha sparser, per projection (ActTail/AlphaPruning)",
    ALPHA_KNOBS,
    builder=f"{_B}:acttail",
)
register_method(
    "acttail-reverse", "acttail with lower alpha sparser", ALPHA_KNOBS - {"direction"}, builder=f"{_B}:acttail_reverse"
)
register_method(
    "acttail-block",
    "acttail with alpha averaged per transformer block (AlphaPruning's block-wise)",
    ALPHA_KNOBS - {"granularity"},
    builder=f"{_B}:acttail_block",
)
register_method(
    "acttail-per-type",
    "acttail with alpha min-max normalised within each projection kind",
    ALPHA_KNOBS,
    builder=f"{_B}:per_type",
)
register_method(
    "teal-greedy",
    "TEAL's block-wise greedy search on calibration activations (needs the model)",
    {"s_min", "s_max", "step", "greedy_tokens", "last_fraction"},
    builder=f"{_B}:teal_greedy",
    needs_model=True,
)
register_method(
    "auto",
    "best of uniform, an ActTail grid and TEAL-greedy by calibration perplexity (needs the model)",
    {"s_min", "s_max", "grid", "min_gain"},
    builder=f"{_B}:auto",
    needs_model=True,
)

register_method(
    "htsr-spectral",
    "calibration-free: projections with concentrated spectra (low stable rank / alpha) sparser (methods/spectral.py)",
    {"metric", "epsilon", "s_min", "s_max"},
    builder="acttail.methods.spectral:build",
)

#: Never worse than uniform on its calibration text; the paper's rule lost to uniform on the small
#: models we measured (docs/science.md).
DEFAULT_METHOD = "auto"
#: What ``acttail run`` compares by default: the baseline, the paper's rule and the default method.
DEFAULT_RUN_METHODS: tuple[str, ...] = ("uniform", "acttail", DEFAULT_METHOD)


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def method_spec(name: str) -> MethodSpec:
    """The registered method, or ActTailError listing the valid names."""
    try:
        return METHODS[name]
    except KeyError:
        raise ActTailError(f"unknown allocation method {name!r}; valid: {', '.join(METHODS)}") from None


def needs_model(name: str) -> bool:
    return method_spec(name).needs_model


# --------------------------------------------------------------------------------------------
# Zero-shot tasks (acttail.evaluate.tasks holds how each is scored)

ZEROSHOT_TASKS: tuple[str, ...] = (
    "arc_easy",
    "arc_challenge",
    "piqa",
    "winogrande",
    "boolq",
    "hellaswag",
    "lambada_openai",
)


def check_tasks(names: Sequence[str]) -> tuple[str, ...]:
    """The names, each a known task and none repeated, or ActTailError listing the valid ones."""
    for name in names:
        if name not in ZEROSHOT_TASKS:
            raise ActTailError(f"unknown task {name!r}; valid tasks: {', '.join(ZEROSHOT_TASKS)}")
    if len(set(names)) != len(names):
        raise ActTailError("zero-shot tasks must not repeat")
    return tuple(names)


# --------------------------------------------------------------------------------------------
# Model IDs


def bundled_aliases() -> tuple[str, ...]:
    """The bundled model aliases (``acttail.models.bundled.BUNDLED`` holds how each is installed)."""
    from acttail.models.bundled import BUNDLED

    return tuple(BUNDLED)


#: Hub repo IDs: "org/name"; letters, digits, "-", "_", "."; no leading "." or "-".
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}\Z")
MAX_MODEL_ID_LENGTH = 512


def is_hub_id(model_id: str) -> bool:
    """``org/name`` on the Hugging Face hub (never a ``..`` path or a ``.gguf`` file name)."""
    return bool(HUB_ID_PATTERN.match(model_id)) and ".." not in model_id and not model_id.endswith(".gguf")


def inside_roots(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path`` resolves (symlinks followed) to one of ``roots`` or below one."""
    resolved = path.resolve()
    return any(resolved == root or resolved.is_relative_to(root) for root in (Path(r).resolve() for r in roots))


def root_candidates(model_id: str, roots: Sequence[Path]) -> list[Path]:
    """The paths a local model ID may name: itself if absolute, else under each root, in order."""
    path = Path(model_id)
    return [path] if path.is_absolute() else [Path(root).resolve() / path for root in roots]


# --------------------------------------------------------------------------------------------
# Service

#: The Celery task every job runs as (sent by name, so the API never imports the worker code).
RUN_JOB_TASK = "acttail.run_job"
