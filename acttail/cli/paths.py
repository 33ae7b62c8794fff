"""Output paths checked while the options are parsed, before any model is loaded.

A run can take an hour; a typo in ``-o`` or ``--json`` must fail in the first second, not with a
traceback when the result is written. These are typer callbacks: the error names the option.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer


def _writable_dir(directory: Path, what: str) -> None:
    if not directory.is_dir():
        raise typer.BadParameter(f"{what}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"{what}: directory {directory} is not writable")


def output_file(value: Path | None) -> Path | None:
    """A file to write: not a directory, in an existing writable directory (nothing is created)."""
    if value is None:
        return None
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a directory; give a file path")
    _writable_dir(value.parent, str(value))
    return value


def output_dir(value: Path | None) -> Path | None:
    """A folder to fill (created with its parents): not an existing file; its nearest existing
    ancestor must be a writable directory."""
    if value is None:
        return None
    if value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file; give a folder for the figures")
    ancestor = value
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    _writable_dir(ancestor, str(value))
    return value
