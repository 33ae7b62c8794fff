"""The registry is the one list of names: torch-free, and what every door reads."""

from __future__ import annotations

import subprocess
import sys

import pytest

from acttail import registry
from acttail.errors import ActTailError


def test_registry_and_job_request_import_without_torch() -> None:
    code = (
        "import sys, acttail.registry, acttail.store.requests, api.validation\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_estimators_are_the_fit_enum() -> None:
    from acttail.esd.powerlaw import Estimator

    assert tuple(e.value for e in Estimator) == registry.ESTIMATORS


def test_every_method_builder_resolves_and_knobs_reach_every_door() -> None:
    from acttail.cli.esd_commands import METHOD_HELP
    from acttail.methods import _builder, method_knobs
    from acttail.store.requests import KNOB_NAMES, METHOD_FIELDS, JobRequest

    assert METHOD_HELP.split(" | ") == list(registry.METHODS)
    assert JobRequest.model_fields["method"].default == registry.DEFAULT_METHOD
    for name, spec in registry.METHODS.items():
        assert callable(_builder(spec)), name
        assert {KNOB_NAMES.get(f, f) for f in METHOD_FIELDS[name]} <= method_knobs(name)
        JobRequest(model_id="org/m", method=name)  # the request accepts every registered method


def test_register_method_refuses_a_second_registration() -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register_method("uniform", "again", builder="x:y")


@pytest.mark.parametrize("value", [0.0, 0.5, registry.TARGET_MAX])
def test_targets_in_range_pass(value: float) -> None:
    assert registry.check_target(value) == value


@pytest.mark.parametrize("value", [-0.1, 0.995, 1.0, float("nan"), "0.5", True])
def test_targets_out_of_range_say_the_range(value: object) -> None:
    with pytest.raises(ActTailError, match=r"\[0, 0.99\]"):
        registry.check_target(value)


def test_one_target_rule_in_cli_request_config_and_allocation() -> None:
    import pydantic

    from acttail.allocate import allocate
    from acttail.errors import AllocationError
    from acttail.pipeline import PipelineConfig
    from acttail.store.requests import JobRequest

    with pytest.raises(pydantic.ValidationError):
        JobRequest(model_id="org/m", targets=[0.995])
    JobRequest(model_id="org/m", targets=[0.99], method="uniform")
    with pytest.raises(ActTailError, match=r"\[0, 0.99\]"):
        PipelineConfig(targets=(0.995,), methods=("uniform",)).validate()
    with pytest.raises(AllocationError, match=r"\[0, 0.99\]"):
        allocate({"model.layers.0.self_attn.q_proj": 3.0}, {"model.layers.0.self_attn.q_proj": 4}, 0.995)


def test_hub_id_rule() -> None:
    assert registry.is_hub_id("meta-llama/Llama-2-7b-hf")
    for bad in ("llama", "../x/y", "org/model.gguf", "org/../x", ".org/x"):
        assert not registry.is_hub_id(bad), bad


def test_model_roots_containment(tmp_path) -> None:
    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    assert registry.inside_roots(root / "m", [root])
    assert not registry.inside_roots(root / "link", [root])  # symlinks are followed
    assert registry.root_candidates("m", [root]) == [root.resolve() / "m"]
