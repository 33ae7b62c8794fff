"""Progress of long CLI steps: a live bar on a terminal, plain lines everywhere else.

A rich bar draws nothing when the output is not a terminal, so a CI log or ``make demo > log``
showed no sign of life for an hour. Off a terminal, ``LineProgress`` prints one line per new
stage and otherwise at most one every 5 % of the run or 10 s, each with the fraction done,
the time elapsed and a linear estimate of the time left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

ProgressCallback = Callable[[str, float], None]

STEP = 0.05  # a line at least every 5 % of the run ...
INTERVAL_S = 10.0  # ... or every 10 s, whichever comes first, while anything moves


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class LineProgress:
    """``progress(stage, fraction)`` as throttled plain lines: ``[ 42%] stage (elapsed 1m05s, ETA 1m30s)``.

    ``fraction`` is of the whole run. A new stage is always shown; its head (the text before the
    first comma, e.g. ``greedy search`` of ``greedy search, block 3/30``) decides what is new, so a
    per-block counter does not print a line per block.
    """

    def __init__(
        self,
        console: Console,
        *,
        step: float = STEP,
        interval_s: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console, self.step, self.interval_s, self.clock = console, step, interval_s, clock
        self.started = clock()
        self.last_head: str | None = None
        self.last_fraction = -1.0
        self.last_time = -float("inf")

    def __call__(self, stage: str, fraction: float) -> None:
        now = self.clock()
        fraction = min(max(fraction, 0.0), 1.0)
        head = stage.split(",")[0]
        due = (
            head != self.last_head
            or fraction - self.last_fraction >= self.step
            or (now - self.last_time >= self.interval_s and fraction > self.last_fraction)
        )
        if not due:
            return
        self.last_head, self.last_fraction, self.last_time = head, fraction, now
        elapsed = now - self.started
        eta = f", ETA {_duration(elapsed * (1 - fraction) / fraction)}" if 0.01 <= fraction < 1 else ""
        self.console.print(
            f"[{fraction:4.0%}] {stage} (elapsed {_duration(elapsed)}{eta})", highlight=False, soft_wrap=True
        )


@contextmanager
def progress_reporter(console: Console, *, quiet: bool = False) -> Iterator[ProgressCallback | None]:
    """A ``progress(stage, fraction)`` callback for one long command: None when ``quiet``, a live
    bar on a terminal (transient: it leaves the screen to the results), ``LineProgress`` elsewhere."""
    if quiet:
        yield None
        return
    if not console.is_terminal:
        yield LineProgress(console)
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting", total=1.0)

        def report(stage: str, fraction: float) -> None:
            bar.update(task, completed=fraction, description=stage)

        yield report
