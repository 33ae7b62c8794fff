"""Sparse decode: swap every sparsified projection for a module that runs the sparse GEMV.

After loading, ``enable_sparse_decode(model, sparsities)`` replaces each q/k/v/o/gate/up/down
``nn.Linear`` with s_i > 0 by a ``SparseDecodeLinear`` that shares its weight and bias and
holds one extra copy ``W^T``: [d_in, d_out] contiguous. For a single token (batch-1 decode)
it computes

    y = W topk_{k_i}(x) + b = sum_{j in topk} x_j W^T[j, :] + b,   k_i = round((1 - s_i) d_in)

with ``acttail.kernels`` (only k_i rows of W^T read); for several tokens (prefill) it applies
the reference masking of ``acttail.sparsity`` and the dense ``F.linear``, so prefill is
bit-for-bit the reference. The model code is never touched; ``SparseDecodeHandle.restore()``
(or leaving the ``with`` block) puts the original modules back. Projections at s_i = 0 keep
the dense module, exactly as ``apply_sparsity`` leaves them unhooked.

``exact=True`` runs the fp64-accumulating kernel (correctly rounded fp32 outputs, see
``kernels/gemv.c``), and ``enable_reference_decode`` swaps in the torch-only reference of the
same computation (TopK masking + fp64 ``F.linear``, rounded once). Both then produce the same
bits for every single-token product, so greedy tokens of kernel decode and reference decode are
identical; with fp32 accumulation they differ by summation order (~1 ulp), which a TopK
boundary elsewhere in the network can turn into a different token after a few dozen steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from acttail import kernels
from acttail.allocate import Allocation
from acttail.models.architectures import ProjectionRef
from acttail.models.projections import ProjectionModule, find_projections, set_projection_module
from acttail.sparsity import (
    SparsityMode,
    check_thresholds,
    keep_count,
    sparsity_map,
    threshold_sparsify,
    topk_sparsify,
)


class SparseDecodeLinear(nn.Module):
    """Drop-in for one ``nn.Linear`` with input-activation sparsity; batch-1 tokens use the kernel."""

    uses_kernel = True  # holds the W^T copy and selection workspace the kernel reads
    weight_t: torch.Tensor  # buffer [d_in, d_out], registered in __init__ when uses_kernel

    def __init__(
        self,
        linear: nn.Linear,
        sparsity: float,
        mode: SparsityMode,
        threshold: float = 0.0,
        exact: bool = False,
    ) -> None:
        super().__init__()
        self.exact = exact
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight  # shared Parameter: [d_out, d_in]
        self.bias = linear.bias
        self.sparsity = sparsity
        self.mode = mode
        self.k = keep_count(sparsity, linear.in_features)
        self.threshold = threshold
        if not self.uses_kernel:
            return
        # w^T: [d_in, d_out], one contiguous row per input channel (not saved in state_dict).
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous(), persistent=False)
        # Selection buffers of the fp32 CPU fast path (one decode stream per model at a time).
        d_in = linear.in_features
        self._workspace = (
            torch.empty(d_in, dtype=torch.int64),
            torch.empty(d_in),
            torch.empty(d_in),
        )

    def _fast_path(self, x: torch.Tensor) -> bool:
        """fp32 CPU TopK with the compiled kernel: one C call per token, no Python-side selection."""
        w = self.weight_t
        return (
            self.mode is SparsityMode.TOPK
            and x.dtype is torch.float32
            and w.dtype is torch.float32
            and w.device.type == "cpu"
            and x.is_contiguous()
            and (self.bias is None or self.bias.dtype is torch.float32)
            and kernels.cpu.cpu_kernel_available()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == self.in_features and not torch.is_grad_enabled():
            if self._fast_path(x):
                y = torch.empty(*x.shape[:-1], self.out_features)
                kernels.cpu.topk_rows_f32_into(self.weight_t, x, self.k, self.bias, y, self._workspace, self.exact)
                return y
            xv = x.reshape(self.in_features)
            bias = None if self.bias is None else self.bias.detach()
            if self.exact:
                y = self._exact_product(xv, bias)
            elif self.mode is SparsityMode.TOPK:
                y = kernels.topk_gemv(self.weight_t, xv, self.k, bias)
            else:
                y = kernels.threshold_gemv(self.weight_t, xv, self.threshold, bias)
            return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        return F.linear(self._masked(x), self.weight, self.bias)

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        """The reference masking of ``acttail.sparsity`` (TopK or threshold) of ``x`` [..., d_in]."""
        if self.mode is SparsityMode.TOPK:
            return topk_sparsify(x, self.k)
        return threshold_sparsify(x, self.threshold)

    def _exact_product(self, xv: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The fp64-accumulated product for one token, kernel where possible (x: [d_in])."""
        if self.mode is SparsityMode.TOPK:
            idx, vals = kernels.select_topk(xv, self.k)
        else:
            idx, vals = kernels.select_threshold(xv, self.threshold)
        if self.weight_t.device.type == "cpu":
            return kernels.cpu.gather_rows_gemv(self.weight_t, idx, vals, bias, exact=True)
        return kernels.cpu.torch_gather_gemv(self.weight_t, idx, vals, bias, exact=True)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, mode={self.mode}, s={self.sparsity:.3f}, "
            f"k={self.k}, exact={self.exact}"
        )


class ReferenceDecodeLinear(SparseDecodeLinear):
    """The torch-only reference of ``SparseDecodeLinear(exact=True)``: no kernel, no W^T reads.

    One token: mask with ``topk_sparsify`` / ``threshold_sparsify`` and ``F.linear`` in fp64,
    rounded once; several tokens (prefill): the same fp32 masking + ``F.linear`` as the kernel
    module, so both start decoding from the same cache. Holds an fp64 copy of W (2x the fp32
    weight) from the first decode step: it is a correctness reference, not a production path.
    """

    uses_kernel = False  # no W^T copy: the reference reads W itself
    _weight64: torch.Tensor | None = None
    _bias64: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == self.in_features and not torch.is_grad_enabled():
            masked = self._masked(x)
            if self._weight64 is None:  # one fp64 copy per module, made on the first decode step
                self._weight64 = self.weight.detach().double()
                self._bias64 = None if self.bias is None else self.bias.detach().double()
            return F.linear(masked.double(), self._weight64, self._bias64).to(x.dtype)
        return super().forward(x)


@dataclass
class SparseDecodeHandle:
    """The swapped modules of one model; ``restore()`` puts the originals back (idempotent)."""

    model: nn.Module
    originals: dict[str, tuple[ProjectionRef, ProjectionModule]]
    wrappers: dict[str, SparseDecodeLinear]
    sparsities: dict[str, float]
    backend: str
    active: bool = True

    def restore(self) -> None:
        """Put the original ``nn.Linear`` modules back (the W^T copies stay for ``reapply``)."""
        if self.active:
            for ref, linear in self.originals.values():
                set_projection_module(self.model, ref, linear)
            self.active = False

    def reapply(self) -> None:
        """Swap the sparse modules in again after ``restore`` (no new W^T copies)."""
        if not self.active:
            for name, wrapper in self.wrappers.items():
                set_projection_module(self.model, self.originals[name][0], wrapper)
            self.active = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


def enable_sparse_decode(
    model: nn.Module,
    sparsities: Mapping[str, float] | Allocation | float,
    mode: SparsityMode | str = SparsityMode.TOPK,
    thresholds: Mapping[str, float] | None = None,
    *,
    exact: bool = False,
    reference: bool = False,
) -> SparseDecodeHandle:
    """Swap the sparsified projections of ``model`` for ``SparseDecodeLinear``; returns the handle.

    ``sparsities``: {projection module path: s_i in [0, 1)}, an ``Allocation``, or one float for
    uniform. ``threshold`` mode needs ``thresholds`` ({name: t_i}, from ``calibrate_thresholds``).
    ``exact``: fp64-accumulating kernel (see the module docstring); ``reference``: the torch
    reference modules instead of the kernel (``enable_reference_decode``).
    Memory: one extra copy of each swapped weight (W^T) until ``restore()``.
    """
    mode = SparsityMode(mode)
    projections = find_projections(model)
    smap = sparsity_map(sparsities, [ref.name for ref, _ in projections])
    check_thresholds(smap, mode, thresholds)
    originals: dict[str, tuple[ProjectionRef, ProjectionModule]] = {}
    wrappers: dict[str, SparseDecodeLinear] = {}
    backend = "dense"
    for ref, linear in projections:
        s = smap[ref.name]
        if s == 0.0:
            continue
        threshold = float(thresholds[ref.name]) if mode is SparsityMode.THRESHOLD and thresholds else 0.0
        module = ReferenceDecodeLinear if reference else SparseDecodeLinear
        wrappers[ref.name] = module(linear, s, mode, threshold, exact or reference)
        originals[ref.name] = (ref, linear)
        set_projection_module(model, ref, wrappers[ref.name])
        backend = (
            "torch-reference-fp64" if reference else kernels.backend_name(linear.weight.device, linear.weight.dtype)
        )
        if exact and not reference:
            backend += "-exact"
    return SparseDecodeHandle(model, originals, wrappers, smap, backend)


def enable_reference_decode(
    model: nn.Module,
    sparsities: Mapping[str, float] | Allocation | float,
    mode: SparsityMode | str = SparsityMode.TOPK,
    thresholds: Mapping[str, float] | None = None,
) -> SparseDecodeHandle:
    """Swap in ``ReferenceDecodeLinear``: what ``enable_sparse_decode(exact=True)`` must equal bit for bit."""
    return enable_sparse_decode(model, sparsities, mode, thresholds, reference=True)
