"""ESD analysis: eigenvalues, the three power-law estimators, the report and streaming."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from acttail.errors import ActTailError, EstimationError
from acttail.esd import (
    ESDReport,
    Estimator,
    analyze_weights,
    eigenvalues,
    eigenvalues_batch,
    estimate_alpha,
    ks_scan,
)
from acttail.esd.powerlaw import histogram_peak, nonzero_eigenvalues
from acttail.models.architectures import parse_projection_name
from acttail.models.base import ProjectionInfo

REPLICATES = 6


def pareto(rng: np.random.Generator, n: int, alpha: float, xmin: float = 1.0) -> np.ndarray:
    """Inverse-CDF sample of p(x) ∝ x^-alpha on [xmin, ∞): x = xmin · (1 − u)^(−1/(alpha − 1))."""
    return xmin * (1.0 - rng.random(n)) ** (-1.0 / (alpha - 1.0))


def bulk_and_tail(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """30% uniform bulk on [0.05, 1) below a 70% power-law tail from x_min = 1: ks must find the edge."""
    n_tail = int(0.7 * n)
    return np.concatenate([rng.uniform(0.05, 1.0, n - n_tail), pareto(rng, n_tail, alpha)])


SAMPLERS = {Estimator.KS: bulk_and_tail, Estimator.KS_PEAK: pareto, Estimator.HILL: pareto}


@pytest.mark.parametrize("estimator", list(Estimator))
@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
@pytest.mark.parametrize("size", [500, 2000, 5000])
def test_estimators_recover_known_alpha(estimator: Estimator, alpha: float, size: int) -> None:
    # The MLE's standard error is (alpha − 1)/sqrt(n_tail): 3-5% at n = 500, so the mean of a few
    # seeded replicates is held to 5%, and every single fit from n ≥ 2000 too.
    fits = [
        estimate_alpha(SAMPLERS[estimator](np.random.default_rng(seed), size, alpha), estimator)
        for seed in range(REPLICATES)
    ]
    estimates = np.array([f.alpha for f in fits])
    assert abs(estimates.mean() - alpha) / alpha < 0.05, estimates
    if size >= 2000:
        assert np.all(np.abs(estimates - alpha) / alpha < 0.05), estimates
    if estimator is Estimator.KS:  # the tail of bulk_and_tail starts at 1.0: x_min must not sink into the bulk
        assert all(f.xmin > 0.9 for f in fits), [f.xmin for f in fits]


def test_hill_uses_the_median_as_xmin() -> None:
    x = pareto(np.random.default_rng(7), 1001, 3.0)
    fit = estimate_alpha(x, "hill")
    ordered = np.sort(x)
    assert fit.xmin == ordered[500]
    assert fit.num_tail == 501
    assert fit.alpha == pytest.approx(1 + 501 / np.sum(np.log(ordered[500:] / ordered[500])), rel=1e-12)


def reference_ks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WeightWatcher 0.7.7 ``WWFit.fit_power_law_standard``, one candidate at a time."""
    data = np.sort(x)
    log_data = np.log(data)
    n_total = len(data)
    alphas = np.zeros(n_total - 1)
    ds = np.ones(n_total - 1)
    for i, xmin in enumerate(data[:-1]):
        n = float(n_total - i)
        alpha = 1 + n / (np.sum(log_data[i:]) - n * log_data[i])
        alphas[i] = alpha
        if alpha > 1:
            ds[i] = np.max(np.abs(1 - (data[i:] / xmin) ** (-alpha + 1) - np.arange(n) / n))
    return alphas, ds


def test_vectorised_ks_scan_equals_reference_loop() -> None:
    x = bulk_and_tail(np.random.default_rng(3), 400, 2.5)
    want_alphas, want_ds = reference_ks(x)
    alphas, ds = ks_scan(nonzero_eigenvalues(x), len(x) - 1)
    np.testing.assert_allclose(alphas.numpy(), want_alphas, rtol=1e-12)
    np.testing.assert_allclose(ds.numpy(), want_ds, rtol=1e-10, atol=1e-12)
    fit = estimate_alpha(x, "ks")
    best = int(np.argmin(want_ds))
    assert fit.alpha == pytest.approx(want_alphas[best], rel=1e-12)
    assert fit.xmin == np.sort(x)[best]
    assert fit.num_tail == len(x) - best


def test_ks_scan_blocks_do_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x = nonzero_eigenvalues(pareto(np.random.default_rng(11), 700, 3.0))
    whole = ks_scan(x, 699)
    monkeypatch.setattr("acttail.esd.powerlaw._BLOCK_ELEMENTS", 5000)  # ~7 rows per block
    blocked = ks_scan(x, 699)
    torch.testing.assert_close(blocked[1], whole[1], rtol=0, atol=1e-13)


def test_ks_peak_only_scans_below_one_and_a_half_peaks() -> None:
    rng = np.random.default_rng(5)
    x = bulk_and_tail(rng, 3000, 3.0)
    peak = histogram_peak(nonzero_eigenvalues(x))
    counts, edges = np.histogram(np.log10(x), bins=100)
    assert peak == pytest.approx(10 ** edges[np.argmax(counts)])
    fit = estimate_alpha(x, "ks_peak")
    assert fit.xmin <= 1.5 * peak
    _, ds = reference_ks(x)
    allowed = np.sort(x)[:-1] <= 1.5 * peak
    assert fit.ks_distance == pytest.approx(ds[allowed].min(), rel=1e-10)


def test_eigenvalues_match_squared_singular_values() -> None:
    gen = torch.Generator().manual_seed(0)
    for shape in [(96, 40), (40, 96), (64, 64)]:
        w = torch.randn(shape, generator=gen)
        expected = np.sort(np.linalg.svd(w.double().numpy(), compute_uv=False) ** 2)
        got = eigenvalues(w)
        assert got.shape == (min(shape),)
        assert np.all(np.diff(got) >= 0)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10 * expected.max())


def test_batched_eigenvalues_equal_one_at_a_time() -> None:
    gen = torch.Generator().manual_seed(1)
    mats = [torch.randn(48, 32, generator=gen) for _ in range(3)] + [torch.randn(32, 80, generator=gen)]
    batched = eigenvalues_batch(mats)
    for w, got in zip(mats, batched, strict=True):
        np.testing.assert_allclose(got, eigenvalues(w), rtol=1e-12, atol=1e-10)


def test_thresholded_eigenvalues_are_dropped_before_fitting() -> None:
    x = pareto(np.random.default_rng(2), 300, 3.0)
    padded = np.concatenate([x, np.zeros(50), np.full(20, 1e-6)])
    assert estimate_alpha(padded, "ks") == estimate_alpha(x, "ks")


@pytest.mark.parametrize("estimator", list(Estimator))
def test_degenerate_spectra_raise_estimation_error(estimator: Estimator) -> None:
    with pytest.raises(EstimationError, match="too few eigenvalues"):
        estimate_alpha(np.array([1.0, 2.0, 3.0, 0.0, 0.0]), estimator)
    with pytest.raises(EstimationError, match="degenerate"):
        estimate_alpha(np.full(64, 2.5), estimator)


def test_unknown_estimator_lists_the_valid_ones() -> None:
    with pytest.raises(EstimationError, match="valid: ks, ks_peak, hill"):
        estimate_alpha(np.arange(1.0, 50.0), "median")


def _tiny_model(num_layers: int = 2, hidden: int = 48, inter: int = 96, kv: int = 16) -> list[ProjectionInfo]:
    shapes = {"q": (hidden, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, hidden)}
    shapes |= {"gate": (inter, hidden), "up": (inter, hidden), "down": (hidden, inter)}
    suffixes = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj"}
    suffixes |= {"gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    refs = [parse_projection_name(f"model.layers.{layer}.{suffixes[k]}") for layer in range(num_layers) for k in shapes]
    return [ProjectionInfo(ref, shapes[str(ref.kind)]) for ref in refs]


def _weights(infos: list[ProjectionInfo], seed: int = 0) -> Iterator[tuple[ProjectionInfo, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    for info in infos:
        yield info, torch.randn(info.shape, generator=gen) * (1 + info.ref.layer)


def test_analyze_weights_reports_every_projection_with_weightwatcher_metrics() -> None:
    infos = _tiny_model()
    report = analyze_weights(_weights(infos), "ks", progress=False, model={"model_id": "tiny"})
    assert [p.name for p in report.projections] == [i.name for i in infos]
    gen_weights = dict((info.name, w) for info, w in _weights(infos))
    for p in report.projections:
        evals = np.sort(np.linalg.svd(gen_weights[p.name].double().numpy(), compute_uv=False) ** 2)
        assert p.num_evals == min(p.shape)
        assert p.param_count == p.shape[0] * p.shape[1]
        assert p.spectral_norm == pytest.approx(evals[-1], rel=1e-9)
        assert p.log_frobenius_norm == pytest.approx(np.log10(evals.sum()), rel=1e-9)
        assert p.stable_rank == pytest.approx(evals.sum() / evals[-1], rel=1e-9)
        assert p.alpha_weighted == pytest.approx(p.alpha * np.log10(evals[-1]), rel=1e-9)
        assert p.alpha == pytest.approx(estimate_alpha(evals, "ks").alpha, rel=1e-6)
    assert report.estimator == "ks"
    assert report.elapsed_s > 0


def test_report_views_and_json_round_trip() -> None:
    report = analyze_weights(_weights(_tiny_model(3)), Estimator.HILL, progress=False, model={"model_id": "tiny"})
    means = report.per_type_means()
    assert list(means) == ["q", "k", "v", "o", "gate", "up", "down"]
    assert means["k"] == pytest.approx(np.mean([p.alpha for p in report.projections if p.kind == "k"]))
    layers = report.per_layer()
    assert list(layers) == [0, 1, 2]
    assert layers[2]["down"] == report.alphas()["model.layers.2.mlp.down_proj"]
    assert report.param_counts()["model.layers.0.self_attn.k_proj"] == 16 * 48
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["format"] == "acttail.esd" and doc["version"] == 1
    assert ESDReport.from_dict(doc) == report
    with pytest.raises(ActTailError, match="not an ESD report"):
        ESDReport.from_dict({**doc, "format": "acttail.allocation"})


@pytest.mark.parametrize("workers", [1, 2])
def test_analysis_streams_holding_at_most_one_weight_per_worker(workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTTAIL_ESD_WORKERS", str(workers))
    alive: list[weakref.ref[torch.Tensor]] = []
    peak = 0

    def stream() -> Iterator[tuple[ProjectionInfo, torch.Tensor]]:
        nonlocal peak
        for info, weight in _weights(_tiny_model(3)):
            gc.collect()
            peak = max(peak, sum(ref() is not None for ref in alive))
            alive.append(weakref.ref(weight))
            yield info, weight
            del weight

    report = analyze_weights(stream(), "ks", progress=False)
    assert len(report.projections) == 21
    assert peak <= workers  # the matrices being analysed, besides the one being read


def test_concurrent_cpu_analysis_matches_one_worker_and_restores_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    infos = _tiny_model(3)
    threads = torch.get_num_threads()
    reports = {}
    for workers in (1, 3):
        monkeypatch.setenv("ACTTAIL_ESD_WORKERS", str(workers))
        reports[workers] = analyze_weights(_weights(infos), "ks", progress=False)
        assert torch.get_num_threads() == threads
    assert [p.name for p in reports[3].projections] == [p.name for p in reports[1].projections]
    assert [p.alpha for p in reports[3].projections] == [p.alpha for p in reports[1].projections]
