"""Hugging Face hub IDs (``org/name`` with optional revision), for users who are online.

The commit sha is the fingerprint. Only safetensors, configs and tokenizer files are fetched;
the snapshot is then read like any local directory. Offline, this fails with one clear line;
with ``HF_HUB_OFFLINE=1`` a snapshot already in the hub cache is used without any request.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from acttail.errors import ModelNotFoundError
from acttail.models.bundled import BUNDLED
from acttail.models.safetensors_source import SafetensorsDirSource

ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer.model", "*.txt", "*.tiktoken"]


def _transport_errors() -> tuple[type[Exception], ...]:
    """Connection failures of the HTTP client huggingface_hub uses (httpx2 from 2.x, httpx before;
    requests' errors are OSErrors already). They are not OSErrors, so they need naming."""
    found: list[type[Exception]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _unreachable(repo_id: str, why: str, *, offline: bool) -> ModelNotFoundError:
    cache_hint = "" if offline else ", or set HF_HUB_OFFLINE=1 to use a snapshot already in the hub cache"
    return ModelNotFoundError(
        f"{repo_id!r} is neither an existing local path nor a reachable hub ID ({why}); "
        f"give a local directory, a .gguf file or a bundled alias ({', '.join(BUNDLED)}){cache_hint}"
    )


def resolve_hub_model(repo_id: str, revision: str | None = None) -> SafetensorsDirSource:
    """Download (or reuse the cached) snapshot of ``repo_id`` and wrap it as a local source."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    network: tuple[type[Exception], ...] = (OfflineModeIsEnabled, HfHubHTTPError, OSError, *_transport_errors())
    try:
        if constants.HF_HUB_OFFLINE:  # the cache only; a snapshot folder is named by its commit sha
            directory = snapshot_download(
                repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS, local_files_only=True
            )
            sha = Path(directory).name
        else:
            # The hub's own metadata timeout (HF_HUB_ETAG_TIMEOUT, 10 s): without one a network that
            # drops packets instead of refusing them would hang here.
            info = HfApi().model_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
            sha = str(info.sha)
            directory = snapshot_download(repo_id, revision=sha, allow_patterns=ALLOW_PATTERNS)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelNotFoundError(
            f"hub model {repo_id!r} (revision {revision or 'main'}) not found: {exc.__class__.__name__}"
        ) from None
    except LocalEntryNotFoundError:
        raise _unreachable(repo_id, "HF_HUB_OFFLINE=1 and it is not in the hub cache", offline=True) from None
    except network as exc:
        why = f"the Hugging Face hub is unreachable: {exc.__class__.__name__}"
        raise _unreachable(repo_id, why, offline=bool(constants.HF_HUB_OFFLINE)) from None
    return SafetensorsDirSource(
        Path(directory), model_id=repo_id, source="hub", revision=sha, fingerprint=f"hub:{repo_id}@{sha}"
    )
