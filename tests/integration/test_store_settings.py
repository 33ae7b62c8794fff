"""Settings from the environment (ACTTAIL_*): defaults, list parsing, URL normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest

from acttail.settings import Settings


def test_defaults_live_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ACTTAIL_DATABASE_URL", "ACTTAIL_EXECUTOR", "ACTTAIL_MODEL_ROOTS", "ACTTAIL_RESULTS_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACTTAIL_HOME", str(tmp_path))
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'acttail.db'}"
    assert settings.results_dir == tmp_path / "results" and settings.api_key_file == tmp_path / "api_key"
    assert settings.executor == "embedded" and settings.model_roots == [] and settings.is_sqlite


def test_environment_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACTTAIL_MODEL_ROOTS", f"{tmp_path}/a:{tmp_path}/b")
    monkeypatch.setenv("ACTTAIL_DATABASE_URL", "postgres://u:p@db:5432/acttail")
    monkeypatch.setenv("ACTTAIL_EXECUTOR", "celery")
    settings = Settings()
    assert settings.model_roots == [tmp_path / "a", tmp_path / "b"]
    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/acttail"
    assert not settings.is_sqlite and settings.executor == "celery"
    monkeypatch.setenv("ACTTAIL_MODEL_ROOTS", f'["{tmp_path}/c"]')
    assert Settings().model_roots == [tmp_path / "c"]


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("ACTTAIL_EXECUTOR", "threads")
    with pytest.raises(ValidationError, match="executor"):
        Settings()
    monkeypatch.delenv("ACTTAIL_EXECUTOR")
    with pytest.raises(ValidationError, match="must exceed"):
        Settings(task_soft_time_limit_s=100, task_hard_time_limit_s=50)
