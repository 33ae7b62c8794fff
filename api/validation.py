"""Model ID checks at the API boundary: hub IDs, bundled aliases, local paths inside model roots.

The worker's ``acttail.models.resolve_model(..., model_roots=...)`` checks containment again;
refusing here means a bad ID is a 422 at submission, not a failed job later.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from acttail.errors import ActTailError
from acttail.store.requests import BUNDLED_ALIASES

# Same rule as acttail.models.HUB_ID_PATTERN (kept in step by a test; importing it pulls torch).
HUB_ID_PATTERN = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class InvalidModelIdError(ActTailError):
    """The model ID is neither an alias, a hub ID, nor a path inside the configured model roots."""


def is_hub_repo_id(model_id: str) -> bool:
    return (
        "/" in model_id
        and bool(HUB_ID_PATTERN.match(model_id))
        and ".." not in model_id
        and not model_id.endswith(".gguf")
    )


def check_model_id(model_id: str, model_roots: Sequence[Path]) -> str:
    """Return ``model_id`` if acceptable, else raise InvalidModelIdError with the rules in the message."""
    if model_id.lower() in BUNDLED_ALIASES:
        return model_id.lower()
    if is_hub_repo_id(model_id):
        return model_id
    path = Path(model_id)
    if ".." in path.parts:
        raise InvalidModelIdError(f"model path {model_id!r} must not contain '..'")
    if not model_roots:
        raise InvalidModelIdError(
            f"{model_id!r} is not a hub ID ('org/name') or a bundled alias ({', '.join(sorted(BUNDLED_ALIASES))}), "
            "and local model paths are disabled on this server (ACTTAIL_MODEL_ROOTS is empty)"
        )
    roots = [Path(root).resolve() for root in model_roots]
    candidates = [path] if path.is_absolute() else [root / path for root in roots]
    for candidate in candidates:
        resolved = candidate.resolve()  # follows symlinks: a link pointing out of the roots is refused
        if any(resolved == root or resolved.is_relative_to(root) for root in roots):
            return model_id
    raise InvalidModelIdError(f"model path {model_id!r} is outside the configured model roots")
