"""The ``acttail`` command line: one typer app, one module of commands per concern.

Every ActTailError becomes one line on stderr and exit code 2 (so do typer's usage errors);
stack traces are for bugs only.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

import typer
from rich.console import Console
from typer import Abort
from typer._click.exceptions import ClickException, UsageError  # typer vendors click (pyproject: typer>=0.29)

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


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit code 2: the contract for every error the user can act on."""
    err_console.print(f"error: {' '.join(message.split())}", highlight=False, soft_wrap=True)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not sys.stderr.isatty():
        # Hub downloads and transformers' weight loading draw tqdm bars; in a log they are noise
        # around our own progress lines (and would be extra lines around a one-line error).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF dequantisation bar is plain tqdm
        if "transformers" in sys.modules:  # imported already (a caller in-process): the env came too late
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
    try:
        code = app(args=argv, standalone_mode=False)
    except ActTailError as exc:
        _fail(str(exc))
    except UsageError as exc:  # typer's bad option values, missing arguments, unknown options
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `acttail`: the help is already printed
            sys.exit(exc.exit_code)
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        _fail(exc.format_message() + where)
    except ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Abort:  # Ctrl-C at a prompt
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(code) from a command, else success
