"""Local Hugging Face directories: config.json + ``*.safetensors`` (sharded or not).

Projection weights are streamed with ``safetensors.safe_open``: one tensor in memory at a time,
so a model larger than RAM can be analysed. Pickle checkpoints (``*.bin``, ``*.pt``) are refused:
unpickling untrusted files executes code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from acttail.errors import ModelSourceError, UnsupportedArchitectureError
from acttail.models.architectures import ProjectionRef, discover, expert_name
from acttail.models.base import ModelDescription, ModelSource, ProjectionInfo, check_tokenizer_fits
from acttail.models.fingerprint import safetensors_fingerprint
from acttail.models.loading import load_pretrained, resolve_placement

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from acttail.models.placement import Placement, ResolvedPlacement

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def checkpoint_renames(model_type: str) -> tuple[list[tuple[str, str]], bool]:
    """Transformers' load-time renamings of checkpoint names (regex, target) for ``model_type``,
    and whether it merges per-expert tensors into 3-D parameters (then experts get canonical names)."""
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    except ImportError:  # older transformers: names on disk are module names
        return [], False
    renames: list[tuple[str, str]] = []
    merges = False
    for rule in get_checkpoint_conversion_mapping(model_type) or []:
        sources, targets = list(rule.source_patterns), list(rule.target_patterns)
        if type(rule).__name__ == "WeightRenaming" and len(sources) == len(targets):
            renames.extend(zip(sources, targets, strict=True))
        elif any(".experts.*" in p or "experts.*." in p for p in sources):
            merges = True
    return renames, merges


class SafetensorsDirSource(ModelSource):
    """A directory holding ``config.json`` and safetensors weights."""

    def __init__(
        self,
        directory: Path,
        *,
        model_id: str | None = None,
        source: str = "local",
        revision: str | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.directory = directory
        self.model_id = model_id or str(directory)
        self._source = source
        self._revision = revision
        self._fixed_fingerprint = fingerprint

    @cached_property
    def config(self) -> dict[str, Any]:
        path = self.directory / "config.json"
        if not path.is_file():
            raise ModelSourceError(f"{self.directory} has no config.json; not a Hugging Face model directory")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ModelSourceError(f"{path} is not valid JSON: {exc.msg}") from None

    @cached_property
    def _text_config(self) -> dict[str, Any]:
        # Multimodal wrappers (e.g. Gemma3ForConditionalGeneration) nest the decoder's config.
        return self.config.get("text_config") or self.config

    @cached_property
    def files(self) -> list[Path]:
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            pickles = sorted(p.name for p in self.directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
            if pickles:
                raise ModelSourceError(
                    f"{self.directory} has only pickle checkpoints ({', '.join(pickles[:3])}); "
                    "refusing to unpickle untrusted files: convert them to safetensors first"
                )
            raise ModelSourceError(f"{self.directory} contains no *.safetensors weights")
        return files

    @cached_property
    def _tensor_index(self) -> dict[str, tuple[Path, tuple[int, ...]]]:
        """Tensor name -> (shard, shape), read from shard headers only."""
        from safetensors import safe_open

        index: dict[str, tuple[Path, tuple[int, ...]]] = {}
        for path in self.files:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                        index[name] = (path, tuple(handle.get_slice(name).get_shape()))
            except Exception as exc:  # safetensors raises its own SafetensorError
                raise ModelSourceError(f"{path.name} is not a readable safetensors file: {exc}") from None
        return index

    @cached_property
    def model_type(self) -> str:
        return str(self._text_config.get("model_type") or self.config.get("model_type") or "<missing>")

    @cached_property
    def _projection_tensors(self) -> list[tuple[ProjectionInfo, str]]:
        """(info, tensor name on disk) per projection, from the shard headers alone.

        Names are read as transformers will name the loaded modules: its checkpoint renamings
        applied (Mixtral ``block_sparse_moe`` -> ``mlp``) and, where it merges per-expert tensors
        into 3-D parameters, each expert's ``w1``/``gate_proj``… named ``experts.<e>.<kind>_proj``.
        """
        renames, merges_experts = checkpoint_renames(self.model_type)
        disk_of: dict[str, str] = {}
        for disk_name, (_, shape) in self._tensor_index.items():
            if len(shape) == 2 and disk_name.endswith(".weight"):
                name = disk_name.removesuffix(".weight")
                for pattern, target in renames:
                    name = re.sub(pattern, target, name)
                disk_of[name] = disk_name
        layers = self._text_config.get("num_hidden_layers")
        try:
            refs = discover(disk_of, int(layers) if layers else None, what="2-D tensors")
        except UnsupportedArchitectureError as exc:
            raise UnsupportedArchitectureError(f"{self.directory} ({self.model_type}): {exc}") from None
        found = []
        for ref in refs:
            disk_name = disk_of[ref.name]
            if merges_experts and ref.expert is not None:
                ref = replace(ref, name=expert_name(ref.name.rsplit(".", 2)[0], ref.expert, ref.kind))
            found.append((self._info(ref, disk_name), disk_name))
        return found

    def _info(self, ref: ProjectionRef, disk_name: str) -> ProjectionInfo:
        shape = self._tensor_index[disk_name][1]
        return ProjectionInfo(ref, (int(shape[0]), int(shape[1])))

    def projections(self) -> list[ProjectionInfo]:
        return [info for info, _ in self._projection_tensors]

    def fingerprint(self) -> str:
        """The hub commit when known, else config + headers + sampled weight bytes (see fingerprint.py)."""
        if self._fixed_fingerprint:
            return self._fixed_fingerprint
        try:
            return safetensors_fingerprint(self.files, self.config)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelSourceError(f"cannot fingerprint {self.directory}: {exc}") from None

    def describe(self) -> ModelDescription:
        infos = self.projections()
        return ModelDescription(
            model_id=self.model_id,
            source=self._source,
            revision=self._revision,
            fingerprint=self.fingerprint(),
            architecture=self.model_type,
            num_layers=len({info.ref.layer for info in infos}),
            projection_params=sum(info.param_count for info in infos),
        )

    def iter_projection_weights(self) -> Iterator[tuple[ProjectionInfo, torch.Tensor]]:
        from safetensors import safe_open

        by_file: dict[Path, list[tuple[ProjectionInfo, str]]] = {}
        for info, disk_name in self._projection_tensors:
            by_file.setdefault(self._tensor_index[disk_name][0], []).append((info, disk_name))
        # Open each shard once; yield in block order within it (shards are usually block-ordered).
        for path in by_file:
            with safe_open(str(path), framework="pt") as handle:
                for info, disk_name in by_file[path]:
                    yield info, handle.get_tensor(disk_name).to(torch.float32)

    def load_causal_lm(
        self,
        placement: Placement | ResolvedPlacement | None = None,
        *,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        resolved = resolve_placement(placement, dtype=dtype, device=device)
        self.files  # noqa: B018 - refuses pickle-only directories before transformers sees them
        try:  # before the weights: a missing tokenizer should not cost a model load
            tokenizer = AutoTokenizer.from_pretrained(
                str(self.directory), trust_remote_code=False, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"{self.directory}: no usable tokenizer ({exc.__class__.__name__})") from None
        model = load_pretrained(
            AutoModelForCausalLM,
            str(self.directory),
            resolved,
            use_safetensors=True,
            trust_remote_code=False,
            local_files_only=True,
        )
        check_tokenizer_fits(model, tokenizer, self.directory)
        return model, tokenizer
