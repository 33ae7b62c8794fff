"""GGUF names -> projections from the header alone: fused Phi-3 tensors, MoE experts in 3-D tensors, routers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from acttail.errors import UnsupportedArchitectureError
from acttail.models.architectures import ProjectionType
from acttail.models.gguf_source import GGUFSource

H, I, E = 16, 8, 3  # noqa: E741 - hidden, expert intermediate, experts


def write_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray]) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    for name, array in tensors.items():
        writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def test_moe_experts_are_sliced_from_3d_tensors_and_routers_skipped(tmp_path: Path) -> None:
    experts = {
        kind: rand(E, *shape, seed=i)
        for i, (kind, shape) in enumerate({"gate": (I, H), "up": (I, H), "down": (H, I)}.items())
    }
    tensors = {
        "blk.0.attn_q.weight": rand(H, H),
        "blk.0.attn_k.weight": rand(4, H),
        "blk.0.attn_v.weight": rand(4, H),
        "blk.0.attn_output.weight": rand(H, H, seed=1),
        "blk.0.attn_norm.weight": rand(H),
        "blk.0.ffn_gate_inp.weight": rand(E, H),  # router
        "blk.0.ffn_gate_inp_shexp.weight": rand(1, H),  # shared-expert gate
        "blk.0.ffn_gate_shexp.weight": rand(I, H, seed=2),
        "blk.0.ffn_up_shexp.weight": rand(I, H, seed=3),
        "blk.0.ffn_down_shexp.weight": rand(H, I, seed=4),
        **{f"blk.0.ffn_{kind}_exps.weight": array for kind, array in experts.items()},
    }
    source = GGUFSource(write_gguf(tmp_path / "moe.gguf", "qwen2moe", tensors))
    infos = source.projections()
    assert source.model_type == "qwen2_moe"
    names = [info.name for info in infos]
    assert names[:4] == [f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"]
    assert names[4:7] == [f"model.layers.0.mlp.shared_expert.{k}_proj" for k in ("gate", "up", "down")]
    assert names[7:] == [f"model.layers.0.mlp.experts.{e}.{k}_proj" for e in range(E) for k in ("gate", "up", "down")]
    weights = dict((info.name, w.numpy()) for info, w in source.iter_projection_weights())
    for e in range(E):
        for kind, array in experts.items():
            np.testing.assert_array_equal(weights[f"model.layers.0.mlp.experts.{e}.{kind}_proj"], array[e])
    assert {info.ref.expert for info in infos} == {None, 0, 1, 2}


def test_phi3_fused_tensors_are_qkv_and_gate_up(tmp_path: Path) -> None:
    tensors = {
        "blk.0.attn_qkv.weight": rand(3 * H, H),
        "blk.0.attn_output.weight": rand(H, H),
        "blk.0.ffn_up.weight": rand(2 * I, H),  # llama.cpp's name for Phi-3's gate_up_proj
        "blk.0.ffn_down.weight": rand(H, I),
    }
    source = GGUFSource(write_gguf(tmp_path / "phi3.gguf", "phi3", tensors))
    kinds = [info.ref.kind for info in source.projections()]
    assert kinds == [ProjectionType.QKV, ProjectionType.O, ProjectionType.GATE_UP, ProjectionType.DOWN]
    assert source.projections()[2].name == "model.layers.0.mlp.gate_up_proj"


def test_unknown_block_tensor_is_named(tmp_path: Path) -> None:
    tensors = {"blk.0.attn_q.weight": rand(H, H), "blk.0.ssm_conv1d.weight": rand(H, 4)}
    source = GGUFSource(write_gguf(tmp_path / "odd.gguf", "mamba", tensors))
    with pytest.raises(
        UnsupportedArchitectureError, match=r"neither a known projection nor a router: blk\.0\.ssm_conv1d"
    ):
        source.projections()
