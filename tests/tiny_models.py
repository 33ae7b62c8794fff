"""The one builder of tiny random models for the tests: configs in code, keyed by ``model_type``.

Every test that needs a model builds it here (``build_tiny_model``) or saves one as a Hugging Face
directory (``save_tiny_model``), so a new architecture is one entry in ``ARCHITECTURES`` and every
suite can run it. Two layers of width 64 give 14 projections whose spectra (64 eigenvalues each)
are large enough for a power-law fit, and the whole pipeline runs in seconds on one CPU core.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

TINY_DIMS: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=256,
)

#: ``model_type`` -> what its config needs beyond ``TINY_DIMS``.
_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1}
ARCHITECTURES: dict[str, Mapping[str, Any]] = {
    "llama": {},
    "mistral": {"sliding_window": 128},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "sliding_window": 128},
    "gemma3_text": {"head_dim": 16, "sliding_window": 128},
    # fused qkv_proj and gate_up_proj; token 0 is its padding id (an all-zero embedding)
    "phi3": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
    # fused query_key_value; dense_h_to_4h / dense_4h_to_h, attention.dense
    "gpt_neox": {"rotary_pct": 1.0},
    # fc1 / fc2 directly in the block, self_attn.out_proj
    "opt": {"ffn_dim": 128, "word_embed_proj_dim": 64},
    # MoE: every expert's gate/up/down sparsified, routers never
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {**_MOE, "shared_expert_intermediate_size": 64},
    "qwen3_moe": {**_MOE, "head_dim": 16},
}
DENSE = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")
FUSED = ("phi3", "gpt_neox")
MOE = ("mixtral", "qwen2_moe", "qwen3_moe")
#: Short names the tests use.
ALIASES = {"gemma3": "gemma3_text"}


def tiny_config(model_type: str = "llama", **overrides: Any) -> Any:
    """A 2-layer config of ``model_type`` (``TINY_DIMS``, its extras, then ``overrides``)."""
    from transformers import AutoConfig

    model_type = ALIASES.get(model_type, model_type)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"no tiny config for {model_type!r}; known: {', '.join(ARCHITECTURES)}")
    return AutoConfig.for_model(model_type, **{**TINY_DIMS, **ARCHITECTURES[model_type], **overrides})


def build_tiny_model(model_type: str = "llama", seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A random causal LM of ``model_type`` in fp32 and eval mode; weights depend only on ``seed``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides)).float().eval()


def byte_tokenizer() -> Any:
    """A 256-token byte-level BPE with no merges: offline, deterministic, any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=alphabet[0], pad_token=alphabet[0])


WIKITEXT_VOCAB = 384
WIKITEXT_TRAIN_LINES = 3000


def wikitext_tokenizer() -> Any:
    """A 384-token BPE trained on WikiText-2 validation lines: real tokenisation, no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from acttail.evaluate.datasets import wikitext2_path

    lines = wikitext2_path("validation").read_text(encoding="utf-8").splitlines()[:WIKITEXT_TRAIN_LINES]
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=WIKITEXT_VOCAB, special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    core.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def save_tiny_model(
    directory: Path,
    model_type: str = "llama",
    seed: int = 0,
    *,
    tokenizer: str | Path = "bytes",
    **overrides: Any,
) -> Path:
    """``build_tiny_model`` saved as a Hugging Face directory (safetensors) with a tokenizer.

    ``tokenizer``: ``"bytes"`` (``byte_tokenizer``), ``"wikitext"`` (``wikitext_tokenizer``, the
    model's vocabulary and special-token IDs follow it) or a directory to copy an already saved
    tokenizer from. ``seed`` is also written into config.json: local fingerprints hash metadata
    (config, tensor headers), not weight bytes, so two seeds would otherwise be "the same model".
    """
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, Path):
        for name in _TOKENIZER_FILES:
            if (tokenizer / name).exists():
                shutil.copy(tokenizer / name, directory / name)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(directory)
    else:
        tok = byte_tokenizer() if tokenizer == "bytes" else wikitext_tokenizer()
        tok.save_pretrained(directory)
    if tokenizer != "bytes":
        special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
        overrides = {"vocab_size": len(tok), "max_position_embeddings": 512, **special, **overrides}
    model = build_tiny_model(model_type, seed, **overrides)
    model.config.acttail_test_seed = seed
    model.save_pretrained(directory, safe_serialization=True)
    return directory
