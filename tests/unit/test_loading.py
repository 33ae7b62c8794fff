"""Loaders honour a Placement: dtype, device, explicit and max_memory-forced device maps, disk offload."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from acttail.models import resolve_model
from acttail.models.loading import input_device, resolve_placement
from acttail.models.placement import Placement
from tests.tiny_models import save_tiny_model

# Block 1 offloaded to disk, everything else in CPU RAM: a split accelerate has to execute with hooks.
SPLIT_MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama")


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(40).reshape(1, 40) % 250
    with torch.inference_mode():
        return model(input_ids=ids.to(input_device(model))).logits.float().cpu()


def test_dtype_of_the_placement_is_the_dtype_loaded(tiny_dir: Path) -> None:
    source = resolve_model(str(tiny_dir))
    dense, _ = source.load_causal_lm()
    bf16, _ = source.load_causal_lm(Placement(dtype="bfloat16"))
    fp16, _ = source.load_causal_lm(Placement(device="cpu", dtype="float16"))
    assert {p.dtype for p in dense.parameters()} == {torch.float32}  # auto on a CPU = fp32
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fp16.parameters()} == {torch.float16}
    assert not bf16.training
    # bf16 rounds every weight (8 mantissa bits): close to fp32, not equal.
    diff = (_logits(bf16) - _logits(dense)).abs().max()
    assert 0 < diff < 0.1


def test_legacy_keywords_mean_the_same_placement() -> None:
    assert resolve_placement(dtype=torch.bfloat16, device="cpu") == Placement("cpu", "bfloat16").resolve()
    assert resolve_placement(dtype="float16") == Placement(dtype="float16").resolve()
    with pytest.raises(TypeError, match="not both"):
        resolve_placement(Placement(), dtype=torch.float32)


def test_explicit_map_with_disk_offload_equals_one_device(tiny_dir: Path) -> None:
    source = resolve_model(str(tiny_dir))
    single, _ = source.load_causal_lm(Placement(device="cpu"))
    split, _ = source.load_causal_lm(Placement(device_map=SPLIT_MAP))
    assert split.hf_device_map["model.layers.1"] == "disk"
    assert {p.device.type for p in split.model.layers[1].parameters()} == {"meta"}  # really offloaded
    assert input_device(split) == torch.device("cpu")
    torch.testing.assert_close(_logits(split), _logits(single), rtol=0, atol=0)


def test_max_memory_forces_a_spread_and_the_offload_folder_goes_with_the_model(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACTTAIL_OFFLOAD_DIR", str(tmp_path / "offload"))
    source = resolve_model(str(tiny_dir))
    single, _ = source.load_causal_lm()
    spread, _ = source.load_causal_lm(Placement(device_map="auto", max_memory={"cpu": "60KB"}))
    assert "disk" in set(spread.hf_device_map.values())  # 60 KB of RAM cannot hold the ~200 KB model
    (folder,) = list((tmp_path / "offload").iterdir())  # safetensors weights are read in place, not copied
    torch.testing.assert_close(_logits(spread), _logits(single), rtol=0, atol=0)
    del spread
    gc.collect()
    assert not folder.exists()


@pytest.mark.slow
def test_gguf_loads_in_the_requested_dtype() -> None:
    model, _ = resolve_model("smollm2-135m").load_causal_lm(Placement(device="cpu", dtype="bfloat16"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("mode", ["topk", "threshold"])
def test_sparsity_hooks_on_a_split_model_give_the_single_device_perplexity(tiny_dir: Path, mode: str) -> None:
    """Hooks sit on the Linear modules, before accelerate's: offloaded blocks are sparsified too."""
    from acttail.evaluate.perplexity import evaluate_perplexity
    from acttail.models.architectures import find_projections
    from acttail.sparsity import apply_sparsity, calibrate_thresholds

    source = resolve_model(str(tiny_dir))
    ids = (torch.arange(512) * 31 + 7) % 250
    results = []
    for placement in (Placement(device="cpu"), Placement(device_map=SPLIT_MAP)):
        model, _ = source.load_causal_lm(placement)
        names = [ref.name for ref, _ in find_projections(model)]
        sparsities = {n: 0.3 + 0.05 * (i % 9) for i, n in enumerate(names)}
        thresholds = (
            calibrate_thresholds(model, None, sparsities, token_ids=ids, seqlen=128) if mode == "threshold" else None
        )
        dense = evaluate_perplexity(model, token_ids=ids, seqlen=128, progress=False)
        with apply_sparsity(model, sparsities, mode, thresholds) as handle:
            sparse = evaluate_perplexity(model, token_ids=ids, seqlen=128, progress=False)
            realised = handle.realised_sparsity()
        results.append((dense.ppl, sparse.ppl, realised.per_projection["model.layers.1.mlp.down_proj"]))
    (single_dense, single_sparse, single_s), (split_dense, split_sparse, split_s) = results
    assert split_dense == pytest.approx(single_dense, rel=1e-5)
    assert split_sparse == pytest.approx(single_sparse, rel=1e-5)
    assert split_sparse > split_dense
    assert split_s == pytest.approx(single_s, abs=1e-9) and split_s > 0.25  # the offloaded block was hooked
