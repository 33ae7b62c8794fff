"""benchmarks/isa_drift.py: its environment really limits PyTorch's kernels, and its report reads right."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def isa_drift(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import isa_drift

    return isa_drift


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"), reason="needs an x86 AVX2 CPU")
def test_avx2_environment_limits_a_fresh_process(isa_drift: ModuleType) -> None:
    env = {**os.environ, **{name: spelling["AVX2"] for name, spelling in isa_drift.ISA_ENV.items()}}
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "AVX2"


def test_every_instruction_set_is_spelled_for_every_library(isa_drift: ModuleType) -> None:
    spellings = [set(s) for s in isa_drift.ISA_ENV.values()]
    assert all(s == spellings[0] for s in spellings)


def test_report_gives_each_cell_and_the_gain_per_instruction_set(isa_drift: ModuleType) -> None:
    def run(uniform_thr: float) -> dict[str, Any]:
        ppl = {"dense/topk": 100.0, "uniform/topk": 200.0, "htsr-spectral/topk": 190.0,
               "uniform/threshold": uniform_thr, "htsr-spectral/threshold": 160.0}  # fmt: skip
        return {"cells": {cell: {"ppl": p} for cell, p in ppl.items()}}

    args = argparse.Namespace(model="m", target=0.5, test_tokens=2048, seqlen=256, cal_tokens=1024)
    machine = {"cpu_model": "cpu", "cpus": 2, "note": "CPU only.", "load_average_at_start": (0.1, 0.2, 0.3)}
    text = isa_drift.render({"AVX512": run(160.0), "AVX2": run(200.0)}, args, machine)
    assert "| uniform/threshold | 160.0000 | 200.0000 | +25.000% |" in text
    assert "| topk | -5.00% | -5.00% |" in text
    assert "| threshold | +0.00% | -20.00% |" in text
