"""Workers without services: Celery configuration, failure reasons, and ``run_job`` on SQLite.

``run_job`` is exercised for real (migrated SQLite database, a tiny random Llama saved as
safetensors) on the paths that end a job early: unknown model, pickle-only checkpoint,
unsupported architecture, a job cancelled mid-run (after ESD, during calibration), a job that is
not runnable; and on the default method ``auto``, which loads the model to calibrate.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from acttail.errors import ModelNotFoundError
from acttail.settings import Settings
from tests.tiny_models import save_tiny_model
from workers.celery_app import celery_config, create_celery_app, visibility_timeout_for
from workers.runner import ESD_SPAN, _parse_delay, failure_reason, run_job
from workers.tasks import backoff_delay

# Small calibration for the default method (auto): 4 windows of 64 byte tokens.
QUICK_CALIBRATION = {"calibration_tokens": 256, "calibration_seqlen": 64}


@pytest.mark.parametrize("hard", [20, 600, 22_200, 86_400])
def test_visibility_timeout_exceeds_the_hard_time_limit(hard: int) -> None:
    assert visibility_timeout_for(hard) >= hard + 5


def test_celery_config_is_safe_for_long_jobs(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, broker_url="redis://example:6379/3",
                        task_soft_time_limit_s=100, task_hard_time_limit_s=130)  # fmt: skip
    conf = celery_config(settings)
    assert conf["broker_url"] == "redis://example:6379/3"
    assert (conf["task_acks_late"], conf["task_reject_on_worker_lost"], conf["worker_prefetch_multiplier"]) == (
        True, True, 1,
    )  # fmt: skip
    assert (conf["task_soft_time_limit"], conf["task_time_limit"]) == (100, 130)
    assert conf["broker_transport_options"]["visibility_timeout"] > 130
    assert conf["result_backend"] is None and conf["task_ignore_result"] is True
    assert conf["task_routes"] == {"acttail.run_job": {"queue": "cpu"}}
    assert conf["worker_cancel_long_running_tasks_on_connection_loss"] is False
    assert conf["broker_connection_max_retries"] is None


def test_app_registers_the_task_by_name(tmp_path: Path) -> None:
    app = create_celery_app(Settings(home=tmp_path))
    app.loader.import_default_modules()
    task = app.tasks["acttail.run_job"]
    assert (task.acks_late, task.reject_on_worker_lost, task.max_retries) == (True, True, 8)


def test_backoff_is_exponential_and_capped() -> None:
    for retries in range(12):
        delays = [backoff_delay(retries) for _ in range(50)]
        assert all(0.0 <= d <= min(300.0, 2.0 * 2**retries) for d in delays)
    assert max(backoff_delay(10) for _ in range(200)) > 100  # grows beyond the first steps


def test_failure_reasons_are_readable() -> None:
    assert failure_reason(ModelNotFoundError("unknown model 'x'"), "resolve") == "unknown model 'x'"
    assert failure_reason(MemoryError(), "esd").startswith("out of memory during esd")
    assert failure_reason(RuntimeError("CUDA out of memory. Tried to allocate"), "benchmark").startswith(
        "out of memory"
    )
    assert failure_reason(SoftTimeLimitExceeded(), "esd").startswith("time limit exceeded during esd")
    assert failure_reason(KeyError("x"), "allocate") == "internal error during allocate: KeyError: 'x'"


def test_stage_delay_spec() -> None:
    assert _parse_delay("") == ("", 0.0)
    assert _parse_delay("2.5") == ("", 2.5)
    assert _parse_delay("benchmark:30") == ("benchmark", 30.0)


# --------------------------------------------------------------------------------------------
# run_job on SQLite


@pytest.fixture
def service(tmp_path: Path) -> dict[str, Any]:
    from acttail.store import migrate
    from acttail.store.db import make_engine, make_session_factory, session_scope
    from acttail.store.teams import create_team

    root = tmp_path / "models"
    root.mkdir()
    settings = Settings(home=tmp_path / "home", model_roots=[root])
    migrate.upgrade(settings.database_url)
    factory = make_session_factory(make_engine(settings.database_url))
    with session_scope(factory) as db:
        team_id = create_team("unit", db_session=db).id
    return {"settings": settings, "factory": factory, "team_id": team_id, "root": root}


def _submit(service: dict[str, Any], model_id: str, **request: Any) -> str:
    from acttail.store.db import session_scope
    from acttail.store.jobs import create_job
    from acttail.store.requests import JobRequest

    parsed = JobRequest.model_validate({"model_id": model_id, **request})
    with session_scope(service["factory"]) as db:
        job, _ = create_job(parsed.model_dump(mode="json"), team_id=service["team_id"],
                            request_hash=parsed.request_hash(), db_session=db)  # fmt: skip
        return job.id


def _job(service: dict[str, Any], job_id: str) -> Any:
    from acttail.store.db import session_scope
    from acttail.store.jobs import get_job

    with session_scope(service["factory"]) as db:
        return get_job(job_id, db_session=db)


def _run(service: dict[str, Any], job_id: str, progress: Callable[[str, float], None] | None = None) -> Any:
    run_job(job_id, session_factory=service["factory"], settings=service["settings"], progress=progress)
    return _job(service, job_id)


def test_unknown_model_fails_with_the_resolver_message(service: dict[str, Any]) -> None:
    job = _run(service, _submit(service, "no-such-model"))
    assert job.status == "failed" and job.stage == "failed"
    assert "unknown model 'no-such-model'" in job.error


def test_pickle_only_checkpoint_is_refused(service: dict[str, Any]) -> None:
    directory = service["root"] / "pickled"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
    (directory / "pytorch_model.bin").write_bytes(b"not unpickled")
    job = _run(service, _submit(service, "pickled"))
    assert job.status == "failed"
    assert "refusing to unpickle" in job.error


def test_unsupported_architecture_fails_readably(service: dict[str, Any]) -> None:
    """Projections are found from the weights: GPT-2's Conv1D blocks are not q/k/v/o/gate/up/down."""
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = service["root"] / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(
        directory, safe_serialization=True
    )
    job = _run(service, _submit(service, "gpt2"))
    assert job.status == "failed"
    assert "no decoder blocks" in job.error and "\n" not in job.error


def test_job_cancelled_mid_run_stops_between_stages(service: dict[str, Any], tiny_model: Callable[..., Any]) -> None:
    from acttail.store.db import session_scope
    from acttail.store.jobs import cancel_job

    tiny_model("llama").save_pretrained(service["root"] / "tiny", safe_serialization=True)
    job_id = _submit(service, "tiny", targets=[0.3, 0.6])
    stages: list[str] = []

    def cancel_after_esd(stage: str, fraction: float) -> None:
        stages.append(stage)
        if stage == "esd" and fraction == ESD_SPAN[1]:  # spectra done, not yet stored
            with session_scope(service["factory"]) as db:
                cancel_job(job_id, team_id=service["team_id"], db_session=db)

    job = _run(service, job_id, cancel_after_esd)
    assert job.status == "cancelled"
    assert job.esd_run_id is not None  # ESD finished before the cancel and stays reusable
    assert job.allocation_ids == []  # stopped before the allocations were stored
    assert stages[-1] == "allocate" and "benchmark" not in stages

    # A cancelled job delivered again is not run again.
    rerun = _run(service, job_id)
    assert (rerun.status, rerun.attempts) == ("cancelled", 1)


def test_second_job_reuses_the_esd_run(service: dict[str, Any], tiny_model: Callable[..., Any]) -> None:
    tiny_model("llama").save_pretrained(service["root"] / "tiny", safe_serialization=True)
    first = _run(service, _submit(service, "tiny", targets=[0.5], method="acttail"))
    second = _run(service, _submit(service, "tiny", targets=[0.7], method="uniform"))
    assert (first.status, second.status) == ("succeeded", "succeeded")
    assert first.esd_run_id == second.esd_run_id
    assert len(first.allocation_ids) == len(second.allocation_ids) == 1
    assert first.allocation_ids != second.allocation_ids


def _allocation_documents(service: dict[str, Any], ids: list[int]) -> list[dict[str, Any]]:
    from acttail.store.db import session_scope
    from acttail.store.results import get_allocation

    with session_scope(service["factory"]) as db:
        return [get_allocation(i, team_id=service["team_id"], db_session=db).document for i in ids]


@pytest.fixture
def one_thread() -> Any:
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_default_auto_job_records_its_choice_and_meets_the_budget(service: dict[str, Any]) -> None:
    """The default method calibrates on WikiText-2 validation: one model load, one greedy trace for
    both targets, a "calibrating" stage in the job row, the choice and grid scores in each document."""
    save_tiny_model(service["root"] / "tiny")
    evaluations = {"perplexity": {"seqlen": 64, "max_tokens": 128}}
    job_id = _submit(service, "tiny", targets=[0.2, 0.4], evaluations=evaluations, **QUICK_CALIBRATION)
    stages: list[str] = []
    job = _run(service, job_id, lambda stage, fraction: stages.append(stage))
    assert (job.status, job.error) == ("succeeded", None)
    assert job.request["method"] == "auto"
    assert stages.count("allocate: loading model") == 1 and not any(s == "benchmark: loading model" for s in stages)
    assert sum(s == "calibrating: greedy search, block 1/2" for s in stages) == 1  # shared by both targets
    assert any(s.startswith("calibrating: auto@0.4: candidate 6/6") for s in stages)
    docs = _allocation_documents(service, job.allocation_ids)
    assert [d["target"] for d in docs] == [0.2, 0.4]
    for doc in docs:
        assert doc["method"] == "auto"
        params = doc["params"]
        labels = [row["label"] for row in params["grid"]]
        assert labels[0] == "uniform" and labels[-1] == "teal-greedy" and len(labels) == 6
        assert params["choice"]["label"] in labels
        assert all(row["calibration_ppl"] > 1.0 for row in params["grid"])
        assert params["calibration"]["tokens"] == 256 and params["calibration"]["seqlen"] == 64
        assert params["calibration"]["source"] == "wikitext-2-raw-v1 validation"
        counts = doc["param_counts"]
        mean = sum(s * counts[n] for n, s in doc["sparsities"].items()) / sum(counts.values())
        assert abs(mean - doc["target"]) < 1e-6
    assert len(job.benchmark_ids) == 3  # perplexity: dense + 2 allocations


@pytest.mark.usefixtures("one_thread")
def test_job_cancelled_during_calibration_stops(service: dict[str, Any]) -> None:
    from acttail.store.db import session_scope
    from acttail.store.jobs import cancel_job

    save_tiny_model(service["root"] / "tiny")
    job_id = _submit(service, "tiny", targets=[0.5], method="teal-greedy", **QUICK_CALIBRATION)
    stages: list[str] = []

    def cancel_while_calibrating(stage: str, fraction: float) -> None:
        stages.append(stage)
        if stage.startswith("calibrating: greedy search"):
            with session_scope(service["factory"]) as db:
                cancel_job(job_id, team_id=service["team_id"], db_session=db)

    job = _run(service, job_id, cancel_while_calibrating)
    assert job.status == "cancelled"
    assert job.allocation_ids == []
    assert stages[-1] == "calibrating: greedy search, block 2/2"  # the report after the cancel stops it
    assert not any(s.startswith("benchmark") for s in stages)


def test_hard_time_limit_is_recorded_on_the_job(service: dict[str, Any]) -> None:
    """Celery calls on_failure in the main process after killing a child at the hard limit."""
    from celery.exceptions import TimeLimitExceeded

    from acttail.store.db import session_scope
    from acttail.store.jobs import mark_running

    job_id = _submit(service, "whatever")
    with session_scope(service["factory"]) as db:
        mark_running(job_id, db_session=db)
    app = create_celery_app(service["settings"])
    app.loader.import_default_modules()
    app.tasks["acttail.run_job"].on_failure(TimeLimitExceeded(22200), "task-id", [job_id], {}, None)
    job = _job(service, job_id)
    assert job.status == "failed"
    assert job.error.startswith("hard time limit exceeded (TimeLimitExceeded(22200")
