"""Load a causal LM where a ``Placement`` says: one dtype, one device or an accelerate device map.

Every source (safetensors directory, hub snapshot, GGUF) ends in ``from_pretrained``; this module
turns a placement into its keyword arguments so the rule is written once:

* no device map: load in the placement's dtype, then move to its device (CUDA loads go straight
  to the GPU through ``device_map={"": device}``, never through a CPU copy);
* a device map (``auto``/``balanced``/… or an explicit ``{module: device}``): accelerate places
  each block, capped by ``max_memory``; what fits nowhere is offloaded to disk, in a temporary
  folder removed when the model is garbage-collected (``ACTTAIL_OFFLOAD_DIR`` chooses its parent).

``input_device`` says where a spread model wants its input ids: the parameters of an offloaded
embedding live on the ``meta`` device, so ``next(model.parameters()).device`` is not the answer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import TYPE_CHECKING, Any

import torch

from acttail.models.placement import Placement, ResolvedPlacement

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel

PlacementLike = Placement | ResolvedPlacement | None


def resolve_placement(
    placement: PlacementLike = None, *, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None
) -> ResolvedPlacement:
    """A ``ResolvedPlacement`` from a placement, or from the legacy ``dtype=``/``device=`` keywords.

    The keywords are kept for callers written before ``Placement``; they may not be mixed with it.
    """
    if placement is not None and (dtype is not None or device is not None):
        raise TypeError("give a placement or dtype=/device=, not both")
    if isinstance(placement, ResolvedPlacement):
        return placement
    if placement is None:
        dtype_name = str(dtype).removeprefix("torch.") if dtype is not None else "auto"
        placement = Placement(device=str(device) if device is not None else "auto", dtype=dtype_name)
    return placement.resolve()


def pretrained_kwargs(resolved: ResolvedPlacement) -> dict[str, Any]:
    """The dtype / device-map keywords of ``from_pretrained`` (the offload folder is added on load)."""
    kwargs: dict[str, Any] = {"dtype": resolved.torch_dtype}
    if resolved.device_map is not None:
        kwargs["device_map"] = resolved.device_map
        if resolved.max_memory:
            kwargs["max_memory"] = dict(resolved.max_memory)
    elif resolved.device != "cpu":
        kwargs["device_map"] = {"": resolved.device}
    return kwargs


def load_pretrained(loader: Any, path: str, resolved: ResolvedPlacement, **extra: Any) -> PreTrainedModel:
    """``loader.from_pretrained(path, **extra)`` placed as ``resolved`` says; eval mode.

    ``loader`` is ``AutoModelForCausalLM`` (or a test's class). With a device map, disk offload
    goes to a fresh temporary folder that lives as long as the model.
    """
    kwargs = pretrained_kwargs(resolved) | extra
    offload_dir = None
    if resolved.device_map is not None:
        parent = os.environ.get("ACTTAIL_OFFLOAD_DIR") or None
        if parent:
            os.makedirs(parent, exist_ok=True)
        offload_dir = tempfile.mkdtemp(prefix="acttail-offload-", dir=parent)
        kwargs["offload_folder"] = offload_dir
    try:
        model = loader.from_pretrained(path, **kwargs)
    except BaseException:
        if offload_dir is not None:
            shutil.rmtree(offload_dir, ignore_errors=True)
        raise
    if offload_dir is not None:
        weakref.finalize(model, shutil.rmtree, offload_dir, True)
    if resolved.device_map is None and resolved.device == "cpu":
        model = model.to("cpu")
    return model.eval()


def input_device(model: nn.Module) -> torch.device:
    """The device the model's input ids go to: the embedding's, or the first real device of its map."""
    device_map = getattr(model, "hf_device_map", None)
    if isinstance(device_map, dict):
        for target in device_map.values():
            if target not in ("disk", "meta"):
                return torch.device(f"cuda:{target}" if isinstance(target, int) else target)
    for parameter in model.parameters():
        if parameter.device.type != "meta":
            return parameter.device
    return torch.device("cpu")
