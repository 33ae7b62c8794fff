"""Hugging Face hub IDs (``org/name`` with optional revision), for users who are online.

The commit sha is the fingerprint. Only safetensors, configs and tokenizer files are fetched;
the snapshot is then read like any local directory. Offline, this fails with one clear line.
"""

from __future__ import annotations

from pathlib import Path

from acttail.errors import ModelNotFoundError
from acttail.models.safetensors_source import SafetensorsDirSource

ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer.model", "*.txt", "*.tiktoken"]


def resolve_hub_model(repo_id: str, revision: str | None = None) -> SafetensorsDirSource:
    """Download (or reuse the cached) snapshot of ``repo_id`` and wrap it as a local source."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = HfApi().model_info(repo_id, revision=revision)
        directory = snapshot_download(repo_id, revision=info.sha, allow_patterns=ALLOW_PATTERNS)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelNotFoundError(
            f"hub model {repo_id!r} (revision {revision or 'main'}) not found: {exc.__class__.__name__}"
        ) from None
    except (OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        raise ModelNotFoundError(
            f"cannot fetch {repo_id!r} from the Hugging Face hub ({exc.__class__.__name__}: offline or unreachable); "
            "use a local directory, a .gguf file, or a bundled alias (smollm2-135m, gemma3-270m)"
        ) from None
    return SafetensorsDirSource(
        Path(directory), model_id=repo_id, source="hub", revision=info.sha, fingerprint=f"hub:{repo_id}@{info.sha}"
    )
