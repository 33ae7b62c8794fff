"""Which input channels a sparsified projection keeps: the scoring rule, composable with every allocation.

An allocation says *how many* input channels of projection i to drop (s_i); the scoring rule says
*which*. With x the projection's input ``[..., d_in]`` and W its weight ``[d_out, d_in]``:

* ``magnitude`` (ActTail, TEAL): score_j = |x_j|.
* ``wina`` (WINA, Chen et al. 2025, "Weight Informed Neuron Activation"): score_j = |x_j| * c_j with
  c_j = ||W[:, j]||_2, the column norm of the weight that reads x_j. Dropping x_j changes the output
  by exactly x_j W[:, j], whose norm is |x_j| c_j, so WINA drops the entries whose removal moves
  the output least (one at a time), not the smallest inputs.

The column norms are computed once per projection when the sparsity is applied (``channel_scale``),
from the weight of the module the hook sits on, so a fused projection (one Linear holding q, k and
v) uses its fused weight. TopK keeps the k largest scores; threshold mode zeroes score_j <= t_i,
with t_i the s_i-quantile of the *scores* on calibration text (``acttail.sparsity`` does both).
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import nn

from acttail.registry import DEFAULT_SCORING as _DEFAULT
from acttail.registry import SCORINGS


class Scoring(StrEnum):
    MAGNITUDE = "magnitude"
    WINA = "wina"


assert tuple(Scoring) == SCORINGS, "acttail.registry.SCORINGS names the members of Scoring"
DEFAULT_SCORING = Scoring(_DEFAULT)


def column_norms(weight: torch.Tensor) -> torch.Tensor:
    """``[d_in]``: ||W[:, j]||_2 of a ``[d_out, d_in]`` weight, in fp32 then the weight's dtype."""
    return torch.linalg.vector_norm(weight.detach().float(), dim=0).to(weight.dtype)


def channel_scale(linear: nn.Linear, scoring: Scoring | str) -> torch.Tensor | None:
    """The per-input-channel factor of ``scoring`` for this projection (None: plain magnitude)."""
    scoring = Scoring(scoring)
    if scoring is Scoring.MAGNITUDE:
        return None
    return column_norms(linear.weight)


def scores(x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """|x| (scale None) or |x| * scale, broadcast over the last dim."""
    magnitude = x.abs()
    return magnitude if scale is None else magnitude * scale
