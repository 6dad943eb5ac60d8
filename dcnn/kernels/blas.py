"""Direct access to single-precision GEMM with arbitrary leading dimensions and accumulation.

``numpy.matmul`` cannot accumulate into its output (BLAS ``beta = 1``) and copies operands whose rows are
not laid out the way it expects. Convolution as a sum of shifted GEMMs needs both, so this module calls the
``sgemm`` that SciPy exports for Cython (:mod:`scipy.linalg.cython_blas`) through :mod:`ctypes`. The function
pointer is part of SciPy's public Cython API, so no private symbol names are involved.

All matrices here are row-major (C order) float32 views into numpy buffers, described by a base array, an
element offset into it and a row stride (leading dimension) in elements.
"""

from __future__ import annotations

import ctypes

import numpy as np
import scipy.linalg.cython_blas as _cython_blas

__all__ = ["gemm_accumulate"]

_capsule = _cython_blas.__pyx_capi__["sgemm"]
_get_name = ctypes.pythonapi.PyCapsule_GetName
_get_name.restype = ctypes.c_char_p
_get_name.argtypes = [ctypes.py_object]
_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]

_P = ctypes.c_void_p
_SGEMM = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P)(
    _get_pointer(_capsule, _get_name(_capsule))
)
_INT_MAX = 2**31 - 1
_ONE = ctypes.c_float(1.0)
_ZERO = ctypes.c_float(0.0)


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
    # Row-major C = A B is column-major C^T = B^T A^T, which is what Fortran sgemm computes with 'N', 'N'.
    _SGEMM(
        b"N", b"N",
        ctypes.byref(ctypes.c_int(n)), ctypes.byref(ctypes.c_int(m)), ctypes.byref(ctypes.c_int(k)),
        ctypes.byref(_ONE),
        _P(b.ctypes.data + 4 * b_offset), ctypes.byref(ctypes.c_int(b_stride)),
        _P(a.ctypes.data + 4 * a_offset), ctypes.byref(ctypes.c_int(a_stride)),
        ctypes.byref(_ONE if accumulate else _ZERO),
        _P(out.ctypes.data + 4 * out_offset), ctypes.byref(ctypes.c_int(out_stride)),
    )
