"""WikiText-2 perplexity with the standard protocol of GPTQ / SparseGPT / Wanda / TEAL.

The test rows are joined with "\\n\\n" and tokenised once into ids t_1..t_T (with the tokenizer's
default special tokens, e.g. Llama's BOS at the very start). The stream is cut into
W = floor(min(T, max_tokens) / seqlen) non-overlapping windows; the tail shorter than a window is
dropped. Each window is an independent forward pass (no carried context), and every token after
the first of its window is scored:

    NLL = -(1 / N) * sum_w sum_{i=2..seqlen} log p(t_{w,i} | t_{w,<i}),   N = W * (seqlen - 1)
    PPL = exp(NLL)

This equals GPTQ's ``exp(sum_w loss_w * seqlen / (W * seqlen))``, where loss_w is the mean
shifted cross-entropy of window w.

Bounded memory: the decoder runs without its LM head, then the head and the loss are computed
over ``logit_chunk`` positions at a time (fp32 logits, fp64 sums), so a window never holds a
[seqlen, vocab] tensor (1.2 GB in fp32 for a 152k vocabulary at 2048 tokens); the sum over chunks
equals the unchunked loss (to 1e-6 in fp32, tested). Each result records the stage's peak memory
(``acttail.evaluate.memory``: RSS on the CPU, ``max_memory_allocated`` on CUDA).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from acttail.errors import ActTailError
from acttail.evaluate.datasets import wikitext2_text
from acttail.evaluate.memory import PeakMemory
from acttail.models.loading import input_device
from acttail.sparsity import decoder_only

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DATASET = "wikitext-2-raw-v1"
DEFAULT_SEQLEN = 2048
DEFAULT_LOGIT_CHUNK = 512  # positions per LM-head + loss chunk: 512 x 152k fp32 logits = 311 MB


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of one model on one split, with the protocol that produced it."""

    ppl: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens_scored: int  # windows * (seqlen - 1)
    seqlen: int
    windows: int
    dataset: str
    split: str
    corpus_tokens: int  # length of the tokenised split before windowing
    max_tokens: int | None
    # Mean NLL of each window, in order: two runs on the same windows compare with a paired SE
    # (``acttail.evaluate.paired``).
    window_nlls: tuple[float, ...] = ()
    peak_memory_bytes: int | None = None  # RSS on the CPU, max_memory_allocated on CUDA
    peak_memory_measure: str | None = None  # "rss" | "cuda_max_allocated"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokenize_split(
    tokenizer: PreTrainedTokenizerBase, split: str = "test", max_tokens: int | None = None
) -> torch.Tensor:
    """The split, "\\n\\n"-joined and tokenised once: a 1-D LongTensor.

    With ``max_tokens`` only a character prefix is tokenised, long enough to yield
    ``max_tokens + 256`` tokens, and the first ``max_tokens`` are returned: tokenisation is local,
    so these equal the first ``max_tokens`` tokens of the full split (checked in the tests), and a
    quick run does not pay for tokenising 1.3 MB.
    """
    text = wikitext2_text(split)
    if max_tokens is None:
        return tokenizer(text, return_tensors="pt", verbose=False).input_ids[0]
    chars = 8 * (max_tokens + 256)
    while True:
        ids = tokenizer(text[:chars], return_tensors="pt", verbose=False).input_ids[0]
        if ids.numel() >= max_tokens + 256 or chars >= len(text):
            return ids[:max_tokens]
        chars *= 2


def _lm_head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Apply the output embedding and, where the config asks for it, Gemma's logit soft-capping."""
    get_head = getattr(model, "get_output_embeddings", None)  # a transformers method, not on nn.Module
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Module):
        raise TypeError(f"{type(model).__name__} has no output embedding (LM head)")
    logits = head(hidden)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def window_nll(model: nn.Module, window: torch.Tensor, logit_chunk: int = DEFAULT_LOGIT_CHUNK) -> tuple[float, int]:
    """Sum of -log p(t_i | t_<i) over i = 2..L of one window ``[1, L]`` and the count L - 1 (fp64 sum).

    The LM head and the loss run over ``logit_chunk`` positions at a time (see the module docstring).
    """
    if logit_chunk < 1:
        raise ActTailError(f"logit_chunk must be positive, got {logit_chunk}")
    hidden = decoder_only(model)(input_ids=window, use_cache=False).last_hidden_state  # [1, L, H]
    targets = window[0, 1:]
    total = 0.0
    for start in range(0, targets.numel(), logit_chunk):
        stop = min(start + logit_chunk, targets.numel())
        logits = _lm_head_logits(model, hidden[0, start:stop]).float()  # [chunk, vocab]
        chunk_targets = targets[start:stop].to(logits.device)  # a device map may put the head elsewhere
        total += float(F.cross_entropy(logits, chunk_targets, reduction="sum").double())
    return total, targets.numel()


def evaluate_perplexity(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    split: str = "test",
    seqlen: int = DEFAULT_SEQLEN,
    max_tokens: int | None = None,
    token_ids: torch.Tensor | None = None,
    progress: bool = True,
    on_window: Callable[[int, int], None] | None = None,
    logit_chunk: int = DEFAULT_LOGIT_CHUNK,
) -> PerplexityResult:
    """WikiText-2 raw perplexity of ``model`` (see the module docstring for the protocol).

    ``token_ids`` (1-D) skips tokenisation (pass ``tokenize_split(tokenizer, split, max_tokens)``
    to reuse it across variants). ``max_tokens`` caps the stream before windowing, for quick runs;
    ``corpus_tokens`` in the result is then the length of the stream that was tokenised.
    ``on_window(done, total)`` is called after each window; ``logit_chunk`` positions share one
    LM-head pass.
    """
    if seqlen < 2:
        raise ActTailError(f"seqlen must be at least 2, got {seqlen}")
    if max_tokens is not None and max_tokens < 1:
        raise ActTailError(f"max_tokens must be positive, got {max_tokens}")
    if token_ids is None:
        if tokenizer is None:
            raise ActTailError("evaluate_perplexity needs a tokenizer or token_ids")
        token_ids = tokenize_split(tokenizer, split, max_tokens)
    token_ids = token_ids.flatten()
    usable = token_ids.numel() if max_tokens is None else min(max_tokens, token_ids.numel())
    windows = usable // seqlen
    if windows == 0:
        raise ActTailError(f"{usable} tokens do not fill one window of seqlen {seqlen}; lower --seqlen")
    device = input_device(model)
    peak = PeakMemory(device)
    total_nll, scored = 0.0, 0
    per_window: list[float] = []
    bar = _progress_bar(windows, f"perplexity ({split}, seqlen {seqlen})") if progress else None
    with torch.inference_mode():
        for w in range(windows):
            window = token_ids[w * seqlen : (w + 1) * seqlen].unsqueeze(0).to(device)
            nll, count = window_nll(model, window, logit_chunk)
            total_nll += nll
            scored += count
            per_window.append(nll / count)
            if bar is not None:
                bar.set_postfix(ppl=f"{math.exp(total_nll / scored):.3f}", refresh=False)
                bar.update(1)
            if on_window is not None:
                on_window(w + 1, windows)
    if bar is not None:
        bar.close()
    mean = total_nll / scored
    memory = peak.read()
    return PerplexityResult(
        ppl=math.exp(mean),
        nll=mean,
        tokens_scored=scored,
        seqlen=seqlen,
        windows=windows,
        dataset=DATASET,
        split=split,
        corpus_tokens=int(token_ids.numel()),
        max_tokens=max_tokens,
        window_nlls=tuple(per_window),
        peak_memory_bytes=memory.bytes,
        peak_memory_measure=memory.measure,
    )


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="win", leave=False)
