"""Machine description stored beside every benchmark result (hardware, load, versions)."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from typing import Any


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def busy_note() -> str:
    """Whether other work competed for the CPUs now (1-minute load above half the cores).

    Read before the benchmark starts its own processes; results say it instead of assuming either way.
    """
    if load_average()[0] > (os.cpu_count() or 1) / 2:
        return "other jobs were running on the machine at the start (numbers are indicative; see the load averages)"
    return "no other job of note on the machine at the start"


def describe_machine() -> dict[str, Any]:
    import torch

    cpu = _lscpu()
    info: dict[str, Any] = {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu.get("Model name", platform.processor()),
        "cpus": os.cpu_count(),
        "l2_cache": cpu.get("L2 cache"),
        "l3_cache": cpu.get("L3 cache"),
        "hypervisor": cpu.get("Hypervisor vendor"),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average_at_start": load_average(),
        "note": "",
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    else:
        info["note"] = f"CPU only; {busy_note()}."
    return info
