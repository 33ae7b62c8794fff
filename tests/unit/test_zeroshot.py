"""Zero-shot loaders and log-likelihood scorer (acttail.evaluate.tasks / .zeroshot)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from acttail.errors import ActTailError
from acttail.evaluate.tasks import ALL_TASKS, TASKS, Doc, TaskSpec, UnknownTaskError, get_task
from acttail.evaluate.zeroshot import (
    TaskResult,
    ZeroShotReport,
    encode_pair,
    evaluate_zeroshot,
    score_docs,
    task_metrics,
)
from tests.tiny_models import build_tiny_model

OFFICIAL = {
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "piqa": 1838,
    "winogrande": 1267,
    "boolq": 3270,
    "hellaswag": 10042,
    "lambada_openai": 5153,
}

WORDS = [
    "<s>",
    "</s>",
    "<unk>",
    "the",
    "cat",
    "sat",
    "on",
    "mat",
    "yes",
    "no",
    "x",
    "xxxxxxxxxx",
    "a",
    "b",
    "c",
    "?",
    ":",
    ".",
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer: every word (and punctuation mark) is one token, so scores are exact."""
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def tiny_llama(seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    return build_tiny_model(
        "llama", seed, vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        max_position_embeddings=64,
    )  # fmt: skip


def constant_model(favoured: str | None, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A Llama whose next-token distribution ignores the input: blocks write nothing, every
    embedding is the same vector, so logits = W_head h for one fixed h. ``favoured`` gets a logit
    ~50 above all others (probability ~1); ``None`` makes every token equally likely."""
    model = tiny_llama()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.ones_like(model.model.embed_tokens.weight))
        model.lm_head.weight.zero_()
        if favoured is not None:
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(favoured)] = 50.0 / model.config.hidden_size
    return model


def spec(name: str = "handmade", kind: str = "multiple_choice", norm: bool = True) -> TaskSpec:
    return TaskSpec(name, kind, norm, 0, 0.5, list)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Loaders


@pytest.mark.parametrize("name", ALL_TASKS)
def test_loader_parses_official_count_with_golds_in_range(name: str) -> None:
    docs = get_task(name).load()
    assert len(docs) == OFFICIAL[name] == TASKS[name].official_count
    for doc in docs:
        assert 0 <= doc.gold < len(doc.continuations)
        assert all(c.startswith(" ") and len(c) > 1 for c in doc.continuations)
        assert all(n > 0 for n in doc.choice_lengths)
        assert all(ctx and not ctx.endswith(" ") for ctx in doc.contexts)


def test_all_tasks_names_and_unknown_task_lists_valid_names() -> None:
    assert ALL_TASKS == ("arc_easy", "arc_challenge", "piqa", "winogrande", "boolq", "hellaswag", "lambada_openai")
    with pytest.raises(UnknownTaskError) as err:
        get_task("mmlu")
    assert isinstance(err.value, ActTailError)
    assert "mmlu" in str(err.value) and all(t in str(err.value) for t in ALL_TASKS)


def test_unknown_task_fails_before_any_scoring(tokenizer: PreTrainedTokenizerFast) -> None:
    with pytest.raises(UnknownTaskError):
        evaluate_zeroshot(tiny_llama(), tokenizer, ["arc_easy", "nope"], limit=1, progress=False)


def test_limit_takes_first_items_in_file_order() -> None:
    full = get_task("piqa").load()
    assert get_task("piqa").load(7) == full[:7]
    assert get_task("piqa").load(0) == []


def test_arc_prompt_and_numeric_answer_keys() -> None:
    docs = get_task("arc_easy").load()
    first = docs[0]
    assert first.contexts == (
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:",
    )
    assert first.continuations[first.gold] == " Sunlight is the source of energy for nearly all ecosystems."
    assert first.choice_lengths[0] == len("Sunlight is the source of energy for nearly all ecosystems.")
    sizes = {len(d.continuations) for d in docs}
    assert sizes == {3, 4, 5}  # PROVENANCE: 7 items with 3 choices, 4 with 5
    path = TASKS["arc_easy"].loader.__globals__["data_dir"]() / "ai2_arc" / "ARC-Easy-Test.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    numeric = [(r, d) for r, d in zip(records, docs, strict=True) if r["answerKey"].isdigit()]
    assert len(numeric) == 97
    for rec, doc in numeric:
        assert doc.gold == int(rec["answerKey"]) - 1


def test_piqa_boolq_winogrande_hellaswag_lambada_formats() -> None:
    piqa = get_task("piqa").load(1)[0]
    assert piqa.contexts[0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert piqa.gold == 0 and len(piqa.continuations) == 2

    boolq = get_task("boolq").load(1)[0]
    assert boolq.contexts[0].startswith("Ethanol fuel -- All biomass")
    assert boolq.contexts[0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert boolq.continuations == (" no", " yes") and boolq.gold == 0

    wino = get_task("winogrande").load(1)[0]
    assert wino.contexts == (
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    )
    assert wino.continuations == (" always got the easier cases.",) * 2 and wino.gold == 1

    hs = get_task("hellaswag").load(2)
    assert hs[0].contexts == ("Roof shingle removal: A man is sitting on a roof. He",)
    assert hs[0].continuations[3] == " starts pulling up roofing on a roof." and hs[0].gold == 3
    assert hs[1].contexts == ("Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady",)

    lam = get_task("lambada_openai").load(1)[0]
    assert lam.continuations == (" signs",) and lam.contexts[0].endswith("I don't care about")


# ---------------------------------------------------------------------------------------------
# Tokenisation


def test_encode_pair_moves_trailing_space_and_splits_whole_encoding(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = tokenizer.convert_tokens_to_ids
    assert encode_pair(tokenizer, "the cat", " sat on") == (ids(["the", "cat"]), ids(["sat", "on"]))
    assert encode_pair(tokenizer, "the cat ", "sat") == (ids(["the", "cat"]), ids(["sat"]))
    assert encode_pair(tokenizer, "the", " cat", add_bos_token=True) == (ids(["<s>", "the"]), ids(["cat"]))
    assert encode_pair(tokenizer, "", "cat") == (ids(["<s>"]), ids(["cat"]))


# ---------------------------------------------------------------------------------------------
# Scoring


def test_scorer_picks_the_certain_answer(tokenizer: PreTrainedTokenizerFast) -> None:
    docs = [
        Doc(("the cat sat ?",), (" no", " yes"), gold=1, choice_lengths=(2, 3)),
        Doc(("a b c :",), (" yes yes yes", " the mat", " no"), gold=0, choice_lengths=(11, 7, 2)),
        Doc(("the cat", "the mat"), (" yes", " yes"), gold=0, choice_lengths=(7, 7)),  # per-choice contexts
    ]
    scores = score_docs(constant_model("yes", tokenizer), tokenizer, [docs], progress=False)[0]
    result = task_metrics(spec(), docs, scores)
    assert result.acc == 1.0 and result.acc_norm == 1.0 and result.n == 3
    assert scores[0][1][0] == pytest.approx(0.0, abs=1e-6)  # log p(" yes") ~ 0: the answer is certain
    assert scores[0][0][0] < -40
    # the same items with the other answer favoured: every choice without "yes" now wins or ties
    flipped = score_docs(constant_model("no", tokenizer), tokenizer, [docs[:2]], progress=False)[0]
    assert task_metrics(spec(), docs[:2], flipped).acc == 0.0


def test_acc_norm_divides_by_choice_length_in_characters(tokenizer: PreTrainedTokenizerFast) -> None:
    # Uniform model: each one-token choice has ll = -log V exactly; acc's tie goes to the first
    # choice, acc_norm prefers the 10-character choice (-log V / 10 > -log V / 1).
    docs = [Doc(("the",), (" x", " xxxxxxxxxx"), gold=0, choice_lengths=(1, 10))]
    scores = score_docs(constant_model(None, tokenizer), tokenizer, [docs], progress=False)[0]
    assert [ll for ll, _ in scores[0]] == pytest.approx([-math.log(len(WORDS))] * 2, abs=1e-5)
    result = task_metrics(spec(), docs, scores)
    assert result.acc == 1.0 and result.acc_norm == 0.0
    # direct construction: acc picks -2.0, acc_norm picks -3.0 / 10
    doc = Doc(("c",), (" a", " b"), gold=1, choice_lengths=(1, 10))
    r = task_metrics(spec(), [doc, doc], [[(-2.0, False), (-3.0, False)]] * 2)
    assert (r.acc, r.acc_norm) == (0.0, 1.0)
    assert task_metrics(spec(norm=False), [doc], [[(-2.0, False), (-3.0, False)]]).acc_norm is None


def test_lambada_greedy_accuracy_and_perplexity(tokenizer: PreTrainedTokenizerFast) -> None:
    docs = [
        Doc(("the cat",), (" yes",), 0, (3,)),
        Doc(("the cat",), (" yes no",), 0, (6,)),
        Doc(("a",), (" yes yes",), 0, (7,)),
    ]
    scores = score_docs(constant_model("yes", tokenizer), tokenizer, [docs], progress=False)[0]
    assert [s[0][1] for s in scores] == [True, False, True]
    r = task_metrics(spec("lambada", "greedy", False), docs, scores)
    assert r.acc == pytest.approx(2 / 3) and r.acc_norm is None
    lls = [s[0][0] for s in scores]
    assert r.perplexity == pytest.approx(math.exp(-sum(lls) / 3))
    assert r.stderr == pytest.approx(math.sqrt((2 * (1 / 3) ** 2 + (2 / 3) ** 2) / 2 / 3))


def _direct_ll(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, ctx: str, cont: str) -> float:
    c, k = encode_pair(tokenizer, ctx, cont)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([c + k])).logits[0].float(), dim=-1)
    return sum(lp[len(c) - 1 + i, t].item() for i, t in enumerate(k))


def test_packed_context_equals_separate_forward_passes(tokenizer: PreTrainedTokenizerFast) -> None:
    model = tiny_llama(seed=3)
    docs = [
        Doc(("the cat sat on the",), (" mat", " cat sat on", " a b c . the mat", " yes"), 2, (3, 10, 15, 3)),
        Doc(("a b",), (" c", " c c"), 0, (1, 3)),
        Doc(("the mat", "the cat ?"), (" sat on the mat .", " sat on the mat ."), 1, (7, 9)),
        Doc(("no",), (" yes",), 0, (3,)),
    ]
    packed = score_docs(model, tokenizer, [docs, docs[::-1]], progress=False, batch_size=3)
    separate = score_docs(model, tokenizer, [docs], progress=False, share_context=False, batch_size=1)[0]
    for d, doc in enumerate(docs):
        for j, cont in enumerate(doc.continuations):
            ref = _direct_ll(model, tokenizer, doc.context(j), cont)
            assert packed[0][d][j][0] == pytest.approx(ref, abs=1e-4)
            assert packed[1][len(docs) - 1 - d][j][0] == pytest.approx(ref, abs=1e-4)
            assert separate[d][j][0] == pytest.approx(ref, abs=1e-4)


def test_packed_context_respects_gemma3_sliding_window(tokenizer: PreTrainedTokenizerFast) -> None:
    # Soft-capped logits (applied after the LM head) must survive the head seeing only scored positions.
    model = build_tiny_model(
        "gemma3", 1, vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_attention_heads=2,
        num_key_value_heads=1, sliding_window=3, max_position_embeddings=64, final_logit_softcapping=0.5,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=1, bos_token_id=0, eos_token_id=1,
    )  # fmt: skip
    doc = Doc(("the cat sat on the mat",), (" a b c", " yes no yes no"), 0, (5, 13))
    scores = score_docs(model, tokenizer, [[doc]], progress=False, add_bos_token=False)[0][0]
    for j, cont in enumerate(doc.continuations):
        assert scores[j][0] == pytest.approx(_direct_ll(model, tokenizer, doc.contexts[0], cont), abs=1e-4)


def test_report_mean_uses_acc_norm_where_present() -> None:
    report = ZeroShotReport(
        results=(TaskResult("arc_easy", 0.5, 0.7, 10, 0.1), TaskResult("boolq", 0.6, None, 10, 0.1)),
        limit=10,
        add_bos_token=False,
    )
    assert report.mean_accuracy == pytest.approx(0.65)
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["tasks"]["arc_easy"]["acc_norm"] == 0.7 and doc["limit"] == 10
    assert report["boolq"].acc == 0.6


# ---------------------------------------------------------------------------------------------
# Real model


@pytest.fixture(scope="module")
def smollm2():
    from acttail.models import resolve_model

    return resolve_model("smollm2-135m").load_causal_lm()


@pytest.mark.slow
def test_smollm2_zeroshot_report_is_well_formed(smollm2) -> None:
    model, tok = smollm2
    report = evaluate_zeroshot(model, tok, ["arc_easy", "lambada_openai"], limit=20, progress=False)
    assert [r.task for r in report.results] == ["arc_easy", "lambada_openai"]
    for r in report.results:
        assert r.n == 20 and 0.0 <= r.acc <= 1.0 and r.stderr is not None
    arc, lam = report.results
    assert arc.acc_norm is not None and 0.0 <= arc.acc_norm <= 1.0
    assert lam.acc_norm is None and lam.perplexity is not None and lam.perplexity > 1.0
    assert report.mean_accuracy == pytest.approx((arc.acc_norm + lam.acc) / 2)
    assert json.loads(json.dumps(report.to_dict()))["tasks"]["arc_easy"]["n"] == 20
