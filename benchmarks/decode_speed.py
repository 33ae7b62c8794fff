"""End-to-end decode speed: dense vs sparse-kernel greedy decode of SmolLM2-135M (batch 1).

    .venv/bin/python benchmarks/decode_speed.py --threads 2
    .venv/bin/python benchmarks/decode_speed.py --device cuda --dtype bfloat16   # on a GPU machine

For uniform and ActTail allocations at 50/70/80/90%: tokens/s of dense decode and of sparse
decode (``acttail.sparse_decode``: the kernel for every sparsified projection at each
single-token step; prefill uses the reference masking) through the same greedy loop
(``acttail.evaluate.speed.measure_decode_speed``: same prompt, same number of new tokens,
warm-up dropped, dense and sparse runs interleaved), and whether the greedy tokens equal those
of the reference implementation (``acttail.sparsity.apply_sparsity`` TopK hooks + dense F.linear).
The exact pair (fp64-accumulating kernel vs the torch fp64 reference, ``check_exact``) is also
run: its tokens must be identical in every row (the fp32 pair may drift apart by ~1 ulp).

Amdahl check: the same loop with every projection replaced by a zero-cost stub gives the
per-token time spent *outside* the projections (attention, norms, LM head, Python); the best a
projection-only speed-up can reach at sparsity s is then
    bound(s) = t_dense / (t_other + (t_dense - t_other) (1 - s)).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, load_average

from acttail.allocate import allocate
from acttail.evaluate.speed import DEFAULT_PROMPT, greedy_decode, measure_decode_speed
from acttail.models import resolve_model
from acttail.models.architectures import find_projections

TARGETS = (0.5, 0.7, 0.8, 0.9)
TARGET_SPEEDUP = 1.3


class _ZeroProjection(nn.Module):
    """Stands in for a projection at zero cost: returns a preallocated zero output."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.out_features = linear.out_features
        self.register_buffer(
            "zero",
            torch.zeros(
                linear.out_features,
                dtype=linear.weight.dtype,
                device=linear.weight.device,
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.zero.expand(*x.shape[:-1], self.out_features)


def time_outside_projections(
    model: nn.Module, input_ids: torch.Tensor, new_tokens: int, warmup: int, clock: str
) -> float:
    """Seconds per decode step with every projection stubbed out (median of 3 runs)."""
    projections = find_projections(model)
    for ref, linear in projections:
        parent, _, child = ref.name.rpartition(".")
        setattr(model.get_submodule(parent), child, _ZeroProjection(linear))
    try:
        runs = [greedy_decode(model, input_ids, new_tokens, warmup, clock) for _ in range(3)]
    finally:
        for ref, linear in projections:
            parent, _, child = ref.name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return statistics.median(sum(r.step_seconds) / len(r.step_seconds) for r in runs)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Sparse decode speed: SmolLM2-135M, batch 1, greedy",
        "",
        f"Command: `{result['command']}`",
        "",
        (
            f"Machine: {m['cpu_model']}, {m['cpus']} CPUs, L3 {m['l3_cache']}, {m.get('gpu', 'no GPU')}; torch {m['torch']}, "
            f"{result['threads']} threads, dtype {result['dtype']}, clock {result['clock']}. {m['note']} Load average at start "
            f"{m['load_average_at_start']}, at end {result['load_average_at_end']}."
        ),
        "",
        (
            f"Prompt: {result['prompt_tokens']} tokens; {result['new_tokens']} new tokens per run, first "
            f"{result['warmup_tokens']} steps dropped; median of {result['repeats']} interleaved dense/sparse runs. "
            f"Alphas: {result['alphas_source']}."
        ),
        "",
        (
            "| allocation | target | dense tok/s | sparse tok/s | speed-up | Amdahl bound | reference (hooks) tok/s "
            "| tokens = reference | identical leading tokens | exact kernel tok/s | exact tokens = fp64 reference |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['method']} | {r['target']:.1f} | {r['dense_tokens_per_s']:.1f} | {r['sparse_tokens_per_s']:.1f} | "
            f"**{r['speedup']:.2f}x** | {r['amdahl_bound']:.2f}x | {r['reference_tokens_per_s']:.1f} | {r['tokens_match_reference']} "
            f"| {r.get('matching_prefix')} / {r['new_tokens']} | {_fmt(r.get('exact_tokens_per_s'))} "
            f"| {r.get('exact_tokens_match_reference')} ({r.get('exact_matching_prefix')} / {r['new_tokens']}) |"
        )
    a = result["amdahl"]
    lines += [
        "",
        (
            f"Per decode step (dense): {a['dense_ms']:.1f} ms, of which {a['other_ms']:.1f} ms "
            f"({a['other_share']:.0%}) is outside the q/k/v/o/gate/up/down projections (attention, norms, "
            f"the {a['lm_head_params'] / 1e6:.0f}M-parameter LM head, Python), measured by stubbing the projections out."
        ),
        "",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--targets", type=float, nargs="*", default=list(TARGETS))
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="cpu: process CPU time (load-robust with --threads 1)",
    )
    parser.add_argument(
        "--no-acttail",
        action="store_true",
        help="uniform allocations only (skip the ESD)",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode_speed"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = describe_machine()  # load average at the start
    source = resolve_model(args.model)
    model, tokenizer = source.load_causal_lm(dtype=getattr(torch, args.dtype), device=args.device)
    projections = find_projections(model)
    counts = {ref.name: lin.weight.numel() for ref, lin in projections}
    alphas: dict[str, float] = {}
    alphas_source = "none (uniform only)"
    if not args.no_acttail:
        from acttail.esd import analyze_source

        start = time.perf_counter()
        alphas = analyze_source(source, "ks", progress=False).alphas()
        alphas_source = f"acttail.esd.analyze_source(estimator='ks') in {time.perf_counter() - start:.0f} s"
        print(alphas_source, flush=True)

    input_ids = tokenizer(DEFAULT_PROMPT, return_tensors="pt").input_ids.to(args.device)
    other = time_outside_projections(model, input_ids, args.new_tokens, args.warmup, args.clock)
    dense_step = statistics.median(
        sum(r.step_seconds) / len(r.step_seconds)
        for r in (greedy_decode(model, input_ids, args.new_tokens, args.warmup, args.clock) for _ in range(3))
    )
    lm_head = model.get_output_embeddings()
    amdahl = {
        "dense_ms": dense_step * 1e3,
        "other_ms": other * 1e3,
        "other_share": other / dense_step,
        "lm_head_params": lm_head.weight.numel() if lm_head is not None else 0,
    }
    print(
        f"dense step {dense_step * 1e3:.1f} ms, outside projections {other * 1e3:.1f} ms",
        flush=True,
    )

    runs = []
    methods = ["uniform"] + ([] if args.no_acttail else ["acttail"])
    for target in args.targets:
        for method in methods:
            allocation = allocate(alphas, counts, target, method=method, model_id=args.model)
            res = measure_decode_speed(
                model,
                tokenizer,
                allocation,
                DEFAULT_PROMPT,
                args.new_tokens,
                warmup_tokens=args.warmup,
                repeats=args.repeats,
                clock=args.clock,
                check_exact=True,
            )
            proj = dense_step - other
            bound = dense_step / (other + proj * (1 - target))
            row = {
                "method": method,
                "target": target,
                "amdahl_bound": bound,
                **res.to_dict(),
            }
            runs.append(row)
            print(
                f"{method:8s} s={target:.1f}: dense {res.dense_tokens_per_s:6.1f} tok/s  sparse {res.sparse_tokens_per_s:6.1f} tok/s  "
                f"speed-up {res.speedup:.2f}x (Amdahl bound {bound:.2f}x)  reference {res.reference_tokens_per_s:6.1f} tok/s  "
                f"tokens identical: {res.tokens_match_reference}, exact pair: {res.exact_tokens_match_reference}",
                flush=True,
            )
    first = runs[0]
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine,
        "model": args.model,
        "fingerprint": source.describe().fingerprint,
        "threads": args.threads,
        "clock": args.clock,
        "dtype": args.dtype,
        "prompt_tokens": first["prompt_tokens"],
        "new_tokens": args.new_tokens,
        "warmup_tokens": args.warmup,
        "repeats": args.repeats,
        "alphas_source": alphas_source,
        "amdahl": amdahl,
        "runs": runs,
        "load_average_at_end": load_average(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(result))
    print(f"wrote {out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
