"""Streaming ESD analysis: every projection's weight → eigenvalues → power-law fit → report.

Weights arrive one at a time from ``ModelSource.iter_projection_weights()`` and are dropped as
soon as their eigenvalues are known, so peak memory is a few matrices, never the model.

- CUDA: consecutive projections of equal shape are batched (up to ``CUDA_MAX_BATCH`` matrices and
  ``MAX_BATCH_BYTES``) into one batched eigensolver call.
- CPU: projections are analysed concurrently, one per core, each with a single intra-op thread.
  LAPACK's eigensolver gains little from threads at these sizes (m ≤ a few thousand) and, on a
  shared machine, two OpenMP threads that wait on each other run 5–20× slower than one
  (measured on the 2-core CI machine under load: 576×576 fp64 ``eigvalsh`` 2.0 s with 2 threads,
  0.09 s with 1). One matrix per core keeps every core busy without that barrier; at most
  ``workers`` weights are held between reads (plus the one being read), and reading the next
  weight overlaps the analysis.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from acttail.esd.powerlaw import Estimator, _parse_estimator, estimate_alpha
from acttail.esd.report import ESDReport, ProjectionESD
from acttail.esd.spectrum import eigenvalues_batch, resolve_device
from acttail.models.base import ModelSource, ProjectionInfo

logger = logging.getLogger(__name__)

CUDA_MAX_BATCH = 8
MAX_BATCH_BYTES = 1 << 30  # fp32 bytes of weights held per batch on CUDA

# Called with each projection's result and all its eigenvalues (fp64, min(d_out, d_in) of them),
# e.g. to draw ESD histograms, which the report does not keep. May run on a worker thread.
SpectrumCallback = Callable[[ProjectionESD, np.ndarray], None]


def analyze_source(
    source: ModelSource,
    estimator: Estimator | str = Estimator.KS,
    device: str | torch.device | None = None,
    progress: bool = True,
    on_spectrum: SpectrumCallback | None = None,
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
        on_spectrum=on_spectrum,
    )


def analyze_weights(
    weights: Iterable[tuple[ProjectionInfo, torch.Tensor]],
    estimator: Estimator | str = Estimator.KS,
    *,
    device: str | torch.device | None = None,
    progress: bool = True,
    total: int | None = None,
    model: dict[str, Any] | None = None,
    on_spectrum: SpectrumCallback | None = None,
) -> ESDReport:
    """``analyze_source`` for any stream of ``(ProjectionInfo, weight [d_out, d_in])`` pairs."""
    kind = _parse_estimator(estimator)
    target = resolve_device(device)
    started = time.perf_counter()
    results: list[ProjectionESD] = []
    with tqdm(total=total, desc=f"ESD ({kind})", unit="proj", disable=not progress, leave=False) as bar:
        if target.type == "cuda":
            for batch in _equal_shape_batches(weights, CUDA_MAX_BATCH):
                spectra = eigenvalues_batch([w for _, w in batch], target)
                for (info, _), evals in zip(batch, spectra, strict=True):
                    results.append(_fit(info, evals, kind, target, on_spectrum))
                bar.update(len(batch))
                del batch, spectra
        else:
            for result in _analyze_concurrently(weights, kind, cpu_workers(), on_spectrum):
                results.append(result)
                bar.update(1)
    elapsed = time.perf_counter() - started
    elapsed = time.perf_counter() - started
    return ESDReport(
        model=model or {},
        estimator=str(kind),
        projections=tuple(results),
        elapsed_s=elapsed,
    )


def cpu_workers() -> int:
    """Projections analysed at once on CPU: ``ACTTAIL_ESD_WORKERS`` or the intra-op thread count."""
    configured = os.environ.get("ACTTAIL_ESD_WORKERS")
    if configured:
        return max(1, int(configured))
    return max(1, torch.get_num_threads())


def _fit(
    info: ProjectionInfo, evals: Any, kind: Estimator, target: torch.device, on_spectrum: SpectrumCallback | None
) -> ProjectionESD:
    fit = estimate_alpha(torch.as_tensor(evals, device=target), kind)  # KS scan where the eigensolver ran
    logger.debug("%s: alpha=%.4f xmin=%.4g D=%.4f", info.name, fit.alpha, fit.xmin, fit.ks_distance)
    result = ProjectionESD.from_fit(info, evals, fit)
    if on_spectrum is not None:
        on_spectrum(result, np.asarray(evals))
    return result


def _analyze_one_cpu(
    info: ProjectionInfo, weight: torch.Tensor, kind: Estimator, on_spectrum: SpectrumCallback | None
) -> ProjectionESD:
    evals = eigenvalues_batch([weight], torch.device("cpu"))[0]
    return _fit(info, evals, kind, torch.device("cpu"), on_spectrum)


def _analyze_concurrently(
    weights: Iterable[tuple[ProjectionInfo, torch.Tensor]],
    kind: Estimator,
    workers: int,
    on_spectrum: SpectrumCallback | None = None,
) -> Iterator[ProjectionESD]:
    """Results in input order; ``workers`` projections at a time, each on one intra-op thread."""
    analyse = functools.partial(_analyze_one_cpu, kind=kind, on_spectrum=on_spectrum)
    with _intra_op_threads(1), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="esd") as pool:
        pending: deque[Future[ProjectionESD]] = deque()
        for info, weight in weights:
            pending.append(pool.submit(analyse, info, weight))
            del weight
            while len(pending) > workers or (pending and pending[0].done()):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@contextmanager
def _intra_op_threads(count: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (process-wide; restored on exit)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _equal_shape_batches(
    weights: Iterable[tuple[ProjectionInfo, torch.Tensor]], max_batch: int
) -> Iterator[list[tuple[ProjectionInfo, torch.Tensor]]]:
    """Group consecutive equal-shape weights, at most ``max_batch`` and ``MAX_BATCH_BYTES`` per group."""
    batch: list[tuple[ProjectionInfo, torch.Tensor]] = []
    held = 0
    for info, weight in weights:
        size = weight.numel() * 4
        if batch and (weight.shape != batch[0][1].shape or len(batch) >= max_batch or held + size > MAX_BATCH_BYTES):
            yield batch
            batch, held = [], 0
        batch.append((info, weight))
        held += size
    if batch:
        yield batch
