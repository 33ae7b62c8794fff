"""Streaming ESD analysis: every projection's weight → eigenvalues → power-law fit → report.

Weights arrive one at a time from ``ModelSource.iter_projection_weights()``; consecutive
projections of equal shape are batched (up to ``max_batch`` matrices and ``max_batch_bytes``,
only on CUDA, where batching pays) and dropped as soon as their eigenvalues are known, so peak
memory is a few matrices, never the model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from acttail.esd.powerlaw import Estimator, _parse_estimator, estimate_alpha
from acttail.esd.report import ESDReport, ProjectionESD
from acttail.esd.spectrum import eigenvalues_batch, resolve_device
from acttail.models.base import ModelSource, ProjectionInfo

logger = logging.getLogger(__name__)

CUDA_MAX_BATCH = 8
MAX_BATCH_BYTES = 1 << 30  # fp32 bytes of weights held per batch on CUDA


def analyze_source(
    source: ModelSource,
    estimator: Estimator | str = Estimator.KS,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> ESDReport:
    """Alpha and spectral metrics of every q/k/v/o/gate/up/down projection of ``source``."""
    total = len(source.projections())
    description = source.describe().as_dict()
    return analyze_weights(
        source.iter_projection_weights(),
        estimator,
        device=device,
        progress=progress,
        total=total,
        model=description,
    )


def analyze_weights(
    weights: Iterable[tuple[ProjectionInfo, torch.Tensor]],
    estimator: Estimator | str = Estimator.KS,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    total: int | None = None,
    model: dict[str, Any] | None = None,
) -> ESDReport:
    """``analyze_source`` for any stream of ``(ProjectionInfo, weight [d_out, d_in])`` pairs."""
    kind = _parse_estimator(estimator)
    target = resolve_device(device)
    max_batch = CUDA_MAX_BATCH if target.type == "cuda" else 1
    started = time.perf_counter()
    results: list[ProjectionESD] = []
    with tqdm(total=total, desc=f"ESD ({kind})", unit="proj", disable=not progress, leave=False) as bar:
        for batch in _equal_shape_batches(weights, max_batch):
            spectra = eigenvalues_batch([w for _, w in batch], target)
            for (info, _), evals in zip(batch, spectra, strict=True):
                fit = estimate_alpha(torch.as_tensor(evals, device=target), kind)  # KS scan where the eigensolver ran
                results.append(ProjectionESD.from_fit(info, evals, fit))
                logger.debug("%s: alpha=%.4f xmin=%.4g D=%.4f", info.name, fit.alpha, fit.xmin, fit.ks_distance)
            bar.update(len(batch))
            del batch, spectra
    elapsed = time.perf_counter() - started
    return ESDReport(
        model=model or {},
        estimator=str(kind),
        projections=tuple(results),
        elapsed_s=elapsed,
    )


def _equal_shape_batches(
    weights: Iterable[tuple[ProjectionInfo, torch.Tensor]], max_batch: int
) -> Iterator[list[tuple[ProjectionInfo, torch.Tensor]]]:
    """Group consecutive equal-shape weights, at most ``max_batch`` and ``MAX_BATCH_BYTES`` per group."""
    batch: list[tuple[ProjectionInfo, torch.Tensor]] = []
    held = 0
    for info, weight in weights:
        size = weight.numel() * 4
        if batch and (
            weight.shape != batch[0][1].shape or len(batch) >= max_batch or held + size > MAX_BATCH_BYTES
        ):
            yield batch
            batch, held = [], 0
        batch.append((info, weight))
        held += size
    if batch:
        yield batch
