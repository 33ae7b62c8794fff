"""CPU sparse GEMV: a small C kernel (OpenMP, AVX2 via -march=native) built once with gcc.

Why C and not torch ops: ``W^T[idx]`` / ``index_select`` copies the selected rows before the
product, so a 50%-sparse GEMV moves 1.5x the bytes of the dense one and is *slower* than dense
(measured 0.1x at 4096x4096 on the 2-core dev box). The kernel in ``gemv.c`` reads each selected
row once, straight from the input-channel-major weight copy.

The shared object is compiled with the system ``gcc`` on first use and cached under
``$ACTTAIL_KERNEL_CACHE`` (default ``~/.cache/acttail/kernels``), keyed by the source, the
compiler and the CPU flags. It is loaded with ctypes; its ``libgomp.so.1`` resolves to the copy
torch already loaded, so both share one thread pool. If gcc is missing or the build fails, the
torch fallback (gather + mv) is used and ``cpu_kernel_available()`` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("gemv.c")
_CFLAGS = (
    "-O3",
    "-march=native",
    "-fopenmp",
    "-shared",
    "-fPIC",
    "-std=c11",
    "-fno-math-errno",
)
_LOCK = threading.Lock()
# Weights read (k * d_out) below which the kernel runs on the calling thread only. An OpenMP
# fork/join costs a few microseconds on an idle machine, but on a loaded one (other processes
# holding the cores) every barrier can wait a scheduler time slice (milliseconds) for the second
# thread; decode runs ~200 of these per token. Override with ACTTAIL_GEMV_PARALLEL_MIN.
PARALLEL_MIN_WORK = int(os.environ.get("ACTTAIL_GEMV_PARALLEL_MIN", str(1 << 20)))

_i64 = ctypes.c_int64
_ptr = ctypes.c_void_p


@dataclass(frozen=True)
class BuildStatus:
    """Outcome of the one-time build: the library, or the reason the torch fallback is used."""

    available: bool
    path: str | None
    reason: str


_LIB: ctypes.CDLL | None = None
_STATUS: BuildStatus | None = None


def _cache_dir() -> Path:
    root = os.environ.get("ACTTAIL_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "acttail" / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(cc: str) -> Path:
    source = _SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256(source + version.encode() + _cpu_flags().encode() + " ".join(_CFLAGS).encode())
    target = _cache_dir() / key.hexdigest()[:16] / "libacttail_gemv.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent test processes never see a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, *_CFLAGS, str(_SOURCE), "-o", tmp, "-lm"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed: {proc.stderr.strip()[-400:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load() -> ctypes.CDLL | None:
    global _LIB, _STATUS
    if _STATUS is not None:  # fast path: built (or failed) already
        return _LIB
    with _LOCK:
        if _STATUS is not None:
            return _LIB
        if os.environ.get("ACTTAIL_DISABLE_CPU_KERNEL"):
            _STATUS = BuildStatus(False, None, "disabled by ACTTAIL_DISABLE_CPU_KERNEL")
            return None
        cc = shutil.which(os.environ.get("CC", "gcc"))
        if cc is None:
            _STATUS = BuildStatus(False, None, "no C compiler (gcc) on PATH")
            log.warning("sparse GEMV: %s; using the torch fallback", _STATUS.reason)
            return None
        try:
            path = _build(cc)
            lib = ctypes.CDLL(str(path))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _STATUS = BuildStatus(False, None, f"build failed: {exc}")
            log.warning("sparse GEMV: %s; using the torch fallback", _STATUS.reason)
            return None
        for name in ("acttail_rows_f32", "acttail_rows_f32_exact", "acttail_rows_bf16"):
            fn = getattr(lib, name)
            fn.argtypes = [_ptr, _i64, _ptr, _ptr, _i64, _ptr, _ptr, ctypes.c_int]
            fn.restype = None
        lib.acttail_select_threshold.argtypes = [_ptr, _i64, ctypes.c_float, _ptr, _ptr]
        lib.acttail_select_threshold.restype = _i64
        lib.acttail_select_topk.argtypes = [_ptr, _i64, _i64, _ptr, _ptr, _ptr]
        lib.acttail_select_topk.restype = _i64
        for name in ("acttail_topk_rows_f32", "acttail_topk_rows_f32_exact"):
            fn = getattr(lib, name)
            fn.argtypes = [_ptr, _i64, _i64, _ptr, _i64, _ptr, _ptr, ctypes.c_int, _ptr, _ptr, _ptr]
            fn.restype = None
        lib.acttail_threshold_rows_f32.argtypes = [
            _ptr,
            _i64,
            _i64,
            _ptr,
            ctypes.c_float,
            _ptr,
            _ptr,
            ctypes.c_int,
            _ptr,
            _ptr,
        ]
        lib.acttail_threshold_rows_f32.restype = _i64
        _LIB = lib
        _STATUS = BuildStatus(True, str(path), "compiled C kernel")
        return lib


def cpu_kernel_status() -> BuildStatus:
    """Build (once) and report whether the compiled CPU kernel is in use."""
    _load()
    assert _STATUS is not None
    return _STATUS


def cpu_kernel_available() -> bool:
    return cpu_kernel_status().available


def _check_rows_args(weight_t: torch.Tensor, idx: torch.Tensor, vals: torch.Tensor) -> None:
    if weight_t.dim() != 2 or not weight_t.is_contiguous():
        raise ValueError("weight_t must be a contiguous [d_in, d_out] tensor")
    if idx.dim() != 1 or vals.shape != idx.shape:
        raise ValueError(f"idx and vals must be 1-D of equal length, got {tuple(idx.shape)} and {tuple(vals.shape)}")


def gather_rows_gemv(
    weight_t: torch.Tensor,
    idx: torch.Tensor,
    vals: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    exact: bool = False,
) -> torch.Tensor:
    """y = bias + vals @ W^T[idx]  ->  [d_out], via the compiled kernel (fp32/bf16 on CPU).

    weight_t: [d_in, d_out] contiguous; idx: int64 [k]; vals: [k] (the selected x entries).
    Accumulates in fp32 and returns weight_t.dtype; ``exact`` accumulates in fp64 and rounds
    once (the correctly rounded result, see gemv.c). Falls back to torch for other dtypes.
    """
    _check_rows_args(weight_t, idx, vals)
    lib = _load()
    d_out = weight_t.shape[1]
    if exact:
        if lib is None or weight_t.dtype != torch.float32:
            return torch_gather_gemv(weight_t, idx, vals, bias, exact=True)
    elif lib is None or weight_t.dtype not in (torch.float32, torch.bfloat16):
        return torch_gather_gemv(weight_t, idx, vals, bias)
    idx = idx.to(torch.int64).contiguous()
    v32 = vals.to(torch.float32).contiguous()
    b32 = None if bias is None else bias.to(torch.float32).contiguous()
    y = torch.empty(d_out, dtype=torch.float32)
    if exact:
        fn = lib.acttail_rows_f32_exact
    elif weight_t.dtype == torch.float32:
        fn = lib.acttail_rows_f32
    else:
        fn = lib.acttail_rows_bf16
    fn(
        weight_t.data_ptr(),
        d_out,
        idx.data_ptr(),
        v32.data_ptr(),
        idx.numel(),
        None if b32 is None else b32.data_ptr(),
        y.data_ptr(),
        torch.get_num_threads() if idx.numel() * d_out >= PARALLEL_MIN_WORK else 1,
    )
    return y if weight_t.dtype == torch.float32 else y.to(weight_t.dtype)


class _Workspace(threading.local):
    """Per-thread selection buffers by d_in, so a decode step allocates only its output."""

    def __init__(self) -> None:
        self.buffers: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def get(self, d_in: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bufs = self.buffers.get(d_in)
        if bufs is None:
            bufs = (
                torch.empty(d_in, dtype=torch.int64),
                torch.empty(d_in),
                torch.empty(d_in),
            )
            self.buffers[d_in] = bufs
        return bufs


_WORKSPACE = _Workspace()


def _fusable(
    lib: ctypes.CDLL | None,
    weight_t: torch.Tensor,
    x: torch.Tensor,
    bias: torch.Tensor | None,
) -> bool:
    return (
        lib is not None
        and weight_t.dtype == torch.float32
        and x.dtype == torch.float32
        and weight_t.is_contiguous()
        and x.is_contiguous()
        and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))
    )


def fused_topk_gemv(
    weight_t: torch.Tensor,
    x: torch.Tensor,
    k: int,
    bias: torch.Tensor | None = None,
    *,
    exact: bool = False,
) -> torch.Tensor:
    """y = W topk_k(x) + bias for one fp32 token in one C call (selection + product), x: [d_in].

    Same selection as ``select_topk_c`` (ties to the lowest indices). Other dtypes go through
    ``select_topk_c`` + ``gather_rows_gemv``. ``exact``: see ``gather_rows_gemv``.
    """
    lib = _load()
    d_in, d_out = weight_t.shape
    k = max(0, min(int(k), d_in))
    if not _fusable(lib, weight_t, x, bias):
        idx, vals = select_topk_c(x, k)
        return gather_rows_gemv(weight_t, idx, vals, bias, exact=exact)
    assert lib is not None
    idx, vals, scratch = _WORKSPACE.get(d_in)
    y = torch.empty(d_out, dtype=torch.float32)
    threads = torch.get_num_threads() if k * d_out >= PARALLEL_MIN_WORK else 1
    fused = lib.acttail_topk_rows_f32_exact if exact else lib.acttail_topk_rows_f32
    fused(
        weight_t.data_ptr(),
        d_in,
        d_out,
        x.data_ptr(),
        k,
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        threads,
        idx.data_ptr(),
        vals.data_ptr(),
        scratch.data_ptr(),
    )
    return y


def topk_rows_f32_into(
    weight_t: torch.Tensor,
    x: torch.Tensor,
    k: int,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    workspace: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    exact: bool = False,
) -> None:
    """Decode fast path of ``fused_topk_gemv``: no checks, caller-owned output and workspace.

    The caller guarantees: compiled kernel available, every tensor fp32, contiguous, on CPU,
    ``out``: [d_out], workspace = (int64 [d_in], fp32 [d_in], fp32 [d_in]), 0 <= k <= d_in.
    """
    assert _LIB is not None
    d_in, d_out = weight_t.shape
    idx, vals, scratch = workspace
    fused = _LIB.acttail_topk_rows_f32_exact if exact else _LIB.acttail_topk_rows_f32
    fused(
        weight_t.data_ptr(),
        d_in,
        d_out,
        x.data_ptr(),
        k,
        None if bias is None else bias.data_ptr(),
        out.data_ptr(),
        torch.get_num_threads() if k * d_out >= PARALLEL_MIN_WORK else 1,
        idx.data_ptr(),
        vals.data_ptr(),
        scratch.data_ptr(),
    )


def fused_threshold_gemv(
    weight_t: torch.Tensor,
    x: torch.Tensor,
    threshold: float,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = W (x * [|x| > t]) + bias for one fp32 token in one C call, x: [d_in]."""
    lib = _load()
    d_in, d_out = weight_t.shape
    if not _fusable(lib, weight_t, x, bias):
        idx, vals = select_threshold_c(x, threshold)
        return gather_rows_gemv(weight_t, idx, vals, bias)
    assert lib is not None
    idx, vals, _ = _WORKSPACE.get(d_in)
    y = torch.empty(d_out, dtype=torch.float32)
    # The kept count is unknown before selection: parallelise on the dense size.
    threads = torch.get_num_threads() if d_in * d_out >= 2 * PARALLEL_MIN_WORK else 1
    lib.acttail_threshold_rows_f32(
        weight_t.data_ptr(),
        d_in,
        d_out,
        x.data_ptr(),
        float(threshold),
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        threads,
        idx.data_ptr(),
        vals.data_ptr(),
    )
    return y


def torch_gather_gemv(
    weight_t: torch.Tensor,
    idx: torch.Tensor,
    vals: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    exact: bool = False,
) -> torch.Tensor:
    """Reference/fallback: gather the selected rows (a copy), then one matrix-vector product.

    ``exact``: the product and the bias in fp64, rounded once to ``weight_t.dtype``; half
    types (bf16/fp16) accumulate in fp32 and round once, like the C and Triton kernels.
    """
    if exact:
        y64 = vals.double() @ weight_t.index_select(0, idx).double()
        if bias is not None:
            y64 = y64 + bias.double()
        return y64.to(weight_t.dtype)
    if weight_t.dtype in (torch.float16, torch.bfloat16):  # accumulate in fp32, round once
        y32 = vals.float() @ weight_t.index_select(0, idx).float()
        return (y32 if bias is None else y32 + bias.float()).to(weight_t.dtype)
    y = vals.to(weight_t.dtype) @ weight_t.index_select(0, idx)
    return y if bias is None else y + bias


def select_topk_c(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (ascending) and values of the k largest |x| of a 1-D fp32 CPU vector.

    Quickselect, O(d_in); ties at the k-th magnitude go to the lowest indices. Falls back to
    ``torch.topk`` when the kernel is unavailable.
    """
    lib = _load()
    d_in = x.numel()
    k = max(0, min(int(k), d_in))
    if lib is None or x.dtype != torch.float32:
        idx = torch.topk(x.abs(), k, sorted=False).indices.sort().values
        return idx, x[idx]
    x = x.contiguous()
    idx = torch.empty(d_in, dtype=torch.int64)
    vals = torch.empty(d_in, dtype=torch.float32)
    scratch = torch.empty(d_in, dtype=torch.float32)
    n = lib.acttail_select_topk(x.data_ptr(), d_in, k, idx.data_ptr(), vals.data_ptr(), scratch.data_ptr())
    return idx[:n], vals[:n]


def select_threshold_c(x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (ascending) and values of the entries with |x| > threshold (1-D CPU vector)."""
    lib = _load()
    if lib is None or x.dtype != torch.float32:
        idx = torch.nonzero(x.abs() > threshold).flatten()
        return idx, x[idx]
    x = x.contiguous()
    d_in = x.numel()
    idx = torch.empty(d_in, dtype=torch.int64)
    vals = torch.empty(d_in, dtype=torch.float32)
    n = lib.acttail_select_threshold(x.data_ptr(), d_in, float(threshold), idx.data_ptr(), vals.data_ptr())
    return idx[:n], vals[:n]
