"""Model ID checks at the API boundary: hub IDs, bundled aliases, local paths inside model roots.

The worker's ``acttail.models.resolve_model(..., model_roots=...)`` checks containment again;
refusing here means a bad ID is a 422 at submission, not a failed job later.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from acttail.errors import ActTailError
from acttail.registry import bundled_aliases, inside_roots, is_hub_id, root_candidates


class InvalidModelIdError(ActTailError):
    """The model ID is neither an alias, a hub ID, nor a path inside the configured model roots."""


def check_model_id(model_id: str, model_roots: Sequence[Path]) -> str:
    """Return ``model_id`` if acceptable, else raise InvalidModelIdError with the rules in the message."""
    aliases = bundled_aliases()
    if model_id.lower() in aliases:
        return model_id.lower()
    if is_hub_id(model_id):
        return model_id
    path = Path(model_id)
    if ".." in path.parts:
        raise InvalidModelIdError(f"model path {model_id!r} must not contain '..'")
    if not model_roots:
        raise InvalidModelIdError(
            f"{model_id!r} is not a hub ID ('org/name') or a bundled alias ({', '.join(sorted(aliases))}), "
            "and local model paths are disabled on this server (ACTTAIL_MODEL_ROOTS is empty)"
        )
    if any(inside_roots(candidate, model_roots) for candidate in root_candidates(model_id, model_roots)):
        return model_id  # resolved with symlinks followed: a link pointing out of the roots is refused
    raise InvalidModelIdError(f"model path {model_id!r} is outside the configured model roots")
