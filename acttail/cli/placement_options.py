"""``--device``, ``--dtype``, ``--device-map``, ``--max-memory``: where every command that loads a model loads it.

The options become one ``acttail.models.placement.Placement`` (the value job requests and worker
settings carry too), validated before anything is loaded.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from acttail.errors import ActTailError
from acttail.models.placement import DEVICE_MAPS, DEVICES_HELP, DTYPES, Placement

DeviceOpt = Annotated[str, typer.Option("--device", help=f"{DEVICES_HELP} (auto: the first GPU, else the CPU).")]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help=f"{' | '.join(DTYPES)} (auto: bf16 on CUDA, fp16 without bf16, fp32 on CPU).")
]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        help=f"Spread the model with accelerate: {' | '.join(DEVICE_MAPS)} or a JSON object module -> device.",
    ),
]
MaxMemoryOpt = Annotated[
    str | None, typer.Option("--max-memory", help="With --device-map: per-device caps, e.g. 0=20GiB,cpu=64GiB.")
]


def parse_max_memory(text: str) -> dict[str, str]:
    """``"0=20GiB,cpu=64GiB"`` -> {"0": "20GiB", "cpu": "64GiB"} (values checked by ``Placement.validate``)."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ActTailError(f"--max-memory: {part!r} is not DEVICE=SIZE (e.g. 0=20GiB,cpu=64GiB)")
        out[key.strip()] = value.strip()
    return out


def parse_device_map(text: str) -> str | dict[str, Any]:
    if not text.lstrip().startswith("{"):
        return text.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ActTailError(f"--device-map: not a JSON object ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ActTailError("--device-map: give a name or a JSON object module -> device")
    return value


def placement_from(device: str, dtype: str, device_map: str | None, max_memory: str | None) -> Placement:
    """The options as one validated Placement (ActTailError, one line, on a bad value)."""
    placement = Placement(
        device=device.strip(),
        dtype=dtype.strip(),
        device_map=None if device_map is None else parse_device_map(device_map),
        max_memory=None if max_memory is None else parse_max_memory(max_memory),
    )
    placement.validate()
    return placement
