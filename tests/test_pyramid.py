"""dlib's image arithmetic in dcnn.pyramid, bit for bit against dlib itself (dlib-bin, the test oracle)."""

import itertools

import numpy as np
import pytest
from conftest import oracle

from dcnn.faces.pyramid import pyramid_sizes, pyramid_tensor, resize_bilinear, resize_rgb, upsample_image

MEAN_RGB = (122.782, 117.001, 104.298)
ODD_SIZES = [(10, 10), (13, 11), (31, 29), (37, 64), (5, 101)]


def rgb(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", ODD_SIZES)
def test_upsampling_once_and_twice_equals_dlibs_pyramid_up(rng, size):
    """Regression: float32 align-corners interpolation differed from dlib's pyramid_up by 1 on 1.8 % of pixels."""
    dlib = oracle("dlib")
    image = rgb(rng, *size)
    for _ in range(2):
        height, width = image.shape[:2]
        expected = dlib.resize_image(image, 2 * height + 1, 2 * width + 2)
        actual = upsample_image(image)
        np.testing.assert_array_equal(actual, expected)
        image = actual


@pytest.mark.parametrize("size", ODD_SIZES)
@pytest.mark.parametrize("factor", [(5, 6), (7, 3), (1, 2)])
def test_rgb_resize_equals_dlib(rng, size, factor):
    dlib = oracle("dlib")
    image = rgb(rng, *size)
    rows, cols = max(1, size[0] * factor[0] // factor[1]), max(1, size[1] * factor[1] // factor[0])
    np.testing.assert_array_equal(resize_rgb(image, rows, cols), dlib.resize_image(image, rows, cols))


@pytest.mark.parametrize("size", [(11, 13), (40, 37), (128, 128), (97, 300)])
def test_every_pyramid_level_equals_dlibs_resize_of_the_level_before(rng, size):
    """The MMOD input pyramid: level 0 is ``(pixel - mean) / 256``, each next level dlib's float resize of the
    one before it, at the sizes of dlib's pyramid_down<6>."""
    dlib = oracle("dlib")
    images = np.stack([rgb(rng, *size), rgb(rng, *size)])
    tensor, rects = pyramid_tensor(images, MEAN_RGB)
    assert [(bottom - top + 1, right - left + 1) for left, top, right, bottom in rects] == \
        pyramid_sizes(*size)[:len(rects)]
    level0 = (images.astype(np.float32) - np.asarray(MEAN_RGB, np.float32)) / np.float32(256)
    left, top, right, bottom = rects[0]
    np.testing.assert_array_equal(tensor[:, :, top:bottom + 1, left:right + 1], level0.transpose(0, 3, 1, 2))
    for before, (left, top, right, bottom) in itertools.pairwise(rects):
        source = tensor[:, :, before[1]:before[3] + 1, before[0]:before[2] + 1]
        level = tensor[:, :, top:bottom + 1, left:right + 1]
        for image in range(2):
            for channel in range(3):
                expected = dlib.resize_image(np.ascontiguousarray(source[image, channel]), *level.shape[2:])
                np.testing.assert_array_equal(level[image, channel], expected)
    np.testing.assert_array_equal(resize_bilinear(source, *level.shape[2:]), level)


def test_batched_upsampling_and_pyramid_equal_image_by_image(rng):
    """The channels-last batch path: a batch upsampled at once, and a pyramid built with ``upsample``, equal the
    image-by-image results."""
    images = np.stack([rgb(rng, 13, 17) for _ in range(3)])
    upsampled = upsample_image(images)
    np.testing.assert_array_equal(upsampled, np.stack([upsample_image(image) for image in images]))
    tensor, rects = pyramid_tensor(images, MEAN_RGB, upsample=1)
    expected, expected_rects = pyramid_tensor(upsampled, MEAN_RGB)
    assert rects == expected_rects
    np.testing.assert_array_equal(tensor, expected)
    for index, image in enumerate(upsampled):
        np.testing.assert_array_equal(tensor[index], pyramid_tensor(image[None], MEAN_RGB)[0][0])


def test_resize_plans_are_shared_read_only_and_leave_no_state(rng, monkeypatch):
    """The per-size sample positions and weights are computed once and reused by every batch: they must be
    read-only, and a second batch of the same size gets its own pyramid, not the first one's. (An empty cache:
    earlier tests may have filled it, and a full cache keeps no new plan.)"""
    from dcnn.faces import pyramid

    monkeypatch.setattr(pyramid, "_plans", {})

    first, second = (rng.integers(0, 256, (2, 37, 41, 3), dtype=np.uint8) for _ in range(2))
    expected = pyramid_tensor(second, MEAN_RGB)[0].copy()
    pyramid_tensor(first, MEAN_RGB)
    np.testing.assert_array_equal(pyramid_tensor(second, MEAN_RGB)[0], expected)
    plan = pyramid._resize_plan(37, 41, 30, 34)
    assert plan is pyramid._resize_plan(37, 41, 30, 34)
    assert sum(map(pyramid._plan_bytes, pyramid._plans.values())) <= pyramid.PLAN_CACHE_BYTES
    for array in (*plan[:3], *plan[4:7], *plan[7], *plan[8]):
        assert not array.flags.writeable


def test_the_kernel_threads_build_the_pyramid_of_a_batch_bit_for_bit(rng):
    """Slices of the batch on two and three threads give the one-thread tensor exactly."""
    from dcnn.kernels import threads

    images = np.stack([rgb(rng, 15, 11) for _ in range(5)])
    one, rects = pyramid_tensor(images, MEAN_RGB, upsample=1)
    try:
        for count in (2, 3):
            threads.set_num_threads(count)
            tensor, more_rects = pyramid_tensor(images, MEAN_RGB, upsample=1)
            assert more_rects == rects
            np.testing.assert_array_equal(tensor, one)
    finally:
        threads.set_num_threads(1)
