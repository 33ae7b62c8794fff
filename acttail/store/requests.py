"""The job request: what ``POST /v1/jobs`` accepts and what ``workers.runner.run_job`` reads.

Pure pydantic (no torch, no FastAPI), so the API validates it and the worker re-parses the
stored ``job.request`` with ``JobRequest.model_validate(job.request)``. Every field has limits.
Model ID *syntax* is checked here; containment of local paths in the configured model roots is
checked by the API (``api.validation.check_model_id``) and again by ``resolve_model``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from acttail.errors import ActTailError
from acttail.models.placement import DEVICES_HELP, DTYPES, Placement
from acttail.registry import (
    DEFAULT_CALIBRATION_SEQLEN,
    DEFAULT_CALIBRATION_TOKENS,
    DEFAULT_ESTIMATOR,
    DEFAULT_METHOD,
    DEFAULT_MODE,
    DEFAULT_SCORING,
    ESTIMATORS,
    MAX_MODEL_ID_LENGTH,
    METHODS,
    SCORINGS,
    SPARSITY_MODES,
    TARGET_MAX,
    TARGET_MIN,
    ZEROSHOT_TASKS,
    bundled_aliases,
)
from acttail.store.upsert import canonical_hash

#: Request field -> registry knob, where the request names a knob differently.
KNOB_NAMES = {"greedy_step": "step"}
#: Optional knobs: None means the method's default; set for a method that ignores them, they are refused.
OPTIONAL_KNOBS = ("calibration_tokens", "calibration_seqlen", "min_gain", "greedy_tokens", "greedy_step")
REVISION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}\Z")

Target = Annotated[float, Field(ge=TARGET_MIN, le=TARGET_MAX)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PerplexitySpec(_Strict):
    """WikiText-2 (raw, test split) perplexity with non-overlapping windows of ``seqlen`` tokens."""

    seqlen: int = Field(default=2048, ge=16, le=8192)
    max_tokens: int | None = Field(default=None, ge=16, le=2_000_000, description="None = whole test split")

    @model_validator(mode="after")
    def _one_window(self) -> PerplexitySpec:
        if self.max_tokens is not None and self.max_tokens < self.seqlen:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be at least seqlen ({self.seqlen})")
        return self


class ZeroShotSpec(_Strict):
    """Bundled zero-shot tasks (lm-eval protocol), at most ``limit`` documents each."""

    tasks: list[Literal[ZEROSHOT_TASKS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["arc_easy", "piqa"], min_length=1, max_length=len(ZEROSHOT_TASKS)
    )
    limit: int | None = Field(default=None, ge=1, le=20_000, description="None = whole task")

    @field_validator("tasks")
    @classmethod
    def _unique(cls, tasks: list[str]) -> list[str]:
        if len(set(tasks)) != len(tasks):
            raise ValueError("tasks must not repeat")
        return tasks


class SpeedSpec(_Strict):
    """Greedy decode tokens/s, dense vs sparse kernels."""

    new_tokens: int = Field(default=32, ge=1, le=4096)
    warmup_tokens: int = Field(default=4, ge=0, le=256)
    repeats: int = Field(default=3, ge=1, le=50)


class Evaluations(_Strict):
    """Benchmarks to run for the dense model and for every allocation of the job."""

    perplexity: PerplexitySpec | None = None
    zeroshot: ZeroShotSpec | None = None
    speed: SpeedSpec | None = None


class JobRequest(_Strict):
    """Compute alphas for a model, allocations for each target, then the requested benchmarks.

    ``method`` is any of ``acttail.methods.METHODS``; the default ``auto`` (and ``teal-greedy``)
    run the model on WikiText-2 validation text, which costs the worker a model load and about
    six calibration passes per target. ``epsilon``/``direction``/``granularity`` only move the
    ActTail methods; the calibration knobs are refused for methods that do not read them.
    """

    model_id: str = Field(min_length=1, max_length=MAX_MODEL_ID_LENGTH, examples=["smollm2-135m"])
    revision: str | None = Field(default=None, max_length=128)
    estimator: Literal[ESTIMATORS] = DEFAULT_ESTIMATOR  # type: ignore[valid-type]
    targets: list[Target] = Field(default_factory=lambda: [0.5], min_length=1, max_length=32)
    method: Literal[tuple(METHODS)] = DEFAULT_METHOD  # type: ignore[valid-type]
    epsilon: float = Field(default=0.1, ge=0.0, lt=1.0)
    direction: Literal["higher_alpha_sparser", "lower_alpha_sparser"] = "higher_alpha_sparser"
    granularity: Literal["projection", "block"] = "projection"
    s_min: float = Field(default=0.0, ge=0.0, lt=1.0)
    s_max: float = Field(default=0.99, gt=0.0, lt=1.0)
    calibration_tokens: int | None = Field(
        default=None, ge=64, le=262_144, description=f"auto, teal-greedy: WikiText-2 validation tokens "
        f"(None = {DEFAULT_CALIBRATION_TOKENS})",
    )  # fmt: skip
    calibration_seqlen: int | None = Field(
        default=None,
        ge=16,
        le=8192,
        description=f"auto, teal-greedy: window length (None = {DEFAULT_CALIBRATION_SEQLEN})",
    )
    min_gain: float | None = Field(
        default=None,
        ge=0.0,
        le=0.5,
        description="auto: keep uniform unless a candidate wins by this fraction (None = 0.01)",
    )
    greedy_tokens: int | None = Field(default=None, ge=16, le=65_536, description="teal-greedy: search tokens")
    greedy_step: float | None = Field(default=None, gt=0.0, le=0.5, description="teal-greedy: sparsity step")
    evaluations: Evaluations = Field(default_factory=Evaluations)
    mode: Literal[SPARSITY_MODES] = DEFAULT_MODE  # type: ignore[valid-type]
    scoring: Literal[SCORINGS] = DEFAULT_SCORING  # type: ignore[valid-type]
    include_dense: bool = Field(default=True, description="Evaluate the dense model too (its rows are shared).")
    device: str | None = Field(default=None, max_length=16, description=f"{DEVICES_HELP}; None = the worker's")
    dtype: Literal[DTYPES] | None = Field(default=None, description="None = the worker's")  # type: ignore[valid-type]
    device_map: str | dict[str, str | int] | None = Field(default=None, description="accelerate device map")
    max_memory: dict[str, str] | None = Field(default=None, max_length=64, description='e.g. {"0": "20GiB"}')
    shared: bool = Field(default=False, description="Publish allocations and benchmarks to every team.")
    queue: Literal["cpu", "gpu"] | None = Field(default=None, description="None = the server's default queue")

    @field_validator("model_id")
    @classmethod
    def _model_id_syntax(cls, value: str) -> str:
        if "\x00" in value or any(ch in value for ch in "\r\n\t"):  # before strip(): "org/x\n" is refused
            raise ValueError("model_id must be a non-empty single-line string")
        value = value.strip()
        if not value:
            raise ValueError("model_id must be a non-empty single-line string")
        return value.lower() if value.lower() in bundled_aliases() else value

    @field_validator("revision")
    @classmethod
    def _revision_syntax(cls, value: str | None) -> str | None:
        if value is not None and (not REVISION_PATTERN.match(value) or ".." in value):
            raise ValueError("revision must be a branch, tag or commit (letters, digits, . _ - /)")
        return value

    @field_validator("targets")
    @classmethod
    def _sorted_unique(cls, targets: list[float]) -> list[float]:
        if len(set(targets)) != len(targets):
            raise ValueError("targets must not repeat")
        return sorted(targets)

    @model_validator(mode="after")
    def _bounds(self) -> JobRequest:
        if self.s_min > self.s_max:
            raise ValueError("s_min must not exceed s_max")
        for target in self.targets:
            if not self.s_min <= target <= self.s_max:
                raise ValueError(f"target {target} is outside [s_min, s_max] = [{self.s_min}, {self.s_max}]")
        for name in OPTIONAL_KNOBS:
            if name == "calibration_tokens" and self.mode == "threshold":
                continue  # threshold mode calibrates on them too
            if getattr(self, name) is not None and name not in METHOD_FIELDS[self.method]:
                users = [m for m in METHODS if name in METHOD_FIELDS[m]]
                raise ValueError(f"{name} does not apply to method {self.method!r} (only to {', '.join(users)})")
        tokens = self.calibration_tokens or DEFAULT_CALIBRATION_TOKENS
        seqlen = self.calibration_seqlen or DEFAULT_CALIBRATION_SEQLEN
        if METHODS[self.method].needs_model and tokens < seqlen:
            raise ValueError(f"calibration_tokens ({tokens}) must be at least calibration_seqlen ({seqlen})")
        try:
            Placement(self.device or "auto", self.dtype or "auto", self.device_map, self.max_memory).validate()
        except ActTailError as exc:
            raise ValueError(str(exc)) from None
        return self

    def allocation_params(self) -> dict[str, Any]:
        """Keyword arguments of ``acttail.methods.build_allocation`` for ``method`` (set knobs only)."""
        out: dict[str, Any] = {}
        for name in METHOD_FIELDS[self.method]:
            value = getattr(self, name)
            if value is not None:
                out[KNOB_NAMES.get(name, name)] = value
        return out

    def request_hash(self) -> str:
        """sha256 of the canonical request: equal requests (after normalisation) hash equal."""
        return canonical_hash(self.model_dump(mode="json"))


#: Request fields each method uses: the JobRequest fields that are knobs the method registered.
METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    name: tuple(f for f in JobRequest.model_fields if KNOB_NAMES.get(f, f) in spec.accepted)
    for name, spec in METHODS.items()
}


def check_knob(knob: str, value: object) -> object:
    """``value`` of method knob ``knob`` checked by its JobRequest field's rules (the CLI's options too).

    Raises ActTailError naming the knob; knobs a request does not offer (``grid``, ``trace``) pass.
    """
    import pydantic

    name = next((f for f, k in KNOB_NAMES.items() if k == knob), knob)
    info = JobRequest.model_fields.get(name)
    if info is None:
        return value
    try:
        return pydantic.TypeAdapter(Annotated[info.annotation, info]).validate_python(value)  # type: ignore[arg-type]
    except pydantic.ValidationError as exc:
        raise ActTailError(f"{name}: {exc.errors()[0]['msg']} (got {value!r})") from None
