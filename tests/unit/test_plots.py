"""Plot functions: files written, axes/titles/scales as expected, stable bytes, clear errors."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Polygon, Rectangle

from acttail import plots
from acttail.allocate import allocate
from acttail.errors import ActTailError
from acttail.esd import ESDReport, ProjectionESD, estimate_alpha

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KINDS = ("q", "k", "v", "o", "gate", "up", "down")


def projection_name(layer: int, kind: str) -> str:
    block = "self_attn" if kind in ("q", "k", "v", "o") else "mlp"
    return f"model.layers.{layer}.{block}.{kind}_proj"


@dataclass(frozen=True)
class Fit:
    alpha: float
    xmin: float


@pytest.fixture(scope="module")
def spectrum() -> np.ndarray:
    """Eigenvalues of WᵀW for a heavy-tailed (Student-t, 3 dof) random matrix: a real power-law tail."""
    rng = np.random.default_rng(7)
    w = rng.standard_t(3, size=(256, 512)) / 30.0  # [d_out, d_in]
    return np.linalg.eigvalsh(w @ w.T)


@pytest.fixture(scope="module")
def report() -> ESDReport:
    rows = []
    for layer in range(6):
        for i, kind in enumerate(KINDS):
            alpha = 2.5 + 0.3 * i + 0.2 * np.sin(layer)
            rows.append(
                ProjectionESD(
                    name=projection_name(layer, kind),
                    layer=layer,
                    kind=kind,
                    shape=(64, 64),
                    param_count=4096,
                    alpha=float(alpha),
                    xmin=1.0,
                    ks_distance=0.05,
                    num_tail=10,
                    spectral_norm=10.0,
                    log_frobenius_norm=2.0,
                    stable_rank=5.0,
                    alpha_weighted=float(alpha),
                    num_evals=64,
                )
            )
    return ESDReport(
        model={"model_id": "toy-model"},
        estimator="ks",
        projections=tuple(rows),
        elapsed_s=0.1,
    )


@pytest.fixture(scope="module")
def sweep_rows() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [{"method": "dense", "dense": True, "perplexity": 18.0, "mean_accuracy": 0.46}]
    for target in (0.3, 0.5, 0.7):
        rows.append(
            {
                "method": "uniform",
                "target": target,
                "perplexity": 18 * np.exp(3 * target**2),
                "mean_accuracy": 0.46 - 0.2 * target**2,
            }
        )
        rows.append(
            {
                "method": "acttail",
                "target": target,
                "perplexity": 18 * np.exp(2 * target**2),
                "mean_accuracy": 0.46 - 0.1 * target**2,
            }
        )
    return rows


def band_patches(ax) -> list:
    """The HT-SR band drawn by axhspan (a Rectangle in matplotlib ≥ 3.9, a Polygon before)."""
    return [p for p in ax.patches if isinstance(p, Rectangle | Polygon) and "HT-SR" in str(p.get_label())]


# ---------------------------------------------------------------- ESD


def test_esd_plot_is_log_log_with_tail_line_and_xmin(spectrum: np.ndarray) -> None:
    fit = estimate_alpha(spectrum)
    fig = plots.plot_esd(spectrum, fit, title="layer 3 q_proj")
    (ax,) = fig.axes
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert ax.get_title() == "layer 3 q_proj"
    assert "eigenvalue" in ax.get_xlabel() and ax.get_ylabel() == "density"
    tail, xmin_line = ax.get_lines()
    x, y = tail.get_data()
    assert x[0] == pytest.approx(fit.xmin) and x[-1] == pytest.approx(spectrum.max())
    slope = np.polyfit(np.log(x), np.log(y), 1)[0]
    assert slope == pytest.approx(-fit.alpha, rel=1e-9)
    assert np.allclose(xmin_line.get_xdata(), fit.xmin)
    assert f"{fit.alpha:.2f}" in tail.get_label()
    # Density scaling: the line integrates to the tail's share of the spectrum over [x_min, ∞).
    share = fit.num_tail / np.count_nonzero(spectrum > plots.EVALS_FLOOR)
    assert y[0] * fit.xmin / (fit.alpha - 1) == pytest.approx(share, rel=1e-9)
    (hist,) = [p for p in ax.patches if isinstance(p, Polygon)]
    assert hist.get_label().startswith("ESD (256 eigenvalues)")


def test_esd_histogram_bins_are_log_spaced_density(spectrum: np.ndarray) -> None:
    fig = plots.plot_esd(spectrum, Fit(alpha=3.0, xmin=float(np.median(spectrum))), bins=20)
    (ax,) = fig.axes
    (hist,) = [p for p in ax.patches if isinstance(p, Polygon)]
    xy = hist.get_xy()
    edges = np.unique(xy[:, 0])
    assert len(edges) == 21
    assert np.allclose(np.diff(np.log(edges)), np.log(edges[1] / edges[0]))  # equal widths in log λ
    # Horizontal segments of the step outline are the bar tops: ∑ height · width = 1 (a density).
    tops = [(x0, x1, y0) for (x0, y0), (x1, y1) in itertools.pairwise(xy) if y0 == y1 and x1 > x0]
    assert len(tops) == 20
    assert sum((x1 - x0) * h for x0, x1, h in tops) == pytest.approx(1.0, rel=1e-6)
    assert ax.get_title() == "ESD, α = 3.00"


def test_esd_histogram_keeps_the_largest_eigenvalue() -> None:
    """10**log10(λ_max) rounds below λ_max for this value; the top bin must still count it."""
    lam_max = 3847.8053692146004  # λ_max of SmolLM2-135M layer 0 k_proj
    assert 10 ** np.log10(lam_max) < lam_max
    values = np.append(np.geomspace(0.13908034790789298, 1500.0, 60), lam_max)
    (ax,) = plots.plot_esd(values, Fit(alpha=2.0, xmin=10.0), bins=28).axes
    (hist,) = [p for p in ax.patches if isinstance(p, Polygon)]
    xy = hist.get_xy()
    tops = [(x0, x1, y0) for (x0, y0), (x1, y1) in itertools.pairwise(xy) if y0 == y1 and x1 > x0]
    assert sum((x1 - x0) * h for x0, x1, h in tops) == pytest.approx(1.0, rel=1e-9)
    assert tops[-1][1] == lam_max and tops[-1][2] > 0


def test_esd_accepts_a_projection_esd_as_fit(spectrum: np.ndarray, report: ESDReport) -> None:
    row = report.projections[0]
    fig = plots.plot_esd(spectrum, Fit(alpha=row.alpha, xmin=float(np.median(spectrum))))
    assert len(fig.axes[0].get_lines()) == 2


@pytest.mark.parametrize(
    ("evals", "fit", "message"),
    [
        ([], Fit(2.0, 1.0), "empty"),
        ([1.0, np.nan, 2.0], Fit(2.0, 1.0), "NaN"),
        ([0.0, 1e-9, 3.0], Fit(2.0, 3.0), "at least 2 distinct"),
        (np.linspace(1, 10, 50), Fit(1.0, 2.0), "alpha must be > 1"),
        (np.linspace(1, 10, 50), Fit(3.0, 50.0), "outside the eigenvalue range"),
        (np.linspace(1, 10, 50), Fit(float("inf"), 2.0), "finite"),
        (np.linspace(1, 10, 50), object(), "fit.alpha must be a number"),
        ("abc", Fit(2.0, 1.0), "sequence of numbers"),
    ],
)
def test_esd_bad_input_is_a_plot_error(evals: object, fit: object, message: str) -> None:
    with pytest.raises(plots.PlotError, match=message) as info:
        plots.plot_esd(evals, fit)  # type: ignore[arg-type]
    assert isinstance(info.value, ActTailError) and isinstance(info.value, ValueError)


# ---------------------------------------------------------------- alphas


def test_alphas_from_report_one_line_per_kind_and_band(report: ESDReport) -> None:
    fig = plots.plot_alphas(report)
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == list(KINDS)
    assert [line.get_color() for line in lines] == [plots.KIND_COLORS[k] for k in KINDS]
    assert list(lines[0].get_xdata()) == list(range(6))
    q_alphas = [p.alpha for p in report.projections if p.kind == "q"]
    assert np.allclose(lines[0].get_ydata(), q_alphas)
    (band,) = band_patches(ax)
    y0, y1 = band.get_bbox().y0, band.get_bbox().y1
    assert (y0, y1) == pytest.approx((2.0, 6.0))
    assert ax.get_title() == "toy-model · α per layer · estimator ks"
    assert ax.get_xlabel() == "layer" and ax.get_ylabel().startswith("α")
    low, high = ax.get_ylim()
    assert low <= 2.0 and high >= 6.0
    assert ax.get_legend() is not None


def test_alphas_from_plain_rows_draws_only_kinds_present() -> None:
    rows = [{"layer": layer, "kind": kind, "alpha": 3.0 + layer} for layer in range(4) for kind in ("down", "q", "up")]
    fig = plots.plot_alphas(rows, title="from the database")
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == [
        "q",
        "up",
        "down",
    ]  # KIND_ORDER, not input order
    assert ax.get_title() == "from the database"
    assert ax.get_ylim()[1] >= 6.0  # alpha 6 is the top of the data here and must be visible


def test_alphas_from_report_document_and_large_alpha(report: ESDReport) -> None:
    doc = report.to_dict()
    doc["projections"][0]["alpha"] = 14.0
    ax = plots.plot_alphas(doc).axes[0]
    assert ax.get_ylim()[1] > 14.0
    assert len(ax.get_lines()) == 7


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "no alphas"),
        ([{"layer": 0, "kind": "attn", "alpha": 3.0}], "unknown projection kind 'attn'"),
        ([{"layer": 0, "kind": "q"}], "missing 'alpha'"),
        ([{"layer": -1, "kind": "q", "alpha": 3.0}], "non-negative integer"),
        ([{"layer": 0, "kind": "q", "alpha": "3"}], "must be a number"),
        ({"alphas": {}}, "without 'projections'"),
        ("q", "ESD report or a list of rows"),
    ],
)
def test_alphas_bad_input(rows: object, message: str) -> None:
    with pytest.raises(plots.PlotError, match=message):
        plots.plot_alphas(rows)


# ---------------------------------------------------------------- allocation


@pytest.fixture(scope="module")
def allocation():
    names = [projection_name(layer, kind) for layer in range(4) for kind in KINDS]
    alphas = {name: 2.0 + 0.1 * i for i, name in enumerate(names)}
    counts = {name: 4096 * (3 if "mlp" in name else 1) for name in names}
    return allocate(alphas, counts, 0.6, model_id="toy-model", fingerprint="f" * 64, estimator="ks")


def test_allocation_heatmap_grid_colourbar_and_title(allocation) -> None:
    fig = plots.plot_allocation(allocation)
    ax, cbar_ax = fig.axes
    (image,) = [im for im in ax.get_images() if isinstance(im, AxesImage)]
    grid = np.asarray(image.get_array())
    assert grid.shape == (4, 7)
    assert grid[2, KINDS.index("up")] == pytest.approx(allocation.sparsities[projection_name(2, "up")])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(KINDS)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2", "3"]
    assert "toy-model" in ax.get_title() and "acttail" in ax.get_title() and "60%" in ax.get_title()
    assert "sparsity" in cbar_ax.get_ylabel()
    assert image.colorbar is not None and image.colorbar.ax is cbar_ax
    assert len(ax.texts) == 28  # one percentage per cell
    target_marks = [line for line in cbar_ax.get_lines() if np.allclose(line.get_ydata(), 0.6)]
    assert len(target_marks) == 1
    low, high = image.get_clim()
    assert (low + high) / 2 == pytest.approx(0.6)  # diverging map: white at the target
    spread = max(abs(s - 0.6) for s in allocation.sparsities.values())
    assert high - 0.6 == pytest.approx(max(spread, 0.01))
    assert image.get_cmap().name == "RdBu_r"


def test_allocation_from_dict_uniform_and_partial() -> None:
    names = {projection_name(layer, kind): 0.5 for layer in (0, 1) for kind in ("gate", "up", "down")}
    doc = {"sparsities": names, "target": 0.5, "method": "uniform", "model_id": ""}
    fig = plots.plot_allocation(doc, annotate=False)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["gate", "up", "down"]
    assert ax.get_title() == "uniform allocation, target 50%"
    assert len(ax.texts) == 0
    low, high = ax.get_images()[0].get_clim()
    assert low < 0.5 < high  # a constant allocation still gets a usable colour range


def test_allocation_missing_cells_are_blank() -> None:
    sparsities = {projection_name(0, "q"): 0.4, projection_name(1, "down"): 0.6}
    grid = np.asarray(
        plots.plot_allocation({"sparsities": sparsities, "target": 0.5}).axes[0].get_images()[0].get_array()
    )
    assert grid.shape == (2, 2)
    assert np.ma.count_masked(np.ma.masked_invalid(grid)) == 2


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"sparsities": {}, "target": 0.5}, "non-empty 'sparsities'"),
        (
            {"sparsities": {"lm_head": 0.5}, "target": 0.5},
            "not a q/k/v/o/gate/up/down projection name",
        ),
        (  # the shared parser: q_proj lives under self_attn, never under mlp
            {"sparsities": {"model.layers.0.mlp.q_proj": 0.5}, "target": 0.5},
            "not a q/k/v/o/gate/up/down projection name",
        ),
        (
            {"sparsities": {projection_name(0, "q"): 1.5}, "target": 0.5},
            r"must be in \[0, 1\)",
        ),
        (
            {"sparsities": {projection_name(0, "q"): 0.5}, "target": None},
            "target must be a number",
        ),
    ],
)
def test_allocation_bad_input(doc: dict, message: str) -> None:
    with pytest.raises(plots.PlotError, match=message):
        plots.plot_allocation(doc)


# ---------------------------------------------------------------- sweep


def test_sweep_two_panels_log_perplexity_and_dense_lines(
    sweep_rows: list[dict[str, object]],
) -> None:
    fig = plots.plot_sweep(sweep_rows, title="toy sweep")
    ppl_ax, acc_ax = fig.axes
    assert ppl_ax.get_yscale() == "log" and acc_ax.get_yscale() == "linear"
    labels = [line.get_label() for line in ppl_ax.get_lines()]
    assert labels == ["uniform", "acttail", "dense (18)"]
    uniform = ppl_ax.get_lines()[0]
    assert list(uniform.get_xdata()) == pytest.approx([30, 50, 70])
    dense = ppl_ax.get_lines()[2]
    assert np.allclose(dense.get_ydata(), 18.0)
    assert [line.get_label() for line in acc_ax.get_lines()] == [
        "uniform",
        "acttail",
        "dense (46.0%)",
    ]
    assert np.allclose(
        acc_ax.get_lines()[1].get_ydata(),
        [100 * (0.46 - 0.1 * t**2) for t in (0.3, 0.5, 0.7)],
    )
    assert "perplexity" in ppl_ax.get_ylabel() and "accuracy" in acc_ax.get_ylabel()
    assert fig.get_suptitle() == "toy sweep"


def test_sweep_without_accuracy_has_one_panel_and_sorted_targets() -> None:
    rows = [
        {"method": "acttail", "target": 0.7, "perplexity": 40.0},
        {"method": "acttail", "target": 0.3, "perplexity": 20.0},
        {"method": "teal", "target": 0.5, "perplexity": 30.0, "mean_accuracy": None},
    ]
    fig = plots.plot_sweep(rows, title="one panel")
    (ax,) = fig.axes
    assert ax.get_title() == "one panel" and fig.get_suptitle() == ""
    acttail, teal = ax.get_lines()
    assert list(acttail.get_xdata()) == pytest.approx([30, 70])
    assert (acttail.get_label(), teal.get_label()) == ("acttail", "teal")
    assert acttail.get_color() != teal.get_color()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "no sweep rows"),
        ([{"method": "dense", "perplexity": 10.0}], "no sparse method"),
        (
            [{"method": "uniform", "target": 0.5, "perplexity": -1.0}],
            "perplexity must be positive",
        ),
        ([{"method": "uniform", "target": 0.5}], "perplexity must be a number"),
        ([{"target": 0.5, "perplexity": 3.0}], "'method' is missing"),
        (
            [{"method": "uniform", "target": 1.2, "perplexity": 3.0}],
            r"target must be in \[0, 1\)",
        ),
        (
            [{"method": "u", "target": 0.5, "perplexity": 3.0}] * 2,
            "two sweep rows for method 'u'",
        ),
        ([{"method": "dense", "perplexity": 3.0}] * 2, "more than one dense row"),
        ([("uniform", 0.5, 3.0)], "must be a mapping"),
    ],
)
def test_sweep_bad_input(rows: list, message: str) -> None:
    with pytest.raises(plots.PlotError, match=message):
        plots.plot_sweep(rows)


def test_kind_order_matches_the_architecture_map_and_nested_names_parse() -> None:
    from acttail.models.architectures import PROJECTION_ORDER

    assert tuple(str(kind) for kind in PROJECTION_ORDER) == plots.KIND_ORDER
    # Gemma-3 multimodal checkpoints nest the decoder; the heatmap reads the layer and kind alone.
    doc = {"sparsities": {"model.language_model.layers.3.mlp.up_proj.weight": 0.6}, "target": 0.5}
    ax = plots.plot_allocation(doc).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["up"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["3"]


# ---------------------------------------------------------------- output


def test_save_png_and_svg_by_suffix(tmp_path: Path, report: ESDReport) -> None:
    fig = plots.plot_alphas(report)
    png = plots.save_figure(fig, tmp_path / "nested" / "alphas.png")
    svg = plots.save_figure(fig, tmp_path / "alphas.SVG")
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    root = ET.fromstring(svg.read_bytes())
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    with pytest.raises(plots.PlotError, match="use a .png or .svg suffix"):
        plots.save_figure(fig, tmp_path / "alphas.jpg")
    assert not (tmp_path / "alphas.jpg").exists()


def test_render_bytes_is_deterministic(report: ESDReport, sweep_rows: list[dict[str, object]]) -> None:
    for fmt in ("svg", "png"):
        first = plots.render_bytes(plots.plot_alphas(report), fmt)
        second = plots.render_bytes(plots.plot_alphas(report), fmt)
        assert first == second
    svg = plots.render_bytes(plots.plot_sweep(sweep_rows), "svg")
    assert b"<dc:date>" not in svg and svg.lstrip().startswith(b"<?xml")
    assert plots.render_bytes(plots.plot_sweep(sweep_rows), "PNG").startswith(PNG_SIGNATURE)
    with pytest.raises(plots.PlotError, match="unknown image format 'pdf'"):
        plots.render_bytes(plots.plot_sweep(sweep_rows), "pdf")


def test_user_rcparams_do_not_change_output_or_leak(report: ESDReport) -> None:
    import matplotlib

    before = matplotlib.rcParams["svg.hashsalt"]
    reference = plots.render_bytes(plots.plot_alphas(report), "svg")
    with matplotlib.rc_context({"font.size": 30, "lines.linewidth": 9, "svg.hashsalt": None}):
        assert plots.render_bytes(plots.plot_alphas(report), "svg") == reference
        assert matplotlib.rcParams["font.size"] == 30  # restored after each call
    assert matplotlib.rcParams["svg.hashsalt"] == before


def test_concurrent_rendering_from_threads_matches_serial(report: ESDReport) -> None:
    reference = plots.render_bytes(plots.plot_alphas(report), "svg")
    results: list[bytes] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(plots.render_bytes(plots.plot_alphas(report), "svg"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [reference] * 4


def test_functions_return_figures_without_pyplot(report: ESDReport) -> None:
    assert isinstance(plots.plot_alphas(report), Figure)
    code = "import sys, acttail.plots; print('matplotlib.pyplot' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [
        "False",
        "False",
    ]  # the API imports this module: no pyplot state, no torch
