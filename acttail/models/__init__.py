"""Model IDs -> model sources.

``resolve_model`` accepts, in this order: a bundled alias (``smollm2-135m``, ``gemma3-270m``),
a local path (a ``.gguf`` file or a Hugging Face directory with safetensors), or a hub ID
(``org/name``, optional revision). When ``model_roots`` is given (the service always gives it),
local paths must resolve inside one of those directories: no ``..`` escapes, no symlinks out.

Importing this package does not import torch (the torch-bound classes of ``acttail.models.base``
load on first attribute access); the ID rules themselves live in ``acttail.registry``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acttail.errors import ModelNotFoundError
from acttail.models.architectures import ProjectionRef, ProjectionType, find_projections
from acttail.models.bundled import BUNDLED
from acttail.registry import MAX_MODEL_ID_LENGTH, inside_roots, is_hub_id, root_candidates

if TYPE_CHECKING:
    from acttail.models.base import ModelDescription, ModelSource, ProjectionInfo

__all__ = [
    "BUNDLED",
    "ModelDescription",
    "ModelSource",
    "ProjectionInfo",
    "ProjectionRef",
    "ProjectionType",
    "find_projections",
    "is_hub_id",
    "resolve_local_path",
    "resolve_model",
]

_BASE_NAMES = ("ModelDescription", "ModelSource", "ProjectionInfo")


def __getattr__(name: str) -> Any:
    if name in _BASE_NAMES:
        from acttail.models import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_local_path(model_id: str, model_roots: Sequence[Path] | None) -> Path | None:
    """The local path a model ID names, or None if it names none.

    With ``model_roots``, relative IDs are looked up under each root and any path that resolves
    outside every root is refused (ModelNotFoundError; the API maps it to 422 before this).
    """
    if model_roots is None:
        path = Path(model_id).expanduser()
        return path.resolve() if path.exists() else None
    for option in root_candidates(model_id, model_roots):
        if not inside_roots(option, model_roots):
            raise ModelNotFoundError(f"model path {model_id!r} is outside the configured model roots")
        if option.exists():
            return option.resolve()
    return None


def resolve_model(
    model_id: str, revision: str | None = None, *, model_roots: Sequence[Path] | None = None
) -> ModelSource:
    """Turn a user-supplied model ID into a ModelSource (see module docstring for the rules)."""
    model_id = model_id.strip()
    if not model_id or len(model_id) > MAX_MODEL_ID_LENGTH or "\x00" in model_id:
        raise ModelNotFoundError("model ID must be a non-empty string of at most 512 characters")
    alias = model_id.lower()
    if alias in BUNDLED:
        from acttail.models.bundled import resolve_bundled

        return resolve_bundled(alias)
    path = resolve_local_path(model_id, model_roots)
    if path is not None:
        return _local_source(path, model_id)
    if is_hub_id(model_id):
        from acttail.models.hub_source import resolve_hub_model

        return resolve_hub_model(model_id, revision)
    raise ModelNotFoundError(
        f"unknown model {model_id!r}: not a bundled alias ({', '.join(BUNDLED)}), "
        "an existing local path, or a hub ID like 'org/name'"
    )


def _local_source(path: Path, model_id: str) -> ModelSource:
    from acttail.models.gguf_source import GGUFSource
    from acttail.models.safetensors_source import SafetensorsDirSource

    if path.is_file() and path.suffix == ".gguf":
        return GGUFSource(path, model_id=model_id)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            return GGUFSource(ggufs[0], model_id=model_id)
        return SafetensorsDirSource(path, model_id=model_id)
    raise ModelNotFoundError(f"{model_id!r} is a file but not a .gguf; give a .gguf file or a model directory")
