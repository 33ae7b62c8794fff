"""GGUF files: tensors dequantised one at a time (``acttail.models.gguf_file``); full loads via transformers.

llama.cpp permutes the rows of q/k for RoPE; transformers undoes that on load. Row
permutations do not change singular values, so alphas from the raw tensor are exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from acttail.errors import ModelSourceError, UnsupportedArchitectureError
from acttail.models.architectures import preview
from acttail.models.base import ModelDescription, ModelSource, ProjectionInfo, check_tokenizer_fits
from acttail.models.fingerprint import read_spans, sample_spans, sha256_of_parts
from acttail.models.gguf_file import GGUFFile, GGUFTensorInfo
from acttail.models.loading import load_pretrained, resolve_placement

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from acttail.models.placement import Placement, ResolvedPlacement


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
    def _config(self) -> Any:
        """The HF config transformers derives from the GGUF metadata (what ``load_causal_lm`` builds)."""
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(str(self.path.parent), gguf_file=self.path.name)
        except (ValueError, KeyError) as exc:
            names = [t.name for t in self._file.tensors.values() if t.name.endswith(".weight") and len(t.shape) == 2]
            raise UnsupportedArchitectureError(
                f"GGUF architecture {self._gguf_arch!r} cannot be read by transformers ({exc}); "
                f"2-D tensors found: {preview(names)}"
            ) from None

    @cached_property
    def model_type(self) -> str:
        return str(self._config.model_type)

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
    def _projection_tensors(self) -> list[tuple[ProjectionInfo, str, int | None]]:
        """(info, GGUF tensor, expert index into a 3-D tensor) per projection of the HF model.

        The projections are those of the model transformers builds from this file (its module
        tree on the meta device), each mapped to its llama.cpp tensor by gguf-py's name table, so
        the names match the loaded model's hooks exactly. Experts live in ``ffn_*_exps`` [E, ·, ·].
        """
        import gguf

        from acttail.models.projections import find_projections, skeleton

        arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}.get(self._gguf_arch)
        if arch is None:
            raise UnsupportedArchitectureError(f"gguf-py has no tensor names for architecture {self._gguf_arch!r}")
        names = gguf.get_tensor_name_map(arch, self.num_layers)
        found: list[tuple[ProjectionInfo, str, int | None]] = []
        for ref, module in find_projections(skeleton(self._config)):
            hf_name = ref.name if ref.expert is None else f"{ref.name.rsplit('.', 2)[0]}.{ref.kind}_proj"
            base = names.get_name(hf_name)
            tensor = self._tensors.get(f"{base}.weight") if base else None
            if tensor is None:
                raise UnsupportedArchitectureError(
                    f"{self.path.name}: no GGUF tensor for {ref.name} (looked for {base}.weight); "
                    f"found e.g. {preview(list(self._tensors), 8)}"
                )
            shape = (int(module.out_features), int(module.in_features))
            rows_cols = tuple(int(x) for x in tensor.shape[:2])[::-1]  # GGUF lists ne0 (columns) first
            if rows_cols != shape:
                raise UnsupportedArchitectureError(
                    f"{self.path.name}: {tensor.name} is {rows_cols}, {ref.name} needs {shape}"
                )
            found.append((ProjectionInfo(ref, shape), tensor.name, ref.expert))
        return found

    def projections(self) -> list[ProjectionInfo]:
        return [info for info, _, _ in self._projection_tensors]

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
        cached: tuple[str, Any] | None = None  # one dequantised 3-D expert tensor, sliced per expert
        for info, gguf_name, expert in self._projection_tensors:
            if expert is None:
                weight = self._file.dequantized(self._tensors[gguf_name]).reshape(info.shape)
            else:
                if cached is None or cached[0] != gguf_name:
                    cached = (gguf_name, self._file.dequantized(self._tensors[gguf_name]))
                weight = cached[1].reshape(-1, *info.shape)[expert].copy()
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
