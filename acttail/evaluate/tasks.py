"""Zero-shot tasks over the bundled data, in lm-evaluation-harness's prompt formats.

Every task turns its records into :class:`Doc` items: one or more *contexts* and one
*continuation* per choice, scored by log-likelihood (``acttail.evaluate.zeroshot``). The prompt
strings reproduce lm-eval's task configs (v0.4 YAML / ``utils.py``), so that our compact scorer
gives lm-eval's numbers on the same data:

============== ======================================================= ==================== ===========
task           context                                                 continuation         metrics
============== ======================================================= ==================== ===========
arc_easy       ``"Question: {stem}\\nAnswer:"``                         ``" " + choice``      acc, acc_norm
arc_challenge  same as arc_easy                                        ``" " + choice``      acc, acc_norm
piqa           ``"Question: {goal}\\nAnswer:"``                         ``" " + sol{1,2}``    acc, acc_norm
winogrande     ``sentence[:i] + option`` (one context per option;       ``" " + sentence[i+1:].strip()``  acc
               ``i`` = index of ``"_"``; *partial scoring*)
boolq          ``"{passage}\\nQuestion: {question}?\\nAnswer:"``         ``" no"`` / ``" yes"`` acc
hellaswag      ``preprocess(activity_label + ": " + ctx)``              ``" " + preprocess(ending)``  acc, acc_norm
lambada_openai ``text`` up to its last space                            ``" " + last word``   acc (greedy), perplexity
============== ======================================================= ==================== ===========

``acc_norm`` divides each choice's log-likelihood by the choice's length in characters (lm-eval's
``len(choice)`` of the ``doc_to_choice`` strings, i.e. without the target delimiter).

Deviation, HellaSwag: the bundled file is llama.cpp's 6-line text format, where ``ctx_a`` and
``ctx_b`` are already joined and ``ctx_b`` was not capitalised. We upper-case the first letter
after the context's last ``". "`` (where ``ctx_b`` starts in ActivityNet items), which recovers
lm-eval's ``ctx_b.capitalize()`` except for ``capitalize()``'s lower-casing of the rest of ``ctx_b``.
"""

from __future__ import annotations

import bz2
import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from acttail.errors import ActTailError
from acttail.registry import ZEROSHOT_TASKS


class UnknownTaskError(ActTailError):
    """A zero-shot task name is not one of :data:`ALL_TASKS`; the message lists the valid names."""


class TaskDataError(ActTailError):
    """A bundled task file is missing or malformed."""


@dataclass(frozen=True)
class Doc:
    """One evaluation item.

    ``contexts`` has one entry shared by every choice, or one entry per choice (WinoGrande's
    partial scoring). ``continuations[j]`` is the text scored for choice ``j``, including lm-eval's
    target delimiter (a leading space). ``choice_lengths[j]`` is the character length used by
    ``acc_norm``.
    """

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int
    choice_lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.continuations)
        if len(self.contexts) not in (1, n) or len(self.choice_lengths) != n or not 0 <= self.gold < n:
            raise TaskDataError(f"malformed doc: {len(self.contexts)} contexts, {n} choices, gold {self.gold}")

    def context(self, choice: int) -> str:
        return self.contexts[0] if len(self.contexts) == 1 else self.contexts[choice]


TaskKind = Literal["multiple_choice", "greedy"]


@dataclass(frozen=True)
class TaskSpec:
    """A task: how to load its docs, how to score them, and its official size."""

    name: str
    kind: TaskKind  # multiple_choice: argmax over choices; greedy: LAMBADA's exact greedy match
    has_acc_norm: bool
    official_count: int
    chance: float  # accuracy of a uniform random guess (0 for LAMBADA)
    loader: Callable[[], list[Doc]]

    def load(self, limit: int | None = None) -> list[Doc]:
        """The first ``limit`` docs in file order (all when ``None``)."""
        docs = _cached(self.loader)
        return list(docs if limit is None else docs[: max(limit, 0)])


@functools.cache
def _cached(loader: Callable[[], list[Doc]]) -> tuple[Doc, ...]:
    """Parse each bundled file once per process (HellaSwag takes about a second)."""
    return tuple(loader())


def data_dir() -> Path:
    """Directory of the bundled evaluation data (``acttail/data``)."""
    return Path(__file__).resolve().parents[1] / "data"


def _read_jsonl(path: Path) -> Iterator[dict]:
    if not path.is_file():
        raise TaskDataError(f"bundled data file missing: {path}")
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _mc_doc(context: str, choices: Sequence[str], gold: int) -> Doc:
    return Doc(
        contexts=(context,),
        continuations=tuple(" " + c for c in choices),
        gold=gold,
        choice_lengths=tuple(len(c) for c in choices),
    )


def _load_arc(filename: str) -> list[Doc]:
    docs = []
    for rec in _read_jsonl(data_dir() / "ai2_arc" / filename):
        choices = rec["question"]["choices"]
        labels = [c["label"] for c in choices]
        if rec["answerKey"] not in labels:
            raise TaskDataError(f"ARC item {rec.get('id')}: answerKey {rec['answerKey']!r} not in {labels}")
        docs.append(
            _mc_doc(
                f"Question: {rec['question']['stem']}\nAnswer:",
                [c["text"] for c in choices],
                labels.index(rec["answerKey"]),
            )
        )
    return docs


def load_arc_easy() -> list[Doc]:
    return _load_arc("ARC-Easy-Test.jsonl")


def load_arc_challenge() -> list[Doc]:
    return _load_arc("ARC-Challenge-Test.jsonl")


def load_piqa() -> list[Doc]:
    root = data_dir() / "piqa"
    records = list(_read_jsonl(root / "valid.jsonl"))
    labels = [int(x) for x in (root / "valid-labels.lst").read_text(encoding="utf-8").split()]
    if len(labels) != len(records):
        raise TaskDataError(f"PIQA: {len(records)} questions but {len(labels)} labels")
    return [
        _mc_doc(f"Question: {r['goal']}\nAnswer:", [r["sol1"], r["sol2"]], label)
        for r, label in zip(records, labels, strict=True)
    ]


def load_winogrande() -> list[Doc]:
    """Partial scoring (Trinh & Le, 2018; lm-eval ``winogrande``): score the text after ``_``
    given the sentence up to ``_`` with each option substituted."""
    docs = []
    for r in _read_jsonl(data_dir() / "winogrande" / "dev.jsonl"):
        sentence = r["sentence"]
        i = sentence.index("_")
        options = (r["option1"], r["option2"])
        contexts = tuple(sentence[:i] + opt for opt in options)
        continuation = " " + sentence[i + 1 :].strip()
        docs.append(
            Doc(
                contexts=contexts,
                continuations=(continuation, continuation),
                gold={"1": 0, "2": 1}[str(r["answer"])],
                choice_lengths=tuple(len(c) for c in contexts),
            )
        )
    return docs


def load_boolq() -> list[Doc]:
    docs = []
    for r in _read_jsonl(data_dir() / "boolq" / "val.jsonl"):
        label = r["label"]
        gold = int(label) if isinstance(label, bool | int) else {"false": 0, "true": 1}[str(label).lower()]
        docs.append(_mc_doc(f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:", ["no", "yes"], gold))
    return docs


_BRACKETS = re.compile(r"\[.*?\]")


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's ``hellaswag.utils.preprocess`` (WikiHow markup removal)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = _BRACKETS.sub("", text)
    return text.replace("  ", " ")


def _capitalise_ctx_b(query: str) -> str:
    """Upper-case the first letter after the last ``". "``: where lm-eval's ``ctx_b.capitalize()`` acts."""
    i = query.rfind(". ")
    if i < 0 or i + 2 >= len(query):
        return query
    return query[: i + 2] + query[i + 2].upper() + query[i + 3 :]


def load_hellaswag() -> list[Doc]:
    """llama.cpp's format: per task, 6 lines (query, gold label 0-3, four endings)."""
    path = data_dir() / "hellaswag" / "hellaswag_val_full.txt.bz2"
    if not path.is_file():
        raise TaskDataError(f"bundled data file missing: {path}")
    lines = bz2.decompress(path.read_bytes()).decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise TaskDataError(f"HellaSwag: {len(lines)} lines is not a multiple of 6")
    docs = []
    for k in range(0, len(lines), 6):
        query = hellaswag_preprocess(_capitalise_ctx_b(lines[k]))
        endings = [hellaswag_preprocess(e) for e in lines[k + 2 : k + 6]]
        docs.append(_mc_doc(query, endings, int(lines[k + 1])))
    return docs


def load_lambada_openai() -> list[Doc]:
    """Context = text up to its last space; continuation = ``" " + last word`` (lm-eval ``lambada_openai``)."""
    docs = []
    for r in _read_jsonl(data_dir() / "lambada_openai" / "lambada_test.jsonl"):
        context, word = r["text"].rsplit(" ", 1)
        docs.append(Doc(contexts=(context,), continuations=(" " + word,), gold=0, choice_lengths=(len(word),)))
    return docs


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("arc_easy", "multiple_choice", True, 2376, 0.25, load_arc_easy),
        TaskSpec("arc_challenge", "multiple_choice", True, 1172, 0.25, load_arc_challenge),
        TaskSpec("piqa", "multiple_choice", True, 1838, 0.5, load_piqa),
        TaskSpec("winogrande", "multiple_choice", False, 1267, 0.5, load_winogrande),
        TaskSpec("boolq", "multiple_choice", False, 3270, 0.5, load_boolq),
        TaskSpec("hellaswag", "multiple_choice", True, 10042, 0.25, load_hellaswag),
        TaskSpec("lambada_openai", "greedy", False, 5153, 0.0, load_lambada_openai),
    )
}

ALL_TASKS: tuple[str, ...] = ZEROSHOT_TASKS
if tuple(TASKS) != ZEROSHOT_TASKS:  # the names are the registry's; this module says how each is scored
    raise ImportError(f"acttail.evaluate.tasks defines {tuple(TASKS)}, the registry names {ZEROSHOT_TASKS}")


def get_task(name: str) -> TaskSpec:
    """The task named ``name``; :class:`UnknownTaskError` lists the valid names otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; valid tasks: {', '.join(ALL_TASKS)}") from None
