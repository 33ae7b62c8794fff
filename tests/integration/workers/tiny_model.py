"""A tiny random Llama saved as a Hugging Face directory (safetensors + a locally trained tokenizer).

Two layers of width 64 give 14 projections whose spectra (64 eigenvalues each) are large enough
for a power-law fit, and the whole pipeline (ESD, allocation, perplexity, zero-shot) runs in
seconds on one CPU core. The tokenizer is a 384-token BPE trained on WikiText-2 validation lines,
so perplexity and zero-shot scoring exercise real tokenisation, with no download.
"""

from __future__ import annotations

from pathlib import Path

VOCAB_SIZE = 384
TRAIN_LINES = 3000


def build_tokenizer(directory: Path) -> int:
    """Train and save a small BPE tokenizer into ``directory``; returns its vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from acttail.evaluate.datasets import wikitext2_path

    lines = wikitext2_path("validation").read_text(encoding="utf-8").splitlines()[:TRAIN_LINES]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    tokenizer.train_from_iterator(lines, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(directory)
    return len(fast)


def build_tiny_llama(
    directory: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0, tokenizer_from: Path | None = None
) -> Path:
    """Save a random ``LlamaForCausalLM`` (hidden ``hidden``, ``layers`` blocks) into ``directory``.

    ``seed`` is also written into config.json: local fingerprints hash metadata (config, tensor
    headers), not weight bytes, so two seeds of one architecture would otherwise be "the same
    model". ``tokenizer_from`` copies an already trained tokenizer instead of training one.
    """
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is None:
        vocab = build_tokenizer(directory)
    else:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (tokenizer_from / name).exists():
                shutil.copy(tokenizer_from / name, directory / name)
        vocab = len(AutoTokenizer.from_pretrained(directory))
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
        pad_token_id=3,
    )  # fmt: skip
    config.acttail_test_seed = seed
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory, safe_serialization=True)
    return directory
