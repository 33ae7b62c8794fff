"""The Python half of ``benchmarks/gpu_check.sh``: correctness on CUDA first, then speed at 7B shapes.

Needs only the repository: every model is built from a config with random weights (no network,
no downloaded weights). Two sections, each a separate process so one failing leaves the other's
numbers:

- ``correctness``: a tiny random Llama in fp32 on the CPU and on the device under test; the ESD
  alpha of every projection must agree to 1e-6 relative, and WikiText-style TopK perplexity
  (random token windows, dense and uniform 50%) to 1e-3 relative.
- ``speed``: a random Llama with LLaMA-2-7B shapes (4096 hidden, 11008 intermediate, 32 heads,
  32000 vocabulary; ``--layers`` blocks) in bf16 on the device: ESD of every projection on the
  device (``acttail.esd.analyze_weights``; stops at ``--esd-budget-s`` and extrapolates, saying
  so), TopK perplexity throughput dense vs uniform 50% (tokens/s, peak memory), the sparse GEMV
  kernel's fraction of the ideal speed-up at 50% on the 7B projection shapes
  (``benchmarks/gemv_speed.bench_shape``: Triton on CUDA), and greedy decode tokens/s dense vs
  sparse at 50% (``acttail.evaluate.speed.measure_decode_speed``).

``--dry-run`` runs both sections on the CPU with tiny shapes, to prove this script end to end on a
machine without a GPU; its numbers say nothing about speed. Results: ``gpu_check_<section>.json``
and ``.md`` in ``--out`` (``gpu_check_dryrun_<section>`` for a dry run).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchmarks._machine import describe_machine, load_average  # noqa: E402

ALPHA_RTOL = 1e-6
PPL_RTOL = 1e-3
SPARSITY = 0.5
SHAPES_7B = dict(
    hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32, vocab_size=32000
)
SHAPES_DRY = dict(hidden_size=256, intermediate_size=688, num_attention_heads=4, num_key_value_heads=4, vocab_size=1000)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def llama(shapes: dict[str, int], layers: int, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A random Llama built from a config directly on ``device`` (no CPU copy of 7B weights)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**shapes, num_hidden_layers=layers, max_position_embeddings=4096)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def projection_weights(model: Any) -> Iterator[tuple[Any, torch.Tensor]]:
    """``(ProjectionInfo, weight)`` per projection, for ``analyze_weights``."""
    from acttail.models.architectures import find_projections
    from acttail.models.base import ProjectionInfo

    for ref, linear in find_projections(model):
        yield ProjectionInfo(ref, tuple(linear.weight.shape)), linear.weight.detach()  # type: ignore[arg-type]


def window_ppl(model: Any, ids: torch.Tensor, seqlen: int, sparsity: float | None) -> tuple[float, float, int]:
    """(perplexity, seconds, tokens scored) of ``ids`` in windows of ``seqlen``, optionally TopK-sparse."""
    from acttail.evaluate.perplexity import evaluate_perplexity
    from acttail.sparsity import apply_sparsity

    device = next(model.parameters()).device
    handle = None if sparsity is None else apply_sparsity(model, sparsity, "topk", track=False)
    try:
        sync(device)
        began = time.perf_counter()
        result = evaluate_perplexity(model, token_ids=ids, seqlen=seqlen, progress=False)
        sync(device)
        return result.ppl, time.perf_counter() - began, result.tokens_scored
    finally:
        if handle is not None:
            handle.remove()


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def correctness(device: torch.device) -> dict[str, Any]:
    """CPU (reference) vs ``device`` in fp32 on one tiny random Llama."""
    from acttail.esd import analyze_weights

    shapes = dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here: TF32 alone would cost ~1e-3
    cpu_model = llama(shapes, 2, torch.device("cpu"), torch.float32, seed=1)
    dut_model = copy.deepcopy(cpu_model).to(device)
    alpha_cpu = analyze_weights(projection_weights(cpu_model), "ks", device="cpu", progress=False).alphas()
    alpha_dut = analyze_weights(projection_weights(dut_model), "ks", device=device, progress=False).alphas()
    alpha_err = {name: relative(alpha_dut[name], alpha_cpu[name]) for name in alpha_cpu}
    ids = torch.randint(0, shapes["vocab_size"], (4 * 128,), generator=torch.Generator().manual_seed(0))
    ppl = {}
    for label, sparsity in (("dense", None), (f"uniform@{SPARSITY:g}", SPARSITY)):
        ref, _, _ = window_ppl(cpu_model, ids, 128, sparsity)
        got, _, _ = window_ppl(dut_model, ids.to(device), 128, sparsity)
        ppl[label] = {"cpu": ref, "device": got, "relative_error": relative(got, ref)}
    worst_alpha = max(alpha_err.values())
    passed = worst_alpha <= ALPHA_RTOL and all(p["relative_error"] <= PPL_RTOL for p in ppl.values())
    return {
        "section": "correctness",
        "passed": passed,
        "alpha": {
            "projections": len(alpha_err),
            "max_relative_error": worst_alpha,
            "tolerance": ALPHA_RTOL,
            "worst": max(alpha_err, key=alpha_err.__getitem__),
        },
        "topk_ppl": {"windows": 4, "seqlen": 128, "tolerance": PPL_RTOL, **ppl},
    }


def esd_speed(model: Any, device: torch.device, budget_s: float) -> dict[str, Any]:
    """ESD of every projection on ``device``; past ``budget_s`` the rest is extrapolated (said so)."""
    from acttail.esd import analyze_weights
    from acttail.models.architectures import find_projections

    total = len(find_projections(model))
    began = time.perf_counter()

    def budgeted() -> Iterator[tuple[Any, torch.Tensor]]:
        for item in projection_weights(model):
            if time.perf_counter() - began > budget_s:
                return
            yield item

    reset_peak(device)
    report = analyze_weights(budgeted(), "ks", device=device, progress=False)
    sync(device)
    elapsed = time.perf_counter() - began
    done = len(report.projections)
    alphas = list(report.alphas().values())
    return {
        "projections_total": total,
        "projections_analysed": done,
        "seconds": elapsed,
        "projections_per_s": done / elapsed,
        "all_projections_s": elapsed * total / done if done < total else elapsed,
        "extrapolated": done < total,
        "mean_alpha": sum(alphas) / len(alphas),
        "peak_memory_mib": peak_memory_mib(device),
    }


def ppl_throughput(model: Any, device: torch.device, windows: int, seqlen: int) -> dict[str, Any]:
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (windows * seqlen,), generator=torch.Generator().manual_seed(0)).to(device)
    window_ppl(model, ids[: 2 * seqlen], seqlen, None)  # warm-up: kernels, allocator
    out: dict[str, Any] = {"windows": windows, "seqlen": seqlen}
    for label, sparsity in (("dense", None), (f"uniform@{SPARSITY:g}", SPARSITY)):
        reset_peak(device)
        ppl, seconds, tokens = window_ppl(model, ids, seqlen, sparsity)
        out[label] = {
            "ppl": ppl,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "peak_memory_mib": peak_memory_mib(device),
        }
    out["sparse_over_dense_throughput"] = out[f"uniform@{SPARSITY:g}"]["tokens_per_s"] / out["dense"]["tokens_per_s"]
    return out


def gemv_fraction(shapes: dict[str, int], device: torch.device, dtype: torch.dtype, samples: int) -> dict[str, Any]:
    """The sparse kernel's fraction of the ideal speed-up 1/(1-s) at 50% on the model's projection shapes."""
    from gemv_speed import bench_shape

    from acttail.kernels import backend_name

    hidden, inter = shapes["hidden_size"], shapes["intermediate_size"]
    flush = 128 * 2**20 if device.type == "cuda" else 64 * 2**20
    rows = {}
    for name, (d_out, d_in) in {
        "q/k/v/o": (hidden, hidden),
        "gate/up": (inter, hidden),
        "down": (hidden, inter),
    }.items():
        row = next(r for r in bench_shape(d_out, d_in, device, dtype, flush, samples) if r["sparsity"] == SPARSITY)
        rows[f"{name} {d_out}x{d_in}"] = {
            key: row[key] for key in ("dense_us", "gemv_us", "topk_us", "ideal", "gemv_fraction", "topk_fraction")
        }
    return {"backend": backend_name(device, dtype), "sparsity": SPARSITY, "samples": samples, "shapes": rows}


def decode(model: Any, new_tokens: int, repeats: int) -> dict[str, Any]:
    from acttail.evaluate.speed import measure_decode_speed
    from tests.tiny_models import byte_tokenizer  # offline byte-level BPE: any prompt encodes

    result = measure_decode_speed(
        model, byte_tokenizer(), SPARSITY, new_tokens=new_tokens, warmup_tokens=4, repeats=repeats
    )
    keep = ("backend", "dense_tokens_per_s", "sparse_tokens_per_s", "speedup", "reference_tokens_per_s")
    return {
        **{key: getattr(result, key) for key in keep},
        "tokens_match_reference": result.tokens_match_reference,
        "matching_prefix": result.matching_prefix,
        "new_tokens": new_tokens,
        "repeats": repeats,
    }


def speed(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    shapes = SHAPES_DRY if args.dry_run else SHAPES_7B
    dtype = torch.bfloat16
    out: dict[str, Any] = {"section": "speed", "dtype": "bfloat16", "layers": args.layers, "shapes": shapes}
    began = time.perf_counter()
    model = llama(shapes, args.layers, device, dtype)
    sync(device)
    out["build_s"] = time.perf_counter() - began
    out["parameters"] = sum(p.numel() for p in model.parameters())
    log(f"random Llama: {out['parameters'] / 1e9:.2f} B parameters in {out['build_s']:.0f} s")
    out["esd"] = esd_speed(model, device, args.esd_budget_s)
    log(f"ESD: {out['esd']['projections_analysed']} projections in {out['esd']['seconds']:.0f} s")
    out["perplexity"] = ppl_throughput(model, device, args.ppl_windows, args.seqlen)
    log(f"TopK perplexity: sparse/dense throughput {out['perplexity']['sparse_over_dense_throughput']:.2f}")
    out["gemv"] = gemv_fraction(shapes, device, dtype, args.gemv_samples)
    log("GEMV done")
    out["decode"] = decode(model, args.new_tokens, args.repeats)
    log(f"decode speed-up {out['decode']['speedup']:.2f}x")
    out["passed"] = True
    return out


def _loads(values: Any) -> str:
    return ", ".join(f"{x:.2f}" for x in values)


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    head = [
        f"# GPU check: {doc['section']}{' (DRY RUN on the CPU: tiny shapes, numbers mean nothing)' if doc['dry_run'] else ''}",
        "",
        f"Command: `{doc['command']}`",
        "",
        f"Device under test: {doc['device']} ({m.get('gpu', m['cpu_model'])}); torch {m['torch']}; "
        f"load average at start {_loads(m['load_average_at_start'])}, at end {_loads(doc['load_average_at_end'])}; "
        f"{m['date_utc']}.",
        "",
    ]
    if doc["section"] == "correctness":
        a, p = doc["alpha"], doc["topk_ppl"]
        return "\n".join(
            [
                *head,
                f"Passed: **{doc['passed']}**",
                "",
                f"- alphas of {a['projections']} projections: max relative error {a['max_relative_error']:.2e} "
                f"(tolerance {a['tolerance']:g}; worst {a['worst']})",
                *(
                    f"- TopK PPL {label}: CPU {v['cpu']:.6f}, device {v['device']:.6f}, "
                    f"relative error {v['relative_error']:.2e} (tolerance {p['tolerance']:g})"
                    for label, v in p.items()
                    if isinstance(v, dict)
                ),
                "",
            ]
        )
    e, p, g, d = doc["esd"], doc["perplexity"], doc["gemv"], doc["decode"]
    sparse = p[f"uniform@{SPARSITY:g}"]
    lines = [
        *head,
        f"Random Llama, {doc['layers']} blocks, shapes {doc['shapes']}, {doc['parameters'] / 1000000000.0:.2f} B parameters, "
        f"bf16 (built in {doc['build_s']:.0f} s).",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| ESD of all {e['projections_total']} projections on the device | {e['all_projections_s']:.1f} s "
        f"({e['projections_per_s']:.2f} projections/s{'; extrapolated from ' + str(e['projections_analysed']) if e['extrapolated'] else ''}) |",
        f"| TopK perplexity throughput, dense | {p['dense']['tokens_per_s']:.0f} tokens/s ({p['windows']} x {p['seqlen']}) |",
        f"| TopK perplexity throughput, uniform {SPARSITY:.0%} | {sparse['tokens_per_s']:.0f} tokens/s "
        f"({p['sparse_over_dense_throughput']:.2f}x dense) |",
        *(
            f"| sparse GEMV ({g['backend']}) {name} at {SPARSITY:.0%}: fraction of ideal {r['ideal']:.2f}x | "
            f"gemv {r['gemv_fraction']:.2f}, topk+gemv {r['topk_fraction']:.2f} (dense {r['dense_us']:.0f} us) |"
            for name, r in g["shapes"].items()
        ),
        f"| decode ({d['backend']}), dense | {d['dense_tokens_per_s']:.1f} tokens/s |",
        f"| decode, uniform {SPARSITY:.0%} | {d['sparse_tokens_per_s']:.1f} tokens/s ({d['speedup']:.2f}x; "
        f"tokens = reference hooks: {d['tokens_match_reference']}) |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=("correctness", "speed"))
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: proves the script, not the GPU")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--layers", type=int, default=None, help="blocks of the random model (7B: 32; dry run: 2)")
    parser.add_argument("--esd-budget-s", type=float, default=150.0)
    parser.add_argument("--ppl-windows", type=int, default=None)
    parser.add_argument("--seqlen", type=int, default=None)
    parser.add_argument("--gemv-samples", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    defaults = (2, 2, 64, 5, 12, 1) if args.dry_run else (32, 8, 2048, 40, 64, 3)
    for name, value in zip(("layers", "ppl_windows", "seqlen", "gemv_samples", "new_tokens", "repeats"), defaults):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.dry_run:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device here (torch.cuda.is_available() is False); --dry-run checks the script on the CPU"
        )
        sys.exit(2)
    else:
        device = torch.device("cuda:0")
    machine = describe_machine()
    doc = correctness(device) if args.section == "correctness" else speed(device, args)
    doc.update(
        dry_run=args.dry_run,
        device=str(device),
        machine=machine,
        command="python " + " ".join(["benchmarks/gpu_check.py", *sys.argv[1:]]),
        load_average_at_end=load_average(),
    )
    base = args.out / f"gpu_check{'_dryrun' if args.dry_run else ''}_{args.section}"
    args.out.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    base.with_suffix(".md").write_text(render(doc))
    log(f"wrote {base}.md")
    if not doc["passed"] or any(isinstance(v, float) and math.isnan(v) for v in doc.values()):
        print(f"gpu_check {args.section}: FAILED (see {base}.md)")
        sys.exit(1)
    print(f"gpu_check {args.section}: passed")


if __name__ == "__main__":
    main()
