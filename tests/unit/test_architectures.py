from __future__ import annotations

import pytest
from torch import nn

from acttail.errors import UnsupportedArchitectureError
from acttail.models.architectures import PROJECTION_ORDER, ProjectionType, find_projections, parse_projection_name
from tests.tiny_models import build_tiny_model


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma3"])
def test_find_projections_maps_all_seven_per_layer(arch: str) -> None:
    model = build_tiny_model(arch)
    found = find_projections(model)
    assert len(found) == 2 * 7
    assert [ref.kind for ref, _ in found[:7]] == list(PROJECTION_ORDER)
    modules = dict(model.named_modules())
    for ref, linear in found:
        assert modules[ref.name] is linear
        assert isinstance(linear, nn.Linear)
    down = next(lin for ref, lin in found if ref.kind is ProjectionType.DOWN)
    assert down.in_features == 128 and down.out_features == 64


def test_unknown_architecture_lists_linear_modules() -> None:
    class Config:
        model_type = "gpt2"

    model = nn.Sequential(nn.Linear(4, 4))
    model.config = Config()  # type: ignore[attr-defined]
    with pytest.raises(UnsupportedArchitectureError, match=r"gpt2.*supported: llama.*linear modules found: 0"):
        find_projections(model)


def test_parse_projection_name_round_trip() -> None:
    ref = parse_projection_name("model.layers.12.mlp.down_proj.weight")
    assert (ref.layer, ref.kind, ref.name) == (12, ProjectionType.DOWN, "model.layers.12.mlp.down_proj")
    with pytest.raises(ValueError):
        parse_projection_name("model.layers.1.mlp.act_fn")


def test_naming_rules_and_plots_import_without_torch() -> None:
    """The API imports these; torch would cost it seconds and hundreds of MB per process."""
    import subprocess
    import sys

    code = (
        "import sys, acttail.plots, acttail.models.architectures, acttail.models\n"
        "from acttail.models import BUNDLED, is_hub_id\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'gguf'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
