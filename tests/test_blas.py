"""The raw GEMM wrapper: strided views, accumulation and bounds checks."""

import numpy as np
import pytest
from conftest import random_array

from dcnn.kernels import blas
from dcnn.kernels.blas import gemm_accumulate


def test_gemm_on_strided_views(rng):
    a_buffer, b_buffer = random_array(rng, 7 * 11), random_array(rng, 5 * 13 + 3)
    out = random_array(rng, 6 * 9)
    initial = out.copy()
    a = np.lib.stride_tricks.as_strided(a_buffer[2:], shape=(4, 5), strides=(11 * 4, 4))
    b = np.lib.stride_tricks.as_strided(b_buffer[3:], shape=(5, 6), strides=(13 * 4, 4))
    gemm_accumulate(out, 1, 9, a_buffer, 2, 11, b_buffer, 3, 13, 4, 6, 5, accumulate=True)
    c = np.lib.stride_tricks.as_strided(out[1:], shape=(4, 6), strides=(9 * 4, 4))
    c_initial = np.lib.stride_tricks.as_strided(initial[1:], shape=(4, 6), strides=(9 * 4, 4))
    np.testing.assert_allclose(c, c_initial + a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    # Elements outside the C view are untouched.
    mask = np.ones(out.size, bool)
    for row in range(4):
        mask[1 + row * 9:1 + row * 9 + 6] = False
    np.testing.assert_array_equal(out[mask], initial[mask])


def test_gemm_overwrite_and_empty_inner_dimension(rng):
    a, b, out = random_array(rng, 6), random_array(rng, 6), random_array(rng, 4)
    gemm_accumulate(out, 0, 2, a, 0, 3, b, 0, 2, 2, 2, 3, accumulate=False)
    np.testing.assert_allclose(out.reshape(2, 2), a.reshape(2, 3) @ b.reshape(3, 2), rtol=1e-5)
    gemm_accumulate(out, 0, 2, a, 0, 3, b, 0, 2, 2, 2, 0, accumulate=False)
    np.testing.assert_array_equal(out, 0)


def test_gemm_rejects_views_outside_the_buffer(rng):
    a, b, out = random_array(rng, 6), random_array(rng, 6), random_array(rng, 4)
    with pytest.raises(ValueError, match="exceeds the buffer"):
        gemm_accumulate(out, 1, 2, a, 0, 3, b, 0, 2, 2, 2, 3, accumulate=False)
    with pytest.raises(ValueError, match="row stride"):
        gemm_accumulate(out, 0, 2, a, 0, 2, b, 0, 2, 2, 2, 3, accumulate=False)
    with pytest.raises(ValueError, match="float32"):
        gemm_accumulate(out, 0, 2, a.astype(np.float64), 0, 3, b, 0, 2, 2, 2, 3, accumulate=False)


def test_sgemm_by_address_and_the_fortran_fallback_agree_with_float64(rng):
    """The unchecked call (kernels' own buffers) and SciPy's Cython sgemm, the fallback when no OpenBLAS with
    cblas_sgemm is loaded: row-major views with leading dimensions larger than their rows, with and without
    accumulation."""
    a, b = random_array(rng, 5, 9), random_array(rng, 7, 13)
    for call in (blas._CBLAS_SGEMM, blas._fortran_sgemm()):
        out = random_array(rng, 6, 8)
        initial = out.copy()
        # C[1:5, 2:8] (+)= A[:4, 1:8] @ B[:7, 3:9]
        call(101, 111, 111, 4, 6, 7, 1.0, blas.address(a) + 4, 9, blas.address(b) + 12, 13,
             1.0, blas.address(out) + 4 * 10, 8)
        expected = initial[1:5, 2:8] + a[:4, 1:8].astype(np.float64) @ b[:7, 3:9]
        np.testing.assert_allclose(out[1:5, 2:8], expected, rtol=1e-5, atol=1e-5)
        outside = np.ones(out.shape, bool)
        outside[1:5, 2:8] = False
        np.testing.assert_array_equal(out[outside], initial[outside])
    out = np.empty((4, 6), np.float32)
    blas.sgemm(4, 6, 7, blas.address(a) + 4, 9, blas.address(b) + 12, 13, blas.address(out), 6, False)
    np.testing.assert_allclose(out, a[:4, 1:8].astype(np.float64) @ b[:7, 3:9], rtol=1e-5, atol=1e-5)


def test_sgemm_of_a_transposed_a_on_both_interfaces(rng):
    """C (+)= A^T B with A stored k x m (a row stride larger than its rows), on cblas_sgemm, on the Fortran
    fallback, and through :func:`blas.sgemm`."""
    a, b = random_array(rng, 8, 9), random_array(rng, 7, 13)
    expected = a[:7, 2:6].T.astype(np.float64) @ b[:7, 3:9]  # op(A) = A[:7, 2:6]^T: 4 x 7
    for call in (blas._CBLAS_SGEMM, blas._fortran_sgemm()):
        out = np.zeros((4, 6), np.float32)
        call(101, 112, 111, 4, 6, 7, 1.0, blas.address(a) + 8, 9, blas.address(b) + 12, 13, 0.0,
             blas.address(out), 6)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    out = np.ones((4, 6), np.float32)
    blas.sgemm(4, 6, 7, blas.address(a) + 8, 9, blas.address(b) + 12, 13, blas.address(out), 6, True,
               transpose_a=True)
    np.testing.assert_allclose(out, 1 + expected, rtol=1e-5, atol=1e-5)


def test_the_sgemm_comes_from_a_loaded_blas():
    from threadpoolctl import threadpool_info

    loaded = {info["filepath"] for info in threadpool_info()}
    assert blas.BLAS_LIBRARY in loaded or blas.BLAS_LIBRARY == blas._cython_blas.__file__
