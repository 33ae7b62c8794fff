"""CATS-style MLP sparsity (Lee et al. 2024, "CATS: Contextually-Aware Thresholding for Sparsity").

CATS sparsifies only the gate activation of each gated MLP, down(act(gate(x)) * up(x)): entry j of
a = act(gate(x)) is zeroed when |a_j| <= t_l, with t_l the s-quantile of |a| of layer l on
calibration text (WikiText-2 validation, each layer calibrated behind the thresholded ones, as in
``acttail.sparsity.calibrate_thresholds``). A zero a_j makes the product zero at j, so row j of
``up`` and column j of ``down`` need not be read. Attention and ``gate`` stay dense.

Budget accounting, honestly: the weights skipped are s * (N_up + N_down) of each layer, so the
parameter-weighted sparsity over all seven projections is s * (N_up + N_down) / N, about s / 2 on
SmolLM2 and Gemma 3 (``mlp_share``). To compare with an allocation at target T, ``gate_sparsity``
gives s = T / share, which is infeasible above ``MAX_GATE_SPARSITY``. ``cats_allocation`` records
the skipped fraction per projection (up and down at s, the rest 0), so its weighted mean *is* the
effective sparsity; it is a record of what CATS skips, evaluated with ``apply_cats``, not a TopK
allocation for ``acttail.sparsity.apply_sparsity``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from acttail.allocate import Allocation
from acttail.errors import AllocationError
from acttail.models.architectures import find_projections
from acttail.sparsity import calibration_forward, calibration_windows, magnitude_quantile

METHOD = "cats"
#: Above this gate sparsity CATS stops being a sparsification of the MLP and becomes its removal.
MAX_GATE_SPARSITY = 0.95


def mlp_share(param_counts: Mapping[str, int]) -> float:
    """(sum of up and down weights) / (all projection weights): the most CATS can skip."""
    skippable = sum(n for name, n in param_counts.items() if name.endswith(("up_proj", "down_proj")))
    return skippable / sum(param_counts.values())


def gate_sparsity(target: float, param_counts: Mapping[str, int]) -> float:
    """The gate-activation sparsity whose effective parameter-weighted sparsity is ``target``."""
    s = target / mlp_share(param_counts)
    if s > MAX_GATE_SPARSITY:
        raise AllocationError(
            f"CATS cannot reach {target:.0%} parameter-weighted sparsity: it skips only up and down "
            f"({mlp_share(param_counts):.0%} of the weights), so it would need {s:.0%} gate sparsity"
        )
    return s


def cats_allocation(
    param_counts: Mapping[str, int], gate: float, *, model_id: str = "", fingerprint: str = ""
) -> Allocation:
    """The record of what CATS at gate sparsity ``gate`` skips (up and down at ``gate``, the rest dense)."""
    sparsities = {n: (gate if n.endswith(("up_proj", "down_proj")) else 0.0) for n in param_counts}
    counts = {n: int(c) for n, c in param_counts.items()}
    total = sum(counts.values())
    target = sum(sparsities[n] * counts[n] for n in counts) / total
    params: dict[str, Any] = {
        "gate_sparsity": gate,
        "evaluate_with": "acttail.cats.apply_cats (gate activation threshold; up rows and down columns skipped)",
    }
    return Allocation(
        model_id=model_id, fingerprint=fingerprint, estimator=None, method=METHOD, target=target,
        sparsities=sparsities, param_counts=counts, params=params,
    )  # fmt: skip


@dataclass(frozen=True)
class _Gate:
    name: str  # the gate_proj module path
    linear: nn.Linear
    act: nn.Module


def _gates(model: nn.Module) -> list[_Gate]:
    modules = dict(model.named_modules())
    out = []
    for ref, linear in find_projections(model):
        if str(ref.kind) != "gate":
            continue
        parent = modules[ref.name.rsplit(".", 1)[0]]
        act = getattr(parent, "act_fn", None)
        if not callable(act):
            raise AllocationError(f"CATS needs the MLP's act_fn next to {ref.name}")
        out.append(_Gate(ref.name, linear, act))
    return out


class _GateHook:
    """Forward hook on gate_proj: zero gate outputs whose activation is small (act(0) = 0 for SiLU/GELU)."""

    def __init__(self, act: nn.Module, threshold: float | None, sparsity: float = 0.0) -> None:
        self.act, self.threshold, self.sparsity = act, threshold, sparsity
        self.zeros = self.elements = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        magnitude = self.act(out).abs()
        if self.threshold is None:  # calibrating: take the quantile over every calibration token
            self.threshold = magnitude_quantile(magnitude, self.sparsity)
        masked = out.masked_fill(magnitude <= self.threshold, 0.0)
        self.zeros += int((masked == 0).sum())
        self.elements += masked.numel()
        return masked


def calibrate_cats(
    model: nn.Module, token_ids: torch.Tensor, gate: float, *, max_tokens: int, seqlen: int
) -> dict[str, float]:
    """Per-layer thresholds t_l on |act(gate(x))| at sparsity ``gate`` (validation token ids, never test)."""
    windows = calibration_windows(token_ids, max_tokens, seqlen)
    hooks = {g.name: _GateHook(g.act, None, gate) for g in _gates(model)}
    calibration_forward(model, windows, [g.linear.register_forward_hook(hooks[g.name]) for g in _gates(model)])
    return {name: float(hook.threshold or 0.0) for name, hook in hooks.items()}


class CatsHandle:
    """Live CATS sparsity; ``remove()`` restores the dense model, ``effective_sparsity()`` measures it."""

    def __init__(self, hooks: dict[str, _GateHook], handles: list[Any], param_counts: Mapping[str, int]) -> None:
        self._hooks, self._handles, self._counts = hooks, handles, dict(param_counts)

    def gate_sparsity(self) -> dict[str, float]:
        """Measured zero fraction of each layer's gate activation."""
        return {n: h.zeros / h.elements if h.elements else 0.0 for n, h in self._hooks.items()}

    def effective_sparsity(self) -> float:
        """Skipped up and down weights over all projection weights, from the measured gate sparsity."""
        skipped = 0.0
        for gate_name, z in self.gate_sparsity().items():
            prefix = gate_name.rsplit(".", 1)[0]
            skipped += z * (self._counts[f"{prefix}.up_proj"] + self._counts[f"{prefix}.down_proj"])
        return skipped / sum(self._counts.values())

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> CatsHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply_cats(model: nn.Module, thresholds: Mapping[str, float]) -> CatsHandle:
    """Threshold every gate activation at its calibrated t_l (``calibrate_cats``)."""
    gates = _gates(model)
    missing = [g.name for g in gates if g.name not in thresholds]
    if missing:
        raise AllocationError(f"no CATS threshold for {missing[0]}")
    hooks = {g.name: _GateHook(g.act, float(thresholds[g.name])) for g in gates}
    handles = [g.linear.register_forward_hook(hooks[g.name]) for g in gates]
    counts = {ref.name: lin.weight.numel() for ref, lin in find_projections(model)}
    return CatsHandle(hooks, handles, counts)
