"""The ``acttail`` command line: one typer app, one module of commands per concern.

Every ActTailError becomes one line on stderr and exit code 2 (so do typer's usage errors);
stack traces are for bugs only.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from acttail.errors import ActTailError

app = typer.Typer(
    name="acttail",
    help="Heavy-tail guided activation sparsity: alphas, allocations, sparse evaluation, service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def _register_commands() -> None:
    # Imported here, not at module top, so each module can import `app` without a cycle.
    from acttail.cli import esd_commands, eval_commands, service_commands, study_commands

    for module in (esd_commands, eval_commands, service_commands, study_commands):
        module.register(app)


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(args=argv, standalone_mode=True)
    except ActTailError as exc:
        err_console.print(f"error: {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
