"""The GEMM convolution against the direct-loop reference over a grid of settings and odd sizes."""

import itertools

import numpy as np
import pytest
import reference
from conftest import random_array

from dcnn.errors import ShapeError
from dcnn.kernels import conv, threads, winograd
from dcnn.kernels.conv import (
    EXACT_METHODS,
    METHODS,
    Conv2dKernel,
    Workspace,
    choose_method,
    column_winograd_applies,
    conv2d,
    set_exact,
    winograd_applies,
)

# (in channels, out channels, groups): thin RGB-like inputs take im2col, wider ones the shifted GEMMs, thin
# outputs (one channel per group) the shifted-output products.
CHANNELS = [(3, 5, 1), (16, 7, 1), (32, 8, 2), (18, 6, 3), (16, 16, 16), (32, 2, 2)]
STRIDES = [(1, 1), (2, 2), (2, 1)]
PADDINGS = [(0, 0, 0, 0), (1, 1, 1, 1), (2, 0, 1, 3)]  # (top, bottom, left, right)
GEOMETRY = list(itertools.product([(1, 1), (3, 3), (2, 3), (5, 5)], STRIDES, PADDINGS, [(1, 1), (2, 2)]))
# Every geometry (kernel, stride, padding, dilation) with two channel settings, three apart, chosen by stride and
# padding: each channel setting meets every kernel, stride, padding and dilation (all pairs), and each case runs
# every method. The full product (432 cases) repeated the geometry-independent channel and group handling.
CASES = [(channels, *geometry) for geometry in GEOMETRY
         for shift in (0, 3)
         for channels in [CHANNELS[(STRIDES.index(geometry[1]) + PADDINGS.index(geometry[2]) + shift) % 6]]]


def applicable_methods(kernel, stride, dilation=(1, 1), groups=1) -> list[str]:
    """Every formulation that can compute this geometry."""
    fast = {"winograd": winograd_applies(kernel, stride, dilation, groups),
            "winograd-rows": column_winograd_applies(kernel, stride, dilation, groups)}
    return [method for method in METHODS if fast.get(method, True)]


@pytest.mark.parametrize("channels,kernel,stride,padding,dilation", CASES)
def test_conv_matches_reference(rng, channels, kernel, stride, padding, dilation):
    in_channels, out_channels, groups = channels
    x = random_array(rng, 2, in_channels, 11, 9)
    weight = random_array(rng, out_channels, in_channels // groups, *kernel)
    bias = random_array(rng, out_channels)
    expected = reference.conv2d(x, weight, bias, stride, padding, dilation, groups)
    actual = conv2d(x, weight, bias, stride, padding, dilation, groups)
    assert actual.dtype == np.float32
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    # Every formulation that applies, not only the one chosen for these channels.
    for method in applicable_methods(kernel, stride, dilation, groups):
        forced = Conv2dKernel(weight, bias, stride, dilation, groups, method=method)(x, padding)
        np.testing.assert_allclose(forced, expected, rtol=1e-4, atol=1e-4, err_msg=method)


@pytest.mark.parametrize("height,width", [(1, 1), (2, 7), (13, 5), (31, 33)])
def test_conv_odd_sizes_and_no_bias(rng, height, width):
    x = random_array(rng, 3, 20, height, width)
    weight = random_array(rng, 6, 20, 3, 3)
    expected = reference.conv2d(x, weight, None, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    np.testing.assert_allclose(conv2d(x, weight, padding=1), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [(1, 1), (2, 2)])
def test_all_methods_agree_on_large_layer(rng, stride):
    """Chunking spans many chunks here; the three formulations must agree."""
    x = random_array(rng, 2, 24, 70, 45)
    weight = random_array(rng, 40, 24, 3, 3)
    bias = random_array(rng, 40)
    methods = applicable_methods((3, 3), stride)
    results = [Conv2dKernel(weight, bias, stride, relu=True, method=m)(x, 1) for m in methods]
    for method, result in zip(methods[1:], results[1:]):
        np.testing.assert_allclose(result, results[0], rtol=1e-4, atol=1e-3, err_msg=method)


@pytest.mark.parametrize("in_channels,out_channels,stride,kernel,expected", [
    (3, 64, (1, 1), 3, "im2col"), (3, 16, (2, 2), 3, "shifted"), (16, 32, (2, 2), 3, "shifted"),
    (45, 45, (1, 1), 5, "winograd-rows"), (32, 45, (1, 1), 5, "winograd-rows"), (15, 45, (1, 1), 5, "rows"),
    (32, 32, (2, 2), 5, "winograd-rows"), (45, 45, (1, 1), 3, "winograd"), (16, 16, (1, 1), 3, "winograd"),
    (16, 15, (1, 1), 3, "shifted"), (45, 1, (1, 1), 3, "shifted-output"), (3, 1, (1, 1), 3, "im2col"),
    (3, 16, (2, 2), 5, "winograd-rows"), (3, 16, (1, 1), 5, "rows"), (16, 32, (2, 2), 5, "winograd-rows"),
    (32, 64, (1, 1), 5, "shifted"),
    (45, 1, (1, 1), 9, "shifted-output")])
def test_choose_method(in_channels, out_channels, stride, kernel, expected):
    assert choose_method(in_channels, out_channels, stride, (kernel, kernel)) == expected
    weight = np.zeros((out_channels, in_channels, kernel, kernel), np.float32)
    assert Conv2dKernel(weight, stride=stride).method == expected
    assert choose_method(in_channels, out_channels, stride, (kernel, kernel), (2, 2)) != "winograd"
    assert choose_method(in_channels * 2, out_channels * 2, stride, (kernel, kernel), groups=2) != "winograd"


@pytest.mark.parametrize("channels,map_size,expected", [
    (512, (7, 7), "im2col"), (256, (14, 14), "im2col"), (512, (14, 14), "winograd"), (128, (28, 28), "winograd"),
    (64, (56, 56), "winograd"), (512, None, "winograd")])
def test_winograd_only_on_maps_where_it_pays(rng, channels, map_size, expected):
    """A small map's few tiles do not pay for Winograd's transforms and 4x filters: one im2col GEMM instead
    (ResNet-50's 7x7 and 14x14 layers); both agree with the reference."""
    assert choose_method(channels, channels, (1, 1), (3, 3), map_size=map_size) == expected
    weight = random_array(rng, 20, 18, 3, 3)
    x = random_array(rng, 1, 18, 7, 6)
    kernel = Conv2dKernel(weight, stride=(1, 1), map_size=(7, 6))
    assert kernel.method == "im2col"
    np.testing.assert_allclose(kernel(x, 1), reference.conv2d(x, weight, None, (1, 1), (1, 1, 1, 1), (1, 1), 1),
                               rtol=1e-4, atol=1e-4)


def test_exact_mode_never_chooses_winograd():
    weight = np.zeros((32, 32, 3, 3), np.float32)
    tall = np.zeros((45, 32, 5, 5), np.float32)
    try:
        set_exact(True)
        assert Conv2dKernel(weight).method == "shifted"
        assert Conv2dKernel(tall).method == "rows"
    finally:
        set_exact(False)
    assert Conv2dKernel(weight).method == "winograd"
    assert Conv2dKernel(tall).method == "winograd-rows"


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="convolution method"):
        Conv2dKernel(np.zeros((2, 3, 3, 3), np.float32), method="fft")


@pytest.mark.parametrize("kernel,stride,dilation,groups", [(5, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 1), (3, 1, 1, 2)])
def test_winograd_on_another_geometry_is_refused(kernel, stride, dilation, groups):
    with pytest.raises(ValueError, match="winograd convolution method needs a 3x3 filter"):
        Conv2dKernel(np.zeros((4, 4 // groups, kernel, kernel), np.float32), stride=(stride, stride),
                     dilation=(dilation, dilation), groups=groups, method="winograd")


@pytest.mark.parametrize("kernel,stride,dilation,groups", [(3, 1, 1, 1), ((5, 3), 1, 1, 1), (5, 3, 1, 1),
                                                             (7, 2, 1, 1), (5, 1, 2, 1), (5, 1, 1, 2)])
def test_winograd_rows_on_another_geometry_is_refused(kernel, stride, dilation, groups):
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    with pytest.raises(ValueError, match="winograd-rows convolution method needs a filter 5 tall"):
        Conv2dKernel(np.zeros((4, 4 // groups, kh, kw), np.float32), stride=(stride, stride),
                     dilation=(dilation, dilation), groups=groups, method="winograd-rows")


def test_minimal_filtering_gives_lavin_and_grays_f43_and_an_exact_f45():
    """The Toom-Cook construction reproduces Lavin and Gray's F(4, 3) matrices and, in float64, computes F(4, 5)
    at the column points to rounding."""
    at, g, bt = winograd.minimal_filtering((0, 1, -1, 2, -2), 4, 3)
    np.testing.assert_array_equal(bt, [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                                       [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])
    np.testing.assert_array_equal(g[:3], [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6]])
    np.testing.assert_array_equal(at[3], [0, 1, -1, 8, -8, 1])
    rng = np.random.default_rng(5)
    at, g, bt = winograd.minimal_filtering(winograd.COLUMN_POINTS, winograd.COLUMN_TILE, 5)
    d, taps = rng.standard_normal((8, 3)), rng.standard_normal((5, 3))
    expected = np.stack([sum(d[i + j] * taps[j] for j in range(5)) for i in range(4)])
    np.testing.assert_allclose(at @ ((g @ taps) * (bt @ d)), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="F\\(4, 3\\) needs 5 distinct points"):
        winograd.minimal_filtering((0, 1, -1, 2, 2), 4, 3)


@pytest.mark.parametrize("batch,channels,out_channels,height,width,padding,bias,stride", [
    (2, 16, 20, 11, 9, 2, True, (1, 1)), (3, 32, 45, 13, 17, (1, 2, 0, 3), True, (1, 1)),
    (1, 16, 16, 5, 5, 0, False, (1, 1)), (2, 17, 33, 23, 6, 2, True, (1, 1)), (1, 45, 45, 1, 1, 2, True, (1, 1)),
    (2, 16, 32, 23, 19, 0, True, (2, 2)), (3, 32, 32, 14, 11, (1, 2, 0, 3), True, (2, 2)),
    (1, 16, 20, 5, 6, 0, False, (2, 2)), (2, 20, 16, 12, 9, 2, True, (2, 1)), (1, 16, 16, 1, 1, 2, True, (2, 2))])
def test_winograd_rows_error_against_float64(rng, batch, channels, out_channels, height, width, padding, bias,
                                             stride):
    """Winograd down the columns (winograd-rows: F(4, 5) at stride 1, F(4, 3) and F(4, 2) on the two row phases
    at stride 2) stays within 1e-5 of the output's largest magnitude against float64 (measured: 1e-6 to 3e-6 on
    these and on the face detector's layers) on odd sizes, paddings, with and without bias; the fused ReLU clips
    the same values."""
    x = random_array(rng, batch, channels, height, width)
    weight = random_array(rng, out_channels, channels, 5, 5)
    b = random_array(rng, out_channels) if bias else None
    expected = reference.conv2d(x.astype(np.float64), weight.astype(np.float64),
                                None if b is None else b.astype(np.float64), stride,
                                conv.normalize_padding(padding), (1, 1), 1)
    kernel = Conv2dKernel(weight, b, stride)
    assert kernel.method == "winograd-rows"
    actual = kernel(x, padding)
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()
    clipped = Conv2dKernel(weight, b, stride, relu=True)(x, padding)
    np.testing.assert_array_equal(clipped, np.maximum(actual, 0))


def at_thread_counts(kernel, x, padding) -> list[np.ndarray]:
    """``kernel(x, padding)`` at 1, 2 and 3 kernel threads."""
    results = []
    try:
        for count in (1, 2, 3):
            threads.set_num_threads(count)
            results.append(kernel(x, padding))
    finally:
        threads.set_num_threads(1)
    return results


@pytest.mark.parametrize("stride", [1, 2])
def test_winograd_rows_at_any_thread_count_and_on_many_chunks(rng, monkeypatch, stride):
    """Bit-identical at 1, 2 and 3 threads and with chunks of one tile row (chunks spanning images); a block of
    the map (its tiles start at its own first row) agrees with the whole map to rounding."""
    x = random_array(rng, 3, 16, 21 * stride, 13)
    kernel = Conv2dKernel(random_array(rng, 24, 16, 5, 5), random_array(rng, 24), (stride, stride), relu=True)
    assert kernel.method == "winograd-rows"
    results = at_thread_counts(kernel, x, 2)
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])
    monkeypatch.setattr(conv, "cache_bytes", lambda level: 1024)
    np.testing.assert_array_equal(kernel(x, 2), results[0])
    # Output rows 8.. read input rows from 8 stride - 2 on (padding 2 above the whole map, none above the block).
    block = kernel(x[:, :, 8 * stride - 2:], (0, 2, 2, 2))
    np.testing.assert_allclose(block, results[0][:, :, 8:], rtol=1e-5, atol=1e-5)


def test_winograd_bias_point_reaches_every_output_of_its_tile_once():
    """The bias enters the products at BIAS_POINT: its output-transform row and column are all ones."""
    row, column = divmod(winograd.BIAS_POINT, winograd.ALPHA)
    np.testing.assert_array_equal(winograd.AT[:, row], 1)
    np.testing.assert_array_equal(winograd.AT[:, column], 1)


@pytest.mark.parametrize("height,width,padding,relu", [(1, 1, 1, False), (3, 3, 0, True), (5, 9, (2, 0, 1, 3), False),
                                                       (17, 14, 1, True)])
def test_winograd_error_against_float64(rng, height, width, padding, relu):
    """F(4x4, 3x3), with its bias in the products and its ReLU in the copy to the output, stays within the bound
    stated in docs/architecture.md: 2e-5 of the output's largest magnitude."""
    x = random_array(rng, 2, 24, height, width)
    weight = random_array(rng, 20, 24, 3, 3)
    bias = random_array(rng, 20)
    expected = reference.conv2d(x.astype(np.float64), weight.astype(np.float64), bias.astype(np.float64), (1, 1),
                                conv.normalize_padding(padding), (1, 1), 1)
    if relu:
        expected = np.maximum(expected, 0)
    actual = Conv2dKernel(weight, bias, relu=relu, method="winograd")(x, padding)
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 2e-5 * np.abs(expected).max()


def test_winograd_keeps_an_overflow_inside_its_image(rng):
    """A non-finite pixel spreads over its 4x4 output tile but never into another image of the batch (images
    are stacked by tile rows, each followed by a spare row of zeros)."""
    x = random_array(rng, 3, 16, 9, 10)
    kernel = Conv2dKernel(random_array(rng, 16, 16, 3, 3), method="winograd")
    alone = [kernel(x[i:i + 1], 1) for i in range(3)]
    x[1, 3, 0, 5] = np.inf
    with np.errstate(invalid="ignore"):  # inf - inf inside the tile
        together = kernel(x, 1)
    assert not np.isfinite(together[1]).all()
    for i in (0, 2):
        assert np.isfinite(together[i]).all()
        np.testing.assert_allclose(together[i], alone[i][0], rtol=1e-6, atol=1e-6)


def test_winograd_on_a_block_agrees_with_the_whole_map(rng):
    """A spatial block's tiles start at the block's corner, not the map's: equal to float32 rounding."""
    x = random_array(rng, 1, 32, 30, 27)
    kernel = Conv2dKernel(random_array(rng, 24, 32, 3, 3), random_array(rng, 24), relu=True)
    assert kernel.method == "winograd"
    whole = kernel(x, 1)
    block = kernel(x[:, :, 12:], (0, 1, 1, 1))  # rows 13.. of the output, the halo row above as input
    np.testing.assert_allclose(block, whole[:, :, 13:], rtol=1e-5, atol=1e-5 * np.abs(whole).max())


@pytest.mark.parametrize("batch,height,width", [(3, 9, 10), (2, 14, 14), (1, 23, 5)])
def test_winograd_bands_across_images_and_threads(rng, monkeypatch, batch, height, width):
    """Bands of one tile row (each holds the next tile row too, which may be the next image's first; some are an
    image's spare row only) agree with one band for the whole block; the thread count changes no bit."""
    x = random_array(rng, batch, 16, height, width)
    weight, bias = random_array(rng, 12, 16, 3, 3), random_array(rng, 12)
    kernel = Conv2dKernel(weight, bias, relu=True, method="winograd")
    expected = reference.conv2d(x, weight, bias, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    whole = kernel(x, 1)
    np.testing.assert_allclose(whole, np.maximum(expected, 0), rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(winograd, "band_rows", lambda *args: 1)
    bands = []
    run = winograd.WinogradBands.run
    monkeypatch.setattr(winograd.WinogradBands, "run", lambda self, band: bands.append(band) or run(self, band))
    results = at_thread_counts(kernel, x, 1)
    tile_rows = batch * (-(-height // 4) + 1) - 1
    assert sorted(set(bands)) == [(row, row + 1) for row in range(tile_rows)]
    np.testing.assert_allclose(results[0], whole, rtol=1e-6, atol=1e-6 * np.abs(whole).max())
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


@pytest.mark.parametrize("method", EXACT_METHODS)
def test_batch_blocks_give_identical_results(rng, monkeypatch, method):
    """A batch split into one-image blocks (a tiny L3) computes what one block computes.

    Not bit for bit: the chunks differ, and BLAS may sum a small GEMM in another order than a large one.
    """
    x = random_array(rng, 3, 16, 21, 19)
    kernel = Conv2dKernel(random_array(rng, 8, 16, 5, 5), random_array(rng, 8), (2, 2), method=method)
    whole = kernel(x, 2, Workspace())
    monkeypatch.setattr(conv, "cache_bytes", lambda level: 1024)
    blocked = kernel(x, 2, Workspace())
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernel(x[1:2], 2), whole[1:2], rtol=1e-5, atol=1e-5)


def test_winograd_image_blocks_agree(rng, monkeypatch):
    """Small maps are multiplied several images at a time; one image at a time computes the same to rounding."""
    x = random_array(rng, 5, 16, 6, 7)
    kernel = Conv2dKernel(random_array(rng, 16, 16, 3, 3), random_array(rng, 16), method="winograd")
    assert winograd.images_per_block(5, 4) == 5 and winograd.images_per_block(5, 3136) == 1
    whole = kernel(x, 1)
    monkeypatch.setattr(winograd, "MIN_BLOCK_TILES", 1)
    np.testing.assert_allclose(kernel(x, 1), whole, rtol=1e-5, atol=1e-5)


def test_threads_give_identical_results(rng):
    """Shifted GEMMs in chunks, Winograd on one band (its GEMMs shared by the threads) and on several bands, and
    the kernel-row GEMMs."""
    x = random_array(rng, 2, 32, 40, 37)
    large = random_array(rng, 1, 16, 90, 70)
    kernel = Conv2dKernel(random_array(rng, 16, 32, 3, 3), random_array(rng, 16))
    many_bands = Conv2dKernel(random_array(rng, 16, 16, 3, 3), random_array(rng, 16), relu=True)
    assert kernel.method == many_bands.method == "winograd"
    strided = Conv2dKernel(random_array(rng, 8, 32, 3, 3), stride=(2, 2))
    rows = Conv2dKernel(random_array(rng, 45, 32, 5, 5), random_array(rng, 45), stride=(2, 2), relu=True,
                        method="rows")
    try:
        threads.set_num_threads(1)
        single = kernel(x, 1), strided(x, 1), many_bands(large, 1), rows(x, 2)
        threads.set_num_threads(2)
        double = kernel(x, 1), strided(x, 1), many_bands(large, 1), rows(x, 2)
    finally:
        threads.set_num_threads(1)
    for one, two in zip(single, double, strict=True):
        np.testing.assert_array_equal(one, two)


def test_workspace_reuse_across_shapes(rng):
    """A shared workspace must not leak one call's padding or data into the next."""
    workspace = Workspace()
    weight = random_array(rng, 8, 16, 3, 3)
    kernel = Conv2dKernel(weight)
    rows = [Conv2dKernel(random_array(rng, 8, 16, 5, 5), stride=(2, 2), method=method)
            for method in ("rows", "winograd-rows")]
    for shape, padding in [((1, 16, 30, 30), 0), ((2, 16, 9, 12), 1), ((1, 16, 30, 30), (2, 0, 0, 1))]:
        x = random_array(rng, *shape)
        for reused in (kernel, *rows):
            np.testing.assert_allclose(reused(x, padding, workspace), reused(x, padding), rtol=0, atol=0)
    assert workspace.nbytes > 0


def test_input_smaller_than_kernel_is_a_shape_error(rng):
    with pytest.raises(ShapeError, match="smaller than the 5x5 kernel"):
        conv2d(random_array(rng, 1, 3, 4, 4), random_array(rng, 2, 3, 5, 5))


def test_wrong_channels_is_a_shape_error(rng):
    with pytest.raises(ShapeError, match=r"expects \(B, 4, H, W\)"):
        conv2d(random_array(rng, 1, 3, 8, 8), random_array(rng, 2, 4, 3, 3))


def test_transformed_filters_by_chunks_equal_the_whole_transform(rng, monkeypatch):
    """Chunking bounds the float64 temporaries (resnet18 peaked 96 MiB higher without it), not the result, which
    is ``G g G^T`` in float64 rounded once to float32."""
    weight = random_array(rng, 5, 7, 3, 3)
    whole = winograd.transform_weights(weight)
    exact = np.einsum("ai,kcij,bj->abkc", winograd.G, weight.astype(np.float64), winograd.G).reshape(36, 5, 7)
    np.testing.assert_allclose(whole, exact, rtol=2.0 ** -24, atol=0)  # half a float32 ulp (ties either way)
    monkeypatch.setattr(winograd, "TRANSFORM_CHUNK_BYTES", 8 * winograd.TRANSFORM_TEMPORARIES * 7 * 2)  # two at a time
    assert np.array_equal(winograd.transform_weights(weight), whole)


def _channels_last(x: np.ndarray) -> np.ndarray:
    """``x`` (B, C, H, W) with channels-last memory, as the kernel-row formulation returns its output."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("stride,padding", [((2, 2), 0), ((1, 1), 2), ((2, 1), (1, 0, 2, 1))])
def test_rows_reads_any_layout_and_returns_channels_last(rng, stride, padding):
    """The kernel-row formulation gives the same bits from NCHW, channels-last and cropped (strided) inputs; its
    output is channels-last memory (15 channels of pixels 16 wide: zero channels pad the GEMM to the vector
    lanes), which the next layer reads as is: a chain of two equals the reference."""
    x = random_array(rng, 2, 6, 13, 11)
    weight, bias = random_array(rng, 15, 6, 5, 5), random_array(rng, 15)
    first = Conv2dKernel(weight, bias, stride, relu=True, method="rows")
    out = first(x, padding)
    assert out.shape[1] == 15 and out.strides[1] == 4 and out.strides[3] == 4 * conv.GEMM_LANES
    np.testing.assert_array_equal(first(_channels_last(x), padding), out)
    wide = random_array(rng, 2, 6, 13, 14)
    wide[..., 1:12] = x
    np.testing.assert_array_equal(first(wide[..., 1:12], padding), out)
    weight2, bias2 = random_array(rng, 8, 15, 5, 5), random_array(rng, 8)
    chained = Conv2dKernel(weight2, bias2, method="rows")(out, 2)
    hidden = np.maximum(reference.conv2d(x, weight, bias, stride, conv.normalize_padding(padding), (1, 1), 1), 0)
    expected = reference.conv2d(hidden, weight2, bias2, (1, 1), (2, 2, 2, 2), (1, 1), 1)
    np.testing.assert_allclose(chained, expected, rtol=1e-4, atol=1e-4)


def test_rows_on_a_block_equals_the_whole_map(rng, monkeypatch):
    """A spatial block (its own border padding only) and a map cut into many chunks give the whole map's bits:
    the chunks and blocks change which GEMM computes a pixel, never the order of its sum."""
    x = random_array(rng, 2, 16, 41, 30)
    kernel = Conv2dKernel(random_array(rng, 32, 16, 5, 5), random_array(rng, 32), (2, 2), relu=True, method="rows")
    whole = kernel(x, 0)
    block = kernel(x[:, :, 10:], (0, 0, 0, 0))  # output rows 5.., their input rows from 10 on
    np.testing.assert_array_equal(block, whole[:, :, 5:])
    monkeypatch.setattr(conv, "cache_bytes", lambda level: 1024)
    monkeypatch.setattr(conv, "MIN_CHUNK_COLUMNS", 16)
    np.testing.assert_array_equal(kernel(x, 0), whole)


@pytest.mark.parametrize("kernel,stride,dilation,groups", [
    ((5, 5), (2, 3), (1, 2), 1), ((3, 4), (1, 2), (2, 3), 1), ((5, 3), (3, 2), (1, 1), 2), ((2, 5), (2, 4), (1, 3), 1)])
def test_rows_reads_every_column_phase(rng, kernel, stride, dilation, groups):
    """The kernel-row GEMMs read each column phase's kernel columns as runs of pixels (steps of dw / gcd(sw, dw)
    pixels): strides and dilations whose column phases hold several, one or no columns."""
    x = random_array(rng, 2, 6, 17, 23)
    weight = random_array(rng, 4, 6 // groups, *kernel)
    bias = random_array(rng, 4)
    expected = reference.conv2d(x, weight, bias, stride, (1, 2, 3, 0), dilation, groups)
    actual = Conv2dKernel(weight, bias, stride, dilation, groups, method="rows")(x, (1, 2, 3, 0))
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)



def _chain(seed, specs, channels, readers=True):
    """Kernels for ``specs`` ``(method, out channels, kernel, stride)`` with ReLU, and their filters; with
    ``readers``, each the reader of the one before where it can read in place."""
    rng = np.random.default_rng(seed)
    kernels, filters = [], []
    for method, out_channels, kernel, stride in specs:
        weight, bias = random_array(rng, out_channels, channels, kernel, kernel), random_array(rng, out_channels)
        kernels.append(Conv2dKernel(weight, bias, (stride, stride), relu=True, method=method))
        filters.append((weight, bias, stride))
        channels = out_channels
    for producer, consumer in itertools.pairwise(kernels):
        if readers and consumer.reads_in_place():
            producer.reader = consumer
    return kernels, filters


@pytest.mark.parametrize("specs,height,batch", [
    ([("rows", 16, 5, 2), ("winograd-rows", 32, 5, 2), ("winograd-rows", 16, 5, 2)], 97, 3),
    ([("rows", 16, 5, 2), ("winograd-rows", 16, 5, 2)], 60, 2),
    ([("winograd-rows", 16, 5, 1), ("winograd-rows", 16, 5, 2), ("winograd-rows", 16, 5, 1)], 41, 4),
    ([("rows", 16, 3, 1), ("winograd-rows", 16, 5, 1)], 23, 1),
])
def test_a_reader_reads_its_producers_buffer_in_place(monkeypatch, rng, specs, height, batch):
    """A kernel-row convolution whose reader reads its output in place gives that reader exactly the result of
    the copy it saves, through chains of strides 1 and 2 (each kernel's rows per image set by the next), odd
    sizes and several images (whose rows the readers stack as their copies would)."""
    x = random_array(rng, batch, 3, height, height + 6)
    paired, filters = _chain(5, specs, 3)
    alone, _ = _chain(5, specs, 3, readers=False)
    copies = []
    row_phases = conv._row_phases_into
    monkeypatch.setattr(conv, "_row_phases_into", lambda *args: copies.append(1) or row_phases(*args))
    expected, actual = x, x
    workspace = conv.Workspace()
    for kernel in alone:
        expected = kernel(expected, 0, workspace)
    copied = len(copies)
    for kernel in paired:
        actual = kernel(actual, 0, workspace)
    np.testing.assert_array_equal(actual, expected)
    assert len(copies) - copied == copied - (len(specs) - 1)  # every reader skipped its copy
    for weight, bias, stride in filters:  # the exact GEMMs (checked against the reference above)
        x = Conv2dKernel(weight, bias, (stride, stride), relu=True, method="im2col")(x)
    np.testing.assert_allclose(actual, x, rtol=1e-4, atol=1e-4 * np.abs(x).max())  # Winograd's error, chained


def test_a_reader_given_another_array_copies_it(rng):
    """Only the output the producer shared is read in place: the same values in another array, fewer of its
    rows, or with padding, take the copy, with the same result."""
    (producer, consumer), filters = _chain(3, [("rows", 16, 5, 2), ("winograd-rows", 16, 5, 2)], 3)
    x = random_array(rng, 2, 3, 45, 40)
    workspace = conv.Workspace()
    shared = producer(x, 0, workspace)
    assert workspace.shared_rows(shared) is not None
    copy = shared.copy()
    assert workspace.shared_rows(copy) is None
    np.testing.assert_array_equal(consumer(shared, 0, workspace), consumer(copy, 0, workspace))
    # Its left columns (a spatial engine's input box) are read in place; fewer rows are not (those past them
    # hold data, not zeros).
    assert workspace.shared_rows(shared[..., :-3]) is not None and workspace.shared_rows(shared[:, :, :-1]) is None
    for part in (shared[..., :-3], shared[:, :, :-1]):
        np.testing.assert_array_equal(consumer(part, 0, workspace), consumer(part.copy(), 0, workspace))
    weight, bias, _ = filters[1]
    np.testing.assert_allclose(consumer(shared, 1, workspace), np.maximum(
        reference.conv2d(copy, weight, bias, (2, 2), (1, 1, 1, 1), (1, 1), 1), 0), rtol=1e-4, atol=1e-4)


def test_a_shared_input_may_be_read_short_of_its_zero_rows():
    """A shared input is read in place through any view of its top left that keeps every row before its zeros
    (an engine's box of the face detector's pyramid ends inside its zero border), never one that cuts data."""
    workspace = conv.Workspace()
    memory = np.zeros((2, 12, 9, 3), np.float32)
    tensor = memory[:, :10].transpose(0, 3, 1, 2)
    workspace.share_rows(tensor, 12, zero_from=8)
    assert [workspace.shared_rows(tensor[:, :, :rows, :width]) for rows, width in [(10, 9), (8, 7), (7, 9)]] == \
        [12, 12, None]
    assert workspace.shared_rows(tensor[:, :, 1:9]) is None and workspace.shared_rows(tensor[:1].copy()) is None


def test_a_producer_with_spare_channels_feeds_no_reader(rng):
    """A kernel-row output rounded up to more channels than it has (45 -> 48) cannot be a reader's input in place
    (the reader takes a pixel's values as its channels); Forward gives it no reader."""
    wide = Conv2dKernel(random_array(rng, 45, 32, 5, 5), method="winograd-rows")
    exact = Conv2dKernel(random_array(rng, 32, 16, 5, 5), stride=(2, 2), method="winograd-rows")
    reader = Conv2dKernel(random_array(rng, 16, 45, 5, 5), stride=(2, 2), method="winograd-rows")
    assert not wide.feeds_in_place(reader) and exact.feeds_in_place(reader)
    assert not exact.feeds_in_place(Conv2dKernel(random_array(rng, 16, 32, 5, 5), method="rows"))
