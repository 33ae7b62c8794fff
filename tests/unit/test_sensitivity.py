"""Sensitivity study on a tiny random model: shape of the result, known-answer Spearman, plot, CLI args."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from acttail.errors import ActTailError
from acttail.esd import analyze_weights
from acttail.methods import calibration_from_ids, calibration_nll
from acttail.models.architectures import find_projections
from acttail.models.base import ProjectionInfo
from acttail.sensitivity import (
    layer_groups,
    plot_sensitivity,
    sensitivity_study,
    spearman,
)
from tests.tiny_models import build_tiny_model


@pytest.fixture(scope="module")
def study():
    model = build_tiny_model("llama")
    weights = [
        (ProjectionInfo(ref, tuple(lin.weight.shape)), lin.weight.detach().float())
        for ref, lin in find_projections(model)
    ]
    reports = [analyze_weights(weights, est, progress=False, model={"model_id": "tiny"}) for est in ("ks", "hill")]
    ids = torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(0))
    calibration = calibration_from_ids(ids, seqlen=32)
    result = sensitivity_study(model, calibration, reports, level=0.5, groups=2, model_id="tiny")
    return model, calibration, reports, result


def test_every_cell_is_measured_against_the_dense_model(study) -> None:
    model, calibration, _, result = study
    assert len(result.cells) == 7 * 2
    assert result.dense_nll == pytest.approx(calibration_nll(model, calibration, None))
    cell = next(c for c in result.cells if c.kind == "down" and c.group == 1)
    names = [r.name for r, _ in find_projections(model)]
    only = {n: (0.5 if n == "model.layers.1.mlp.down_proj" else 0.0) for n in names}
    assert cell.nll == pytest.approx(calibration_nll(model, calibration, only), rel=1e-9)
    assert cell.delta_nll == pytest.approx(cell.nll - result.dense_nll)
    assert cell.delta_nll_per_mparam == pytest.approx(cell.delta_nll / (0.5 * cell.param_count) * 1e6)
    assert any(abs(c.delta_nll) > 0 for c in result.cells)


def test_predictors_and_correlations_cover_each_estimator(study) -> None:
    _, _, _, result = study
    keys = set(result.cells[0].predictors)
    assert {
        "alpha_ks",
        "alpha_hill",
        "log_spectral_norm",
        "stable_rank",
        "mean_abs",
        "kurtosis",
        "dropped_energy",
    } <= keys
    for target in ("delta_nll", "delta_nll_per_mparam"):
        assert set(result.correlations[target]) == keys
        assert all(math.isnan(v) or -1.0 <= v <= 1.0 for v in result.correlations[target].values())
    assert all(0.0 < c.predictors["dropped_energy"] < 0.5 for c in result.cells)  # TopK drops the small half
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["format"] == "acttail.sensitivity" and len(doc["cells"]) == 14


def test_plot_writes_a_png(study, tmp_path: Path) -> None:
    path = plot_sensitivity(study[3], tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spearman_known_answers() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_layer_groups_split_evenly_and_reject_bad_counts() -> None:
    assert layer_groups(5, 2) == [(0, 1, 2), (3, 4)]
    with pytest.raises(ActTailError, match="groups must be in"):
        layer_groups(2, 3)


def test_bad_level_is_rejected(study) -> None:
    model, calibration, reports, _ = study
    with pytest.raises(ActTailError, match="level must be in"):
        sensitivity_study(model, calibration, reports, level=1.0)


def test_cli_rejects_bad_arguments_with_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from acttail.cli import main

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "allocate-search",
                "smollm2-135m",
                "--sparsity",
                "0.5",
                "-o",
                "x.json",
                "--method",
                "magic",
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown method 'magic'" in err
    assert "teal-greedy" in err and "auto" in err  # the registry's calibrated methods, in its order
    with pytest.raises(SystemExit) as exc:
        main(["sensitivity", "smollm2-135m", "--level", "1.5"])
    assert exc.value.code == 2
