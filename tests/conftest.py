"""Shared fixtures: the tiny random models of ``tests.tiny_models`` and an isolated ACTTAIL_HOME."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.tiny_models import build_tiny_model

# Tests never reach the hub; the offline path is itself under test.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_model() -> Callable[..., torch.nn.Module]:
    return build_tiny_model


@pytest.fixture
def acttail_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Isolate ACTTAIL_HOME (model cache, default SQLite) per test."""
    home = tmp_path / "acttail-home"
    monkeypatch.setenv("ACTTAIL_HOME", str(home))
    return home
