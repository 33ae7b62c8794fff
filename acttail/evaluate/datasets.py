"""WikiText-2 raw, from the files bundled in ``acttail/data/wikitext-2-raw/`` (see PROVENANCE.md).

The Hugging Face ``wikitext-2-raw-v1`` rows are the lines of ``wiki.{test,valid}.raw`` with their
trailing "\\n" kept and whitespace-only lines turned into "". The standard perplexity input of
GPTQ / SparseGPT / Wanda / TEAL is ``"\\n\\n".join(rows)``; ``wikitext2_text`` rebuilds it exactly.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from acttail.errors import ActTailError

WIKITEXT2_SPLITS: dict[str, str] = {"test": "wiki.test.raw", "validation": "wiki.valid.raw"}


def wikitext2_path(split: str) -> Path:
    """Path of the bundled raw file of ``split`` ("test" or "validation"; no train split is shipped)."""
    try:
        filename = WIKITEXT2_SPLITS[split]
    except KeyError:
        raise ActTailError(f"unknown WikiText-2 split {split!r}; valid: {', '.join(WIKITEXT2_SPLITS)}") from None
    path = Path(__file__).resolve().parent.parent / "data" / "wikitext-2-raw" / filename
    if not path.is_file():
        raise ActTailError(f"bundled WikiText-2 file missing: {path} (reinstall acttail)")
    return path


@lru_cache(maxsize=4)
def wikitext2_rows(split: str) -> tuple[str, ...]:
    """The HF dataset rows: each line with its "\\n", whitespace-only lines as ""."""
    text = wikitext2_path(split).read_text(encoding="utf-8")
    # Split on "\n" only: str.splitlines would also break at U+2028, U+0085 and friends.
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    if not lines[-1]:
        lines.pop()
    return tuple("" if not line.strip() else line for line in lines)


def wikitext2_text(split: str) -> str:
    """``"\\n\\n".join(rows)``: the exact string the standard protocol tokenises once."""
    return "\n\n".join(wikitext2_rows(split))
