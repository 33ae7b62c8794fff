"""What a measurement ran on: library versions, device and dtype, stored beside every result.

One function, so the CLI, the workers and the benchmarks record the same keys, and a dense row
written by ``acttail run`` and by a job carries the same provenance.
"""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from acttail.models.placement import ResolvedPlacement


def environment(placement: ResolvedPlacement | None = None) -> dict[str, Any]:
    """Versions that change numbers, the thread count, the CPU kernels' instruction set, and where the
    model ran (``placement``).

    The instruction set is recorded because sparse results depend on it: TopK and thresholds are
    discontinuous, so rounding differences between AVX2 and AVX-512 kernels flip entries near the
    cut-off and the flips compound through the layers (docs/science.md, "Reproducibility").
    """
    import torch
    import transformers

    import acttail

    out: dict[str, Any] = {
        "acttail": acttail.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "torch_threads": str(torch.get_num_threads()),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if placement is not None:
        out.update(placement.as_dict())
    return out
