"""Activation sparsity applied to a loaded causal LM: TopK (ActTail) and calibrated thresholds (TEAL).

ActTail (arXiv 2603.12272) sparsifies the *input* x of every q/k/v/o/gate/up/down projection
y = W x. With projection sparsity s_i and input width d_in:

* ``topk``: per token keep the k_i = round((1 - s_i) * d_in) largest |x_j| and zero the rest, so
  every token has exactly s_i' = 1 - k_i / d_in sparsity (ties broken by ``torch.topk``; exactly
  k_i entries are kept).
* ``threshold`` (TEAL, Liu et al. 2024, Sec. 3): zero x_j when |x_j| <= t_i, where t_i is the
  s_i-quantile of |x| at that projection's input over calibration tokens (WikiText-2 raw
  *validation*, windows spread over the split, with upstream thresholds already applied), so
  sparsity is s_i on average, not per token.

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
from acttail.models.loading import input_device
from acttail.scoring import DEFAULT_SCORING, Scoring, channel_scale, scores

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle
    from transformers import PreTrainedTokenizerBase


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
    """k = round((1 - s) * d_in), clamped to [0, d_in]: the channels TopK keeps at sparsity s.

    The one count of the hooks, the greedy search and the decode kernels (Python's round, half to
    even), so every path keeps the same number of channels.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return min(d_in, max(0, round((1.0 - sparsity) * d_in)))


def topk_sparsify(x: torch.Tensor, k: int, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Keep the k largest-|x| entries along the last dim of x ``[..., d_in]``, zero the rest.

    Exactly k entries per row survive (``topk`` indices are distinct). The smaller of the kept
    or dropped sets is selected, which costs the same either way. ``scale`` ``[d_in]`` ranks by
    |x| * scale instead (``acttail.scoring``: WINA's column norms).
    """
    d_in = x.shape[-1]
    if k >= d_in:
        return x
    if k <= 0:
        return torch.zeros_like(x)
    magnitude = scores(x, scale)
    if k <= d_in - k:
        keep = magnitude.topk(k, dim=-1, sorted=False).indices
        mask = torch.zeros_like(x, dtype=torch.bool).scatter_(-1, keep, True)
        return x * mask
    drop = magnitude.topk(d_in - k, dim=-1, largest=False, sorted=False).indices
    return x.scatter(-1, drop, 0.0)


def threshold_sparsify(x: torch.Tensor, threshold: float, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Zero every entry with |x| <= threshold (TEAL's magnitude pruning), or |x| * scale <= threshold."""
    return x.masked_fill(scores(x, scale) <= threshold, 0.0)


class _ProjectionHook:
    """The forward pre-hook of one Linear: sparsify its input and count zeros."""

    def __init__(
        self,
        name: str,
        mode: SparsityMode,
        k: int = 0,
        threshold: float = 0.0,
        track: bool = True,
        scale: torch.Tensor | None = None,
    ):
        self.name, self.mode, self.k, self.threshold, self.track = name, mode, k, threshold, track
        self.scale = scale
        self.zeros = 0
        self.elements = 0
        self.tokens = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]  # [..., d_in]
        if self.mode is SparsityMode.TOPK:
            out = topk_sparsify(x, self.k, self.scale)
        else:
            out = threshold_sparsify(x, self.threshold, self.scale)
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


def check_thresholds(smap: Mapping[str, float], mode: SparsityMode, thresholds: Mapping[str, float] | None) -> None:
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
    scoring: Scoring | str = DEFAULT_SCORING,
) -> SparsityHandle:
    """Sparsify the inputs of every projection of ``model`` in place; undo with the returned handle.

    ``sparsities`` maps projection module paths to s_i in [0, 1) (an ``Allocation`` or a single
    float for uniform also work). ``threshold`` mode needs ``thresholds`` from
    ``calibrate_thresholds`` (``{name: t_i}``, calibrated with the same ``scoring``). ``scoring``
    chooses which entries survive (``acttail.scoring``: |x|, or WINA's |x| * column norm).
    ``track=False`` skips zero counting (slightly faster).
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
        scale = channel_scale(linear, scoring)
        if mode is SparsityMode.TOPK:
            hook = _ProjectionHook(ref.name, mode, k=keep_count(s, linear.in_features), track=track, scale=scale)
        else:
            assert thresholds is not None
            hook = _ProjectionHook(ref.name, mode, threshold=float(thresholds[ref.name]), track=track, scale=scale)
        hooks[ref.name] = hook
        handles.append(linear.register_forward_pre_hook(hook))
    counts = {ref.name: linear.weight.numel() for ref, linear in projections}
    return SparsityHandle(mode, smap, counts, hooks, handles)


def decoder_only(model: nn.Module) -> nn.Module:
    """The decoder stack without the LM head (skips a [tokens, vocab] logits tensor: 2 GB for Gemma)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    return decoder if isinstance(decoder, nn.Module) else model


def calibration_windows(token_ids: torch.Tensor, max_tokens: int, seqlen: int) -> torch.Tensor:
    """``[n, seqlen]``: n = max_tokens // seqlen full windows, evenly spread over the whole stream.

    Spread, not the first ``max_tokens`` tokens: projection inputs drift between documents (a late
    o_proj of SmolLM2-135M moves by up to 5 points of sparsity between WikiText-2 articles at one
    threshold), so n windows from n places estimate the split's quantiles much better than n
    consecutive windows of two or three articles. Full windows of the evaluation's length: o_proj
    inputs are attention outputs whose magnitudes depend on the position (SmolLM2 layer 10: 26%
    of |x| under its 60% threshold at position 0, 62% past position 256), so calibration must
    weigh positions as the evaluation does, and a short last window would over-weigh the first
    positions. Fewer tokens than one window: the one short window there is.
    """
    ids = token_ids.flatten()
    total = ids.numel()
    if total < 2:
        raise AllocationError("calibration needs at least 2 tokens")
    if total <= seqlen:
        return ids.unsqueeze(0)
    n = max(1, min(max_tokens, total) // seqlen)
    starts = torch.linspace(0, total - seqlen, n).round().long().tolist()
    return torch.stack([ids[start : start + seqlen] for start in starts])


def magnitude_quantile(x: torch.Tensor, q: float, scale: torch.Tensor | None = None) -> float:
    """The q-quantile of |x| (or |x| * scale) over all entries: the k-th smallest, k = ceil(q * numel); 0 for q <= 0."""
    magnitude = scores(x.detach(), scale).flatten().float()
    k = min(magnitude.numel(), math.ceil(q * magnitude.numel()))
    return 0.0 if k <= 0 else float(magnitude.kthvalue(k).values)


class _CalibrationHook:
    """Pre-hook of one projection for the calibration forward: t_i from this input, then applied.

    The forward carries every calibration window at once, so the first call sees all calibration
    tokens: t_i = Quantile_{s_i}(|x_i|). With ``apply`` the input is then thresholded with t_i, so
    every later projection is calibrated on what it will see at evaluation time.
    """

    def __init__(self, sparsity: float, apply: bool, scale: torch.Tensor | None = None) -> None:
        self.sparsity, self.apply, self.scale = sparsity, apply, scale
        self.threshold: float | None = None

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]  # [windows, seqlen, d_in]
        if self.threshold is None:
            self.threshold = magnitude_quantile(x, self.sparsity, self.scale)
        return (threshold_sparsify(x, self.threshold, self.scale), *args[1:]) if self.apply else None


def calibration_forward(model: nn.Module, windows: torch.Tensor, handles: Sequence[RemovableHandle]) -> None:
    """One forward of the decoder over all calibration ``windows`` at once, then remove ``handles``.

    The hooks behind ``handles`` see every calibration token in one call, so each takes its quantile
    over all of them (threshold calibration here, CATS in ``acttail.cats``).
    """
    try:
        with torch.inference_mode():
            decoder_only(model)(input_ids=windows.to(input_device(model)), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()


def calibrate_thresholds(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    sparsities: Mapping[str, float] | Allocation | float,
    texts: str | Iterable[str] | None = None,
    *,
    token_ids: torch.Tensor | None = None,
    max_tokens: int = 16_384,
    seqlen: int = 2048,
    sequential: bool = True,
    scoring: Scoring | str = DEFAULT_SCORING,
) -> dict[str, float]:
    """Per-projection magnitude thresholds t_i = Quantile_{s_i}(|x_i|) over calibration tokens.

    The model is run on ``texts`` (joined with "\n\n" and tokenised once) or on the given
    ``token_ids`` (1-D): ``max_tokens`` // ``seqlen`` windows of ``seqlen`` tokens spread over
    the whole stream (``calibration_windows``). Pass the whole WikiText-2 raw validation split
    (``acttail.evaluate.perplexity.tokenize_split(tokenizer, "validation")``), never the test
    split, and the ``seqlen`` of the evaluation.

    ``sequential`` (default): one forward pass over all windows at once, in which each
    projection's pre-hook takes its quantile over every calibration token and then applies it,
    so each t_i is measured on inputs already thresholded upstream (exact in-sample sparsity
    s_i for every projection; dense-measured thresholds overshoot downstream). ``False``: TEAL's
    calibration, every t_i from dense activations. Memory: activations of ``max_tokens`` tokens at
    once. Projections with s_i = 0 get threshold 0 (and no hook when applied). ``scoring``: the
    thresholds are quantiles of the scores the evaluation compares (|x|, or WINA's |x| * ||W_j||).
    """
    projections = find_projections(model)
    smap = sparsity_map(sparsities, [ref.name for ref, _ in projections])
    if token_ids is None:
        if tokenizer is None or texts is None:
            raise AllocationError("calibrate_thresholds needs texts and a tokenizer, or token_ids")
        text = texts if isinstance(texts, str) else "\n\n".join(texts)
        token_ids = tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]
    windows = calibration_windows(token_ids, max_tokens, seqlen)  # [n, seqlen]
    modules = {ref.name: lin for ref, lin in projections}
    hooks = {
        name: _CalibrationHook(s, sequential, channel_scale(modules[name], scoring))
        for name, s in smap.items()
        if s > 0
    }
    calibration_forward(model, windows, [lin.register_forward_pre_hook(hooks[ref.name])
                                         for ref, lin in projections if ref.name in hooks])  # fmt: skip
    thresholds = {name: hook.threshold for name, hook in hooks.items()}
    unseen = [name for name, t in thresholds.items() if t is None]
    if unseen:
        raise AllocationError(f"the calibration forward never reached {unseen[0]}")
    return {name: float(thresholds.get(name) or 0.0) for name in smap}
