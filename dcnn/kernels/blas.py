"""Direct access to single-precision GEMM with arbitrary leading dimensions and accumulation.

``numpy.matmul`` cannot accumulate into its output (BLAS ``beta = 1``) and copies operands whose rows are
not laid out the way it expects. Convolution as a sum of shifted GEMMs needs both, so this module calls
``sgemm`` through :mod:`ctypes`.

*Which sgemm.* The newest OpenBLAS loaded in the process that exports ``cblas_sgemm`` (the wheels of numpy and
SciPy each bundle one, its symbols prefixed ``scipy_`` and, for 64-bit integers, suffixed ``64_``; the integer
width is read from ``openblas_get_config``), found through :func:`threadpoolctl.threadpool_info`; failing that,
the ``sgemm`` that SciPy exports for Cython (:mod:`scipy.linalg.cython_blas`, public API). On this project's
machines numpy's OpenBLAS 0.3.31 runs the thin GEMMs of MobileNetV2 and ResNet-50 up to 1.3x faster than
SciPy's 0.3.30 with the same SkylakeX kernels (24 x 3136 x 144: 82 against 64 GFLOP/s; 1024^3: 100 both), and
it is the library ``numpy.matmul`` (the *winograd-rows* transforms) calls, so every convolution GEMM runs on one BLAS.

*Cost of a call.* The CBLAS interface takes its integers by value, so a call converts plain Python numbers
(no ``byref`` objects) and reads each operand's address once from ``__array_interface__`` (``ndarray.ctypes``
costs 2 us per access): :func:`gemm_accumulate`, with its bounds checks, costs about 6.5 us of Python where it
cost 8.6 us. Kernels that compute their views' bounds from buffers they allocated call :func:`sgemm` with
addresses instead, without the checks (about 1.7 us).

All matrices here are row-major (C order) float32 views into numpy buffers, described by a base array, an
element offset into it and a row stride (leading dimension) in elements.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np
import scipy.linalg.cython_blas as _cython_blas
from threadpoolctl import threadpool_info

__all__ = ["BLAS_LIBRARY", "address", "gemm_accumulate", "sgemm"]

_INT_MAX = 2**31 - 1
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS_ORDER and CBLAS_TRANSPOSE values
# (prefix, suffix) of OpenBLAS's exported names: the scipy-openblas wheels' 64-bit and 32-bit builds, plain builds.
_NAME_FORMS = (("scipy_", "64_"), ("scipy_", ""), ("", "64_"), ("", ""))


def _version(info: dict) -> tuple[int, ...]:
    return tuple(int(part) for part in str(info.get("version") or "0").split(".") if part.isdigit())


def _openblas_cblas() -> tuple[Callable[..., None], str] | None:
    """``(cblas_sgemm, library path)`` of the newest loaded OpenBLAS that exports one, or ``None``."""
    libraries = sorted((info for info in threadpool_info() if info.get("internal_api") == "openblas"),
                       key=_version, reverse=True)
    for info in libraries:
        library = ctypes.CDLL(info["filepath"])
        for prefix, suffix in _NAME_FORMS:
            function = getattr(library, f"{prefix}cblas_sgemm{suffix}", None)
            config = getattr(library, f"{prefix}openblas_get_config{suffix}", None)
            if function is None or config is None:
                continue
            config.restype, config.argtypes = ctypes.c_char_p, []
            integer = ctypes.c_int64 if b"USE64BITINT" in config() else ctypes.c_int
            function.restype = None
            function.argtypes = [ctypes.c_int] * 3 + [integer] * 3 + [
                ctypes.c_float, ctypes.c_void_p, integer, ctypes.c_void_p, integer,
                ctypes.c_float, ctypes.c_void_p, integer]
            return function, info["filepath"]
    return None


def _fortran_sgemm() -> Callable[..., None]:
    """``cblas_sgemm`` for the calls this module makes (row-major, ``B`` never transposed: ``order`` and
    ``trans_b`` are not read) on SciPy's Cython BLAS (Fortran interface: every argument by reference)."""
    capsule = _cython_blas.__pyx_capi__["sgemm"]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    pointer = ctypes.c_void_p
    fortran = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, *[pointer] * 11)(
        get_pointer(capsule, get_name(capsule)))

    def call(order: int, trans_a: int, trans_b: int, m: int, n: int, k: int, alpha: float, a: int, lda: int,
             b: int, ldb: int, beta: float, c: int, ldc: int) -> None:
        # Row-major C = op(A) B is column-major C^T = B^T op(A)^T, which is what Fortran sgemm computes with 'N' and
        # 'N' (or 'T' for a transposed A): a row-major matrix is its transpose in column-major order.
        def ref(value: int) -> ctypes._CArgObject:
            return ctypes.byref(ctypes.c_int(value))

        fortran(b"N", b"T" if trans_a == _TRANS else b"N", ref(n), ref(m), ref(k),
                ctypes.byref(ctypes.c_float(alpha)), pointer(b), ref(ldb),
                pointer(a), ref(lda), ctypes.byref(ctypes.c_float(beta)), pointer(c), ref(ldc))

    return call


_found = _openblas_cblas()
_CBLAS_SGEMM, BLAS_LIBRARY = _found if _found else (_fortran_sgemm(), _cython_blas.__file__)
"""The ``cblas_sgemm`` every call goes through, and the file of the library (or SciPy module) it comes from."""


def address(array: np.ndarray) -> int:
    """The address of ``array``'s first element (cheaper than ``array.ctypes.data``)."""
    return array.__array_interface__["data"][0]


def sgemm(m: int, n: int, k: int, a: int, lda: int, b: int, ldb: int, c: int, ldc: int, accumulate: bool,
          transpose_a: bool = False) -> None:
    """``C = op(A) @ B`` or ``C += op(A) @ B`` on row-major float32 matrices given by address, without any check.

    For kernels whose views lie, by construction, in buffers they allocated: ``a``, ``b`` and ``c`` are the
    addresses of the first elements (:func:`address` plus 4 bytes per element of offset), ``lda``, ``ldb`` and
    ``ldc`` the row strides in elements, ``m, n, k >= 1``, every stride at least its row's length and below
    2^31. ``op(A)`` is ``A`` (``m x k``) or, with ``transpose_a``, the transpose of the stored ``k x m`` matrix.
    Anything else is undefined behaviour: external callers use :func:`gemm_accumulate`.
    """
    _CBLAS_SGEMM(_ROW_MAJOR, _TRANS if transpose_a else _NO_TRANS, _NO_TRANS, m, n, k, 1.0, a, lda, b, ldb,
                 1.0 if accumulate else 0.0, c, ldc)


def _check_view(array: np.ndarray, offset: int, rows: int, cols: int, stride: int, name: str) -> None:
    if array.dtype != np.float32 or not array.flags.c_contiguous:
        raise ValueError(f"{name} must be a C-contiguous float32 array")
    if rows > 0 and cols > 0 and (offset < 0 or offset + (rows - 1) * stride + cols > array.size):
        raise ValueError(f"{name}: a {rows}x{cols} view with row stride {stride} at offset {offset} "
                         f"exceeds the buffer of {array.size} elements")
    if stride < cols or max(stride, rows, cols) > _INT_MAX:
        raise ValueError(f"{name}: row stride {stride} must be >= {cols} columns and fit in 32 bits")


def gemm_accumulate(
    out: np.ndarray, out_offset: int, out_stride: int,
    a: np.ndarray, a_offset: int, a_stride: int,
    b: np.ndarray, b_offset: int, b_stride: int,
    m: int, n: int, k: int, accumulate: bool,
) -> None:
    """Compute ``C = A @ B`` or ``C += A @ B`` on row-major float32 views.

    Parameters
    ----------
    out, a, b : numpy.ndarray
        C-contiguous float32 buffers that hold C (m x n), A (m x k) and B (k x n).
    out_offset, a_offset, b_offset : int
        Element offset of each matrix's first element in its buffer.
    out_stride, a_stride, b_stride : int
        Row stride (leading dimension) of each matrix, in elements.
    m, n, k : int
        Matrix dimensions.
    accumulate : bool
        Add into ``C`` (BLAS ``beta = 1``) instead of overwriting it.

    Raises
    ------
    ValueError
        If a view does not fit in its buffer. Bounds are checked here because BLAS would not check them.
    """
    if m == 0 or n == 0:
        return
    _check_view(out, out_offset, m, n, out_stride, "C")
    if k == 0:
        if not accumulate:
            flat = out.reshape(-1)[out_offset:]
            np.lib.stride_tricks.as_strided(flat, shape=(m, n), strides=(4 * out_stride, 4))[...] = 0
        return
    _check_view(a, a_offset, m, k, a_stride, "A")
    _check_view(b, b_offset, k, n, b_stride, "B")
    sgemm(m, n, k, address(a) + 4 * a_offset, a_stride, address(b) + 4 * b_offset, b_stride,
          address(out) + 4 * out_offset, out_stride, accumulate)
