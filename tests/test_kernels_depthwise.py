"""Depthwise and pointwise kernels against the direct-loop reference, and the kernel choice."""

import itertools

import numpy as np
import pytest
import reference
from conftest import random_array

from dcnn.kernels import depthwise, threads
from dcnn.kernels.conv import Conv2dKernel, Workspace
from dcnn.kernels.depthwise import DepthwiseConv2dKernel, PointwiseConv2dKernel, conv_kernel
from dcnn.network.window import normalize_padding

GEOMETRY = list(itertools.product(
    [(1, 1), (3, 3), (2, 3), (5, 5)],              # kernel
    [(1, 1), (2, 2), (1, 2)],                       # stride
    [(0, 0, 0, 0), (1, 1, 1, 1), (2, 0, 1, 3)],     # padding (top, bottom, left, right)
    [(1, 1), (2, 2)],                               # dilation
))


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("kernel,stride,padding,dilation", GEOMETRY)
def test_depthwise_matches_reference(rng, multiplier, kernel, stride, padding, dilation):
    channels = 5
    x = random_array(rng, 2, channels, 11, 9)
    weight = random_array(rng, channels * multiplier, 1, *kernel)
    bias = random_array(rng, channels * multiplier)
    expected = reference.conv2d(x, weight, bias, stride, padding, dilation, channels)
    actual = DepthwiseConv2dKernel(weight, bias, stride, dilation, channels)(x, padding, Workspace())
    assert actual.dtype == np.float32 and actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (3, 2)])
@pytest.mark.parametrize("padding", [(0, 0, 0, 0), (1, 0, 2, 1)])
@pytest.mark.parametrize("relu", [False, True])
def test_pointwise_matches_reference(rng, stride, padding, relu):
    x = random_array(rng, 3, 7, 10, 13)
    weight = random_array(rng, 6, 7, 1, 1)
    bias = random_array(rng, 6)
    expected = reference.conv2d(x, weight, bias, stride, padding, (1, 1), 1)
    actual = PointwiseConv2dKernel(weight, bias, stride, relu=relu)(x, padding)
    np.testing.assert_allclose(actual, np.maximum(expected, 0) if relu else expected, rtol=1e-4, atol=1e-4)


def test_threads_give_the_same_result(rng):
    x = random_array(rng, 2, 12, 40, 37)
    depthwise = DepthwiseConv2dKernel(random_array(rng, 12, 1, 3, 3), None, (1, 1), (1, 1), 12, relu=True)
    pointwise = PointwiseConv2dKernel(random_array(rng, 9, 12, 1, 1), random_array(rng, 9))
    single = depthwise(x, 1), pointwise(x)
    threads.set_num_threads(3)
    try:
        np.testing.assert_array_equal(depthwise(x, 1), single[0])
        np.testing.assert_allclose(pointwise(x), single[1], rtol=1e-6, atol=1e-6)
    finally:
        threads.set_num_threads(1)


def test_conv_kernel_picks_by_shape(rng):
    def pick(out_channels, group_channels, kernel, groups):
        return type(conv_kernel(random_array(rng, out_channels, group_channels, *kernel), None, (1, 1), (1, 1),
                                groups))

    assert pick(8, 1, (3, 3), 8) is DepthwiseConv2dKernel
    assert pick(16, 1, (3, 3), 8) is DepthwiseConv2dKernel
    assert pick(8, 4, (1, 1), 1) is PointwiseConv2dKernel
    assert pick(8, 4, (1, 1), 2) is Conv2dKernel
    assert pick(8, 4, (3, 3), 1) is Conv2dKernel


@pytest.mark.parametrize("stride,padding", [((1, 1), 0), ((1, 1), (1, 1, 1, 1)), ((2, 2), (0, 1, 0, 1))])
@pytest.mark.parametrize("cap", [np.inf, 6.0])
def test_depthwise_at_batch_one_with_a_capped_relu(rng, stride, padding, cap):
    """Batch 1 without padding reads the input itself as its phase plane; the ReLU (ReLU6) is applied per pass."""
    x = 3 * random_array(rng, 1, 7, 12, 9)
    weight, bias = random_array(rng, 7, 1, 3, 3), random_array(rng, 7)
    expected = reference.conv2d(x, weight, bias, stride, normalize_padding(padding), (1, 1), 7)
    actual = DepthwiseConv2dKernel(weight, bias, stride, (1, 1), 7, relu=True, relu_cap=cap)(x, padding)
    np.testing.assert_allclose(actual, np.clip(expected, 0, cap), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("out_channels", [600, 1030])
def test_pointwise_in_blocks_of_output_channels(rng, out_channels):
    """Wide layers run as 2 or 4 row blocks, each a GEMM over the whole map; a ReLU6 is fused; the blocks do not
    depend on the thread count, so neither does any value."""
    x = random_array(rng, 2, 20, 5, 6)
    weight, bias = random_array(rng, out_channels, 20, 1, 1), random_array(rng, out_channels)
    kernel = PointwiseConv2dKernel(weight, bias, relu=True, relu_cap=6.0)
    expected = reference.conv2d(x, weight, bias, (1, 1), (0, 0, 0, 0), (1, 1), 1)
    single = kernel(x)
    np.testing.assert_allclose(single, np.clip(expected, 0, 6), rtol=1e-4, atol=1e-4)
    threads.set_num_threads(3)
    try:
        np.testing.assert_array_equal(kernel(x), single)
    finally:
        threads.set_num_threads(1)


@pytest.mark.parametrize("passes", ["cache", "one channel"])
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("kernel,stride,padding,dilation", GEOMETRY)
def test_depthwise_channels_last_equals_channels_first(rng, monkeypatch, passes, multiplier, kernel, stride, padding,
                                                       dilation):
    """A map of few pixels per channel (170 channels here), and any map at horizontal stride 1, runs channels-last
    (einsum); it must give the bits of the same channels run 5 at a time channels-first (checked against the
    reference above), also in channels-first passes of one channel."""
    if passes != "cache":
        monkeypatch.setattr(depthwise, "DEPTHWISE_CACHE_SCALE", 0)
    channels, group = 170, 5
    x = random_array(rng, 2, channels, 11, 9)
    weight = random_array(rng, channels * multiplier, 1, *kernel)
    bias = random_array(rng, channels * multiplier)
    whole = DepthwiseConv2dKernel(weight, bias, stride, dilation, channels, relu=True, relu_cap=1.0)(x, padding)
    rows = group * multiplier
    monkeypatch.setattr(DepthwiseConv2dKernel, "_runs_channels_last", lambda self, x, pixels: False)
    parts = [DepthwiseConv2dKernel(weight[first * multiplier:first * multiplier + rows],
                                   bias[first * multiplier:first * multiplier + rows], stride, dilation, group,
                                   relu=True, relu_cap=1.0)(x[:, first:first + group], padding)
             for first in range(0, channels, group)]
    np.testing.assert_array_equal(whole, np.concatenate(parts, axis=1))


def _channels_last(x: np.ndarray) -> np.ndarray:
    """The ``(B, C, H, W)`` view of a C-contiguous ``(B, H, W, C)`` copy of ``x``."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("stride,padding", [((1, 1), (1, 1, 1, 1)), ((2, 2), (1, 1, 1, 1)), ((2, 1), (0, 2, 1, 0)),
                                            ((1, 2), (2, 1, 0, 1))])
@pytest.mark.parametrize("channels", [19, 37])
def test_depthwise_channels_last_paths_against_float64(rng, stride, padding, channels):
    """The einsum paths (whole rows at horizontal stride 1, per pixel otherwise) on odd maps and channel counts that
    are no multiple of a SIMD width, from either input layout: equal to the float64 reference within float32
    rounding, the same bits from both layouts, and a channels-last output."""
    x = 3 * random_array(rng, 2, channels, 13, 11)
    weight, bias = random_array(rng, channels, 1, 3, 3), random_array(rng, channels)
    kernel = DepthwiseConv2dKernel(weight, bias, stride, (1, 1), channels, relu=True, relu_cap=6.0)
    expected = np.clip(reference.conv2d(x, weight, bias, stride, padding, (1, 1), channels), 0, 6)
    assert kernel._runs_channels_last(_channels_last(x), expected.shape[2] * expected.shape[3])
    from_last = kernel(_channels_last(x), padding, Workspace())
    np.testing.assert_allclose(from_last, expected, rtol=1e-5, atol=1e-5)
    assert from_last.transpose(0, 2, 3, 1).flags.c_contiguous
    np.testing.assert_array_equal(kernel(x, padding, Workspace()), from_last)


@pytest.mark.parametrize("stride", [(1, 1), (2, 2)])
def test_depthwise_channels_last_threads_give_the_same_bits(rng, stride):
    """Blocks of output rows on 1, 2 or 3 kernel threads: every output sums its taps in the same order."""
    x = _channels_last(random_array(rng, 2, 21, 15, 13))
    kernel = DepthwiseConv2dKernel(random_array(rng, 21, 1, 3, 3), random_array(rng, 21), stride, (1, 1), 21,
                                   relu=True, relu_cap=6.0)
    single = kernel(x, 1)
    try:
        for count in (2, 3):
            threads.set_num_threads(count)
            np.testing.assert_array_equal(kernel(x, 1), single)
    finally:
        threads.set_num_threads(1)


@pytest.mark.parametrize("stride", [(1, 1), (2, 2), (2, 3)])
@pytest.mark.parametrize("out_channels", [13, 600])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_layout_is_the_kernels(rng, stride, out_channels, channels_last):
    """A pointwise kernel computes in its own layout whatever the input's (an input in the other one is copied):
    both layouts of an input give the same bits (a fused tile's assembled NCHW input gets the whole map's values),
    equal to the float64 reference, at 1 and 3 threads alike (blocks of output channels for 600), and a
    channels-last kernel returns a channels-last output."""
    x = random_array(rng, 2, 23, 9, 11)
    weight, bias = random_array(rng, out_channels, 23, 1, 1), random_array(rng, out_channels)
    kernel = PointwiseConv2dKernel(weight, bias, stride, relu=True, relu_cap=6.0, channels_last=channels_last)
    expected = np.clip(reference.conv2d(x, weight, bias, stride, (0, 0, 0, 0), (1, 1), 1), 0, 6)
    single = kernel(x)
    np.testing.assert_allclose(single, expected, rtol=1e-5, atol=1e-5)
    assert (single.transpose(0, 2, 3, 1) if channels_last else single).flags.c_contiguous
    np.testing.assert_array_equal(kernel(_channels_last(x)), single)
    threads.set_num_threads(3)
    try:
        np.testing.assert_array_equal(kernel(x), single)
    finally:
        threads.set_num_threads(1)


def test_depthwise_keeps_the_tiled_taps_of_a_few_widths_only(rng):
    """A folder of many image sizes once kept one tiled copy of the taps per output width, without bound."""
    channels = 4
    weight, bias = random_array(rng, channels, 1, 3, 3), random_array(rng, channels)
    kernel = DepthwiseConv2dKernel(weight, bias, (1, 1), (1, 1), channels)
    widths = range(3, 3 + 3 * depthwise.ROW_TAPS_WIDTHS)
    for width in [*widths, widths[0]]:  # the first width again, after it was dropped
        x = random_array(rng, 1, channels, 4, width)
        expected = reference.conv2d(x, weight, bias, (1, 1), (1, 1, 1, 1), (1, 1), channels)
        np.testing.assert_allclose(kernel(x, 1, Workspace()), expected, rtol=1e-4, atol=1e-4)
        assert len(kernel._row_taps_by_width) <= depthwise.ROW_TAPS_WIDTHS
    kept = list(kernel._row_taps_by_width)
    assert kept[-1] == widths[0] and kept[:-1] == list(widths[-depthwise.ROW_TAPS_WIDTHS + 1:])


def test_depthwise_row_taps_from_several_threads(rng):
    """Task threads share a compiled network's kernels: concurrent widths get their own taps, the cache stays
    bounded."""
    import concurrent.futures

    channels = 3
    weight, bias = random_array(rng, channels, 1, 2, 3), random_array(rng, channels)
    kernel = DepthwiseConv2dKernel(weight, bias, (1, 1), (1, 1), channels)
    taps_hwc = np.asarray(weight, np.float32).reshape(channels, 6).T.reshape(2, 3, channels)

    def check(width: int) -> bool:
        taps, tiled_bias = kernel._row_taps(width)
        return np.array_equal(taps, np.tile(taps_hwc, (1, 1, width))) and np.array_equal(
            tiled_bias, np.tile(bias, width))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert all(pool.map(check, [1 + i % (2 * depthwise.ROW_TAPS_WIDTHS) for i in range(400)]))
    assert len(kernel._row_taps_by_width) <= depthwise.ROW_TAPS_WIDTHS
