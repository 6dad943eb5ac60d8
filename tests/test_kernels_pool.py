"""Pooling kernels (through the layer specs, which turn ceil_mode into explicit padding) against references."""

import itertools

import numpy as np
import pytest
import reference
from conftest import oracle, random_array

from dcnn.errors import ShapeError
from dcnn.exec.forward import compile_layer
from dcnn.kernels.pool import adaptive_avg_pool2d, adaptive_bins, adaptive_max_pool2d, avg_pool2d, max_pool2d, pad2d
from dcnn.network.layers import AvgPool2d, MaxPool2d

CASES = [(k, s, p, ceil) for k, s, p, ceil in itertools.product((1, 2, 3, 4), (1, 2, 3), (0, 1, 2), (False, True))
         if p <= k // 2]


@pytest.mark.parametrize("size", [(7, 9), (13, 13), (6, 5)])
@pytest.mark.parametrize("kernel,stride,padding,ceil", CASES)
def test_max_pool_matches_reference(rng, size, kernel, stride, padding, ceil):
    x = random_array(rng, 2, 3, *size)
    layer = MaxPool2d(kernel, stride, padding, ceil_mode=ceil)
    expected = reference.pool2d(x, (kernel,) * 2, (stride,) * 2, (padding,) * 2, ceil, "max")
    actual = compile_layer("pool", layer, {})(x)
    assert actual.shape == expected.shape == (2, 3, *layer.output_shape((3, *size))[1:])
    np.testing.assert_array_equal(actual, expected.astype(np.float32))


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("size", [(7, 9), (6, 5)])
@pytest.mark.parametrize("kernel,stride,padding,ceil", CASES)
def test_avg_pool_matches_reference(rng, size, kernel, stride, padding, ceil, count_include_pad):
    x = random_array(rng, 2, 3, *size)
    layer = AvgPool2d(kernel, stride, padding, ceil_mode=ceil, count_include_pad=count_include_pad)
    expected = reference.pool2d(x, (kernel,) * 2, (stride,) * 2, (padding,) * 2, ceil, "avg", count_include_pad)
    actual = compile_layer("pool", layer, {})(x)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_dilated_max_pool(rng):
    x = random_array(rng, 1, 2, 11, 10)
    expected = reference.pool2d(x, (3, 2), (2, 1), (1, 1), False, "max", dilation=(2, 3))
    np.testing.assert_array_equal(max_pool2d(x, (3, 2), (2, 1), 1, (2, 3)), expected.astype(np.float32))


def test_asymmetric_padding_never_wins_max(rng):
    x = -np.abs(random_array(rng, 1, 1, 4, 4)) - 1
    out = max_pool2d(x, (2, 2), (2, 2), (1, 0, 0, 1))
    assert np.all(out < 0), "padding must hold -inf, not 0"


def test_avg_pool_counted_padding_subset(rng):
    x = random_array(rng, 1, 1, 5, 5)
    # Pad 1 on every side, but count only the top and left padding in the divisor.
    out = avg_pool2d(x, (3, 3), (1, 1), 1, counted_padding=(1, 0, 1, 0))
    padded = np.pad(x[0, 0].astype(np.float64), 1)
    counted = np.zeros((7, 7))
    counted[0:6, 0:6] = 1
    for i in range(5):
        for j in range(5):
            assert out[0, 0, i, j] == pytest.approx(padded[i:i + 3, j:j + 3].sum() / counted[i:i + 3, j:j + 3].sum(),
                                                    rel=1e-5)


def test_pool_window_larger_than_map():
    with pytest.raises(ShapeError, match="smaller than the 3x3 pooling window"):
        max_pool2d(np.zeros((1, 1, 2, 2), np.float32), (3, 3), (1, 1))


@pytest.mark.parametrize("size,bins", [((7, 7), (7, 7)), ((14, 12), (7, 6)), ((13, 11), (6, 6)), ((5, 3), (7, 7)),
                                       ((1, 1), (6, 6)), ((9, 10), (4, 3))])
def test_adaptive_avg_pool_matches_reference(rng, size, bins):
    x = random_array(rng, 2, 3, *size)
    np.testing.assert_allclose(adaptive_avg_pool2d(x, bins), reference.adaptive_avg_pool2d(x, bins),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size,bins", [((3, 5), (7, 7)), ((13, 11), (6, 6)), ((14, 12), (7, 6))])
@pytest.mark.parametrize("value", [1e20, np.inf, -np.inf, np.nan])
def test_adaptive_avg_pool_bins_never_see_values_outside_them(rng, size, bins, value):
    """Regression: a summed-area table spread one 1e20 (every other bin 0), inf or NaN (35 and 36 bins of 49
    non-finite) from its bin to the others; PyTorch's bins see only their own values."""
    torch = oracle("torch")
    x = random_array(rng, 1, 2, *size)
    x[0, 1, size[0] // 2, 1] = value
    expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x), bins).numpy()
    actual = adaptive_avg_pool2d(x, bins)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(actual), np.isinf(expected))
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6)
    assert np.isfinite(actual[0, 0]).all()


def test_adaptive_bins_cover_the_map():
    start, stop = adaptive_bins(13, 6)
    assert start[0] == 0 and stop[-1] == 13
    assert np.all(stop > start) and np.all(start[1:] <= stop[:-1])


@pytest.mark.parametrize("size,output_size", [((5, 7), (1, 1)), ((9, 6), (4, 3)), ((7, 7), (3, 5))])
def test_adaptive_max_pool_matches_pytorch(rng, size, output_size):
    torch = oracle("torch")
    x = random_array(rng, 2, 3, *size)
    expected = torch.nn.functional.adaptive_max_pool2d(torch.from_numpy(x), output_size).numpy()
    np.testing.assert_array_equal(adaptive_max_pool2d(x, output_size), expected)


def test_pad2d_fills_each_side_with_the_value(rng):
    x = random_array(rng, 1, 2, 3, 4)
    padded = pad2d(x, (1, 0, 2, 3), -1.5)
    np.testing.assert_array_equal(padded, np.pad(x, ((0, 0), (0, 0), (1, 0), (2, 3)), constant_values=-1.5))
    unpadded = pad2d(x, (0, 0, 0, 0))
    assert unpadded is not x and np.array_equal(unpadded, x)
