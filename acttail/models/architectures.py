"""Which linear maps of a decoder block ActTail sparsifies, found from the model's own names.

ActTail sparsifies the *input* of every attention and MLP projection of every decoder block.
No list of model types decides where they are: the decoder blocks are the numbered children of a
``…layers`` / ``…h`` / ``…blocks`` list, and each linear map inside a block is classified by its
local name into a small fixed vocabulary of kinds (``ProjectionType``), so allocations, plots
and the dashboard work for any architecture built from the usual parts:

* Llama family (Llama-2/3, Mistral, Qwen2/3, Gemma-2/3, …): ``self_attn.{q,k,v,o}_proj``,
  ``mlp.{gate,up,down}_proj``;
* fused projections, one input so one kind, one mask and one sparsity: Phi-3 ``qkv_proj`` and
  ``gate_up_proj``, GPT-NeoX ``query_key_value``; MLPs without a gate (OPT ``fc1``/``fc2``,
  GPT-NeoX ``dense_h_to_4h``/``dense_4h_to_h``) are ``up``/``down``;
* MoE blocks (Mixtral, Qwen2-MoE, Qwen3-MoE): every expert's gate/up/down, named
  ``<block>.mlp.experts.<e>.{gate,up,down}_proj``, and shared experts; the router (``gate``,
  ``router``, ``shared_expert_gate``) is never sparsified.

A linear map inside a block that fits no kind is an error listing it (never silently left dense),
and a model with no recognisable block gets one line listing the linear modules it has.

Canonical projection name = the module path in the loaded Hugging Face model (for an expert:
its experts module + ``.<e>.<kind>_proj``). The same rules read module trees (``acttail.models
.projections``, torch) and checkpoint tensor names (the streaming sources); this module imports
no torch because the API and ``acttail.plots`` parse names too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from acttail.errors import UnsupportedArchitectureError

if TYPE_CHECKING:
    from torch import nn

    from acttail.models.projections import ProjectionModule


class ProjectionType(StrEnum):
    """Projection kinds: the paper's seven, plus the two fused ones (one input, one mask)."""

    Q = "q"
    K = "k"
    V = "v"
    QKV = "qkv"  # fused q/k/v (Phi-3 qkv_proj, GPT-NeoX query_key_value)
    O = "o"  # noqa: E741 - the paper's name
    GATE = "gate"
    UP = "up"
    GATE_UP = "gate_up"  # fused gate/up (Phi-3 gate_up_proj)
    DOWN = "down"


PROJECTION_ORDER: tuple[ProjectionType, ...] = tuple(ProjectionType)
ATTENTION_KINDS = frozenset(
    {ProjectionType.Q, ProjectionType.K, ProjectionType.V, ProjectionType.QKV, ProjectionType.O}
)

# Leaf module names -> kind, whatever the parent (the usual HF, Mixtral-w*, NeoX, OPT names).
_LEAF_KINDS: dict[str, ProjectionType] = {
    "q_proj": ProjectionType.Q,
    "query": ProjectionType.Q,
    "wq": ProjectionType.Q,
    "k_proj": ProjectionType.K,
    "key": ProjectionType.K,
    "wk": ProjectionType.K,
    "v_proj": ProjectionType.V,
    "value": ProjectionType.V,
    "wv": ProjectionType.V,
    "qkv_proj": ProjectionType.QKV,
    "query_key_value": ProjectionType.QKV,
    "wqkv": ProjectionType.QKV,
    "o_proj": ProjectionType.O,
    "out_proj": ProjectionType.O,
    "gate_proj": ProjectionType.GATE,
    "w1": ProjectionType.GATE,
    "up_proj": ProjectionType.UP,
    "w3": ProjectionType.UP,
    "fc1": ProjectionType.UP,
    "fc_in": ProjectionType.UP,
    "dense_h_to_4h": ProjectionType.UP,
    "gate_up_proj": ProjectionType.GATE_UP,
    "down_proj": ProjectionType.DOWN,
    "w2": ProjectionType.DOWN,
    "fc2": ProjectionType.DOWN,
    "fc_out": ProjectionType.DOWN,
    "dense_4h_to_h": ProjectionType.DOWN,
}
# Leaves whose kind depends on the parent: output of attention, or down of an MLP. (GPT-2's
# c_attn/c_fc/c_proj are Conv1D with transposed [d_in, d_out] weights: deliberately unknown.)
_CONTEXT_LEAVES = frozenset({"dense", "wo"})
_ATTENTION_PARENT = re.compile(r"attn|attention", re.IGNORECASE)
# Linear maps of a block that are not projections: MoE routers. Never sparsified.
ROUTER_LEAVES = frozenset({"gate", "router", "shared_expert_gate", "gate_inp"})
# Numbered lists of blocks that are not the decoder (multimodal towers).
_NON_DECODER = re.compile(r"vision|visual|audio|image|multi_modal|mm_projector", re.IGNORECASE)

_BLOCK_RE = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|layer|h|blocks))\.(?P<layer>\d+)\.(?P<local>.+)\Z")
_EXPERT_RE = re.compile(r"(?:^|\.)experts\.(?P<expert>\d+)\.[^.]+\Z")


@dataclass(frozen=True, order=True)
class ProjectionRef:
    """One linear projection: its block index, kind and canonical name (plus the expert, for MoE)."""

    layer: int
    kind: ProjectionType
    name: str
    expert: int | None = None

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"

    @property
    def block(self) -> str:
        """Module path of the decoder block holding it (``model.layers.3``)."""
        match = _BLOCK_RE.match(self.name)
        assert match is not None, self.name
        return f"{match['prefix']}.{match['layer']}"


def classify(local: str) -> ProjectionType | None:
    """Kind of the linear map at path ``local`` inside a block, or None if it is none of ours.

    ``local`` is e.g. ``self_attn.q_proj``, ``attention.dense``, ``fc1``, ``mlp.experts.3.w1``.
    """
    parent, _, leaf = local.rpartition(".")
    in_attention = bool(_ATTENTION_PARENT.search(parent))
    if leaf in _CONTEXT_LEAVES:
        return ProjectionType.O if in_attention else ProjectionType.DOWN
    kind = _LEAF_KINDS.get(leaf)
    if kind is None or (kind in ATTENTION_KINDS) != in_attention:
        return None  # e.g. a q_proj outside attention, an up_proj inside it: not a layout we know
    return kind


def is_router(local: str) -> bool:
    return local.rpartition(".")[2] in ROUTER_LEAVES


def expert_name(experts_path: str, expert: int, kind: ProjectionType) -> str:
    """Canonical name of one expert's projection: ``<experts module>.<e>.<kind>_proj``."""
    return f"{experts_path}.{expert}.{kind}_proj"


def parse_projection_name(name: str) -> ProjectionRef:
    """``model.layers.3.mlp.up_proj`` (optionally ``.weight``) -> ProjectionRef."""
    bare = name.removesuffix(".weight")
    match = _BLOCK_RE.match(bare)
    kind = classify(match["local"]) if match else None
    if match is None or kind is None:
        raise ValueError(f"{name!r} is not a q/k/v/o/gate/up/down projection name (nor a fused qkv/gate_up) of a block")
    expert = _EXPERT_RE.search(match["local"])
    return ProjectionRef(int(match["layer"]), kind, bare, int(expert["expert"]) if expert else None)


def order_key(ref: ProjectionRef) -> tuple[int, int, int, str]:
    """Block order: per block attention, dense MLP (and shared expert), then experts by index."""
    return (ref.layer, -1 if ref.expert is None else ref.expert, PROJECTION_ORDER.index(ref.kind), ref.name)


def discover(
    names: Iterable[str], num_layers: int | None = None, *, what: str = "linear modules"
) -> list[ProjectionRef]:
    """Every projection among ``names`` (linear module paths or 2-D tensor names), in block order.

    The decoder is the numbered list whose blocks hold recognised projections (multimodal towers
    skipped; with several, the one with ``num_layers`` blocks, else the longest). A block's linear
    map that is neither a projection nor a router is an UnsupportedArchitectureError listing it.
    """
    names = [n.removesuffix(".weight") for n in names]
    by_prefix: dict[str, list[tuple[int, str, str]]] = {}
    for name in names:
        match = _BLOCK_RE.match(name)
        if match and not _NON_DECODER.search(match["prefix"]):
            by_prefix.setdefault(match["prefix"], []).append((int(match["layer"]), match["local"], name))
    candidates = {p: e for p, e in by_prefix.items() if any(classify(local) for _, local, _ in e)}
    if not candidates:
        raise UnsupportedArchitectureError(
            f"no decoder blocks with attention/MLP projections found; {what} found: {preview(names)}"
        )
    prefix = max(
        candidates,
        key=lambda p: (len({layer for layer, _, _ in candidates[p]}) == num_layers, len(candidates[p])),
    )
    refs: list[ProjectionRef] = []
    unknown: list[str] = []
    for layer, local, name in candidates[prefix]:
        kind = classify(local)
        if kind is None:
            if not is_router(local):
                unknown.append(name)
            continue
        expert = _EXPERT_RE.search(local)
        refs.append(ProjectionRef(layer, kind, name, int(expert["expert"]) if expert else None))
    if unknown:
        raise UnsupportedArchitectureError(
            f"decoder blocks under {prefix} hold {what} that are neither a known projection nor a router: "
            f"{preview(unknown)}"
        )
    return sorted(refs, key=order_key)


def find_projections(model: nn.Module) -> list[tuple[ProjectionRef, ProjectionModule]]:
    """Every projection of a loaded model with the module to hook (see ``acttail.models.projections``)."""
    from acttail.models.projections import find_projections as find

    return find(model)


def preview(names: Sequence[str], limit: int = 12) -> str:
    """The first ``limit`` names, comma-separated, with the total when longer."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "") if names else "none"
