"""``acttail allocate``: the default method is ``auto`` (model loaded, calibrated on WikiText-2
validation); every registry method is accepted, anything else exits 2 with the valid names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acttail.allocate import Allocation
from acttail.cli import app, main
from acttail.cli.esd_commands import METHOD_HELP
from acttail.methods import METHODS
from tests.tiny_models import save_tiny_model

runner = CliRunner()
QUICK_CALIBRATION = ["--calibration-tokens", "256", "--calibration-seqlen", "64"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def one_thread() -> object:
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _budget(doc: Allocation) -> float:
    total = sum(doc.param_counts.values())
    return sum(s * doc.param_counts[n] for n, s in doc.sparsities.items()) / total


@pytest.mark.usefixtures("one_thread")
def test_default_method_is_auto_and_records_its_choice(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "auto.json"
    result = runner.invoke(app, ["allocate", str(model_dir), "-s", "0.5", "-o", str(out), *QUICK_CALIBRATION])
    assert result.exit_code == 0, result.output
    doc = Allocation.load(out)
    assert doc.method == "auto" and abs(_budget(doc) - 0.5) < 1e-6
    labels = [row["label"] for row in doc.params["grid"]]
    assert labels[0] == "uniform" and labels[-1] == "teal-greedy"
    assert doc.params["choice"]["label"] in labels
    assert doc.params["calibration"]["tokens"] == 256
    # stage lines: the model load, the greedy search, every candidate; then the choice and the grid
    for line in ("auto: loading model", "auto: greedy search, block 1/2", "candidate 6/6: teal-greedy",
                 f"auto chose: {doc.params['choice']['label']}", "wrote "):  # fmt: skip
        assert line in result.output, result.output


def test_alpha_methods_need_no_model_load(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "reverse.json"
    result = runner.invoke(app, ["allocate", str(model_dir), "-s", "0.6", "-o", str(out), "--method",
                                 "acttail-reverse", "--epsilon", "0.2", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert (doc["method"], doc["params"]["epsilon"], doc["params"]["direction"]) == (
        "acttail-reverse", 0.2, "lower_alpha_sparser",
    )  # fmt: skip
    assert "loading model" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "magic"], "unknown allocation method 'magic'; valid: " + ", ".join(METHODS)),
        (["--method", "uniform", "--min-gain", "0.1"], "--min-gain does not apply to method 'uniform'"),
        (["--method", "acttail", "--calibration-tokens", "1024"], "--calibration-tokens does not apply"),
        (["--epsilon", "0.2"], "--epsilon does not apply to method 'auto'"),
    ],
)
def test_bad_method_options_exit_2_with_one_line(
    model_dir: Path, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["allocate", str(model_dir), "-s", "0.5", "-o", str(tmp_path / "a.json"), "--quiet", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "a.json").exists()


def test_help_lists_the_registry_and_says_auto_loads_the_model() -> None:
    assert METHOD_HELP.split(" | ") == list(METHODS)
    result = runner.invoke(app, ["allocate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "so it needs the model loaded" in text and "[default: auto]" in text
