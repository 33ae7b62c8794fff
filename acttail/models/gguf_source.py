"""GGUF files: tensors dequantised one at a time (``acttail.models.gguf_file``); full loads via transformers.

llama.cpp permutes the rows of q/k for RoPE; transformers undoes that on load. Row
permutations do not change singular values, so alphas from the raw tensor are exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from acttail.errors import ModelSourceError, UnsupportedArchitectureError
from acttail.models.architectures import (
    GGUF_SUFFIX,
    PROJECTION_ORDER,
    ProjectionRef,
    projection_name,
    spec_for,
)
from acttail.models.base import ModelDescription, ModelSource, ProjectionInfo, check_tokenizer_fits
from acttail.models.fingerprint import read_spans, sample_spans, sha256_of_parts
from acttail.models.gguf_file import GGUFFile, GGUFTensorInfo
from acttail.models.loading import load_pretrained, resolve_placement

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from acttail.models.placement import Placement, ResolvedPlacement

# llama.cpp's general.architecture -> HF config.model_type. (llama.cpp writes Mistral as "llama".)
GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "gemma3": "gemma3_text",
}


class GGUFSource(ModelSource):
    """A single ``.gguf`` file (optionally reached through a bundled alias)."""

    def __init__(self, path: Path, *, model_id: str | None = None, source: str = "gguf") -> None:
        self.path = path
        self.model_id = model_id or str(path)
        self._source = source

    @cached_property
    def _file(self) -> GGUFFile:
        # Header only (milliseconds); tensor bytes stay memory-mapped until dequantised.
        return GGUFFile(self.path)

    def _field(self, key: str) -> object:
        return self._file.metadata.get(key)

    @cached_property
    def _gguf_arch(self) -> str:
        return str(self._field("general.architecture"))

    @cached_property
    def model_type(self) -> str:
        model_type = GGUF_ARCHITECTURES.get(self._gguf_arch)
        if model_type is None:
            names = [t.name for t in self._file.tensors.values() if t.name.endswith(".weight") and len(t.shape) == 2]
            raise UnsupportedArchitectureError(
                f"GGUF architecture {self._gguf_arch!r} is not supported "
                f"(supported: {', '.join(GGUF_ARCHITECTURES)}); 2-D tensors found: {', '.join(names[:10])}"
            )
        return model_type

    @cached_property
    def num_layers(self) -> int:
        count = self._field(f"{self._gguf_arch}.block_count")
        if not isinstance(count, int):
            raise ModelSourceError(f"{self.path.name}: missing {self._gguf_arch}.block_count")
        return count

    @property
    def _tensors(self) -> dict[str, GGUFTensorInfo]:
        return self._file.tensors

    @cached_property
    def _projection_tensors(self) -> list[tuple[ProjectionInfo, str]]:
        prefix = spec_for(self.model_type).layers_prefixes[0]
        found: list[tuple[ProjectionInfo, str]] = []
        for layer in range(self.num_layers):
            for kind in PROJECTION_ORDER:
                gguf_name = f"blk.{layer}.{GGUF_SUFFIX[kind]}.weight"
                tensor = self._tensors.get(gguf_name)
                if tensor is None:
                    raise UnsupportedArchitectureError(
                        f"{self.path.name}: expected tensor {gguf_name} is missing; "
                        f"found e.g. {', '.join(list(self._tensors)[:8])}"
                    )
                d_in, d_out = (int(x) for x in tensor.shape)  # GGUF lists ne0 (columns) first
                ref = ProjectionRef(layer, kind, projection_name(prefix, layer, kind))
                found.append((ProjectionInfo(ref, (d_out, d_in)), gguf_name))
        return found

    def projections(self) -> list[ProjectionInfo]:
        return [info for info, _ in self._projection_tensors]

    def fingerprint(self) -> str:
        """sha256 of the file size, the whole header (metadata + tensor infos) and the weight samples."""
        gguf = self._file
        tensor_spans = [(t.offset, t.offset + t.n_bytes) for t in gguf.tensors.values()]
        spans = sample_spans(gguf.data_offset, gguf.size, tensor_spans)
        try:
            return sha256_of_parts(["gguf/v2", str(gguf.size), gguf.header_bytes, *read_spans(self.path, spans)])
        except (OSError, ValueError) as exc:
            raise ModelSourceError(f"cannot fingerprint {self.path.name}: {exc}") from None

    def describe(self) -> ModelDescription:
        return ModelDescription(
            model_id=self.model_id,
            source=self._source,
            revision=None,
            fingerprint=self.fingerprint(),
            architecture=self.model_type,
            num_layers=self.num_layers,
            projection_params=sum(info.param_count for info in self.projections()),
        )

    def iter_projection_weights(self) -> Iterator[tuple[ProjectionInfo, torch.Tensor]]:
        for info, gguf_name in self._projection_tensors:
            weight = self._file.dequantized(self._tensors[gguf_name])
            if weight.shape != info.shape:
                weight = weight.reshape(info.shape)
            yield info, torch.from_numpy(weight)

    def load_causal_lm(
        self,
        placement: Placement | ResolvedPlacement | None = None,
        *,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """Dequantised by transformers into the placement's dtype (GGUF blocks are never kept quantised)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        resolved = resolve_placement(placement, dtype=dtype, device=device)
        self.model_type  # noqa: B018 - fail early with the architecture message
        directory, filename = str(self.path.parent), self.path.name
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
        model = load_pretrained(AutoModelForCausalLM, directory, resolved, gguf_file=filename)
        check_tokenizer_fits(model, tokenizer, self.path)
        return model, tokenizer
