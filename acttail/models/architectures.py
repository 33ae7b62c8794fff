"""Where the seven linear projections live in each supported architecture.

ActTail sparsifies the *input* of every q, k, v, o, gate, up and down projection. Finding them
by architecture (not by guessing from names) keeps an unknown model from being silently
half-analysed: it fails with the list of linear modules it does have.

Canonical projection name = the Hugging Face module path, e.g.
``model.layers.3.self_attn.q_proj``; the weight tensor is that name + ``.weight``.

torch is imported only inside ``find_projections``: the naming rules here are also used by
processes that never load a model (the API, ``acttail.plots``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from acttail.errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    from torch import nn


class ProjectionType(StrEnum):
    """The seven projection kinds of a gated-MLP transformer block."""

    Q = "q"
    K = "k"
    V = "v"
    O = "o"  # noqa: E741 - the paper's name
    GATE = "gate"
    UP = "up"
    DOWN = "down"


PROJECTION_ORDER: tuple[ProjectionType, ...] = tuple(ProjectionType)

# HF module suffix inside one decoder layer, shared by Llama, Mistral, Qwen2 and Gemma3.
_HF_SUFFIX: dict[ProjectionType, str] = {
    ProjectionType.Q: "self_attn.q_proj",
    ProjectionType.K: "self_attn.k_proj",
    ProjectionType.V: "self_attn.v_proj",
    ProjectionType.O: "self_attn.o_proj",
    ProjectionType.GATE: "mlp.gate_proj",
    ProjectionType.UP: "mlp.up_proj",
    ProjectionType.DOWN: "mlp.down_proj",
}

# llama.cpp GGUF tensor names (``blk.{i}.<name>.weight``).
GGUF_SUFFIX: dict[ProjectionType, str] = {
    ProjectionType.Q: "attn_q",
    ProjectionType.K: "attn_k",
    ProjectionType.V: "attn_v",
    ProjectionType.O: "attn_output",
    ProjectionType.GATE: "ffn_gate",
    ProjectionType.UP: "ffn_up",
    ProjectionType.DOWN: "ffn_down",
}


@dataclass(frozen=True)
class ArchitectureSpec:
    """How one model family names its decoder layers."""

    model_types: tuple[str, ...]
    layers_prefixes: tuple[str, ...]  # tried in order; multimodal wrappers nest the text model


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "llama": ArchitectureSpec(("llama",), ("model.layers",)),
    "mistral": ArchitectureSpec(("mistral",), ("model.layers",)),
    "qwen2": ArchitectureSpec(("qwen2",), ("model.layers",)),
    "gemma3": ArchitectureSpec(
        ("gemma3", "gemma3_text"), ("model.layers", "model.language_model.layers", "language_model.model.layers")
    ),
}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for spec in ARCHITECTURES.values() for t in spec.model_types)

_NAME_RE = re.compile(
    r"^(?P<prefix>.*layers)\.(?P<layer>\d+)\.(?P<suffix>self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)\Z"
)
_SUFFIX_TO_TYPE = {suffix: kind for kind, suffix in _HF_SUFFIX.items()}


@dataclass(frozen=True, order=True)
class ProjectionRef:
    """One linear projection: its module path, block index and kind."""

    layer: int
    kind: ProjectionType
    name: str

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"


def spec_for(model_type: str) -> ArchitectureSpec:
    """The spec of a HF ``config.model_type``; unknown types list what is supported."""
    for spec in ARCHITECTURES.values():
        if model_type in spec.model_types:
            return spec
    raise UnsupportedArchitectureError(
        f"model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


def projection_name(layers_prefix: str, layer: int, kind: ProjectionType) -> str:
    return f"{layers_prefix}.{layer}.{_HF_SUFFIX[kind]}"


def parse_projection_name(name: str) -> ProjectionRef:
    """``model.layers.3.mlp.up_proj`` (optionally ``.weight``) -> ProjectionRef."""
    bare = name.removesuffix(".weight")
    match = _NAME_RE.match(bare)
    if match is None:
        raise ValueError(f"{name!r} is not a q/k/v/o/gate/up/down projection name")
    return ProjectionRef(int(match["layer"]), _SUFFIX_TO_TYPE[match["suffix"]], bare)


def projection_refs(model_type: str, num_layers: int, layers_prefix: str | None = None) -> list[ProjectionRef]:
    """All projections of a model in block order (q, k, v, o, gate, up, down per block)."""
    prefix = layers_prefix or spec_for(model_type).layers_prefixes[0]
    return [
        ProjectionRef(layer, kind, projection_name(prefix, layer, kind))
        for layer in range(num_layers)
        for kind in PROJECTION_ORDER
    ]


def find_projections(model: nn.Module) -> list[tuple[ProjectionRef, nn.Linear]]:
    """Every q/k/v/o/gate/up/down ``nn.Linear`` of a loaded HF causal LM, in block order.

    Raises UnsupportedArchitectureError naming the linear modules found when the model's
    type is unknown or its layout does not match the spec.
    """
    from torch import nn

    model_type = getattr(getattr(model, "config", None), "model_type", None) or "<no config>"
    modules = dict(model.named_modules())
    linear_names = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    try:
        spec = spec_for(model_type)
    except UnsupportedArchitectureError as exc:
        raise UnsupportedArchitectureError(f"{exc}; linear modules found: {_preview(linear_names)}") from None
    for prefix in spec.layers_prefixes:
        if f"{prefix}.0.{_HF_SUFFIX[ProjectionType.Q]}" not in modules:
            continue
        found: list[tuple[ProjectionRef, nn.Linear]] = []
        layer = 0
        while f"{prefix}.{layer}.{_HF_SUFFIX[ProjectionType.Q]}" in modules:
            for kind in PROJECTION_ORDER:
                name = projection_name(prefix, layer, kind)
                module = modules.get(name)
                if not isinstance(module, nn.Linear):
                    raise UnsupportedArchitectureError(
                        f"{model_type}: expected nn.Linear at {name}; linear modules found: {_preview(linear_names)}"
                    )
                found.append((ProjectionRef(layer, kind, name), module))
            layer += 1
        return found
    raise UnsupportedArchitectureError(
        f"{model_type}: no decoder layers under {', '.join(spec.layers_prefixes)}; "
        f"linear modules found: {_preview(linear_names)}"
    )


def _preview(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "") if names else "none"
