"""Peak memory of one evaluation, recorded with its result: RSS on the CPU, allocated bytes on CUDA.

``PeakMemory`` resets the high-water mark when it starts, so each stage reports its own peak:
on CUDA through ``torch.cuda.reset_peak_memory_stats``; on Linux by writing ``5`` to
``/proc/self/clear_refs``, which resets the process's ``VmHWM`` (peak resident set) to its
current RSS. Where that reset is refused, the peak is the process's since it started
(``ru_maxrss``) and ``reset`` in the result says so.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class PeakMemoryReading:
    """What ``PeakMemory.read`` measured; ``as_dict`` is stored with the result."""

    bytes: int
    measure: str  # "rss" (process peak resident set) | "cuda_max_allocated"
    device: str
    reset: bool  # False: the peak covers the whole process lifetime, not only this stage

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak_memory_bytes": self.bytes,
            "peak_memory_measure": self.measure,
            "peak_memory_device": self.device,
            "peak_memory_reset": self.reset,
        }


def _rss_peak() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


class PeakMemory:
    """High-water mark of one stage on ``device`` (a torch device or its string)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.was_reset = False
        self.reset()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.was_reset = True
            return
        try:
            _CLEAR_REFS.write_text("5")
            self.was_reset = True
        except OSError:
            self.was_reset = False

    def read(self) -> PeakMemoryReading:
        if self.device.type == "cuda":
            return PeakMemoryReading(
                int(torch.cuda.max_memory_allocated(self.device)), "cuda_max_allocated", str(self.device), True
            )
        return PeakMemoryReading(_rss_peak(), "rss", "cpu", self.was_reset)
