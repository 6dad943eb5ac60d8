"""Layer specs: window geometry (ceil_mode, explicit padding) against PyTorch's formula."""

import pytest

from dcnn.errors import ShapeError
from dcnn.network.layers import AvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d
from dcnn.network.window import Window


@pytest.mark.parametrize("size,kernel,stride,padding,ceil,expected", [
    (55, 3, 2, 0, False, 27), (55, 3, 2, 0, True, 27), (56, 3, 2, 0, True, 28), (56, 3, 2, 0, False, 27),
    (7, 2, 2, 1, True, 4), (5, 4, 3, 2, True, 3), (6, 3, 3, 1, True, 3),
])
def test_window_output_length(size, kernel, stride, padding, ceil, expected):
    window = Window((kernel, kernel), (stride, stride), (padding, padding), ceil_mode=ceil)
    assert window.output_length(size, 0) == expected


def test_ceil_mode_padding_grows_only_bottom_and_right():
    window = Window((3, 3), (2, 2), (0, 0), ceil_mode=True)
    assert window.explicit_padding(56, 55) == (0, 1, 0, 0)


def test_pool_stride_defaults_to_kernel():
    assert MaxPool2d(3).stride == (3, 3)
    assert AvgPool2d(2, padding=1).window.padding == (1, 1)


def test_conv_rejects_bad_groups():
    with pytest.raises(ValueError):
        Conv2d(6, 4, 3, groups=4)


def test_shape_errors_are_specific():
    with pytest.raises(ShapeError, match="expects 8 channels"):
        BatchNorm2d(8).output_shape((4, 5, 5))
    with pytest.raises(ShapeError, match="expects 10 input features"):
        Linear(10, 3).output_shape((12,))
    with pytest.raises(ShapeError, match=r"\(C, H, W\)"):
        MaxPool2d(2).output_shape((10,))
    assert Flatten().output_shape((2, 3, 4)) == (24,)
