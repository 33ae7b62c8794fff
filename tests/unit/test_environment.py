"""The provenance stored beside every result names what changes sparse numbers."""

from __future__ import annotations

import torch

from acttail.environment import environment


def test_environment_records_the_cpu_instruction_set() -> None:
    env = environment()
    # Sparse perplexities move between AVX2 and AVX-512 kernels (docs/science.md), so a row must say which ran.
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["cpu_capability"] in {"DEFAULT", "NO AVX", "AVX2", "AVX512", "ZVECTOR", "VSX", "SVE256"}
    assert env["torch_threads"] == str(torch.get_num_threads())
