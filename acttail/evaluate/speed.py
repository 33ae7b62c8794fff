"""Decode speed: tokens/s of dense vs sparse-kernel decode, greedy, batch 1, same code path.

Method (gpt-fast style, honest timing): one fixed prompt, prefill once, then ``new_tokens``
single-token steps with the HF KV cache (``past_key_values``, ``use_cache=True``) and greedy
argmax. Only the decode steps are timed (prefill is reported apart), the first
``warmup_tokens`` steps of every run are dropped, the device is synchronised before each clock
read, and dense and sparse runs are interleaved (A B A B ...) so drift in a shared machine's
load hits both alike; the median over ``repeats`` runs is reported.

    tokens/s = timed decode steps / their wall time,   speed-up = sparse tokens/s / dense tokens/s

With ``check_reference`` the same sparsity is also run through the reference implementation
(``acttail.sparsity.apply_sparsity`` hooks: TopK masking + dense ``F.linear``) and its greedy
tokens are compared with the kernel path's. Those can differ after a few dozen tokens: both sum
in fp32 in different orders (~1 ulp apart), and a TopK boundary downstream can turn that into a
different kept channel. ``check_exact`` therefore also runs the exact pair
(``enable_sparse_decode(exact=True)`` against ``enable_reference_decode``: fp64 accumulation,
one rounding, the same bits), whose tokens must be identical: that is the check that the kernel
selects and sums the right rows.

``clock="cpu"`` times with ``time.process_time`` (CPU seconds of the whole process) instead of
wall time: with one torch thread that is the decode's own work, unaffected by other jobs
pre-empting it on a shared machine (memory-bandwidth contention still counts).
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from acttail.allocate import Allocation
from acttail.models.loading import input_device
from acttail.sparse_decode import enable_reference_decode, enable_sparse_decode
from acttail.sparsity import SparsityMode, apply_sparsity

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_PROMPT = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg"


@dataclass(frozen=True)
class DecodeRun:
    """One greedy generation: the generated token ids and the timed decode steps."""

    tokens: list[int]
    prefill_seconds: float
    step_seconds: list[float]  # timed steps only (warm-up dropped)

    @property
    def tokens_per_s(self) -> float:
        total = sum(self.step_seconds)
        return len(self.step_seconds) / total if total > 0 else float("nan")


@dataclass(frozen=True)
class SpeedResult:
    """Dense vs sparse decode speed of one model at one sparsity setting (batch 1, greedy)."""

    mode: str
    clock: str  # wall | cpu (process CPU time)
    target_sparsity: float  # parameter-weighted mean of the per-projection sparsities
    prompt_tokens: int
    new_tokens: int
    timed_steps: int  # per run, after dropping warm-up
    repeats: int
    threads: int
    device: str
    dtype: str
    backend: str  # kernel used for the sparse path: c-openmp | triton | torch-gather
    dense_tokens_per_s: float
    sparse_tokens_per_s: float | None
    speedup: float | None  # sparse / dense tokens/s
    reference_tokens_per_s: float | None  # hooks: masking + dense F.linear
    tokens_match_reference: bool | None  # greedy tokens: kernel path == reference
    # Leading tokens equal to the reference's. A shorter prefix means a TopK boundary tie: two
    # |x_j| within ~1 ulp, which ~1e-7 relative summation-order differences resolve differently.
    matching_prefix: int | None
    prefill_seconds_dense: float
    dense_runs_tokens_per_s: list[float]
    sparse_runs_tokens_per_s: list[float]
    # The exact pair (fp64-accumulating kernel vs torch fp64 reference): tokens must be identical.
    exact_tokens_per_s: float | None = None
    exact_tokens_match_reference: bool | None = None
    exact_matching_prefix: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_kwarg(model: nn.Module) -> str:
    """transformers >= 5.2x names the KV-cache argument ``cache``; older releases ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output: Any) -> Any:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def greedy_decode(
    model: nn.Module,
    input_ids: torch.Tensor,
    new_tokens: int,
    warmup_tokens: int = 0,
    clock: str = "wall",
) -> DecodeRun:
    """Prefill ``input_ids`` [1, T], then ``new_tokens - 1`` cached single-token greedy steps.

    Returns all ``new_tokens`` generated ids and the wall time of each decode step after the
    first ``warmup_tokens`` ones.
    """
    if new_tokens < 1:
        raise ValueError("new_tokens must be >= 1")
    if clock not in _CLOCKS:
        raise ValueError(f"clock must be one of {sorted(_CLOCKS)}, got {clock!r}")
    now = _CLOCKS[clock]
    device = input_ids.device
    cache_kwarg = _cache_kwarg(model)
    steps: list[float] = []
    with torch.inference_mode():
        _sync(device)
        start = now()
        out = model(input_ids=input_ids, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)  # [1, 1]
        _sync(device)
        prefill = now() - start
        cache = _cache_of(out)
        tokens = [int(nxt)]
        for step in range(new_tokens - 1):
            start = now()
            out = model(input_ids=nxt, use_cache=True, **{cache_kwarg: cache})
            cache = _cache_of(out)
            nxt = out.logits[:, -1:].argmax(-1)
            tokens.append(int(nxt))  # int() reads the value: the step is complete on any device
            if step >= warmup_tokens:
                steps.append(now() - start)
    return DecodeRun(tokens=tokens, prefill_seconds=prefill, step_seconds=steps)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _weighted_target(model: nn.Module, smap: Mapping[str, float]) -> float:
    counts = {name: model.get_parameter(f"{name}.weight").numel() for name in smap}
    total = sum(counts.values())
    return sum(smap[n] * counts[n] for n in smap) / total if total else 0.0


def measure_decode_speed(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sparsities: Mapping[str, float] | Allocation | float | None,
    prompt: str = DEFAULT_PROMPT,
    new_tokens: int = 32,
    *,
    warmup_tokens: int = 4,
    repeats: int = 3,
    mode: SparsityMode | str = SparsityMode.TOPK,
    thresholds: Mapping[str, float] | None = None,
    check_reference: bool = True,
    check_exact: bool = False,
    clock: str = "wall",
) -> SpeedResult:
    """Tokens/s of dense and sparse-kernel greedy decode of ``prompt`` (see module docstring).

    ``sparsities=None`` measures dense only (sparse fields are None). The model is left as it
    was found (modules restored, hooks removed).
    """
    if new_tokens <= warmup_tokens + 1:
        raise ValueError(f"new_tokens ({new_tokens}) must exceed warmup_tokens + 1 ({warmup_tokens + 1})")
    mode = SparsityMode(mode)
    device = input_device(model)
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    was_training = model.training
    model.eval()
    dense_runs: list[DecodeRun] = []
    sparse_runs: list[DecodeRun] = []
    backend = "dense"
    target = 0.0
    handle = None
    try:
        if sparsities is not None:
            handle = enable_sparse_decode(model, sparsities, mode, thresholds)
            backend = handle.backend
            target = _weighted_target(model, handle.sparsities)
            greedy_decode(model, input_ids, warmup_tokens + 2)  # first-call allocations, lazy inits
            handle.restore()
        greedy_decode(model, input_ids, warmup_tokens + 2)
        for _ in range(repeats):
            dense_runs.append(greedy_decode(model, input_ids, new_tokens, warmup_tokens, clock))
            if handle is not None:
                handle.reapply()
                sparse_runs.append(greedy_decode(model, input_ids, new_tokens, warmup_tokens, clock))
                handle.restore()
        reference: DecodeRun | None = None
        if sparsities is not None and check_reference:
            with apply_sparsity(model, sparsities, mode, thresholds, track=False):
                reference = greedy_decode(model, input_ids, new_tokens, warmup_tokens, clock)
        exact: DecodeRun | None = None
        exact_reference: DecodeRun | None = None
        if sparsities is not None and check_exact:
            with enable_sparse_decode(model, sparsities, mode, thresholds, exact=True):
                exact = greedy_decode(model, input_ids, new_tokens, warmup_tokens, clock)
            with enable_reference_decode(model, sparsities, mode, thresholds):
                exact_reference = greedy_decode(model, input_ids, new_tokens, warmup_tokens, clock)
    finally:
        if handle is not None:
            handle.restore()
        model.train(was_training)
    dense_tps = statistics.median(r.tokens_per_s for r in dense_runs)
    sparse_tps = statistics.median(r.tokens_per_s for r in sparse_runs) if sparse_runs else None
    return SpeedResult(
        mode=str(mode),
        clock=clock,
        target_sparsity=target,
        prompt_tokens=int(input_ids.shape[1]),
        new_tokens=new_tokens,
        timed_steps=len(dense_runs[0].step_seconds),
        repeats=repeats,
        threads=torch.get_num_threads(),
        device=str(device),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        backend=backend,
        dense_tokens_per_s=dense_tps,
        sparse_tokens_per_s=sparse_tps,
        speedup=None if sparse_tps is None else sparse_tps / dense_tps,
        reference_tokens_per_s=None if reference is None else reference.tokens_per_s,
        tokens_match_reference=None if reference is None else reference.tokens == sparse_runs[0].tokens,
        matching_prefix=None if reference is None else _common_prefix(reference.tokens, sparse_runs[0].tokens),
        prefill_seconds_dense=statistics.median(r.prefill_seconds for r in dense_runs),
        dense_runs_tokens_per_s=[r.tokens_per_s for r in dense_runs],
        sparse_runs_tokens_per_s=[r.tokens_per_s for r in sparse_runs],
        exact_tokens_per_s=None if exact is None else exact.tokens_per_s,
        exact_tokens_match_reference=None
        if exact is None or exact_reference is None
        else exact.tokens == exact_reference.tokens,
        exact_matching_prefix=None
        if exact is None or exact_reference is None
        else _common_prefix(exact.tokens, exact_reference.tokens),
    )
