"""Perplexity protocol: windows, a direct reference computation, WikiText-2 row reconstruction."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from acttail.errors import ActTailError
from acttail.evaluate.datasets import wikitext2_path, wikitext2_rows, wikitext2_text
from acttail.evaluate.perplexity import evaluate_perplexity
from acttail.sparsity import apply_sparsity

sys.path.insert(0, str(Path(__file__).parent))
from test_sparsity import ARCHS, random_ids, tiny_model


def direct_perplexity(model: torch.nn.Module, ids: torch.Tensor, seqlen: int) -> float:
    """Reference: full forward per window, shifted cross-entropy on the complete logits."""
    losses = []
    with torch.inference_mode():
        for w in range(ids.numel() // seqlen):
            window = ids[w * seqlen : (w + 1) * seqlen].unsqueeze(0)
            logits = model(input_ids=window, use_cache=False).logits[0]
            losses.append(F.cross_entropy(logits[:-1].float(), window[0, 1:]).item())
    return math.exp(sum(losses) / len(losses))


@pytest.mark.parametrize("arch", ARCHS)
def test_matches_direct_computation(arch: str) -> None:
    model = tiny_model(arch)
    ids = random_ids(700)
    result = evaluate_perplexity(model, token_ids=ids, seqlen=128, progress=False)
    assert result.windows == 5  # 700 // 128; the 60-token tail is dropped
    assert result.tokens_scored == 5 * 127
    assert result.corpus_tokens == 700
    assert result.ppl == pytest.approx(direct_perplexity(model, ids, 128), rel=1e-5)
    assert result.nll == pytest.approx(math.log(result.ppl))


def test_max_tokens_caps_windows_and_sparsity_raises_perplexity() -> None:
    model = tiny_model("llama")
    ids = random_ids(1000)
    capped = evaluate_perplexity(model, token_ids=ids, seqlen=100, max_tokens=350, progress=False)
    assert (capped.windows, capped.tokens_scored, capped.max_tokens) == (3, 297, 350)
    assert capped.ppl == pytest.approx(direct_perplexity(model, ids[:300], 100), rel=1e-5)
    with apply_sparsity(model, 0.9):
        sparse = evaluate_perplexity(model, token_ids=ids, seqlen=100, max_tokens=350, progress=False)
    assert sparse.ppl != capped.ppl


def test_progress_callback_counts_windows() -> None:
    calls: list[tuple[int, int]] = []
    evaluate_perplexity(
        tiny_model("qwen2"),
        token_ids=random_ids(300),
        seqlen=100,
        progress=False,
        on_window=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_too_few_tokens_and_bad_arguments_are_readable_errors() -> None:
    model = tiny_model("llama")
    with pytest.raises(ActTailError, match="do not fill one window"):
        evaluate_perplexity(model, token_ids=random_ids(50), seqlen=128, progress=False)
    with pytest.raises(ActTailError, match="seqlen"):
        evaluate_perplexity(model, token_ids=random_ids(50), seqlen=1, progress=False)
    with pytest.raises(ActTailError, match="tokenizer"):
        evaluate_perplexity(model, progress=False)


def test_wikitext_rows_rebuild_the_hf_dataset() -> None:
    rows = wikitext2_rows("test")
    assert len(rows) == 4358  # the HF wikitext-2-raw-v1 test split has 4358 rows
    assert rows[0] == "" and rows[1] == " = Robert Boulter = \n"
    assert all(r == "" or r.endswith("\n") for r in rows)
    assert len(wikitext2_rows("validation")) == 3760
    text = wikitext2_text("test")
    assert text.startswith("\n\n = Robert Boulter = \n" + "\n\n" + "" + "\n\n" + " Robert Boulter is")
    # Rows are the file's lines with blanks emptied: joining with "" gives the file minus blanks.
    raw = wikitext2_path("test").read_text(encoding="utf-8")
    assert "".join(rows) == "".join(line + "\n" for line in raw.split("\n")[:-1] if line.strip())
    with pytest.raises(ActTailError, match="valid: test, validation"):
        wikitext2_path("train")


def test_prefix_tokenisation_equals_the_head_of_the_full_split() -> None:
    from acttail.evaluate.perplexity import tokenize_split
    from tests.tiny_models import byte_tokenizer

    tokenizer = byte_tokenizer()
    full = tokenizer(wikitext2_text("validation")[:200_000], return_tensors="pt").input_ids[0]
    head = tokenize_split(tokenizer, "validation", max_tokens=5000)
    assert torch.equal(head, full[:5000])


@pytest.mark.parametrize("chunk", [1, 7, 50, 127, 4096])
def test_chunked_lm_head_equals_unchunked(chunk: int) -> None:
    model = tiny_model("llama")
    ids = random_ids(600)
    whole = evaluate_perplexity(model, token_ids=ids, seqlen=128, progress=False, logit_chunk=128)
    chunked = evaluate_perplexity(model, token_ids=ids, seqlen=128, progress=False, logit_chunk=chunk)
    assert chunked.nll == pytest.approx(whole.nll, rel=1e-6, abs=0)
    assert chunked.ppl == pytest.approx(direct_perplexity(model, ids, 128), rel=1e-6)
    with pytest.raises(ActTailError, match="logit_chunk must be positive"):
        evaluate_perplexity(model, token_ids=ids, seqlen=128, progress=False, logit_chunk=0)


def test_result_records_peak_memory() -> None:
    model = tiny_model("llama")
    result = evaluate_perplexity(model, token_ids=random_ids(300), seqlen=128, progress=False)
    assert result.peak_memory_measure == "rss"
    assert result.peak_memory_bytes is not None and result.peak_memory_bytes > 10 * 2**20  # torch alone is more
    assert result.to_dict()["peak_memory_bytes"] == result.peak_memory_bytes
