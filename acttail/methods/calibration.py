"""Calibration text for the data-driven allocation methods: WikiText-2 raw *validation*, never test.

A ``CalibrationSet`` is ``max_tokens // seqlen`` windows of ``seqlen`` tokens spread evenly over the
validation split ("\\n\\n"-joined rows, tokenised once, the same string the perplexity protocol
uses): ``acttail.sparsity.calibration_windows``, the one sampler of calibration text, shared with
threshold calibration (its docstring says why spread beats the first N tokens).
Everything that scores an allocation on it is deterministic for a fixed set: the same tokens,
the same windows, no sampling. ``fingerprint`` (SHA-256 of the ids) goes into allocation
documents so a choice can be traced back to the text it was made on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from acttail.allocate import Allocation
from acttail.errors import ActTailError
from acttail.registry import DEFAULT_CALIBRATION_SEQLEN, DEFAULT_CALIBRATION_TOKENS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from acttail.evaluate.perplexity import PerplexityResult

CALIBRATION_SPLIT = "validation"


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """``token_ids`` [T] (1-D, T a multiple of ``seqlen``) and where they came from."""

    token_ids: torch.Tensor
    seqlen: int
    source: str = f"wikitext-2-raw-v1 {CALIBRATION_SPLIT}"

    def __post_init__(self) -> None:
        if self.token_ids.dim() != 1 or self.seqlen < 2 or self.token_ids.numel() < self.seqlen:
            raise ActTailError(
                f"calibration needs a 1-D id tensor of at least one window (seqlen {self.seqlen}), "
                f"got shape {tuple(self.token_ids.shape)}"
            )

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.numel())

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.token_ids.to(torch.int64).numpy().tobytes()).hexdigest()

    def windows(self) -> list[torch.Tensor]:
        """Non-overlapping ``[1, seqlen]`` windows covering the whole set."""
        return [w.unsqueeze(0) for w in self.token_ids.split(self.seqlen) if w.numel() == self.seqlen]

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "tokens": self.num_tokens,
            "seqlen": self.seqlen,
            "sha256": self.fingerprint[:16],
        }


def calibration_set(
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_tokens: int = DEFAULT_CALIBRATION_TOKENS,
    seqlen: int = DEFAULT_CALIBRATION_SEQLEN,
    split: str = CALIBRATION_SPLIT,
) -> CalibrationSet:
    """``max_tokens // seqlen`` windows of ``seqlen`` tokens spread over WikiText-2 raw ``split``."""
    if split == "test":
        raise ActTailError("calibration must not use the WikiText-2 test split (it is the evaluation set)")
    if max_tokens < seqlen:
        raise ActTailError(f"calibration max_tokens {max_tokens} is smaller than one window of seqlen {seqlen}")
    from acttail.evaluate.perplexity import tokenize_split

    return calibration_from_ids(tokenize_split(tokenizer, split), seqlen, f"wikitext-2-raw-v1 {split}", max_tokens)


def calibration_from_ids(
    token_ids: torch.Tensor, seqlen: int, source: str = "token ids", max_tokens: int | None = None
) -> CalibrationSet:
    """A calibration set of whole windows spread over the given ids (all of them: ``max_tokens=None``)."""
    from acttail.sparsity import calibration_windows

    ids = token_ids.flatten()
    if ids.numel() < seqlen:
        raise ActTailError(f"calibration text has {ids.numel()} tokens, fewer than one window of seqlen {seqlen}")
    windows = calibration_windows(ids, ids.numel() if max_tokens is None else max_tokens, seqlen)
    return CalibrationSet(windows.flatten().clone(), seqlen, source)


def calibration_perplexity(
    model: nn.Module,
    calibration: CalibrationSet,
    sparsities: Mapping[str, float] | Allocation | float | None,
) -> PerplexityResult:
    """Perplexity of ``model`` on the calibration windows with ``sparsities`` applied (TopK), per window too.

    ``None`` (or 0.0) scores the dense model.
    """
    from acttail.evaluate.perplexity import evaluate_perplexity
    from acttail.sparsity import apply_sparsity

    handle = None if sparsities is None else apply_sparsity(model, sparsities, "topk", track=False)
    try:
        return evaluate_perplexity(
            model,
            token_ids=calibration.token_ids,
            seqlen=calibration.seqlen,
            max_tokens=calibration.num_tokens,
            progress=False,
        )
    finally:
        if handle is not None:
            handle.remove()


def calibration_nll(
    model: nn.Module,
    calibration: CalibrationSet,
    sparsities: Mapping[str, float] | Allocation | float | None,
) -> float:
    """Mean next-token NLL (nats) on the calibration windows (``calibration_perplexity``); PPL = exp(NLL)."""
    return calibration_perplexity(model, calibration, sparsities).nll
