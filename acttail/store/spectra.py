"""Eigenvalues of an ESD run as bytes: float32 little-endian, ascending, one blob per projection.

The ESD histogram (``acttail.plots.plot_esd``) needs every eigenvalue λ of WᵀW, min(d_out, d_in)
of them; the fit statistics alone cannot draw it. float32 keeps 7 significant digits, far finer
than any histogram bin, at half the bytes of fp64: a 7B model (224 projections × 4096 λ) stores
3.5 MiB per ESD run. Plain little-endian bytes, never pickle, so any reader (numpy, another
language) can decode them and decoding cannot run code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DTYPE = np.dtype("<f4")


class SpectrumError(ValueError):
    """Eigenvalues that cannot be stored or were stored damaged (wrong length, not finite)."""


def encode_eigenvalues(values: Any, *, expected: int | None = None) -> bytes:
    """Sorted float32 little-endian bytes of ``values`` (any 1-D array-like of real numbers).

    ``expected``: the number of eigenvalues the projection has (min(d_out, d_in)); a spectrum
    of another length belongs to another matrix and is refused.
    """
    array = np.asarray(values, dtype=np.float64).ravel()
    if expected is not None and array.size != expected:
        raise SpectrumError(f"expected {expected} eigenvalues, got {array.size}")
    if not np.all(np.isfinite(array)):
        raise SpectrumError("eigenvalues must be finite")
    return np.sort(array).astype(DTYPE).tobytes()


def decode_eigenvalues(blob: bytes) -> np.ndarray:
    """The stored eigenvalues as a float64 array (a copy: the blob stays immutable)."""
    if len(blob) % DTYPE.itemsize:
        raise SpectrumError(f"stored eigenvalues are damaged: {len(blob)} bytes is not a multiple of 4")
    return np.frombuffer(blob, dtype=DTYPE).astype(np.float64)
