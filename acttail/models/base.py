"""What every model source offers: projection weights one at a time, or the full causal LM.

Streaming matters: computing alphas needs one matrix at a time, so a 70B model is analysed in
the memory of its largest projection, never materialised whole.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from acttail.models.architectures import ProjectionRef

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from acttail.models.placement import Placement, ResolvedPlacement


@dataclass(frozen=True)
class ProjectionInfo:
    """One projection's identity and shape, known without reading its data."""

    ref: ProjectionRef
    shape: tuple[int, int]  # (d_out, d_in), as nn.Linear.weight

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def param_count(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class ModelDescription:
    """Identity of a model as stored in results: enough to cache and share them."""

    model_id: str
    source: str  # "hub" | "local" | "gguf" | "bundled"
    revision: str | None
    fingerprint: str  # hub commit, or sha256 over the files' metadata + sampled weight bytes
    architecture: str  # HF config.model_type
    num_layers: int
    projection_params: int  # total parameters in the q/k/v/o/gate/up/down projections

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class ModelSource(abc.ABC):
    """A resolved model ID. Construct through ``acttail.models.resolve_model``."""

    model_id: str

    @abc.abstractmethod
    def describe(self) -> ModelDescription:
        """Identity and fingerprint (cheap: reads metadata only)."""

    @abc.abstractmethod
    def projections(self) -> list[ProjectionInfo]:
        """Every q/k/v/o/gate/up/down projection in block order, from metadata only."""

    @abc.abstractmethod
    def iter_projection_weights(self) -> Iterator[tuple[ProjectionInfo, torch.Tensor]]:
        """Yield each projection's weight as fp32 ``[d_out, d_in]``, one tensor in memory at a time."""

    @abc.abstractmethod
    def load_causal_lm(
        self,
        placement: Placement | ResolvedPlacement | None = None,
        *,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The full model (eval mode) and its tokenizer, for evaluation and decoding.

        Loaded in the placement's dtype on its device or spread by its device map
        (``acttail.models.loading``); ``None`` = ``Placement()`` = auto. ``dtype=``/``device=``
        are the pre-``Placement`` spelling of the same request.
        """


def check_tokenizer_fits(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, where: object) -> None:
    """Refuse a tokenizer that can emit ids past the embedding (tokenizer files of another model):
    otherwise the first forward pass fails with an IndexError deep inside torch.embedding."""
    from acttail.errors import ModelSourceError

    rows = int(model.get_input_embeddings().get_parameter("weight").shape[0])
    if len(tokenizer) > rows:
        raise ModelSourceError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding only {rows} rows; "
            "its tokenizer files belong to another model"
        )
