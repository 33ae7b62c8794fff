"""Pictures of ESD results, allocations and sparsity sweeps (matplotlib, headless, deterministic).

Four figures, each built from result objects alone so the CLI, the API and the dashboard share
them:

- ``plot_esd``: one projection's empirical spectral density, the histogram of the eigenvalues λ
  of WᵀW on log-log axes (log-spaced bins, density), with the fitted power-law tail
  p(λ) = (n_tail / N) · (α − 1) / x_min · (λ / x_min)^(−α) drawn from x_min to λ_max (the
  density of the whole spectrum restricted to the tail, so it sits on the histogram) and x_min
  marked: WeightWatcher's signature plot.
- ``plot_alphas``: alpha per layer, one line per projection type, with the HT-SR reference band
  2 ≤ α ≤ 6 shaded (Martin & Mahoney: well-trained layers fall inside it; α < 2 very heavy
  tailed, α > 6 under-trained).
- ``plot_allocation``: the allocation as a layers × projections heatmap of sparsity.
- ``plot_sweep``: perplexity (log scale) against target sparsity per method, dense as a
  horizontal line, and mean zero-shot accuracy in a second panel when the rows carry it.

Thread safety: no pyplot. Figures are ``matplotlib.figure.Figure`` objects with their own Agg
canvas. Matplotlib reads its rcParams (a process-wide dict) when artists are created and when a
figure is saved, so both happen inside one module lock under a fixed style (matplotlib's defaults
plus ``STYLE``, whatever the user's matplotlibrc says), with ``svg.hashsalt`` fixed and the date
dropped from the metadata: the same input gives byte-identical SVG and PNG, so the API can cache
by content.

This module must not import torch (the API imports it), so it takes its inputs by duck type
(anything with the right attributes, or the plain dicts stored in the database) and parses
projection names with ``acttail.models.architectures.parse_projection_name`` (torch-free).
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, ParamSpec, Protocol, TypeVar

import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FuncFormatter,
    LogLocator,
    MaxNLocator,
    NullFormatter,
)

from acttail.errors import ActTailError
from acttail.models.architectures import parse_projection_name

__all__ = [
    "HTSR_BAND",
    "KIND_COLORS",
    "KIND_ORDER",
    "PlotError",
    "TailFit",
    "plot_allocation",
    "plot_alphas",
    "plot_esd",
    "plot_sweep",
    "render_bytes",
    "save_figure",
]

KIND_ORDER: tuple[str, ...] = (
    "q",
    "k",
    "v",
    "qkv",
    "o",
    "gate",
    "up",
    "gate_up",
    "down",
)  # = ProjectionType order (qkv, gate_up: fused projections, e.g. Phi-3)
# Okabe-Ito (colour-blind safe): attention in blues/green/purple, MLP in orange/red/black.
KIND_COLORS: dict[str, str] = {
    "q": "#0072B2",
    "k": "#56B4E9",
    "v": "#009E73",
    "qkv": "#56B4E9",  # fused q/k/v: never in one model with q, k or v
    "o": "#CC79A7",
    "gate": "#E69F00",
    "up": "#D55E00",
    "gate_up": "#E69F00",  # fused gate/up: never in one model with gate or up
    "down": "#000000",
}
KIND_MARKERS: dict[str, str] = {
    "q": "o",
    "k": "s",
    "v": "^",
    "qkv": "h",
    "o": "D",
    "gate": "v",
    "up": "P",
    "gate_up": "*",
    "down": "X",
}
METHOD_COLORS: dict[str, str] = {"uniform": "#0072B2", "acttail": "#D55E00"}
_OTHER_METHOD_COLORS = ("#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442")
HTSR_BAND: tuple[float, float] = (2.0, 6.0)
EVALS_FLOOR = 1e-5  # eigenvalues at or below are numerical zeros (WeightWatcher's EVALS_THRESH)
DPI = 150
SVG_HASHSALT = "acttail"

STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: identical glyphs everywhere
    "font.size": 10.0,
    "axes.titlesize": 11.0,
    "axes.labelsize": 10.0,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8.5,
    "legend.frameon": False,
    "figure.dpi": 100.0,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.08,
    "svg.fonttype": "path",  # text as paths: renders the same without the font installed
    "svg.hashsalt": SVG_HASHSALT,  # stable element ids: identical bytes for identical input
    "path.simplify": True,
}

_ATTN_KINDS = frozenset({"q", "k", "v", "qkv", "o"})

_LOCK = threading.RLock()
_P = ParamSpec("_P")
_R = TypeVar("_R")


class PlotError(ActTailError, ValueError):
    """The input cannot be drawn: empty, malformed, or not finite. The message says which."""


class TailFit(Protocol):
    """A power-law fit of an ESD tail: ``acttail.esd.PowerLawFit`` and ``ProjectionESD`` both qualify."""

    @property
    def alpha(self) -> float: ...

    @property
    def xmin(self) -> float: ...


@contextmanager
def _styled() -> Iterator[None]:
    """Hold the module lock and matplotlib's defaults + ``STYLE`` while artists are made or saved."""
    with _LOCK, matplotlib.style.context(["default", STYLE]):
        yield


def _locked(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _styled():
            return fn(*args, **kwargs)

    wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = (
        fn.__name__,
        fn.__qualname__,
        fn.__doc__,
    )
    wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
    return wrapper


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself; Agg regardless of the process-wide backend
    return fig


# --------------------------------------------------------------------------------------------
# ESD histogram with its fitted tail


@_locked
def plot_esd(
    evals: Sequence[float] | np.ndarray,
    fit: TailFit,
    *,
    title: str | None = None,
    bins: int | None = None,
) -> Figure:
    """Log-log ESD of one projection with the fitted power-law tail and x_min marked.

    ``evals`` are the eigenvalues λ of WᵀW (any order; values ≤ 1e-5 are dropped as numerical
    zeros, like the fit does). The histogram uses ``bins`` log-spaced bins (default
    clip(2·√N, 20, 100)) with density normalisation, so bar height = count / (N · bin width).
    The tail line is the fitted density scaled by the tail's share of the spectrum,
    (n_tail/N) · (α − 1)/x_min · (λ/x_min)^(−α) for x_min ≤ λ ≤ λ_max, where n_tail counts
    λ ≥ x_min (``fit.num_tail`` when the fit carries it).
    """
    values = _finite_array(evals, "evals")
    values = np.sort(values[values > EVALS_FLOOR])
    if values.size < 2 or values[0] == values[-1]:
        raise PlotError(f"ESD plot needs at least 2 distinct eigenvalues above {EVALS_FLOOR:g}, got {values.size}")
    alpha, xmin = (
        _number(getattr(fit, "alpha", None), "fit.alpha"),
        _number(getattr(fit, "xmin", None), "fit.xmin"),
    )
    if alpha <= 1.0:
        raise PlotError(f"fit.alpha must be > 1 for a normalisable power law, got {alpha:g}")
    if not values[0] <= xmin <= values[-1]:
        raise PlotError(f"fit.xmin = {xmin:g} lies outside the eigenvalue range [{values[0]:g}, {values[-1]:g}]")
    n = values.size
    num_bins = bins if bins is not None else int(np.clip(round(2 * math.sqrt(n)), 20, 100))
    if num_bins < 2:
        raise PlotError(f"bins must be at least 2, got {num_bins}")
    edges = np.logspace(math.log10(values[0]), math.log10(values[-1]), num_bins + 1)
    edges[0], edges[-1] = (
        values[0],
        values[-1],
    )  # 10**log10(λ) can round below λ_max and drop it
    num_tail = getattr(fit, "num_tail", None)
    n_tail = int(num_tail) if isinstance(num_tail, int) and num_tail > 0 else int(np.count_nonzero(values >= xmin))

    fig = _new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    counts, _, _ = ax.hist(
        values,
        bins=edges.tolist(),
        density=True,
        histtype="stepfilled",
        color="#56B4E9",
        alpha=0.55,
        edgecolor="#0072B2",
        linewidth=0.8,
        label=f"ESD ({n} eigenvalues)",
    )
    heights = np.asarray(counts, dtype=float)  # one data set, so one array of bin heights
    lam = np.logspace(math.log10(xmin), math.log10(values[-1]), 64)
    tail_density = (n_tail / n) * (alpha - 1.0) / xmin * (lam / xmin) ** (-alpha)
    ax.plot(
        lam,
        tail_density,
        color="#D55E00",
        linewidth=2.0,
        label=f"power-law fit, α = {alpha:.2f} ({n_tail} in tail)",
    )
    ax.axvline(
        xmin,
        color="#000000",
        linestyle="--",
        linewidth=1.2,
        label=f"$x_{{min}}$ = {xmin:.3g}",
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Headroom above the histogram (30 % of the decades shown) so the legend covers no data.
    low = min(float(heights[heights > 0].min()), float(tail_density[-1]))
    high = float(heights.max())
    ax.set_ylim(low / 2.0, high * (high / low) ** 0.3)
    ax.set_xlabel("eigenvalue λ of WᵀW")
    ax.set_ylabel("density")
    ax.set_title(title if title is not None else f"ESD, α = {alpha:.2f}")
    # The x_min line spans the full height, so the legend gets an opaque box wherever it lands.
    ax.legend(
        loc="upper right",
        frameon=True,
        framealpha=0.92,
        facecolor="white",
        edgecolor="none",
    )
    return fig


# --------------------------------------------------------------------------------------------
# Alpha per layer


@_locked
def plot_alphas(report_or_rows: Any, *, title: str | None = None) -> Figure:
    """Alpha against layer index, one line per projection type, HT-SR band 2 ≤ α ≤ 6 shaded.

    Accepts an ``ESDReport`` (anything with ``.projections`` whose items have ``layer``,
    ``kind``, ``alpha``), its ``to_dict()`` document, or an iterable of rows (dicts or objects)
    with ``layer``, ``kind`` and ``alpha``, e.g. database rows. Lines follow ``KIND_ORDER``
    with fixed colours and markers; kinds absent from the input get no line.
    """
    rows, default_title = _alpha_rows(report_or_rows)
    by_kind: dict[str, list[tuple[int, float]]] = {}
    for layer, kind, alpha in rows:
        by_kind.setdefault(kind, []).append((layer, alpha))
    fig = _new_figure(7.6, 4.2)
    ax = fig.add_subplot()
    low, high = HTSR_BAND
    ax.axhspan(
        low,
        high,
        color="#009E73",
        alpha=0.10,
        linewidth=0,
        label=f"HT-SR band {low:g} ≤ α ≤ {high:g}",
    )
    for kind in KIND_ORDER:
        points = sorted(by_kind.get(kind, []))
        if not points:
            continue
        layers, alphas = zip(*points, strict=True)
        ax.plot(
            layers,
            alphas,
            color=KIND_COLORS[kind],
            marker=KIND_MARKERS[kind],
            markersize=3.5,
            linewidth=1.3,
            linestyle="-" if kind in _ATTN_KINDS else "--",
            label=kind,
        )
    all_layers = [layer for layer, _, _ in rows]
    all_alphas = [alpha for _, _, alpha in rows]
    ax.set_xlim(min(all_layers) - 0.5, max(all_layers) + 0.5)
    top = max(max(all_alphas), high)
    bottom = min(min(all_alphas), low)
    pad = 0.05 * (top - bottom)
    ax.set_ylim(max(0.0, bottom - pad), top + pad)
    locator = ax.xaxis.get_major_locator()
    if isinstance(locator, MaxNLocator):  # the linear axis' default AutoLocator is one
        locator.set_params(integer=True)
    ax.set_xlabel("layer")
    ax.set_ylabel("α (power-law exponent of the ESD tail)")
    ax.set_title(title if title is not None else default_title)
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        title="projection",
        title_fontsize=8.5,
    )
    return fig


def _alpha_rows(source: Any) -> tuple[list[tuple[int, str, float]], str]:
    """(layer, kind, alpha) triples and a default title from any accepted alpha input."""
    title = "α per layer"
    items: Any = source
    if isinstance(source, Mapping):
        if "projections" not in source:
            raise PlotError("alpha input is a mapping without 'projections' (expected an ESD report document)")
        items = source["projections"]
        title = _report_title(source.get("model"), source.get("estimator"))
    elif hasattr(source, "projections"):
        items = source.projections
        title = _report_title(getattr(source, "model", None), getattr(source, "estimator", None))
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise PlotError(f"alpha input must be an ESD report or a list of rows, got {type(source).__name__}")
    rows: list[tuple[int, str, float]] = []
    for i, item in enumerate(items):
        layer, kind, alpha = (_field(item, key, i) for key in ("layer", "kind", "alpha"))
        kind = str(getattr(kind, "value", kind))
        if kind not in KIND_COLORS:
            raise PlotError(f"row {i}: unknown projection kind {kind!r}; valid: {', '.join(KIND_ORDER)}")
        if isinstance(layer, bool) or not isinstance(layer, int | np.integer) or layer < 0:
            raise PlotError(f"row {i}: layer must be a non-negative integer, got {layer!r}")
        rows.append((int(layer), kind, _number(alpha, f"row {i}: alpha")))
    if not rows:
        raise PlotError("no alphas to plot")
    return rows, title


def _report_title(model: Any, estimator: Any) -> str:
    model_id = model.get("model_id") if isinstance(model, Mapping) else None
    parts = [str(model_id)] if model_id else []
    parts.append("α per layer")
    if estimator:
        parts.append(f"estimator {estimator}")
    return " · ".join(parts)


# --------------------------------------------------------------------------------------------
# Allocation heatmap


@_locked
def plot_allocation(allocation: Any, *, title: str | None = None, annotate: bool | None = None) -> Figure:
    """Heatmap of an allocation: rows = layers (0 at the top), columns = the kinds present (q … down).

    Accepts an ``acttail.allocate.Allocation`` (or anything with ``sparsities``, ``target``,
    ``method``, ``model_id``) or its ``to_dict()`` document. Colour = sparsity over the data's
    deviation from the target (so a ±10 % spread is visible; at least ±1 %) on a diverging map
    centred on the target: red cells are sparser than the target, blue ones denser, white at
    the target, which is also marked on the colourbar. Cells show the sparsity in percent
    when ``annotate`` (default: when there are at most 64 layers). Missing cells are blank.
    A MoE block's cell is the mean over its experts (and shared expert) of that kind.
    """
    sparsities, target, method, model_id = _allocation_fields(allocation)
    members: dict[tuple[int, str], list[float]] = {}
    for name, value in sparsities.items():
        try:
            ref = parse_projection_name(str(name))
        except ValueError as exc:
            raise PlotError(str(exc)) from None
        members.setdefault((ref.layer, ref.kind.value), []).append(_sparsity(value, f"sparsity of {name}"))
    cells = {key: float(np.mean(values)) for key, values in members.items()}
    layers = sorted({layer for layer, _ in cells})
    kinds = [k for k in KIND_ORDER if any(kind == k for _, kind in cells)]
    grid = np.full((len(layers), len(kinds)), np.nan)
    row_of = {layer: i for i, layer in enumerate(layers)}
    for (layer, kind), value in cells.items():
        grid[row_of[layer], kinds.index(kind)] = value
    # Linear colour scale symmetric about the target (white), at least ±1 %, so equal colour
    # distances mean equal sparsity distances on both sides.
    half = max(0.01, float(np.nanmax(np.abs(grid - target))))
    vmin, vmax = target - half, target + half

    height = float(np.clip(1.3 + 0.22 * len(layers), 3.0, 14.0))
    fig = _new_figure(1.9 + 0.62 * len(kinds), height)
    ax = fig.add_subplot()
    norm = Normalize(vmin=vmin, vmax=vmax)
    image = ax.imshow(grid, cmap="RdBu_r", norm=norm, aspect="auto", interpolation="nearest")
    ax.grid(False)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    step = max(1, math.ceil(len(layers) / 32))
    ax.set_yticks(
        range(0, len(layers), step),
        [str(layers[i]) for i in range(0, len(layers), step)],
    )
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_ylabel("layer")
    if annotate if annotate is not None else len(layers) <= 64:
        for (row, col), value in np.ndenumerate(grid):
            if not np.isnan(value):
                dark_cell = abs(float(norm(value)) - 0.5) > 0.3  # saturated ends of RdBu: white text
                ax.text(
                    col,
                    row,
                    f"{100 * value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if dark_cell else "black",
                )
    cbar = fig.colorbar(image, ax=ax, fraction=0.08, pad=0.03, aspect=30)
    cbar.set_label("sparsity of the projection's input (%)")
    cbar.ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))  # whole percents where possible
    cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.4g}%"))
    cbar.ax.axhline(target, color="#000000", linewidth=1.5)
    cbar.ax.text(
        -0.15,
        target,
        "target",
        transform=cbar.ax.get_yaxis_transform(),
        va="center",
        ha="right",
        fontsize=7.5,
        clip_on=False,
    )
    prefix = f"{model_id}\n" if model_id else ""
    ax.set_title(
        title if title is not None else f"{prefix}{method} allocation, target {100 * target:.4g}%",
        pad=6,
    )
    return fig


def _allocation_fields(allocation: Any) -> tuple[Mapping[str, Any], float, str, str]:
    def get(key: str) -> Any:
        return allocation.get(key) if isinstance(allocation, Mapping) else getattr(allocation, key, None)

    sparsities = get("sparsities")
    if not isinstance(sparsities, Mapping) or not sparsities:
        raise PlotError("allocation needs a non-empty 'sparsities' mapping of projection name -> sparsity")
    target = _sparsity(get("target"), "allocation target")
    method = get("method")
    model_id = get("model_id")
    return (
        sparsities,
        target,
        str(method) if method else "allocation",
        str(model_id) if model_id else "",
    )


# --------------------------------------------------------------------------------------------
# Perplexity / accuracy against sparsity


@_locked
def plot_sweep(rows: Iterable[Mapping[str, Any]], *, title: str | None = None) -> Figure:
    """Perplexity (log y) against target sparsity, one line per method, dense as a horizontal line.

    Each row: ``target`` (sparsity in [0, 1)), ``method`` (str), ``perplexity`` (> 0), optional
    ``mean_accuracy`` (mean zero-shot accuracy in [0, 1], or None) and optional ``dense`` (bool;
    also implied by method ``"dense"``). Dense rows need no target. When any row has a mean
    accuracy, a second panel plots it against sparsity the same way. Two rows for the same
    (method, target) are an error: they come from different settings and must be filtered first.
    """
    rows = list(rows)
    if not rows:
        raise PlotError("no sweep rows to plot")
    dense_ppl: float | None = None
    dense_acc: float | None = None
    series: dict[str, dict[float, tuple[float, float | None]]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise PlotError(f"sweep row {i} must be a mapping, got {type(row).__name__}")
        method = str(row.get("method") or "")
        ppl = _number(row.get("perplexity"), f"sweep row {i}: perplexity")
        if ppl <= 0:
            raise PlotError(f"sweep row {i}: perplexity must be positive, got {ppl:g}")
        acc_raw = row.get("mean_accuracy")
        acc = None if acc_raw is None else _number(acc_raw, f"sweep row {i}: mean_accuracy")
        if bool(row.get("dense")) or method == "dense":
            if dense_ppl is not None:
                raise PlotError("more than one dense row")
            dense_ppl, dense_acc = ppl, acc
            continue
        if not method:
            raise PlotError(f"sweep row {i}: 'method' is missing")
        target = _sparsity(row.get("target"), f"sweep row {i}: target")
        by_target = series.setdefault(method, {})
        if target in by_target:
            raise PlotError(f"two sweep rows for method {method!r} at target {target:g}; filter to one setting first")
        by_target[target] = (ppl, acc)
    if not series:
        raise PlotError("sweep rows hold no sparse method (only dense)")
    with_accuracy = dense_acc is not None or any(a is not None for pts in series.values() for _, a in pts.values())

    fig = _new_figure(11.0 if with_accuracy else 6.4, 4.2)
    axes = fig.subplots(1, 2) if with_accuracy else [fig.add_subplot()]
    ppl_ax = axes[0]
    colors = _method_colors(series)
    for method in _method_order(series):
        targets = sorted(series[method])
        ppl_ax.plot(
            [100 * t for t in targets],
            [series[method][t][0] for t in targets],
            marker="o",
            markersize=4,
            linewidth=1.6,
            color=colors[method],
            label=method,
        )
    if dense_ppl is not None:
        ppl_ax.axhline(
            dense_ppl,
            color="#555555",
            linestyle="--",
            linewidth=1.2,
            label=f"dense ({dense_ppl:.4g})",
        )
    ppl_ax.set_yscale("log")
    _plain_log_ticks(ppl_ax)
    ppl_ax.margins(y=0.08)
    ppl_ax.set_xlabel("target sparsity (%)")
    ppl_ax.set_ylabel("perplexity (log scale)")
    ppl_ax.set_title("perplexity")
    ppl_ax.legend(loc="upper left")
    if with_accuracy:
        acc_ax = axes[1]
        for method in _method_order(series):
            points = sorted((t, a) for t, (_, a) in series[method].items() if a is not None)
            if points:
                acc_ax.plot(
                    [100 * t for t, _ in points],
                    [100 * a for _, a in points],
                    marker="o",
                    markersize=4,
                    linewidth=1.6,
                    color=colors[method],
                    label=method,
                )
        if dense_acc is not None:
            acc_ax.axhline(
                100 * dense_acc,
                color="#555555",
                linestyle="--",
                linewidth=1.2,
                label=f"dense ({100 * dense_acc:.1f}%)",
            )
        acc_ax.margins(y=0.1)
        acc_ax.set_xlabel("target sparsity (%)")
        acc_ax.set_ylabel("mean zero-shot accuracy (%)")
        acc_ax.set_title("mean zero-shot accuracy")
        acc_ax.legend(loc="lower left")
    if title is not None and with_accuracy:
        fig.suptitle(title)
    elif title is not None:
        ppl_ax.set_title(title)  # one panel: its own title, no redundant "perplexity" above it
    return fig


@_locked
def plot_gain_scaling(points: Iterable[Mapping[str, Any]], *, title: str | None = None) -> Figure:
    """Perplexity gain against uniform (%, + = better) vs model size (projection parameters, log x).

    Each point: ``series`` (e.g. "best method"), ``params`` (> 0), ``gain_pct`` and optional
    ``se_pct`` (drawn as an error bar) and ``label`` (annotated beside the point).
    """
    series: dict[str, list[tuple[float, float, float | None, str | None]]] = {}
    for i, p in enumerate(points):
        params = _number(p.get("params"), f"scaling point {i}: params")
        if params <= 0:
            raise PlotError(f"scaling point {i}: params must be positive")
        gain = _number(p.get("gain_pct"), f"scaling point {i}: gain_pct")
        se = p.get("se_pct")
        series.setdefault(str(p.get("series") or ""), []).append(
            (params, gain, None if se is None else float(se), p.get("label"))
        )
    if not series:
        raise PlotError("no scaling points to plot")
    fig = _new_figure(6.4, 4.2)
    ax = fig.add_subplot()
    colors = _method_colors(series)
    for name in _method_order(series):
        pts = sorted(series[name])
        ax.errorbar(
            [x for x, *_ in pts], [g for _, g, _, _ in pts], yerr=[se or 0.0 for *_, se, _ in pts],
            marker="o", markersize=5, linewidth=1.6, capsize=3, color=colors[name], label=name,
        )  # fmt: skip
        for x, g, _, label in pts:
            if label:
                ax.annotate(str(label), (x, g), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(0.0, color="#555555", linestyle="--", linewidth=1.0)
    ax.set_xscale("log")
    ax.set_xlabel("projection parameters (log scale)")
    ax.set_ylabel("perplexity gain vs uniform TopK (%)")
    ax.set_title(title or "gain against uniform vs model size")
    ax.legend(loc="best")
    return fig


def _plain_log_ticks(ax: Any) -> None:
    """Log y axis labelled 10, 20, 50, 100 … instead of 2×10¹ (perplexities read as plain numbers)."""
    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _method_order(series: Mapping[str, Any]) -> list[str]:
    known = [m for m in METHOD_COLORS if m in series]
    return known + sorted(m for m in series if m not in METHOD_COLORS)


def _method_colors(series: Mapping[str, Any]) -> dict[str, str]:
    others = sorted(m for m in series if m not in METHOD_COLORS)
    colors = {m: METHOD_COLORS[m] for m in series if m in METHOD_COLORS}
    colors.update({m: _OTHER_METHOD_COLORS[i % len(_OTHER_METHOD_COLORS)] for i, m in enumerate(others)})
    return colors


# --------------------------------------------------------------------------------------------
# Output


PlotFormat = Literal["png", "svg"]
_FORMATS: tuple[str, ...] = ("png", "svg")


@_locked
def render_bytes(fig: Figure, fmt: PlotFormat | str = "svg") -> bytes:
    """The figure as PNG (150 dpi) or SVG bytes; identical input gives identical bytes."""
    fmt = str(fmt).lower()
    if fmt not in _FORMATS:
        raise PlotError(f"unknown image format {fmt!r}; valid: {', '.join(_FORMATS)}")
    buffer = io.BytesIO()
    # Dates would change the bytes on every call; the software tag stays (it names the version).
    metadata: dict[str, Any] = {"Date": None} if fmt == "svg" else {}
    fig.savefig(buffer, format=fmt, metadata=metadata)
    return buffer.getvalue()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as PNG or SVG, chosen by the suffix; parent folders are created."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in _FORMATS:
        raise PlotError(f"cannot tell the image format from {path.name!r}: use a .png or .svg suffix")
    data = render_bytes(fig, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------
# Input checks


def _field(item: Any, key: str, index: int) -> Any:
    value = item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)
    if value is None:
        raise PlotError(f"row {index}: missing {key!r}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise PlotError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise PlotError(f"{what} must be finite, got {number}")
    return number


def _sparsity(value: Any, what: str) -> float:
    number = _number(value, what)
    if not 0.0 <= number < 1.0:
        raise PlotError(f"{what} must be in [0, 1), got {number:g}")
    return number


def _finite_array(values: Any, what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise PlotError(f"{what} must be a sequence of numbers") from None
    if array.size == 0:
        raise PlotError(f"{what} is empty")
    if not np.all(np.isfinite(array)):
        raise PlotError(f"{what} contains NaN or infinite values")
    return array
