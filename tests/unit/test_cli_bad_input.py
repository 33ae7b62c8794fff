"""Bad input as a new user types it: each is one line on stderr and exit code 2, never a traceback.

The hub cases run the CLI in a subprocess without ``HF_HUB_OFFLINE`` (conftest sets it for this
process) against a hub endpoint that refuses or never answers, so they behave the same on a
machine with internet access and cannot hang: the metadata request has a timeout, and so has
the subprocess (generous: a loaded shared machine takes minutes to import torch).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from acttail.cli import main
from tests.tiny_models import save_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def save_model(directory: Path, *, vocab_size: int = 256, tokenizer: bool = True, seed: int = 0) -> Path:
    """A one-block tiny Llama (7 projections) as safetensors, with or without its byte tokenizer."""
    save_tiny_model(directory, seed=seed, num_hidden_layers=1, vocab_size=vocab_size)
    if not tokenizer:
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (directory / name).unlink(missing_ok=True)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("tiny"))


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``acttail argv`` in this process; assert exit code 2 and one stderr line; return it."""
    capsys.readouterr()  # what building the test's model printed is not the CLI's output
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), base.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "acttail.cli", *args],
        env=base | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def refusing_endpoint() -> str:
    """A local port with nothing listening: every connection is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) but never answers: a black hole."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


@pytest.mark.parametrize(
    "model",
    [
        "meta-llama/Llama-2-7b-hf",  # a real hub ID, offline
        "models/tiny-lama",  # a mistyped relative path that looks like org/name
    ],
)
def test_hub_id_while_offline_is_one_line(model: str, refusing_endpoint: str, tmp_path: Path) -> None:
    out = run_cli(["alphas", model], {"HF_ENDPOINT": refusing_endpoint}, cwd=tmp_path)
    err = out.stderr.strip()
    assert out.returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert f"error: '{model}' is neither an existing local path nor a reachable hub ID" in err
    assert "the Hugging Face hub is unreachable: ConnectError" in err
    assert "set HF_HUB_OFFLINE=1" in err


def test_hub_that_never_answers_times_out_with_one_line(silent_endpoint: str, tmp_path: Path) -> None:
    out = run_cli(
        ["alphas", "meta-llama/Llama-2-7b-hf"],
        {"HF_ENDPOINT": silent_endpoint, "HF_HUB_ETAG_TIMEOUT": "2"},
        cwd=tmp_path,
    )
    err = out.stderr.strip()
    assert out.returncode == 2 and len(err.splitlines()) == 1, err
    assert "the Hugging Face hub is unreachable: ReadTimeout" in err


def test_hub_id_with_hf_hub_offline_and_empty_cache(tmp_path: Path) -> None:
    out = run_cli(
        ["alphas", "meta-llama/Llama-2-7b-hf"], {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}, cwd=tmp_path
    )
    err = out.stderr.strip()
    assert out.returncode == 2 and len(err.splitlines()) == 1, err
    assert "(HF_HUB_OFFLINE=1 and it is not in the hub cache)" in err
    assert "set HF_HUB_OFFLINE=1" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["allocate", "-s", "0.5", "-o", "no/such/dir/a.json"], "directory no/such/dir does not exist"),
        (["allocate", "-s", "0.5", "-o", "."], ". is a directory; give a file path"),
        (["alphas", "--json", "."], ". is a directory; give a file path"),
        (["alphas", "--csv", "no/such/a.csv"], "directory no/such does not exist"),
        (["run", "--json", "no/such/dir/r.json"], "directory no/such/dir does not exist"),
        (["evaluate", "--allocation", "a.json", "--json", "."], ". is a directory"),
    ],
)
def test_output_path_is_checked_before_the_model_is_touched(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model does not exist: an error about the path proves the check ran before any model work.
    monkeypatch.chdir(tmp_path)
    err = one_line_error([argv[0], "no-such-model", *argv[1:]], capsys)
    assert message in err, err
    assert "no-such-model" not in err


def test_plot_folder_that_is_a_file_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "figs").write_text("")
    err = one_line_error(["alphas", "no-such-model", "--plot", str(tmp_path / "figs")], capsys)
    assert "is a file; give a folder for the figures" in err


def test_tokenizer_larger_than_the_embedding_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = save_model(tmp_path / "small-vocab", vocab_size=200)
    err = one_line_error(
        ["allocate", str(model), "-s", "0.5", "-o", str(tmp_path / "a.json"), "--method", "teal-greedy", "-q"], capsys
    )
    assert "the tokenizer has 256 tokens but the model's embedding only 200 rows" in err
    assert not (tmp_path / "a.json").exists()


def test_model_without_tokenizer_files_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = save_model(tmp_path / "no-tokenizer", tokenizer=False)
    err = one_line_error(
        ["run", str(model), "-s", "0.5", "--method", "uniform", "--max-tokens", "256", "--seqlen", "64",
         "--no-store", "-q"],
        capsys,
    )  # fmt: skip
    assert f"{model}: no usable tokenizer" in err


@pytest.fixture(scope="module")
def alphas_file(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("alphas") / "a.json"
    with pytest.raises(SystemExit) as exc:
        main(["alphas", str(model_dir), "--json", str(path), "-q"])
    assert exc.value.code == 0 and path.is_file()
    return path


def test_alphas_of_another_model_are_refused(
    alphas_file: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    other = save_model(tmp_path / "other", seed=1)
    out = tmp_path / "alloc.json"
    err = one_line_error(
        ["allocate", str(other), "-s", "0.5", "-o", str(out), "--method", "uniform", "--alphas", str(alphas_file)],
        capsys,
    )
    assert f"--alphas {alphas_file} was computed for another model" in err
    assert not out.exists()


def test_estimator_other_than_the_files_is_refused(
    model_dir: Path, alphas_file: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "alloc.json"
    argv = [
        "allocate",
        str(model_dir),
        "-s",
        "0.5",
        "-o",
        str(out),
        "--method",
        "uniform",
        "--alphas",
        str(alphas_file),
    ]
    err = one_line_error([*argv, "--estimator", "hill"], capsys)
    assert f"--estimator hill differs from the estimator of --alphas {alphas_file} (ks)" in err
    assert not out.exists()
    # The file's own estimator, given or implied, is accepted.
    for extra in (["--estimator", "ks"], []):
        with pytest.raises(SystemExit) as exc:
            main([*argv, *extra, "-q"])
        assert exc.value.code == 0, capsys.readouterr().err
        assert out.is_file()
        out.unlink()


def test_usage_errors_are_one_line_too(capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(["alphas", "smollm2-135m", "--estimator", "bogus"], capsys)
    assert "unknown estimator 'bogus'; valid: ks, ks_peak, hill" in err
    err = one_line_error(["allocate", "smollm2-135m", "-s", "0.5"], capsys)
    assert "Missing option '--output'" in err
