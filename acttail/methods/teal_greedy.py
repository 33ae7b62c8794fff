"""TEAL's block-wise greedy allocation (``teal-greedy``), adapted to TopK and an exact budget.

TEAL (Liu et al., ICLR 2025, Sec. 4.2; ``teal/greedyopt.py`` in FasterDecoding/TEAL) allocates
sparsity *inside* each transformer block: starting from all seven projections dense, it keeps
raising the projection whose extra sparsity costs the least block-output error on calibration
activations, and logs the block's effective sparsity E = sum_p N_p s_p / sum_p N_p
(N_p = numel(W_p)) after every step. Every block is then run at the same E = target.

Here, per block b with dense calibration inputs x_b and dense outputs y_b = B(x_b):

    err(s) = || B_s(x_b) - y_b ||^2 / || y_b ||^2       (over the last ``last_fraction`` of each window)
    step:  p* = argmin_p [err(s + delta e_p) - err(s)] / (N_p delta / sum_q N_q)

i.e. the projection with the least error per unit of effective sparsity gained (TEAL sizes its
steps by hand-set matrix weights instead; dividing by the gain does the same for any shape).
Candidates are evaluated lazily (the cheapest stale one is re-measured and accepted if it stays
cheapest), which needs ~2 block passes per step instead of 7. The trace runs once up to the
largest target; any target T is read off by linear interpolation between the two steps around
E = T, so every block has E = T exactly. Blocks have equal parameter counts, so the model-wide
parameter-weighted mean is T; a final ``budgeted_sparsities`` pass makes it exact to 1e-6 and
applies the clipping bounds. Sparsification is TopK (ActTail's), not TEAL's thresholds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from acttail.allocate import Allocation, AllocationParams, budgeted_sparsities
from acttail.errors import AllocationError
from acttail.methods.calibration import CalibrationSet
from acttail.models.architectures import find_projections, parse_projection_name
from acttail.models.loading import input_device
from acttail.sparsity import decoder_only, keep_count, topk_sparsify

logger = logging.getLogger(__name__)

METHOD = "teal-greedy"
DEFAULT_STEP = 0.1
DEFAULT_GREEDY_TOKENS = 1024
DEFAULT_LAST_FRACTION = 0.25


@dataclass(frozen=True)
class BlockTrace:
    """One block's greedy path: ``effective[t]`` and the projection sparsities ``states[t]`` after step t."""

    layer: int
    names: tuple[str, ...]  # the block's projection module paths (q..down)
    effective: tuple[float, ...]  # nondecreasing, starts at 0.0
    states: tuple[tuple[float, ...], ...]  # one sparsity per name

    def at(self, target: float) -> dict[str, float]:
        """Sparsities at effective sparsity ``target`` (linear interpolation inside the step)."""
        eff = np.asarray(self.effective)
        if target > eff[-1] + 1e-9:
            raise AllocationError(f"greedy trace of block {self.layer} stops at {eff[-1]:.3f} < target {target}")
        idx = int(np.searchsorted(eff, target, side="left"))
        if idx == 0:
            return dict(zip(self.names, self.states[0], strict=True))
        lo, hi = eff[idx - 1], eff[min(idx, len(eff) - 1)]
        a, b = (
            np.asarray(self.states[idx - 1]),
            np.asarray(self.states[min(idx, len(eff) - 1)]),
        )
        frac = 0.0 if hi <= lo else (target - lo) / (hi - lo)
        return dict(zip(self.names, (a + frac * (b - a)).tolist(), strict=True))


@dataclass(frozen=True)
class GreedyTrace:
    """The greedy paths of all blocks and how they were measured."""

    blocks: tuple[BlockTrace, ...]
    max_target: float
    step: float
    tokens: int
    last_fraction: float

    def sparsities_at(self, target: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for block in self.blocks:
            out.update(block.at(target))
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "last_fraction": self.last_fraction,
            "max_target": self.max_target,
        }


class _BlockSparsifier:
    """TopK pre-hooks on one block's projections with sparsities that can be changed in place."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        self.ks = [lin.in_features for lin in linears]
        self.d_in = [lin.in_features for lin in linears]
        self.handles = [lin.register_forward_pre_hook(self._hook(i)) for i, lin in enumerate(linears)]

    def _hook(self, i: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (topk_sparsify(args[0], self.ks[i]), *args[1:])

        return hook

    def set(self, sparsities: Sequence[float]) -> None:
        self.ks = [keep_count(s, d) for s, d in zip(sparsities, self.d_in, strict=True)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _layer_prefix(name: str) -> str:
    return parse_projection_name(name).block  # model.layers.3.self_attn.q_proj -> model.layers.3


def _capture_block_io(
    model: nn.Module, layer_names: Sequence[str], windows: Sequence[torch.Tensor]
) -> dict[str, list[tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]]]:
    """Dense (args, kwargs, output hidden state) of every decoder layer on every window."""
    captured: dict[str, list[tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]]] = {n: [] for n in layer_names}
    pending: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}
    handles = []
    for name in layer_names:
        layer = model.get_submodule(name)

        def pre(
            module: nn.Module,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            name: str = name,
        ) -> None:
            pending[name] = (args, dict(kwargs))

        def post(
            module: nn.Module,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
            out: Any,
            name: str = name,
        ) -> None:
            a, k = pending.pop(name)
            captured[name].append((a, k, _hidden(out)))

        handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(layer.register_forward_hook(post, with_kwargs=True))
    try:
        with torch.inference_mode():
            for window in windows:
                decoder_only(model)(
                    input_ids=window.to(input_device(model)),
                    use_cache=False,
                )
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _hidden(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _block_error(
    layer: nn.Module,
    io: Sequence[tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]],
    last_fraction: float,
) -> float:
    """sum ||B_s(x) - y||^2 / sum ||y||^2 over the last ``last_fraction`` of the tokens of each window."""
    num, den = 0.0, 0.0
    with torch.inference_mode():
        for args, kwargs, dense in io:
            out = _hidden(layer(*args, **kwargs))  # [1, L, H]
            start = int(dense.shape[-2] * (1.0 - last_fraction))
            diff = (out - dense)[..., start:, :].double()
            num += float(diff.pow(2).sum())
            den += float(dense[..., start:, :].double().pow(2).sum())
    return num / den if den > 0 else num


def greedy_trace(
    model: nn.Module,
    calibration: CalibrationSet,
    *,
    max_target: float = 0.9,
    step: float = DEFAULT_STEP,
    max_tokens: int = DEFAULT_GREEDY_TOKENS,
    last_fraction: float = DEFAULT_LAST_FRACTION,
    s_max: float = 0.99,
    progress: Callable[[str, float], None] | None = None,
) -> GreedyTrace:
    """Run TEAL's greedy search in every block up to effective sparsity ``max_target``.

    Uses the first ``max_tokens`` calibration tokens (whole windows). Cost: about
    2 x (7 / step) x max_target block passes per block. ``progress(stage, fraction)`` is called
    before every block (callers use it to draw progress and to stop a cancelled job).
    """
    if not 0.0 < step <= 0.5:
        raise AllocationError(f"greedy step must be in (0, 0.5], got {step}")
    if not 0.0 <= max_target <= s_max:
        raise AllocationError(f"greedy max_target {max_target} outside [0, {s_max}]")
    windows = calibration.windows()[: max(1, max_tokens // calibration.seqlen)]
    by_layer: dict[str, list[tuple[str, nn.Linear]]] = {}
    for ref, linear in find_projections(model):
        by_layer.setdefault(_layer_prefix(ref.name), []).append((ref.name, linear))
    io = _capture_block_io(model, list(by_layer), windows)
    blocks = []
    for index, (layer_name, projections) in enumerate(by_layer.items()):
        if progress is not None:
            progress(f"greedy search, block {index + 1}/{len(by_layer)}", index / len(by_layer))
        blocks.append(
            _greedy_block(
                index,
                model.get_submodule(layer_name),
                projections,
                io.pop(layer_name),
                max_target,
                step,
                last_fraction,
                s_max,
            )
        )
        logger.info("greedy block %d: %d steps", index, len(blocks[-1].effective) - 1)
    tokens = len(windows) * calibration.seqlen
    return GreedyTrace(tuple(blocks), max_target, step, tokens, last_fraction)


def _greedy_block(
    index: int,
    layer: nn.Module,
    projections: Sequence[tuple[str, nn.Linear]],
    io: Sequence[tuple[tuple[Any, ...], dict[str, Any], torch.Tensor]],
    max_target: float,
    step: float,
    last_fraction: float,
    s_max: float,
) -> BlockTrace:
    names = tuple(n for n, _ in projections)
    weights = np.array([lin.weight.numel() for _, lin in projections], dtype=np.float64)
    weights /= weights.sum()
    state = np.zeros(len(names))
    effective, states = [0.0], [tuple(state.tolist())]
    sparsifier = _BlockSparsifier([lin for _, lin in projections])
    try:
        err_now = 0.0
        # Lazy greedy: cost[p] is the error per unit of effective sparsity of p's next step, measured
        # at some earlier state (stale) or at the current one (fresh); -inf = never measured.
        cost = np.full(len(names), -np.inf)
        cand_err = np.zeros(len(names))
        stale = np.ones(len(names), dtype=bool)
        while effective[-1] < max_target - 1e-12:
            open_ = np.flatnonzero(state < s_max - 1e-12)
            if open_.size == 0:
                break
            while True:
                p = int(open_[np.argmin(cost[open_])])
                if not stale[p]:
                    break
                trial = state.copy()
                trial[p] = min(s_max, state[p] + step)
                sparsifier.set(trial.tolist())
                cand_err[p] = _block_error(layer, io, last_fraction)
                cost[p] = (cand_err[p] - err_now) / ((trial[p] - state[p]) * weights[p])
                stale[p] = False
            state[p] = min(s_max, state[p] + step)
            err_now = cand_err[p]
            effective.append(float(np.dot(weights, state)))
            states.append(tuple(state.tolist()))
            stale[:] = True
    finally:
        sparsifier.remove()
    return BlockTrace(index, names, tuple(effective), tuple(states))


def allocation_from_trace(
    trace: GreedyTrace,
    param_counts: Mapping[str, int],
    target: float,
    params: AllocationParams | None = None,
    *,
    model_id: str = "",
    fingerprint: str = "",
    extra_params: Mapping[str, Any] | None = None,
) -> Allocation:
    """Read the greedy trace at ``target`` and project onto the exact parameter-weighted budget."""
    params = params or AllocationParams()
    names = list(param_counts)
    raw = trace.sparsities_at(target)
    missing = [n for n in names if n not in raw]
    if missing:
        raise AllocationError(f"greedy trace lacks {len(missing)} projections (e.g. {missing[0]})")
    weights = np.array([param_counts[n] for n in names], dtype=np.float64)
    scores = np.array([raw[n] for n in names], dtype=np.float64)
    if target > 0 and float(scores @ weights) <= 0:
        scores = np.ones(len(names))
    values = budgeted_sparsities(scores, weights, target, params.s_min, params.s_max)
    return Allocation(
        model_id=model_id,
        fingerprint=fingerprint,
        estimator=None,
        method=METHOD,
        target=float(target),
        sparsities={n: float(v) for n, v in zip(names, values, strict=True)},
        param_counts={n: int(param_counts[n]) for n in names},
        params={
            **trace.describe(),
            "s_min": params.s_min,
            "s_max": params.s_max,
            **dict(extra_params or {}),
        },
    )
