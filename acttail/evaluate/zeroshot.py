"""Zero-shot accuracy by log-likelihood, compatible with lm-evaluation-harness (``lm-eval``).

Engine: a compact scorer of our own, not ``lm-eval`` itself (which wants its task registry and
``datasets`` hub downloads; our data are bundled files). Prompts, tokenisation and metrics follow
lm-eval v0.4 ``HFLM.loglikelihood`` so the numbers are comparable:

* Tokenisation (``HFLM._encode_pair``): trailing spaces of the context move to the front of the
  continuation; ``whole = enc(context + continuation)``, ``ctx = enc(context)``,
  ``cont = whole[len(ctx):]``; the model input is ``ctx + cont``. No BOS token unless the model is
  a Gemma (lm-eval's default), an empty context is replaced by the BOS/EOS token.
* Score of choice ``j``: ``ll_j = sum_t log p(cont_t | ctx, cont_<t)`` (natural log).
* ``acc = 1[argmax_j ll_j = gold]``; ``acc_norm = 1[argmax_j ll_j / len(choice_j) = gold]`` with
  ``len`` in characters of the choice text (lm-eval's ``completion_len``).
* LAMBADA: ``acc = 1[every continuation token is the greedy argmax]``,
  ``perplexity = exp(-mean_docs ll)`` (per-word perplexity of the last word).
* ``stderr`` = sample standard deviation / sqrt(n) (lm-eval's ``mean_stderr``).

Efficiency: the choices of one item share a context, so each item is *one packed row*:
``[context, choice_1[:-1], choice_2[:-1], ...]`` with a tree attention mask (each choice's tokens
see the context and their own earlier tokens, never another choice) and position ids that
restart after the context for every choice. The context is thus encoded once per item instead of
once per choice; results equal separate forward passes up to float rounding
(``share_context=False`` runs them separately). Rows are sorted by length (longest first, so an
out-of-memory shows at once), padded, batched, and only the positions that are scored reach the
LM head: each row's own, not every kept position of every row (on a 262k-token vocabulary the
head costs more than the rest of the model, see ``_own_positions_only``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from acttail.evaluate.memory import PeakMemory
from acttail.evaluate.tasks import ALL_TASKS, Doc, TaskSpec, get_task
from acttail.models.loading import input_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["ALL_TASKS", "TaskResult", "ZeroShotReport", "evaluate_zeroshot", "score_docs"]


@dataclass(frozen=True)
class TaskResult:
    """Metrics of one task over ``n`` items (accuracies are fractions in [0, 1])."""

    task: str
    acc: float
    acc_norm: float | None
    n: int
    stderr: float | None  # of acc
    acc_norm_stderr: float | None = None
    perplexity: float | None = None  # LAMBADA only

    @property
    def headline(self) -> float:
        """The accuracy this task contributes to the mean: acc_norm where the task has it, else acc."""
        return self.acc_norm if self.acc_norm is not None else self.acc

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class ZeroShotReport:
    """Per-task results plus the protocol they were measured under."""

    results: tuple[TaskResult, ...]
    limit: int | None
    add_bos_token: bool
    engine: str = "acttail-loglik (lm-eval v0.4 prompts and metrics)"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        """Unweighted mean over tasks of ``acc_norm`` where the task has it (ARC, PIQA,
        HellaSwag), else ``acc`` (WinoGrande, BoolQ, LAMBADA)."""
        return float(np.mean([r.headline for r in self.results])) if self.results else float("nan")

    def __getitem__(self, task: str) -> TaskResult:
        for r in self.results:
            if r.task == task:
                return r
        raise KeyError(task)

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "limit": self.limit,
            "add_bos_token": self.add_bos_token,
            "mean_accuracy": self.mean_accuracy,
            "mean_accuracy_metric": "acc_norm where available, else acc",
            "mean_over": [r.task for r in self.results],
            "tasks": {r.task: r.to_dict() for r in self.results},
            "settings": dict(self.settings),
        }


# ---------------------------------------------------------------------------------------------
# Tokenisation


def _prefix_token(tokenizer: PreTrainedTokenizerBase) -> int:
    tok = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tok is None:
        raise ValueError("tokenizer has neither a BOS nor an EOS token to stand for an empty context")
    return int(tok)


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str, *, add_bos_token: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) exactly as lm-eval's ``HFLM._encode_pair``."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        return [_prefix_token(tokenizer)], tokenizer.encode(continuation, add_special_tokens=False)
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False)
    cont = whole[len(ctx) :]
    if not cont:  # a merge across the boundary swallowed the continuation; score it on its own
        cont = tokenizer.encode(continuation, add_special_tokens=False)
    if add_bos_token:
        ctx = [_prefix_token(tokenizer), *ctx]
    return ctx, cont


# ---------------------------------------------------------------------------------------------
# Packed rows


@dataclass(frozen=True)
class _Row:
    """One forward row: a context and the choices scored after it.

    ``tokens = ctx + cont_1[:-1] + cont_2[:-1] + ...``; ``targets[j]`` are choice ``j``'s token ids
    and ``sources[j][t]`` the row index whose logits predict ``targets[j][t]``.
    """

    key: tuple[int, int]  # (request group, doc index)
    choices: tuple[int, ...]
    tokens: tuple[int, ...]
    positions: tuple[int, ...]
    segments: tuple[int, ...]  # 0 = context, j + 1 = branch of the j-th choice listed in `choices`
    targets: tuple[tuple[int, ...], ...]
    sources: tuple[tuple[int, ...], ...]


def _make_row(
    key: tuple[int, int], choices: Sequence[int], ctx: list[int], conts: Sequence[list[int]], max_len: int
) -> _Row:
    longest = max(len(c) for c in conts)
    budget = max_len - sum(len(c) - 1 for c in conts)
    if budget < 1:
        raise ValueError(f"choices of {longest} tokens do not fit the model's {max_len}-token window")
    ctx = ctx[-budget:]  # left-truncate, as lm-eval does
    tokens, positions, segments = list(ctx), list(range(len(ctx))), [0] * len(ctx)
    targets, sources = [], []
    for b, cont in enumerate(conts, start=1):
        start = len(tokens)
        tokens += cont[:-1]
        positions += range(len(ctx), len(ctx) + len(cont) - 1)
        segments += [b] * (len(cont) - 1)
        targets.append(tuple(cont))
        sources.append((len(ctx) - 1, *range(start, start + len(cont) - 1)))
    return _Row(key, tuple(choices), tuple(tokens), tuple(positions), tuple(segments), tuple(targets), tuple(sources))


def _doc_rows(
    key: tuple[int, int],
    doc: Doc,
    tokenizer: PreTrainedTokenizerBase,
    *,
    add_bos_token: bool,
    share_context: bool,
    max_len: int,
) -> list[_Row]:
    """Rows of one doc: choices with identical context tokens share a row when ``share_context``."""
    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    rows = []
    for j, continuation in enumerate(doc.continuations):
        ctx, cont = encode_pair(tokenizer, doc.context(j), continuation, add_bos_token=add_bos_token)
        if share_context:
            groups.setdefault(tuple(ctx), []).append((j, cont))
        else:
            rows.append(_make_row(key, [j], ctx, [cont], max_len))
    for ctx_t, members in groups.items():
        rows.append(_make_row(key, [j for j, _ in members], list(ctx_t), [c for _, c in members], max_len))
    return rows


def _attention_masks(
    segments: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, model: PreTrainedModel, dtype: torch.dtype
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Additive tree masks ``[B, 1, T, T]`` (0 = attend, dtype min = blocked).

    Query ``q`` may see key ``k <= q`` when ``k`` is context or in ``q``'s own branch; padding only
    sees itself. Models with sliding-window layers (Gemma 3) get a dict per layer type, the sliding
    one also requiring ``pos_q - pos_k < window``.
    """
    t = segments.shape[1]
    idx = torch.arange(t, device=segments.device)
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]
    allowed = (idx[None, None, :] <= idx[None, :, None]) & ((seg_k == 0) | (seg_k == seg_q))
    allowed &= valid[:, None, :] & valid[:, :, None]
    allowed |= torch.eye(t, dtype=torch.bool, device=segments.device)[None]
    blocked = torch.finfo(dtype).min

    def additive(mask: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return out.masked_fill_(~mask, blocked)[:, None]

    layer_types = set(getattr(model.config, "layer_types", None) or ())
    window = getattr(model.config, "sliding_window", None)
    if not (layer_types - {"full_attention"}) or window is None:
        return additive(allowed)
    distance = positions[:, :, None] - positions[:, None, :]
    masks = {kind: additive(allowed) for kind in layer_types}
    masks["sliding_attention"] = additive(allowed & ((distance < window) | ~(valid[:, :, None] & valid[:, None, :])))
    return masks


@contextmanager
def _own_positions_only(model: PreTrainedModel, rows: torch.Tensor, columns: torch.Tensor) -> Iterator[None]:
    """While open, the LM head sees ``hidden[rows, columns]`` as one ``[1, N, H]`` sequence.

    ``logits_to_keep`` keeps the same positions for every row of a batch (the union of what the
    rows score); this hook narrows that to each row's own before the head's matmul. Anything the
    model does to the logits after its head (Gemma-2's soft-capping) is elementwise, so it still
    applies unchanged.
    """

    def narrow(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0][rows, columns][None], *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(narrow)
    try:
        yield
    finally:
        handle.remove()


def _score_batch(model: PreTrainedModel, rows: Sequence[_Row], pad_id: int) -> list[list[tuple[float, bool]]]:
    """Forward one padded batch; per row and choice, (sum log-prob, all-greedy)."""
    device = input_device(model)
    t = max(len(r.tokens) for r in rows)
    b = len(rows)
    ids = torch.full((b, t), pad_id, dtype=torch.long)
    pos = torch.zeros((b, t), dtype=torch.long)
    seg = torch.full((b, t), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.tokens)
        ids[i, :n] = torch.tensor(r.tokens)
        pos[i, :n] = torch.tensor(r.positions)
        seg[i, :n] = torch.tensor(r.segments)
    valid = seg >= 0
    needed = sorted({s for r in rows for src in r.sources for s in src})
    column = {p: c for c, p in enumerate(needed)}
    own = [(i, p) for i, r in enumerate(rows) for p in sorted({s for src in r.sources for s in src})]
    flat = {pair: n for n, pair in enumerate(own)}  # (row, position) -> index into the head's output
    masks = _attention_masks(seg, pos, valid, model, model.dtype)
    if isinstance(masks, dict):
        masks = {k: v.to(device) for k, v in masks.items()}
    else:
        masks = masks.to(device)
    head_rows = torch.tensor([i for i, _ in own], device=device)
    head_columns = torch.tensor([column[p] for _, p in own], device=device)
    with _own_positions_only(model, head_rows, head_columns):
        out = model(
            input_ids=ids.to(device),
            position_ids=pos.to(device),
            attention_mask=masks,
            logits_to_keep=torch.tensor(needed, dtype=torch.long, device=device),
            use_cache=False,
        )
    logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)  # [N own positions, V]
    results = []
    for i, r in enumerate(rows):
        per_choice = []
        for tgt, src in zip(r.targets, r.sources, strict=True):
            at = torch.tensor([flat[(i, s)] for s in src], device=logprobs.device)
            tg = torch.tensor(tgt, device=logprobs.device)
            lp = logprobs[at]  # [len(tgt), V]
            ll = lp.gather(1, tg[:, None]).sum().item()
            greedy = bool((lp.argmax(dim=-1) == tg).all().item())
            per_choice.append((ll, greedy))
        results.append(per_choice)
    return results


def _batches(rows: Sequence[_Row], batch_size: int, max_batch_tokens: int) -> list[list[_Row]]:
    """Longest first; a batch grows while it has < batch_size rows and rows * longest <= max_batch_tokens."""
    ordered = sorted(rows, key=lambda r: (-len(r.tokens), r.key))
    batches: list[list[_Row]] = []
    for r in ordered:
        if (
            batches
            and len(batches[-1]) < batch_size
            and (len(batches[-1]) + 1) * len(batches[-1][0].tokens) <= max_batch_tokens
        ):
            batches[-1].append(r)
        else:
            batches.append([r])
    return batches


def _default_add_bos(model: PreTrainedModel) -> bool:
    return str(getattr(model.config, "model_type", "")).startswith("gemma")


def _max_length(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or 2048)


def score_docs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    docs_per_group: Sequence[Sequence[Doc]],
    *,
    batch_size: int = 16,
    max_batch_tokens: int = 2048,
    add_bos_token: bool | None = None,
    share_context: bool = True,
    progress: bool = True,
    description: str = "zero-shot",
) -> list[list[list[tuple[float, bool]]]]:
    """Log-likelihood and greedy flag of every choice: ``out[group][doc][choice] = (ll, greedy)``."""
    from tqdm.auto import tqdm

    add_bos = _default_add_bos(model) if add_bos_token is None else add_bos_token
    max_len = _max_length(model)
    rows = [
        row
        for g, docs in enumerate(docs_per_group)
        for d, doc in enumerate(docs)
        for row in _doc_rows(
            (g, d), doc, tokenizer, add_bos_token=add_bos, share_context=share_context, max_len=max_len
        )
    ]
    out: list[list[list[tuple[float, bool]]]] = [
        [[(math.nan, False)] * len(doc.continuations) for doc in docs] for docs in docs_per_group
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _prefix_token(tokenizer)
    was_training = model.training
    model.eval()
    try:
        with (
            torch.inference_mode(),
            tqdm(total=sum(len(r.choices) for r in rows), desc=description, unit="req", disable=not progress) as bar,
        ):
            for batch in _batches(rows, batch_size, max_batch_tokens):
                for r, scores in zip(batch, _score_batch(model, batch, pad_id), strict=True):
                    g, d = r.key
                    for j, s in zip(r.choices, scores, strict=True):
                        out[g][d][j] = s
                bar.update(sum(len(r.choices) for r in batch))
    finally:
        model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------
# Metrics


def _stderr(x: np.ndarray) -> float | None:
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None


def task_metrics(spec: TaskSpec, docs: Sequence[Doc], scores: Sequence[Sequence[tuple[float, bool]]]) -> TaskResult:
    """Aggregate per-choice scores into acc / acc_norm (argmax ties go to the first choice, as np.argmax)."""
    if spec.kind == "greedy":
        acc = np.array([float(s[0][1]) for s in scores])
        lls = np.array([s[0][0] for s in scores])
        ppl = float(math.exp(-lls.mean())) if len(lls) else None
        return TaskResult(
            spec.name, float(acc.mean()) if len(acc) else math.nan, None, len(docs), _stderr(acc), None, ppl
        )
    acc_list, norm_list = [], []
    for doc, s in zip(docs, scores, strict=True):
        lls = np.array([ll for ll, _ in s])
        acc_list.append(float(np.argmax(lls) == doc.gold))
        norm_list.append(float(np.argmax(lls / np.array(doc.choice_lengths, dtype=float)) == doc.gold))
    acc, norm = np.array(acc_list), np.array(norm_list)
    mean = float(acc.mean()) if len(acc) else math.nan
    if not spec.has_acc_norm:
        return TaskResult(spec.name, mean, None, len(docs), _stderr(acc))
    return TaskResult(
        spec.name, mean, float(norm.mean()) if len(norm) else math.nan, len(docs), _stderr(acc), _stderr(norm)
    )


def evaluate_zeroshot(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str] = ALL_TASKS,
    limit: int | None = None,
    progress: bool = True,
    batch_size: int = 16,
    *,
    max_batch_tokens: int = 2048,
    add_bos_token: bool | None = None,
    share_context: bool = True,
) -> ZeroShotReport:
    """Zero-shot accuracy of ``model`` on ``tasks`` (names from :data:`ALL_TASKS`).

    ``limit`` keeps the first N items of each task (file order, deterministic). ``batch_size`` caps
    rows per forward pass and ``max_batch_tokens`` the padded tokens per pass. ``add_bos_token``
    defaults to lm-eval's choice (only Gemma models get a BOS). Unknown task names raise
    :class:`~acttail.evaluate.tasks.UnknownTaskError` before any work.
    """
    specs = [get_task(t) for t in tasks]
    docs = [spec.load(limit) for spec in specs]
    add_bos = _default_add_bos(model) if add_bos_token is None else add_bos_token
    peak = PeakMemory(input_device(model))
    scores = score_docs(
        model,
        tokenizer,
        docs,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        add_bos_token=add_bos,
        share_context=share_context,
        progress=progress,
    )
    results = tuple(task_metrics(spec, d, s) for spec, d, s in zip(specs, docs, scores, strict=True))
    settings = {
        "batch_size": batch_size,
        "max_batch_tokens": max_batch_tokens,
        "share_context": share_context,
        "max_length": _max_length(model),
        "dtype": str(model.dtype),
        **peak.read().as_dict(),
    }
    return ZeroShotReport(results=results, limit=limit, add_bos_token=add_bos, settings=settings)
