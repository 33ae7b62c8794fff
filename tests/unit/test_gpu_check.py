"""benchmarks/gpu_check.sh degrades cleanly without a GPU, and its correctness section runs on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the script would run the real check")
def test_without_cuda_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stdout.strip().splitlines() == [
        "gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False); use --dry-run for the CPU check"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_correctness_section_agrees_with_itself_on_the_cpu() -> None:
    from benchmarks.gpu_check import correctness

    doc = correctness(torch.device("cpu"))
    assert doc["passed"] is True
    assert doc["alpha"]["projections"] == 14 and doc["alpha"]["max_relative_error"] == 0.0
    assert set(doc["topk_ppl"]) >= {"dense", "uniform@0.5"}
    dense, sparse = doc["topk_ppl"]["dense"]["cpu"], doc["topk_ppl"]["uniform@0.5"]["cpu"]
    assert dense > 1.0 and sparse > 1.0 and dense != sparse  # sparsity was applied
