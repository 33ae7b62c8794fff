"""Evaluation of dense and sparsified models: WikiText-2 perplexity and zero-shot accuracy.

``perplexity`` (this package) follows the GPTQ/Wanda/TEAL protocol on the bundled WikiText-2 raw
test split; ``zeroshot`` scores the seven lm-eval tasks by log-likelihood (imported lazily: it
pulls in the task loaders).
"""

from acttail.evaluate.datasets import wikitext2_rows, wikitext2_text
from acttail.evaluate.perplexity import PerplexityResult, evaluate_perplexity, tokenize_split

__all__ = ["PerplexityResult", "evaluate_perplexity", "tokenize_split", "wikitext2_rows", "wikitext2_text"]
