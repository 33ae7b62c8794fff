"""Activation sparsity applied to a loaded causal LM: TopK (ActTail) and calibrated thresholds (TEAL).

ActTail (arXiv 2603.12272) sparsifies the *input* x of every q/k/v/o/gate/up/down projection
y = W x. With projection sparsity s_i and input width d_in:

* ``topk``: per token keep the k_i = round((1 - s_i) * d_in) largest |x_j| and zero the rest, so
  every token has exactly s_i' = 1 - k_i / d_in sparsity (ties broken by ``torch.topk``; exactly
  k_i entries are kept).
* ``threshold`` (TEAL, Liu et al. 2024, Sec. 3): zero x_j when |x_j| <= t_i, where t_i is the
  s_i-quantile of |x| at that projection's input over calibration tokens (WikiText-2 raw
  *validation*), so sparsity is s_i on average, not per token.

Both are forward pre-hooks on the ``nn.Linear`` modules that ``find_projections`` returns: the
model code is never touched, q/k/v (and gate/up) read the same hidden state but each Linear has
its own hook and therefore its own sparsity, and ``SparsityHandle.remove()`` restores the model
exactly. A projection at s_i = 0 gets no hook at all, so a zero allocation is bit-for-bit dense.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from acttail.allocate import Allocation
from acttail.errors import AllocationError
from acttail.models.architectures import find_projections

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle
    from transformers import PreTrainedTokenizerBase

# log2|x| histogram used to calibrate thresholds: 2^-32 .. 2^24 covers fp32 activations of every
# supported model (Gemma's residual stream reaches ~1e4); 2^14 bins give 0.24% relative resolution.
_HIST_LOG2_MIN = -32.0
_HIST_LOG2_MAX = 24.0
_HIST_BINS = 1 << 14


class SparsityMode(StrEnum):
    TOPK = "topk"
    THRESHOLD = "threshold"


@dataclass(frozen=True)
class RealisedSparsity:
    """Measured sparsity of the projection inputs over the forward passes seen so far.

    ``per_projection[name]`` = zeros / elements of that projection's (sparsified) input;
    ``total`` = sum_i N_i s_i / sum_i N_i with N_i = numel(W_i) (the fraction of weight reads
    saved). Projections left dense (s_i = 0, no hook) count as 0. ``tokens`` is the number of
    token vectors seen by the first hooked projection.
    """

    per_projection: dict[str, float]
    total: float
    tokens: int


def keep_count(sparsity: float, d_in: int) -> int:
    """k = round((1 - s) * d_in), clamped to [0, d_in]."""
    return min(d_in, max(0, round((1.0 - sparsity) * d_in)))


def topk_sparsify(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest-|x| entries along the last dim of x ``[..., d_in]``, zero the rest.

    Exactly k entries per row survive (``topk`` indices are distinct). The smaller of the kept
    or dropped sets is selected, which costs the same either way.
    """
    d_in = x.shape[-1]
    if k >= d_in:
        return x
    if k <= 0:
        return torch.zeros_like(x)
    magnitude = x.abs()
    if k <= d_in - k:
        keep = magnitude.topk(k, dim=-1, sorted=False).indices
        mask = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, keep, True)
        return x * mask
    drop = magnitude.topk(d_in - k, dim=-1, largest=False, sorted=False).indices
    return x.scatter(-1, drop, 0.0)


def threshold_sparsify(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero every entry with |x| <= threshold (TEAL's magnitude pruning of activations)."""
    return x.masked_fill(x.abs() <= threshold, 0.0)


class _ProjectionHook:
    """The forward pre-hook of one Linear: sparsify its input and count zeros."""

    def __init__(self, name: str, mode: SparsityMode, k: int = 0, threshold: float = 0.0, track: bool = True):
        self.name, self.mode, self.k, self.threshold, self.track = name, mode, k, threshold, track
        self.zeros = 0
        self.elements = 0
        self.tokens = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]  # [..., d_in]
        out = topk_sparsify(x, self.k) if self.mode is SparsityMode.TOPK else threshold_sparsify(x, self.threshold)
        if self.track:
            self.zeros += int((out == 0).sum())
            self.elements += out.numel()
            self.tokens += out.numel() // out.shape[-1]
        return (out, *args[1:])


class SparsityHandle:
    """Live sparsification of a model; a context manager. ``remove()`` restores the dense model."""

    def __init__(
        self,
        mode: SparsityMode,
        sparsities: dict[str, float],
        param_counts: dict[str, int],
        hooks: dict[str, _ProjectionHook],
        handles: list[RemovableHandle],
    ) -> None:
        self.mode = mode
        self.sparsities = sparsities
        self.param_counts = param_counts
        self._hooks = hooks
        self._handles = handles

    @property
    def active(self) -> bool:
        return bool(self._handles)

    @property
    def target(self) -> float:
        """The parameter-weighted mean of the requested sparsities."""
        total = sum(self.param_counts.values())
        return sum(self.sparsities[n] * c for n, c in self.param_counts.items()) / total

    def remove(self) -> None:
        """Detach every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset_counts(self) -> None:
        for hook in self._hooks.values():
            hook.zeros = hook.elements = hook.tokens = 0

    def realised_sparsity(self) -> RealisedSparsity:
        """Zeros counted in each projection input since apply (or ``reset_counts``)."""
        per: dict[str, float] = {}
        for name in self.sparsities:
            hook = self._hooks.get(name)
            per[name] = hook.zeros / hook.elements if hook is not None and hook.elements else 0.0
        total_params = sum(self.param_counts.values())
        total = sum(per[n] * self.param_counts[n] for n in per) / total_params
        tokens = max((h.tokens for h in self._hooks.values()), default=0)
        return RealisedSparsity(per_projection=per, total=total, tokens=tokens)

    def __enter__(self) -> SparsityHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def sparsity_map(sparsities: Mapping[str, float] | Allocation | float, names: Sequence[str]) -> dict[str, float]:
    """``{name: s_i}`` for exactly ``names``, each s_i in [0, 1); shared by hooks and sparse decode.

    Accepts a mapping, an ``Allocation`` or one float (uniform). AllocationError names what is
    missing, unknown or out of range.
    """
    if isinstance(sparsities, Allocation):
        sparsities = sparsities.sparsities
    if isinstance(sparsities, int | float):
        sparsities = {n: float(sparsities) for n in names}
    unknown = sorted(set(sparsities) - set(names))
    missing = sorted(set(names) - set(sparsities))
    if unknown or missing:
        raise AllocationError(
            f"sparsities do not match the model's projections: {len(missing)} missing "
            f"(e.g. {missing[:2]}), {len(unknown)} unknown (e.g. {unknown[:2]})"
        )
    out = {n: float(sparsities[n]) for n in names}
    bad = {n: s for n, s in out.items() if not (0.0 <= s < 1.0 and math.isfinite(s))}
    if bad:
        name, value = next(iter(bad.items()))
        raise AllocationError(f"sparsity of {name} must be in [0, 1), got {value!r}")
    return out


def check_thresholds(
    smap: Mapping[str, float], mode: SparsityMode, thresholds: Mapping[str, float] | None
) -> None:
    """Threshold mode needs a calibrated t_i for every projection with s_i > 0."""
    if mode is not SparsityMode.THRESHOLD:
        return
    if thresholds is None:
        raise AllocationError("threshold mode needs thresholds: run calibrate_thresholds first")
    missing = [n for n, s in smap.items() if s > 0 and n not in thresholds]
    if missing:
        raise AllocationError(f"no threshold for {len(missing)} projections (e.g. {missing[0]})")


def apply_sparsity(
    model: nn.Module,
    sparsities: Mapping[str, float] | Allocation | float,
    mode: SparsityMode | str = SparsityMode.TOPK,
    thresholds: Mapping[str, float] | None = None,
    *,
    track: bool = True,
) -> SparsityHandle:
    """Sparsify the inputs of every projection of ``model`` in place; undo with the returned handle.

    ``sparsities`` maps projection module paths to s_i in [0, 1) (an ``Allocation`` or a single
    float for uniform also work). ``threshold`` mode needs ``thresholds`` from
    ``calibrate_thresholds`` (``{name: t_i}``). ``track=False`` skips zero counting (slightly faster).
    """
    mode = SparsityMode(mode)
    projections = find_projections(model)
    names = [ref.name for ref, _ in projections]
    smap = sparsity_map(sparsities, names)
    check_thresholds(smap, mode, thresholds)
    hooks: dict[str, _ProjectionHook] = {}
    handles: list[RemovableHandle] = []
    for ref, linear in projections:
        s = smap[ref.name]
        if s == 0.0:
            continue  # no hook at all: bit-for-bit dense
        if mode is SparsityMode.TOPK:
            hook = _ProjectionHook(ref.name, mode, k=keep_count(s, linear.in_features), track=track)
        else:
            assert thresholds is not None
            hook = _ProjectionHook(ref.name, mode, threshold=float(thresholds[ref.name]), track=track)
        hooks[ref.name] = hook
        handles.append(linear.register_forward_pre_hook(hook))
    counts = {ref.name: linear.weight.numel() for ref, linear in projections}
    return SparsityHandle(mode, smap, counts, hooks, handles)


def decoder_only(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (skips a [tokens, vocab] logits tensor: 2 GB for Gemma)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    return decoder if isinstance(decoder, nn.Module) else model


class _MagnitudeHistogram:
    """Streaming histogram of log2|x| at one projection input (exact zeros counted apart)."""

    def __init__(self) -> None:
        self.counts = torch.zeros(_HIST_BINS, dtype=torch.float64)
        self.zeros = 0
        self.total = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        magnitude = args[0].detach().abs().float().flatten()
        nonzero = magnitude[magnitude > 0]
        self.zeros += magnitude.numel() - nonzero.numel()
        self.total += magnitude.numel()
        logs = nonzero.log2().clamp_(_HIST_LOG2_MIN, _HIST_LOG2_MAX - 1e-6)
        self.counts += torch.histc(logs, bins=_HIST_BINS, min=_HIST_LOG2_MIN, max=_HIST_LOG2_MAX).double()

    def quantile(self, q: float) -> float:
        """Smallest t with P(|x| <= t) >= q (log-linear inside a bin); 0 when q <= P(x = 0)."""
        if q <= 0.0 or self.total == 0:
            return 0.0
        needed = q * self.total - self.zeros
        if needed <= 0:
            return 0.0
        cumulative = torch.cumsum(self.counts, 0)
        idx = int(torch.searchsorted(cumulative, torch.tensor([needed], dtype=torch.float64)).item())
        idx = min(idx, _HIST_BINS - 1)
        before = float(cumulative[idx - 1]) if idx > 0 else 0.0
        in_bin = float(self.counts[idx])
        frac = (needed - before) / in_bin if in_bin > 0 else 1.0
        width = (_HIST_LOG2_MAX - _HIST_LOG2_MIN) / _HIST_BINS
        return float(2.0 ** (_HIST_LOG2_MIN + (idx + frac) * width))


def calibrate_thresholds(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    sparsities: Mapping[str, float] | Allocation | float,
    texts: str | Iterable[str] | None = None,
    *,
    token_ids: torch.Tensor | None = None,
    max_tokens: int = 16_384,
    seqlen: int = 2048,
    refinements: int = 2,
) -> dict[str, float]:
    """Per-projection magnitude thresholds t_i = Quantile_{s_i}(|x_i|) over calibration tokens.

    The model is run on ``texts`` (joined with "\\n\\n" and tokenised once) or on the given
    ``token_ids`` (1-D), at most ``max_tokens`` tokens in windows of ``seqlen``; a log2 histogram
    of |x_i| is accumulated at every projection input. Use WikiText-2 raw validation
    (``acttail.evaluate.datasets.wikitext2_text("validation")``), never the test split.

    The first pass sees dense activations (TEAL's calibration). Zeroing upstream inputs shifts the
    downstream distributions, so ``refinements`` further passes re-measure each |x_i| *with* the
    current thresholds applied upstream (a fixed-point iteration) and re-take the quantiles; on
    held-out text the realised sparsity then lands within about a point of s_i. Projections with
    s_i = 0 get threshold 0 (and no hook when applied).
    """
    projections = find_projections(model)
    smap = sparsity_map(sparsities, [ref.name for ref, _ in projections])
    if token_ids is None:
        if tokenizer is None or texts is None:
            raise AllocationError("calibrate_thresholds needs texts and a tokenizer, or token_ids")
        text = texts if isinstance(texts, str) else "\n\n".join(texts)
        token_ids = tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]
    token_ids = token_ids.flatten()[:max_tokens]
    if token_ids.numel() < 2:
        raise AllocationError("calibration needs at least 2 tokens")
    thresholds: dict[str, float] | None = None
    for _ in range(1 + max(0, refinements)):
        sparsifier = None if thresholds is None else apply_sparsity(model, smap, "threshold", thresholds, track=False)
        histograms = {ref.name: _MagnitudeHistogram() for ref, _ in projections}
        # prepend=True: the histogram sees the input before this projection's own sparsifier.
        handles = [lin.register_forward_pre_hook(histograms[ref.name], prepend=True) for ref, lin in projections]
        try:
            _run_windows(model, token_ids, seqlen)
        finally:
            for handle in handles:
                handle.remove()
            if sparsifier is not None:
                sparsifier.remove()
        thresholds = {name: histograms[name].quantile(s) if s > 0 else 0.0 for name, s in smap.items()}
    assert thresholds is not None
    return thresholds


def _run_windows(model: nn.Module, token_ids: torch.Tensor, seqlen: int) -> None:
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, token_ids.numel(), seqlen):
            window = token_ids[start : start + seqlen].unsqueeze(0).to(device)
            decoder_only(model)(input_ids=window, use_cache=False)
