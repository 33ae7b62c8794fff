"""Evaluation of dense and sparsified models: WikiText-2 perplexity and zero-shot accuracy.

``perplexity`` follows the GPTQ/Wanda/TEAL protocol on the bundled WikiText-2 raw test split;
``zeroshot`` scores the seven lm-eval tasks by log-likelihood. Names are resolved lazily, so the
torch-free modules here (``paired``, ``datasets``) can be imported by the API without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PerplexityResult": "acttail.evaluate.perplexity",
    "evaluate_perplexity": "acttail.evaluate.perplexity",
    "tokenize_split": "acttail.evaluate.perplexity",
    "wikitext2_rows": "acttail.evaluate.datasets",
    "wikitext2_text": "acttail.evaluate.datasets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
