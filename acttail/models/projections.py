"""The module to hook for every projection of a loaded model, MoE experts included.

Dense and fused projections are ``nn.Linear`` modules: hooks and swaps go on them directly.
Transformers stores the experts of a MoE block (Mixtral, Qwen2-MoE, Qwen3-MoE) as two 3-D
parameters, ``gate_up_proj`` ``[E, 2I, H]`` and ``down_proj`` ``[E, H, I]``, and loops over
experts inside one module, so no per-expert module exists to hook. ``find_projections`` therefore
gives each expert three ``ExpertLinear`` views (gate rows, up rows, down) and replaces that
experts module's forward by the same eager loop calling them: a forward pre-hook or a sparse
decode swap on an ``ExpertLinear`` then acts on exactly that expert's input, as for any Linear.
The views hold no weights of their own (the 3-D parameters stay where they are, also when
accelerate offloads them), and an expert whose gate and up views carry no hook runs the fused
product of the original loop, so an unsparsified MoE computes what transformers computes.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

from acttail.errors import UnsupportedArchitectureError
from acttail.models.architectures import ProjectionRef, ProjectionType, discover, expert_name

ProjectionModule = nn.Linear  # an nn.Linear, or an ExpertLinear view (a Linear subclass without own weights)

_EXPERT_KINDS = (ProjectionType.GATE, ProjectionType.UP, ProjectionType.DOWN)


class ExpertLinear(nn.Linear):
    """One expert's gate, up or down as a Linear view of the experts module's 3-D parameter.

    A Linear subclass so every consumer of projections (hooks, sparse decode, ``in_features``)
    treats it as one, but ``nn.Linear.__init__`` is skipped: it owns no parameters.
    """

    _experts: nn.Module

    def __init__(self, experts: nn.Module, param: str, expert: int, rows: slice) -> None:
        nn.Module.__init__(self)
        object.__setattr__(self, "_experts", experts)  # not a child: the module tree stays as loaded
        self.param, self.expert, self.rows = param, expert, rows
        out_features, in_features = self.weight.shape
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.register_parameter("bias", None)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        """``[d_out, d_in]``, read at call time (accelerate may swap in offloaded weights)."""
        return _param(self._experts, self.param)[self.expert, self.rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"expert={self.expert}, {self.param}[{self.rows.start}:{self.rows.stop}]"


def _param(module: nn.Module, name: str) -> torch.Tensor:
    value = getattr(module, name)
    assert isinstance(value, torch.Tensor)
    return value


def _is_fused_experts(module: nn.Module) -> bool:
    gate_up = getattr(module, "gate_up_proj", None)
    down = getattr(module, "down_proj", None)
    return isinstance(gate_up, nn.Parameter) and isinstance(down, nn.Parameter) and gate_up.dim() == 3


def _check_layout(name: str, experts: nn.Module) -> None:
    """Only the concatenated [gate; up], untransposed, bias-free layout of the eager loop is supported."""
    odd = {
        "is_transposed": getattr(experts, "is_transposed", False),
        "has_bias": getattr(experts, "has_bias", False),
        "has_post_expert_norm": getattr(experts, "has_post_expert_norm", False),
        "not is_concatenated": not getattr(experts, "is_concatenated", True),
        "not has_gate": not getattr(experts, "has_gate", True),
    }
    gate_up, down = _param(experts, "gate_up_proj"), _param(experts, "down_proj")
    shapes_ok = gate_up.shape[0] == down.shape[0] and gate_up.shape[1] == 2 * down.shape[2]
    bad = [flag for flag, value in odd.items() if value]
    if bad or not shapes_ok:
        raise UnsupportedArchitectureError(
            f"{name} ({type(experts).__name__}): expert layout not supported ({', '.join(bad) or 'shapes'}: "
            f"gate_up_proj {tuple(gate_up.shape)}, down_proj {tuple(down.shape)}); supported: [E, 2I, H] + [E, H, I]"
        )


def _expert_views(experts: nn.Module) -> list[tuple[ExpertLinear, ExpertLinear, ExpertLinear]]:
    """(gate, up, down) views per expert, made once per experts module and reused."""
    views: list[tuple[ExpertLinear, ExpertLinear, ExpertLinear]] | None = experts.__dict__.get("_acttail_views")
    if views is None:
        inter = _param(experts, "down_proj").shape[2]
        views = [
            (
                ExpertLinear(experts, "gate_up_proj", e, slice(0, inter)),
                ExpertLinear(experts, "gate_up_proj", e, slice(inter, 2 * inter)),
                ExpertLinear(experts, "down_proj", e, slice(None)),
            )
            for e in range(_param(experts, "gate_up_proj").shape[0])
        ]
        experts.__dict__["_acttail_views"] = views
        forward = types.MethodType(_experts_forward, experts)
        # accelerate keeps the original forward in _old_forward and calls it from its hook.
        experts.__dict__["_old_forward" if hasattr(experts, "_old_forward") else "forward"] = forward
    return views


def _plain(module: nn.Module) -> bool:
    return type(module) is ExpertLinear and not module._forward_pre_hooks and not module._forward_hooks


def _experts_forward(
    self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """Transformers' eager expert loop (Mixtral/Qwen-MoE ``Experts.forward``) through the views."""
    views = self.__dict__["_acttail_views"]
    num_experts = len(views)
    final = torch.zeros_like(hidden_states)
    with torch.no_grad():
        mask = F.one_hot(top_k_index, num_classes=num_experts + 1).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    for index in hit:
        e = int(index[0])
        if e == num_experts:
            continue
        top_k_pos, token_idx = torch.where(mask[e])
        x = hidden_states[token_idx]
        gate, up, down = views[e]
        if _plain(gate) and _plain(up):
            g, u = F.linear(x, _param(self, "gate_up_proj")[e]).chunk(2, dim=-1)
        else:
            g, u = gate(x), up(x)
        act = self.act_fn
        assert callable(act)
        h = down(act(g) * u) * top_k_weights[token_idx, top_k_pos, None]
        final.index_add_(0, token_idx, h.to(final.dtype))
    return final


def _num_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    value = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    return int(value) if value else None


def find_projections(model: nn.Module) -> list[tuple[ProjectionRef, ProjectionModule]]:
    """Every projection of a loaded HF causal LM with its hookable module, in block order.

    Raises UnsupportedArchitectureError listing the linear modules found when no decoder block
    is recognised, or naming a block's linear map that is neither a projection nor a router.
    """
    modules: dict[str, nn.Linear] = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            modules[name] = module
        elif _is_fused_experts(module):
            _check_layout(name, module)
            for e, trio in enumerate(_expert_views(module)):
                for kind, view in zip(_EXPERT_KINDS, trio, strict=True):
                    modules[expert_name(name, e, kind)] = view
    model_type = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    try:
        refs = discover(modules, _num_layers(model))
    except UnsupportedArchitectureError as exc:
        raise UnsupportedArchitectureError(f"{model_type}: {exc}") from None
    return [(ref, modules[ref.name]) for ref in refs]


def set_projection_module(model: nn.Module, ref: ProjectionRef, module: nn.Module) -> None:
    """Put ``module`` where the projection ``ref`` is computed (sparse decode swaps use it)."""
    if ref.expert is not None and ref.name.rsplit(".", 2)[0] in dict(model.named_modules()):
        experts = model.get_submodule(ref.name.rsplit(".", 2)[0])
        if "_acttail_views" in experts.__dict__:
            trio = list(experts.__dict__["_acttail_views"][ref.expert])
            trio[_EXPERT_KINDS.index(ref.kind)] = module
            experts.__dict__["_acttail_views"][ref.expert] = tuple(trio)
            return
    parent_name, _, child = ref.name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
