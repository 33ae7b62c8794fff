"""Projections found from the model itself, for every architecture family, through the whole pipeline.

Each tiny random model (``tests.tiny_models``) goes: module tree and checkpoint names agree ->
streamed weights equal the modules' -> alphas -> allocation -> TopK perplexity -> sparse decode.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from acttail.allocate import allocate, weighted_mean
from acttail.errors import UnsupportedArchitectureError
from acttail.esd import analyze_source
from acttail.evaluate.perplexity import evaluate_perplexity
from acttail.evaluate.speed import greedy_decode
from acttail.models import resolve_model
from acttail.models.architectures import (
    PROJECTION_ORDER,
    ProjectionType,
    classify,
    discover,
    find_projections,
    parse_projection_name,
)
from acttail.models.projections import ExpertLinear
from acttail.sparse_decode import enable_reference_decode, enable_sparse_decode
from acttail.sparsity import apply_sparsity, calibrate_thresholds
from tests.tiny_models import ARCHITECTURES, DENSE, FUSED, MOE, build_tiny_model, save_tiny_model

Q, K, V, QKV, O = ProjectionType.Q, ProjectionType.K, ProjectionType.V, ProjectionType.QKV, ProjectionType.O  # noqa: E741
GATE, UP, GATE_UP, DOWN = ProjectionType.GATE, ProjectionType.UP, ProjectionType.GATE_UP, ProjectionType.DOWN

# Kinds of one block, in block order (MoE: attention, shared expert, then per expert gate/up/down).
BLOCK_KINDS = {
    **{arch: [Q, K, V, O, GATE, UP, DOWN] for arch in DENSE},
    "phi3": [QKV, O, GATE_UP, DOWN],
    "gpt_neox": [QKV, O, UP, DOWN],
    "opt": [Q, K, V, O, UP, DOWN],
    "mixtral": [Q, K, V, O] + [GATE, UP, DOWN] * 4,
    "qwen2_moe": [Q, K, V, O, GATE, UP, DOWN] + [GATE, UP, DOWN] * 4,
    "qwen3_moe": [Q, K, V, O] + [GATE, UP, DOWN] * 4,
}
WINDOW = torch.arange(64).reshape(1, 64) * 7 % 256


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("archs")
    # 320 rows: transformers 5 gives some model types their own tokenizer class, which adds a special token.
    return {arch: save_tiny_model(root / arch, arch, vocab_size=320) for arch in ARCHITECTURES}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_module_tree_and_checkpoint_name_the_same_projections(arch: str, saved: dict[str, Path]) -> None:
    model, _ = resolve_model(str(saved[arch])).load_causal_lm()
    found = find_projections(model)
    assert [ref.kind for ref in (r for r, _ in found) if ref.layer == 0] == BLOCK_KINDS[arch]
    assert {ref.layer for ref, _ in found} == {0, 1}
    source = resolve_model(str(saved[arch]))
    assert [info.ref for info in source.projections()] == [ref for ref, _ in found]
    modules = dict(model.named_modules())
    streamed = dict(source.iter_projection_weights())
    for (ref, module), (info, weight) in zip(found, streamed.items(), strict=True):
        assert info.ref == ref and info.shape == tuple(module.weight.shape)
        torch.testing.assert_close(weight, module.weight.detach().float(), rtol=0, atol=0)
        assert parse_projection_name(ref.name) == ref
        if ref.expert is None:
            assert modules[ref.name] is module  # hooks go on the real Linear
        else:
            assert isinstance(module, ExpertLinear) and module.expert == ref.expert
    # Routers are never projections (Mixtral/Qwen MoE ``gate``, Qwen2-MoE ``shared_expert_gate``).
    assert not any(ref.name.endswith((".gate", "shared_expert_gate")) for ref, _ in found)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_alphas_allocate_topk_and_sparse_decode(arch: str, saved: dict[str, Path]) -> None:
    source = resolve_model(str(saved[arch]))
    report = analyze_source(source, progress=False)
    alphas = report.alphas()
    assert len(alphas) == len(source.projections()) and all(math.isfinite(a) and a > 0 for a in alphas.values())
    allocation = allocate(alphas, report.param_counts(), 0.5)
    assert abs(weighted_mean(allocation.sparsities, allocation.param_counts) - 0.5) < 1e-9
    assert len(set(allocation.sparsities.values())) > 1  # alpha-guided: not uniform

    model, _ = source.load_causal_lm()
    dense = evaluate_perplexity(model, token_ids=WINDOW.flatten(), seqlen=32, progress=False)
    with apply_sparsity(model, allocation) as handle:
        sparse = evaluate_perplexity(model, token_ids=WINDOW.flatten(), seqlen=32, progress=False)
        realised = handle.realised_sparsity()
    assert sparse.ppl != dense.ppl
    hooked = [n for n, s in allocation.sparsities.items() if s > 0]
    assert all(realised.per_projection[n] > 0 for n in hooked if "experts" not in n)
    if arch in MOE:  # every expert of every block received tokens and was sparsified
        experts = [n for n in hooked if ".experts." in n]
        assert experts and all(realised.per_projection[n] > 0 for n in experts)
    after = evaluate_perplexity(model, token_ids=WINDOW.flatten(), seqlen=32, progress=False)
    assert after.ppl == dense.ppl  # removing the hooks restores the model exactly

    prompt = WINDOW[:, :12]
    with enable_reference_decode(model, allocation):
        reference = greedy_decode(model, prompt, 6).tokens
    with enable_sparse_decode(model, allocation, exact=True):
        kernel = greedy_decode(model, prompt, 6).tokens
    assert kernel == reference
    assert all(not isinstance(m, type) for m in model.modules())  # restored without error


@pytest.mark.parametrize("arch", ["phi3", "mixtral"])
def test_threshold_calibration_reaches_fused_and_expert_projections(arch: str) -> None:
    model = build_tiny_model(arch)
    names = [ref.name for ref, _ in find_projections(model)]
    thresholds = calibrate_thresholds(model, None, 0.5, token_ids=WINDOW.flatten().repeat(4), seqlen=64)
    assert set(thresholds) == set(names) and all(t > 0 for t in thresholds.values())


@pytest.mark.parametrize("arch", MOE)
def test_moe_views_compute_what_transformers_computes(arch: str) -> None:
    reference = build_tiny_model(arch)
    model = build_tiny_model(arch)
    find_projections(model)  # installs the per-expert views
    with torch.inference_mode():
        expected = reference(WINDOW).logits
        got = model(WINDOW).logits
        with apply_sparsity(model, 0.0):  # hooks everywhere but s = 0: no hook at all
            unchanged = model(WINDOW).logits
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(unchanged, got)


def test_fused_projection_gets_one_mask_for_its_one_input() -> None:
    model = build_tiny_model("phi3")
    refs = {ref.kind: (ref, lin) for ref, lin in find_projections(model) if ref.layer == 0}
    ref, qkv = refs[QKV]
    assert qkv.out_features == 64 + 2 * 32 and qkv.in_features == 64  # q + k + v rows, one input
    seen: list[torch.Tensor] = []
    with apply_sparsity(model, {r.name: (0.75 if r == ref else 0.0) for r, _ in find_projections(model)}):
        qkv.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))  # runs after the TopK hook
        model(WINDOW)
    zeros = (seen[0][0, 1:] == 0).sum(-1)  # token 0 is the padding id: an all-zero embedding
    assert torch.all(zeros == 48)  # k = 16 of 64 kept per token, one mask for q, k and v


def test_classification_vocabulary() -> None:
    assert classify("self_attn.q_proj") is Q and classify("attention.query_key_value") is QKV
    assert classify("attention.dense") is O and classify("mlp.dense_4h_to_h") is DOWN
    assert classify("self_attention.dense") is O and classify("mlp.q_proj") is None
    assert classify("fc1") is UP and classify("mlp.gate_up_proj") is GATE_UP
    assert classify("block_sparse_moe.experts.3.w1") is GATE and classify("mlp.gate") is None
    assert tuple(PROJECTION_ORDER)[:3] == (Q, K, V)
    ref = parse_projection_name("model.layers.12.mlp.experts.5.down_proj.weight")
    assert (ref.layer, ref.kind, ref.expert, ref.block) == (12, DOWN, 5, "model.layers.12")
    assert parse_projection_name("model.decoder.layers.3.fc2").block == "model.decoder.layers.3"
    with pytest.raises(ValueError):
        parse_projection_name("model.layers.1.mlp.act_fn")


def test_unrecognised_linear_in_a_block_is_named_not_skipped() -> None:
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.0.mlp.mystery"]
    with pytest.raises(UnsupportedArchitectureError, match=r"neither a known projection.*mlp\.mystery"):
        discover(names)


def test_model_without_blocks_lists_its_linear_modules() -> None:
    class Config:
        model_type = "mlp-toy"

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    model.config = Config()  # type: ignore[attr-defined]
    with pytest.raises(UnsupportedArchitectureError) as info:
        find_projections(model)
    message = str(info.value)
    assert "\n" not in message and "mlp-toy" in message and "linear modules found: 0, 2" in message


def test_gpt2_conv1d_model_is_refused_with_its_linear_modules() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedArchitectureError, match=r"gpt2: no decoder blocks.*found: lm_head"):
        find_projections(model)


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


@pytest.mark.parametrize("arch", FUSED)
def test_fused_weights_are_analysed_whole(arch: str, saved: dict[str, Path]) -> None:
    source = resolve_model(str(saved[arch]))
    fused = [info for info in source.projections() if info.ref.kind in (QKV, GATE_UP)]
    assert fused and all(info.shape[0] > info.shape[1] for info in fused if info.ref.kind is QKV)
