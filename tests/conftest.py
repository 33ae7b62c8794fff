"""Shared fixtures: tiny random models of every supported architecture, built from configs.

They are fast and offline, and exercise the same module layout as the real checkpoints.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# Tests never reach the hub; the offline path is itself under test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_DIMS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=256,
)


def tiny_config(arch: str):
    """A 2-layer config of ``arch`` (llama, mistral, qwen2, gemma3)."""
    from transformers import Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config

    match arch:
        case "llama":
            return LlamaConfig(**TINY_DIMS)
        case "mistral":
            return MistralConfig(**TINY_DIMS, sliding_window=128)
        case "qwen2":
            return Qwen2Config(**TINY_DIMS)
        case "gemma3":
            return Gemma3TextConfig(**TINY_DIMS, head_dim=16, sliding_window=128)
    raise ValueError(arch)


def build_tiny_model(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch)).eval()


def byte_tokenizer():
    """A 256-token byte-level BPE with no merges: offline, deterministic, any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=alphabet[0], pad_token=alphabet[0])


def save_tiny_model(directory: Path, arch: str = "llama", seed: int = 0) -> Path:
    """``build_tiny_model`` saved as a Hugging Face directory (safetensors) with ``byte_tokenizer``."""
    build_tiny_model(arch, seed).save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture
def tiny_model() -> Callable[..., torch.nn.Module]:
    return build_tiny_model


@pytest.fixture
def acttail_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolate ACTTAIL_HOME (model cache, default SQLite) per test."""
    home = tmp_path / "acttail-home"
    monkeypatch.setenv("ACTTAIL_HOME", str(home))
    return home
