"""Local Hugging Face directories: config.json + ``*.safetensors`` (sharded or not).

Projection weights are streamed with ``safetensors.safe_open``: one tensor in memory at a time,
so a model larger than RAM can be analysed. Pickle checkpoints (``*.bin``, ``*.pt``) are refused:
unpickling untrusted files executes code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from acttail.errors import ModelSourceError
from acttail.models.architectures import ProjectionRef, projection_refs, spec_for
from acttail.models.base import ModelDescription, ModelSource, ProjectionInfo, check_tokenizer_fits
from acttail.models.fingerprint import safetensors_fingerprint
from acttail.models.loading import load_pretrained, resolve_placement

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from acttail.models.placement import Placement, ResolvedPlacement

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


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
        model_type = str(self._text_config.get("model_type") or self.config.get("model_type") or "<missing>")
        spec_for(model_type)
        return model_type

    @cached_property
    def _projection_infos(self) -> list[ProjectionInfo]:
        layers = int(self._text_config.get("num_hidden_layers", 0))
        spec = spec_for(self.model_type)
        for prefix in spec.layers_prefixes:
            refs = projection_refs(self.model_type, layers, prefix)
            if refs and refs[0].weight_name in self._tensor_index:
                return [self._info(ref) for ref in refs]
        linear_like = [n for n, (_, shape) in self._tensor_index.items() if len(shape) == 2][:12]
        raise ModelSourceError(
            f"{self.directory}: no projection tensors under {', '.join(spec.layers_prefixes)}; "
            f"2-D tensors found: {', '.join(linear_like)}"
        )

    def _info(self, ref: ProjectionRef) -> ProjectionInfo:
        entry = self._tensor_index.get(ref.weight_name)
        if entry is None:
            raise ModelSourceError(f"{self.directory}: tensor {ref.weight_name} is missing")
        shape = entry[1]
        if len(shape) != 2:
            raise ModelSourceError(f"{ref.weight_name} has shape {shape}, expected 2-D")
        return ProjectionInfo(ref, (int(shape[0]), int(shape[1])))

    def projections(self) -> list[ProjectionInfo]:
        return list(self._projection_infos)

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

        infos = self.projections()
        by_file: dict[Path, list[ProjectionInfo]] = {}
        for info in infos:
            by_file.setdefault(self._tensor_index[info.ref.weight_name][0], []).append(info)
        order = {info.name: i for i, info in enumerate(infos)}
        # Open each shard once; yield in block order within it (shards are usually block-ordered).
        for path in sorted(by_file, key=lambda p: min(order[i.name] for i in by_file[p])):
            with safe_open(str(path), framework="pt") as handle:
                for info in by_file[path]:
                    yield info, handle.get_tensor(info.ref.weight_name).to(torch.float32)

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
