"""Sensitivity study: which parts of the model can take activation sparsity, and what predicts it.

For each projection kind k (q, k, v, o, gate, up, down) and each group g of consecutive layers
(``groups`` equal slices of the stack), only the projections of that cell are TopK-sparsified at
``level``; everything else stays dense. On calibration text (WikiText-2 raw validation):

    dNLL(k, g)            = NLL(cell sparse) - NLL(dense)              (nats/token; PPL ratio = e^dNLL)
    dNLL_per_param(k, g)  = dNLL(k, g) / (level * N_cell) * 1e6          (cost per million weights skipped)

The second is what an allocation trades: at a fixed parameter-weighted budget, sparsity should go
where it costs least per weight skipped. Candidate predictors, each the mean over the cell's
projections: alpha (one per ESD estimator given), log10 spectral norm (λ_max of WᵀW), stable rank,
alpha-hat (α log10 λ_max), and statistics of the projection *input* x on the same dense text:
mean |x|, excess kurtosis E[(x-μ)^4]/σ^4 - 3, and ``dropped_energy`` = the fraction of ||x||^2
that TopK at ``level`` removes (per token, averaged). Their Spearman rank correlation with the
two sensitivities is reported across all 7·G cells. ActTail's default (more sparsity to higher
alpha) is right when sensitivity *falls* with alpha, i.e. rho < 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from acttail.errors import ActTailError
from acttail.methods.calibration import CalibrationSet, calibration_nll
from acttail.models.architectures import PROJECTION_ORDER, find_projections
from acttail.sparsity import keep_count

if TYPE_CHECKING:
    from acttail.esd import ESDReport

SENSITIVITY_FORMAT = "acttail.sensitivity"
ESD_PREDICTORS = ("log_spectral_norm", "stable_rank", "alpha_weighted")
ACTIVATION_PREDICTORS = ("mean_abs", "kurtosis", "dropped_energy")
TARGETS = ("delta_nll", "delta_nll_per_mparam")


@dataclass(frozen=True)
class SensitivityCell:
    """One (kind, layer group) cell: what sparsifying only it costs, and its predictor values."""

    kind: str
    group: int
    layers: tuple[int, ...]
    param_count: int
    nll: float
    delta_nll: float
    delta_nll_per_mparam: float
    predictors: dict[str, float]


@dataclass(frozen=True)
class SensitivityResult:
    """The study of one model at one level; ``correlations[target][predictor]`` = Spearman rho."""

    model_id: str
    level: float
    groups: int
    calibration: dict[str, Any]
    dense_nll: float
    cells: tuple[SensitivityCell, ...]
    correlations: dict[str, dict[str, float]]
    estimators: tuple[str, ...]

    @property
    def dense_ppl(self) -> float:
        return math.exp(self.dense_nll)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["format"] = SENSITIVITY_FORMAT
        doc["dense_ppl"] = self.dense_ppl
        return doc

    def matrix(self, value: str = "delta_nll") -> tuple[list[str], np.ndarray]:
        """``(kinds, M)`` with M[i, g] the ``value`` of kind i in group g."""
        kinds = [str(k) for k in PROJECTION_ORDER if any(c.kind == k for c in self.cells)]
        out = np.full((len(kinds), self.groups), np.nan)
        for cell in self.cells:
            out[kinds.index(cell.kind), cell.group] = getattr(cell, value)
        return kinds, out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN when either side is constant."""
    from scipy.stats import rankdata

    rx, ry = (
        rankdata(np.asarray(x, dtype=np.float64)),
        rankdata(np.asarray(y, dtype=np.float64)),
    )
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


class _InputStats:
    """Streaming raw moments of one projection's input and the energy TopK at ``level`` drops."""

    def __init__(self, level: float) -> None:
        self.level = level
        self.n = 0
        self.sums = np.zeros(5)  # sum |x|, x, x^2, x^3, x^4 (fp64)
        self.dropped = 0.0
        self.tokens = 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().double().reshape(-1, args[0].shape[-1])  # [tokens, d_in]
        self.n += x.numel()
        self.sums += np.array(
            [
                float(x.abs().sum()),
                float(x.sum()),
                float(x.pow(2).sum()),
                float(x.pow(3).sum()),
                float(x.pow(4).sum()),
            ]
        )
        energy = x.pow(2)
        k = keep_count(self.level, x.shape[-1])
        kept = energy.topk(k, dim=-1).values.sum(-1) if k > 0 else torch.zeros(x.shape[0], dtype=x.dtype)
        total = energy.sum(-1).clamp_min(1e-300)
        self.dropped += float((1.0 - kept / total).sum())
        self.tokens += x.shape[0]

    def summary(self) -> dict[str, float]:
        m_abs, m1, m2, m3, m4 = self.sums / max(self.n, 1)
        var = max(m2 - m1**2, 1e-300)
        central4 = m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4
        return {
            "mean_abs": m_abs,
            "kurtosis": central4 / var**2 - 3.0,
            "dropped_energy": self.dropped / max(self.tokens, 1),
        }


def activation_stats(model: nn.Module, calibration: CalibrationSet, level: float) -> dict[str, dict[str, float]]:
    """mean |x|, excess kurtosis and TopK-dropped energy of every projection input, on dense text."""
    projections = find_projections(model)
    stats = {ref.name: _InputStats(level) for ref, _ in projections}
    handles = [lin.register_forward_pre_hook(stats[ref.name]) for ref, lin in projections]
    try:
        calibration_nll(model, calibration, None)
    finally:
        for handle in handles:
            handle.remove()
    return {name: s.summary() for name, s in stats.items()}


def layer_groups(num_layers: int, groups: int) -> list[tuple[int, ...]]:
    """``groups`` slices of consecutive layers, sizes differing by at most one."""
    if not 1 <= groups <= num_layers:
        raise ActTailError(f"groups must be in [1, {num_layers}], got {groups}")
    return [tuple(int(i) for i in part) for part in np.array_split(np.arange(num_layers), groups)]


def sensitivity_study(
    model: nn.Module,
    calibration: CalibrationSet,
    reports: Sequence[ESDReport] | ESDReport,
    *,
    level: float = 0.7,
    groups: int = 3,
    model_id: str = "",
) -> SensitivityResult:
    """Run the study (7 x ``groups`` + 2 passes over the calibration set); see the module docstring."""
    if not 0.0 < level < 1.0:
        raise ActTailError(f"sensitivity level must be in (0, 1), got {level}")
    reports = [reports] if not isinstance(reports, Sequence) else list(reports)
    if not reports:
        raise ActTailError("the sensitivity study needs at least one ESD report")
    projections = find_projections(model)
    names = [ref.name for ref, _ in projections]
    esd = {p.name: p for p in reports[0].projections}
    missing = [n for n in names if n not in esd]
    if missing:
        raise ActTailError(f"ESD report lacks {len(missing)} projections of the model (e.g. {missing[0]})")
    per_proj: dict[str, dict[str, float]] = {n: {} for n in names}
    for report in reports:
        alphas = report.alphas()
        for n in names:
            per_proj[n][f"alpha_{report.estimator}"] = alphas[n]
    for n in names:
        p = esd[n]
        per_proj[n].update(
            log_spectral_norm=math.log10(p.spectral_norm),
            stable_rank=p.stable_rank,
            alpha_weighted=p.alpha_weighted,
        )
    for n, values in activation_stats(model, calibration, level).items():
        per_proj[n].update(values)
    dense = calibration_nll(model, calibration, None)
    num_layers = 1 + max(ref.layer for ref, _ in projections)
    cells = []
    for kind in PROJECTION_ORDER:
        for g, layers in enumerate(layer_groups(num_layers, groups)):
            members = [ref.name for ref, _ in projections if ref.kind == kind and ref.layer in layers]
            if not members:
                continue
            sparsities = {n: (level if n in members else 0.0) for n in names}
            nll = calibration_nll(model, calibration, sparsities)
            count = sum(esd[n].param_count for n in members)
            predictors = {key: float(np.mean([per_proj[n][key] for n in members])) for key in per_proj[members[0]]}
            cells.append(
                SensitivityCell(
                    str(kind),
                    g,
                    layers,
                    count,
                    nll,
                    nll - dense,
                    (nll - dense) / (level * count) * 1e6,
                    predictors,
                )
            )
    keys = list(cells[0].predictors)
    correlations = {
        target: {key: spearman([c.predictors[key] for c in cells], [getattr(c, target) for c in cells]) for key in keys}
        for target in TARGETS
    }
    return SensitivityResult(
        model_id,
        level,
        groups,
        calibration.describe(),
        dense,
        tuple(cells),
        correlations,
        tuple(r.estimator for r in reports),
    )


def plot_sensitivity(result: SensitivityResult, path: str | Path) -> Path:
    """Heat map of dNLL per (kind, layer group) and bars of Spearman rho per predictor, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.4))
    kinds, mat = result.matrix("delta_nll_per_mparam")
    image = left.imshow(mat, cmap="magma_r", aspect="auto")
    left.set_yticks(range(len(kinds)), kinds)
    left.set_xticks(
        range(result.groups),
        [f"L{c.layers[0]}-{c.layers[-1]}" for c in result.cells[: result.groups]],
    )
    left.set_title(f"dNLL per M weights skipped (level {result.level:g})")
    fig.colorbar(image, ax=left, shrink=0.8)
    preds = list(result.correlations["delta_nll"])
    x = np.arange(len(preds))
    for offset, target in ((-0.2, "delta_nll"), (0.2, "delta_nll_per_mparam")):
        right.bar(
            x + offset,
            [result.correlations[target][p] for p in preds],
            width=0.4,
            label=target,
        )
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_xticks(x, preds, rotation=35, ha="right")
    right.set_ylim(-1, 1)
    right.set_ylabel("Spearman rho with sensitivity")
    right.set_title(f"{result.model_id}: what predicts sensitivity ({len(result.cells)} cells)")
    right.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def predictor_table(result: SensitivityResult) -> list[tuple[str, float, float]]:
    """``(predictor, rho vs dNLL, rho vs dNLL per M weights)`` rows for printing."""
    return [
        (
            k,
            result.correlations["delta_nll"][k],
            result.correlations["delta_nll_per_mparam"][k],
        )
        for k in result.correlations["delta_nll"]
    ]


def cells_by_kind(result: SensitivityResult) -> Mapping[str, list[SensitivityCell]]:
    out: dict[str, list[SensitivityCell]] = {}
    for cell in result.cells:
        out.setdefault(cell.kind, []).append(cell)
    return out
