"""The raw GEMM wrapper: strided views, accumulation and bounds checks."""

import numpy as np
import pytest
from conftest import random_array

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
