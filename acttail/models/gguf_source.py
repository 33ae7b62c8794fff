"""GGUF files: tensors dequantised one at a time (``acttail.models.gguf_file``); full loads via transformers.

llama.cpp permutes the rows of q/k for RoPE; transformers undoes that on load. Row
permutations do not change singular values, so alphas from the raw tensor are exact.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from acttail.errors import ModelSourceError, UnsupportedArchitectureError
from acttail.models.architectures import discover, preview
from acttail.models.base import ModelDescription, ModelSource, ProjectionInfo, check_tokenizer_fits
from acttail.models.fingerprint import read_spans, sample_spans, sha256_of_parts
from acttail.models.gguf_file import GGUFFile, GGUFTensorInfo
from acttail.models.loading import load_pretrained, resolve_placement

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from acttail.models.placement import Placement, ResolvedPlacement


# llama.cpp's general.architecture -> HF config.model_type, for the description (else the GGUF name).
GGUF_MODEL_TYPES: dict[str, str] = {"gemma3": "gemma3_text", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}
# llama.cpp tensor base name -> the module path transformers' GGUF loader gives it inside a block.
GGUF_LOCAL: dict[str, str] = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
    "ffn_gate_exps": "mlp.experts.{e}.gate_proj",
    "ffn_up_exps": "mlp.experts.{e}.up_proj",
    "ffn_down_exps": "mlp.experts.{e}.down_proj",
}
GGUF_ROUTERS = frozenset({"ffn_gate_inp", "ffn_gate_inp_shexp"})
_GGUF_BLOCK = re.compile(r"^blk\.(?P<layer>\d+)\.(?P<base>[a-z0-9_]+)\.weight\Z")


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
        return GGUF_MODEL_TYPES.get(self._gguf_arch, self._gguf_arch)

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
        """(info, GGUF tensor, expert index into a 3-D tensor) per projection, from the header alone.

        Each ``blk.<i>.<base>.weight`` is named as transformers' GGUF loader names the module
        (``GGUF_LOCAL``; Phi-3's fused gate/up is its ``ffn_up`` in a block without ``ffn_gate``),
        then classified like any checkpoint name. Experts live in ``ffn_*_exps`` [E, rows, cols].
        """
        entries: dict[str, tuple[str, int | None, tuple[int, int]]] = {}
        unknown: list[str] = []
        for tensor in self._tensors.values():
            match = _GGUF_BLOCK.match(tensor.name)
            if match is None or len(tensor.shape) < 2:
                continue
            layer, base = int(match["layer"]), match["base"]
            if base in GGUF_ROUTERS:
                continue
            local = GGUF_LOCAL.get(base)
            if base == "ffn_up" and f"blk.{layer}.ffn_gate.weight" not in self._tensors:
                local = "mlp.gate_up_proj"  # Phi-3: llama.cpp stores gate_up_proj as ffn_up
            if local is None:
                unknown.append(tensor.name)
                continue
            shape = (int(tensor.shape[1]), int(tensor.shape[0]))  # GGUF lists ne0 (columns) first
            if "{e}" in local:
                for e in range(int(tensor.shape[2])):
                    entries[f"model.layers.{layer}.{local.format(e=e)}"] = (tensor.name, e, shape)
            else:
                entries[f"model.layers.{layer}.{local}"] = (tensor.name, None, shape)
        if unknown:
            raise UnsupportedArchitectureError(
                f"{self.path.name} ({self._gguf_arch}): block tensors that are neither a known projection "
                f"nor a router: {preview(unknown)}"
            )
        try:
            refs = discover(entries, self.num_layers, what="GGUF tensors")
        except UnsupportedArchitectureError as exc:
            raise UnsupportedArchitectureError(f"{self.path.name} ({self._gguf_arch}): {exc}") from None
        return [(ProjectionInfo(ref, entries[ref.name][2]), *entries[ref.name][:2]) for ref in refs]

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
