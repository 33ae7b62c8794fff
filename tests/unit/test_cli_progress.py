"""Progress off a terminal is plain, throttled lines; ``acttail run`` piped into a log shows its
stages, the alphas, the allocations side by side, the table and how to open the dashboard."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from acttail.cli import main
from acttail.cli.progress import LineProgress, progress_reporter
from tests.tiny_models import save_tiny_model


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plain_console() -> Console:
    return Console(file=io.StringIO(), width=200, force_terminal=False)


def lines(console: Console) -> list[str]:
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue().splitlines()


def test_lines_on_new_stage_every_5_percent_or_10_seconds() -> None:
    console, clock = plain_console(), FakeClock()
    progress = LineProgress(console, clock=clock)
    progress("alphas", 0.0)  # new stage: shown
    progress("alphas", 0.02)  # 2 points, no time passed: not shown
    clock.now += 20.0
    progress("alphas", 0.10)  # 10 points: shown, ETA = 20 s * 0.9 / 0.1
    progress("calibrating: greedy search, block 1/30", 0.11)  # new stage head: shown
    progress("calibrating: greedy search, block 2/30", 0.12)  # same head, 1 point: not shown
    clock.now += 11.0
    progress("calibrating: greedy search, block 3/30", 0.13)  # 11 s later and moved: shown
    clock.now += 30.0
    progress("calibrating: greedy search, block 3/30", 0.13)  # no movement: not shown
    assert lines(console) == [
        "[  0%] alphas (elapsed 0s)",
        "[ 10%] alphas (elapsed 20s, ETA 3m00s)",
        "[ 11%] calibrating: greedy search, block 1/30 (elapsed 20s, ETA 2m42s)",
        "[ 13%] calibrating: greedy search, block 3/30 (elapsed 31s, ETA 3m27s)",
    ]


def test_reporter_is_lines_off_a_terminal_a_bar_on_one_and_nothing_when_quiet() -> None:
    with progress_reporter(plain_console()) as report:
        assert isinstance(report, LineProgress)
    with progress_reporter(plain_console(), quiet=True) as report:
        assert report is None
    terminal = Console(file=io.StringIO(), force_terminal=True)
    with progress_reporter(terminal) as report:
        assert report is not None and not isinstance(report, LineProgress)
        report("perplexity", 0.5)


def test_run_piped_into_a_log_shows_progress_alphas_allocations_and_the_dashboard(
    tmp_path: Path, acttail_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_tiny_model(tmp_path / "tiny", num_hidden_layers=1)
    db = tmp_path / "results.db"
    argv = ["run", str(model), "-s", "0.5", "--method", "uniform,acttail", "--max-tokens", "256", "--seqlen", "64",
            "--db", str(db)]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr().out
    assert exc.value.code == 0, out
    progress = [line for line in out.splitlines() if re.match(r"\[\s*\d+%\] ", line)]
    stages = " ".join(progress)
    for stage in ("esd", "loading model", "dense: perplexity", "uniform@0.5: perplexity", "acttail@0.5: perplexity"):
        assert stage in stages, out
    assert any("ETA" in line for line in progress), out
    assert "alpha (ks) per projection kind, 7 projections" in out
    assert "allocations at 50%: mean sparsity per projection kind" in out
    assert "vs uniform" in out
    assert f"acttail serve --db {db}" in out and "/ui" in out and str(acttail_home / "api_key") in out
