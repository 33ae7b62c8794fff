"""Where and in which precision a model is loaded: one value the CLI, job requests and workers share.

``Placement`` is plain data (no torch import), so the API can validate it and store it with every
result. ``resolve()`` turns ``auto`` into what this machine can do: bf16 on CUDA (fp16 where the
GPU lacks bf16), fp32 on the CPU. ``device_map`` (accelerate's ``auto``/``balanced``/…, or an
explicit module → device map) spreads a model over several devices and CPU RAM, capped per device
by ``max_memory`` ({"0": "20GiB", "cpu": "64GiB"}).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from acttail.errors import ActTailError

if TYPE_CHECKING:
    import torch

DEVICES_HELP = "auto, cpu, cuda or cuda:N"
DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
DEVICE_MAPS: tuple[str, ...] = ("auto", "balanced", "balanced_low_0", "sequential")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,2})\Z")
MEMORY_PATTERN = re.compile(r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\Z")


@dataclass(frozen=True)
class ResolvedPlacement:
    """``Placement`` with ``auto`` decided: what ``from_pretrained`` is called with."""

    device: str  # "cpu" | "cuda:N"; the device of the inputs (the first device of a map)
    dtype: str  # "float32" | "bfloat16" | "float16"
    device_map: str | dict[str, Any] | None
    max_memory: dict[Any, str] | None

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)

    def as_dict(self) -> dict[str, Any]:
        """Stored with every result (the device map as given, not the placement accelerate chose)."""
        return {
            "device": self.device,
            "dtype": self.dtype,
            "device_map": self.device_map,
            "max_memory": self.max_memory,
        }


@dataclass(frozen=True)
class Placement:
    """Requested device, dtype and optional device map; ``validate`` before loading anything."""

    device: str = "auto"
    dtype: str = "auto"
    device_map: str | Mapping[str, Any] | None = None
    max_memory: Mapping[str, str] | None = field(default=None)

    def validate(self) -> None:
        """Every problem as one readable ActTailError."""
        if not DEVICE_PATTERN.match(self.device):
            raise ActTailError(f"unknown device {self.device!r}; valid: {DEVICES_HELP}")
        if self.dtype not in DTYPES:
            raise ActTailError(f"unknown dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        if isinstance(self.device_map, str) and self.device_map not in DEVICE_MAPS:
            raise ActTailError(f"unknown device map {self.device_map!r}; valid: {', '.join(DEVICE_MAPS)} or a mapping")
        for key, value in (self.max_memory or {}).items():
            if not (key == "cpu" or key == "disk" or str(key).isdigit()):
                raise ActTailError(f"max_memory keys are GPU indices, 'cpu' or 'disk'; got {key!r}")
            if not MEMORY_PATTERN.match(str(value)):
                raise ActTailError(f"max_memory[{key!r}] must look like '20GiB', got {value!r}")
        if self.max_memory and self.device_map is None:
            raise ActTailError("max_memory needs a device map (device_map='auto')")

    def resolve(self) -> ResolvedPlacement:
        """Decide ``auto`` for this machine; a CUDA device on a machine without one is an error."""
        import torch

        self.validate()
        device = self.device
        if device == "auto":
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        elif device == "cuda":
            device = "cuda:0"
        if device.startswith("cuda"):
            index = int(device.split(":")[1])
            if not torch.cuda.is_available() or index >= torch.cuda.device_count():
                raise ActTailError(f"device {self.device!r} requested but this machine has no such CUDA device")
        dtype = self.dtype
        if dtype == "auto":
            if device.startswith("cuda"):
                dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            else:
                dtype = "float32"
        device_map = dict(self.device_map) if isinstance(self.device_map, Mapping) else self.device_map
        max_memory = None
        if self.max_memory:
            max_memory = {int(k) if str(k).isdigit() else k: str(v) for k, v in self.max_memory.items()}
        return ResolvedPlacement(device=device, dtype=dtype, device_map=device_map, max_memory=max_memory)
