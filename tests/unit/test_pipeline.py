"""``run_pipeline`` / ``evaluate_allocation`` end to end on a tiny random Llama saved to disk, and the CLI."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from acttail.allocate import Allocation, allocate
from acttail.cli import main
from acttail.errors import ActTailError
from acttail.pipeline import PipelineConfig, evaluate_allocation, run_pipeline
from acttail.store.requests import PerplexitySpec, ZeroShotSpec
from tests.tiny_models import save_tiny_model

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), max_position_embeddings=512)


QUICK: dict[str, Any] = dict(perplexity=PerplexitySpec(seqlen=128, max_tokens=512))

# ACTTAIL_HOME in a temporary directory: the CLI's default results database must never be ~/.acttail.
pytestmark = pytest.mark.usefixtures("acttail_home")


def test_run_pipeline_end_to_end(model_dir: Path) -> None:
    stages: list[tuple[str, float]] = []
    config = PipelineConfig(targets=(0.5, 0.8), calibration_tokens=512, calibration_seqlen=128, **QUICK)
    result = run_pipeline(str(model_dir), config, progress=lambda s, f: stages.append((s, f)))
    labels = [v.label for v in result.variants]
    assert labels == ["dense", "uniform@0.5", "acttail@0.5", "auto@0.5", "uniform@0.8", "acttail@0.8", "auto@0.8"]
    dense = result.variant("dense")
    assert dense.perplexity.windows == 4 and dense.perplexity.tokens_scored == 4 * 127
    for v in result.variants[1:]:
        assert v.allocation is not None and v.allocation.weighted_mean == pytest.approx(v.target)
        assert v.realised_sparsity == pytest.approx(v.target, abs=0.02)  # TopK is exact up to rounding of k
        assert v.ppl != dense.ppl
    uniform, acttail = result.variant("uniform", 0.8), result.variant("acttail", 0.8)
    assert uniform.ppl_gain_vs_uniform_pct is None or uniform.ppl_gain_vs_uniform_pct == 0.0
    assert acttail.ppl_gain_vs_uniform_pct == pytest.approx(100 * (uniform.ppl - acttail.ppl) / uniform.ppl)
    assert len(set(acttail.allocation.sparsities.values())) > 1  # alpha-guided, not uniform
    auto = result.variant("auto", 0.8).allocation.params  # chose on validation text, never on test
    assert auto["choice"]["label"] in [row["label"] for row in auto["grid"]]
    assert auto["calibration"] == {**auto["calibration"], "source": "wikitext-2-raw-v1 validation", "tokens": 512,
                                   "seqlen": 128}  # fmt: skip
    assert sum(s == "calibrating: greedy search, block 1/2" for s, _ in stages) == 1  # one trace, both targets
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    doc = json.loads(json.dumps(result.to_dict()))
    assert doc["model"]["fingerprint"] == result.model["fingerprint"] != ""
    assert set(doc["versions"]) >= {"torch", "transformers", "acttail"}
    assert doc["protocol"]["perplexity"] == {**doc["protocol"]["perplexity"], "seqlen": 128, "max_tokens": 512}
    assert doc["protocol"]["method_calibration"] == {"dataset": "wikitext-2-raw-v1", "split": "validation",
                                                     "tokens": 512, "seqlen": 128, "methods": ["auto"]}  # fmt: skip
    assert len(doc["alphas"]) == 14


def test_pipeline_with_zero_shot_and_injected_model(model_dir: Path) -> None:
    pytest.importorskip("acttail.evaluate.zeroshot")
    from acttail.models import resolve_model

    loaded = resolve_model(str(model_dir)).load_causal_lm()
    zeroshot = ZeroShotSpec(tasks=["arc_easy", "piqa"], limit=4)
    config = PipelineConfig(targets=(0.5,), methods=("uniform",), zeroshot=zeroshot, **QUICK)
    result = run_pipeline(str(model_dir), config, loaded=loaded)
    for v in result.variants:
        assert 0.0 <= v.mean_accuracy <= 1.0
        assert set(v.zeroshot["tasks"]) == {"arc_easy", "piqa"}
    # The injected model is restored after every variant.
    from acttail.models.architectures import find_projections

    assert all(not lin._forward_pre_hooks for _, lin in find_projections(loaded[0]))


def test_evaluate_allocation_checks_the_model(model_dir: Path, tmp_path: Path) -> None:
    from acttail.models import resolve_model

    source = resolve_model(str(model_dir))
    counts = {p.name: p.param_count for p in source.projections()}
    fingerprint = source.describe().fingerprint
    alloc = allocate({}, counts, 0.6, method="uniform", fingerprint=fingerprint, model_id=str(model_dir))
    result = evaluate_allocation(str(model_dir), alloc, PipelineConfig(**QUICK))
    assert [v.label for v in result.variants] == ["dense", "uniform@0.6"]
    assert result.variants[1].realised_sparsity == pytest.approx(0.6, abs=0.02)
    wrong = allocate({}, counts, 0.6, method="uniform", fingerprint="0" * 64)
    with pytest.raises(ActTailError, match="fingerprint"):
        evaluate_allocation(str(model_dir), wrong, PipelineConfig(**QUICK))


def test_threshold_mode_pipeline(model_dir: Path) -> None:
    config = PipelineConfig(
        targets=(0.5,), methods=("uniform",), mode="threshold", calibration_tokens=1024, include_dense=False, **QUICK
    )
    (variant,) = run_pipeline(str(model_dir), config).variants
    assert variant.realised_sparsity == pytest.approx(0.5, abs=0.05)
    # With zero-shot too, the realised sparsity stored beside the perplexity is still the test text's.
    with_zeroshot = replace(config, zeroshot=ZeroShotSpec(tasks=["arc_easy"], limit=4))
    (scored,) = run_pipeline(str(model_dir), with_zeroshot).variants
    assert scored.mean_accuracy is not None and scored.ppl == pytest.approx(variant.ppl)
    assert scored.realised_sparsity == pytest.approx(variant.realised_sparsity)


def test_a_shared_thresholds_cache_calibrates_each_allocation_once(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    import acttail.sparsity
    from acttail.models import resolve_model
    from acttail.pipeline import ThresholdsCache, evaluate_variants

    source = resolve_model(str(model_dir))
    loaded = source.load_causal_lm()
    alloc = allocate({}, {p.name: p.param_count for p in source.projections()}, 0.5, method="uniform")
    config = PipelineConfig(targets=(), methods=(), mode="threshold", calibration_tokens=256, **QUICK)
    calibrate, calls = acttail.sparsity.calibrate_thresholds, []
    monkeypatch.setattr(
        acttail.sparsity, "calibrate_thresholds", lambda *a, **kw: calls.append(kw) or calibrate(*a, **kw)
    )

    (fresh,) = evaluate_variants(loaded, [(None, alloc)], config)
    cache: ThresholdsCache = {}
    first, again = (evaluate_variants(loaded, [(None, alloc)], config, thresholds_cache=cache)[0] for _ in range(2))
    assert len(calls) == 2 and len(cache) == 1  # the second call with the cache did not calibrate
    assert again.ppl == first.ppl == fresh.ppl  # a hit equals a recalibration
    evaluate_variants(loaded, [(None, alloc)], replace(config, scoring="wina"), thresholds_cache=cache)
    assert len(calls) == 3 and len(cache) == 2  # another scoring rule is another calibration


def run_cli(args: list[str]) -> None:
    """``acttail ...`` in-process; typer's standalone mode ends with SystemExit(0) on success."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0


def test_cli_run_and_evaluate(
    model_dir: Path, tmp_path: Path, acttail_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.json"
    run_cli(
        [
            "run",
            str(model_dir),
            "--sparsity",
            "0.7",
            "--seqlen",
            "128",
            "--max-tokens",
            "256",
            "--quiet",
            "--calibration-tokens",
            "512",
            "--json",
            str(out),
            "--no-store",
        ]
    )
    printed = capsys.readouterr().out
    assert "acttail" in printed and "uniform" in printed and "auto" in printed and "70%" in printed
    doc = json.loads(out.read_text())
    assert [v["label"] for v in doc["variants"]] == ["dense", "uniform@0.7", "acttail@0.7", "auto@0.7"]
    alloc_path = tmp_path / "alloc.json"
    Allocation.from_dict(doc["variants"][2]["allocation"]).save(alloc_path)
    run_cli(
        [
            "evaluate",
            str(model_dir),
            "--allocation",
            str(alloc_path),
            "--seqlen",
            "128",
            "--max-tokens",
            "256",
            "--quiet",
            "--no-dense",
            "--json",
            str(tmp_path / "eval.json"),
            "--no-store",
        ]
    )
    evaluated = json.loads((tmp_path / "eval.json").read_text())["variants"]
    assert [v["label"] for v in evaluated] == ["acttail@0.7"]
    assert evaluated[0]["ppl"] == pytest.approx(doc["variants"][2]["ppl"], rel=1e-6)
    assert "recorded in" not in capsys.readouterr().out
    assert not acttail_home.exists()  # --no-store: no database, no key file


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sparsity", "1.5"], "--sparsity must be in [0, 0.99], got 1.5"),
        (["--sparsity", "abc"], "not a number"),
        (["--tasks", "arc_easy,nosuchtask"], "unknown task 'nosuchtask'"),
        (["--method", "magic"], "unknown allocation method 'magic'"),
        (["--mode", "fuzzy"], "unknown mode 'fuzzy'"),
        (["--estimator", "guess"], "unknown estimator 'guess'"),
        (["--epsilon", "1.5"], "epsilon"),
        (["--direction", "sideways"], "sideways"),
        (["--seqlen", "128", "--max-tokens", "64"], "max_tokens (64) must be at least seqlen (128)"),
        (
            ["--calibration-seqlen", "128", "--calibration-tokens", "64"],
            "calibration_tokens (64) must be at least calibration_seqlen (128) for auto",
        ),
        (["--method", "uniform", "--min-gain", "0.1"], "min_gain does not apply to method(s) uniform"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--dtype", "int8"], "unknown dtype 'int8'"),
        (["--max-memory", "0=20GiB"], "max_memory needs a device map"),
        (["--device-map", "auto", "--max-memory", "cpu"], "--max-memory: 'cpu' is not DEVICE=SIZE"),
    ],
)
def test_bad_cli_arguments_exit_2_with_one_line(
    model_dir: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", str(model_dir), "--quiet", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_evaluate_missing_allocation_file_exits_2(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(model_dir), "--allocation", "/nonexistent/alloc.json", "--quiet"])
    assert exc.value.code == 2
    assert "allocation file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "arc_easy,nosuchtask"], "unknown task 'nosuchtask'"),
        (["--mode", "fuzzy"], "unknown mode 'fuzzy'"),
        (["--seqlen", "128", "--max-tokens", "64"], "max_tokens"),
    ],
)
def test_evaluate_checks_shared_options_like_run(
    model_dir: Path, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from acttail.models import resolve_model

    infos = resolve_model(str(model_dir)).projections()
    alloc_path = tmp_path / "alloc.json"
    allocate({i.name: 3.0 for i in infos}, {i.name: i.param_count for i in infos}, 0.5, method="uniform").save(
        alloc_path
    )
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(model_dir), "--allocation", str(alloc_path), "--quiet", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_evaluate_without_allocation_evaluates_the_dense_model(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "dense.json"
    run_cli(["evaluate", str(model_dir), "--seqlen", "128", "--max-tokens", "256", "--quiet", "--json", str(out),
             "--no-store"])  # fmt: skip
    doc = json.loads(out.read_text())
    assert [v["label"] for v in doc["variants"]] == ["dense"] and doc["alphas"] is None
    assert doc["variants"][0]["perplexity"]["windows"] == 2


def test_cli_and_job_defaults_are_one_config() -> None:
    """A job asking for perplexity, and `acttail run` with the same method and no other option, configure alike."""
    import inspect

    from acttail.cli.eval_commands import build_config, run
    from acttail.settings import Settings
    from acttail.store.requests import JobRequest
    from workers.runner import pipeline_config

    defaults = {name: p.default for name, p in inspect.signature(run).parameters.items()}
    cli = build_config(
        targets=(0.5,), methods=("auto",), mode=defaults["mode"], seqlen=defaults["seqlen"],
        max_tokens=defaults["max_tokens"], no_perplexity=False, tasks="", limit=None, speed=False,
        speed_tokens=defaults["speed_tokens"], speed_repeats=defaults["speed_repeats"], no_dense=False,
        calibration_tokens=defaults["calibration_tokens"], calibration_seqlen=defaults["calibration_seqlen"],
        device=defaults["device"], dtype=defaults["dtype"], device_map=None, max_memory=None,
    )  # fmt: skip
    request = JobRequest(model_id="org/m", targets=[0.5], method="auto", evaluations={"perplexity": {}})
    job = pipeline_config(request, Settings())
    assert replace(job, knobs={}) == replace(cli, knobs={})
    assert set(job.knobs) <= {"s_min", "s_max"} and not cli.knobs  # the job spells out the method's defaults
