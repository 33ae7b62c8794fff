"""``acttail alphas --plot`` and ``acttail allocate --plot`` on a tiny random Llama saved as safetensors."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from acttail.cli import app, main
from tests.tiny_models import tiny_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One block (7 projections): each ESD figure takes about a second to render."""
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.num_hidden_layers = 1
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(directory, safe_serialization=True)
    return directory


def assert_images(paths: list[Path]) -> None:
    for path in paths:
        data = path.read_bytes()
        if path.suffix == ".png":
            assert data.startswith(PNG_SIGNATURE), path
        else:
            assert ET.fromstring(data).tag == "{http://www.w3.org/2000/svg}svg", path


def test_alphas_plot_writes_alpha_and_every_esd_figure(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    result = runner.invoke(
        app, ["alphas", str(model_dir), "--quiet", "--json", str(tmp_path / "a.json"), "--plot", str(out)]
    )
    assert result.exit_code == 0, result.output
    names = [row["name"] for row in json.loads((tmp_path / "a.json").read_text())["projections"]]
    assert len(names) == 7
    assert sorted(p.name for p in out.iterdir()) == ["alphas.png", "alphas.svg", "esd"]
    esd = sorted(p.name for p in (out / "esd").iterdir())
    assert esd == sorted(f"{name}.{fmt}" for name in names for fmt in ("png", "svg"))
    assert_images([out / "alphas.png", out / "alphas.svg", *(out / "esd").iterdir()])


def test_esd_projection_selects_one_histogram(model_dir: Path, tmp_path: Path) -> None:
    name = "model.layers.0.mlp.down_proj"
    result = runner.invoke(app, ["alphas", str(model_dir), "--plot", str(tmp_path), "--esd-projection", name])
    assert result.exit_code == 0, result.output
    assert f"wrote 4 figures to {tmp_path}" in result.output.replace("\n", "")
    assert sorted(p.name for p in (tmp_path / "esd").iterdir()) == [f"{name}.png", f"{name}.svg"]
    assert_images(list((tmp_path / "esd").iterdir()))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--plot", "PLOTS", "--esd-projection", "model.layers.9.mlp.up_proj"], "has no projection"),
        (["--esd-projection", "model.layers.0.mlp.up_proj"], "--esd-projection needs --plot DIR"),
    ],
)
def test_bad_esd_projection_exits_2_with_one_line(
    model_dir: Path, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(tmp_path / "plots") if a == "PLOTS" else a for a in args]
    with pytest.raises(SystemExit) as exc:
        main(["alphas", str(model_dir), "--quiet", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "plots").exists()  # refused before any analysis or output


def test_allocate_plot_writes_the_heatmap(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "heat"
    result = runner.invoke(app, ["allocate", str(model_dir), "-s", "0.5", "-o", str(tmp_path / "alloc.json"),
                                 "--method", "acttail", "--plot", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["allocation.png", "allocation.svg"]
    assert_images(list(out.iterdir()))
    assert json.loads((tmp_path / "alloc.json").read_text())["target"] == 0.5
