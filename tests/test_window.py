"""Window arithmetic: output lengths (ceil_mode, explicit padding) against PyTorch's formula, padding forms."""

import numpy as np
import pytest

from dcnn.network.window import Window, conv_output_size, normalize_padding, pair


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


@pytest.mark.parametrize("value,expected", [(1, (1, 1, 1, 1)), ((1, 2), (1, 1, 2, 2)), ((0, 1, 2, 3), (0, 1, 2, 3))])
def test_normalize_padding(value, expected):
    assert normalize_padding(value) == expected


@pytest.mark.parametrize("value", [-1, (1, 2, 3), (1.5, 1), "1"])
def test_normalize_padding_rejects(value):
    with pytest.raises((ValueError, TypeError)):
        normalize_padding(value)


def test_pair_takes_numpy_integers():
    assert pair(np.int64(3)) == (3, 3) and pair((np.int32(1), 2)) == (1, 2)


@pytest.mark.parametrize("size,kernel,stride,padding,dilation", [(224, 11, 4, 2, 1), (7, 3, 1, 1, 2), (5, 5, 2, 0, 1)])
def test_floor_window_and_conv_output_size_agree(size, kernel, stride, padding, dilation):
    window = Window((kernel, kernel), (stride, stride), (padding, padding), (dilation, dilation))
    assert window.output_length(size, 1) == conv_output_size(size, kernel, stride, padding, padding, dilation)


@pytest.mark.parametrize("size,kernel,stride,before,after,ceil,expected", [
    (7, 3, 2, 1, 0, False, 3), (7, 3, 2, 0, 1, False, 3), (8, 3, 2, 0, 1, False, 4), (8, 3, 2, 1, 0, True, 4),
    (5, 1, 1, 2, 1, False, 8),
])
def test_asymmetric_padding(size, kernel, stride, before, after, ceil, expected):
    """ONNX's pads ``[begin, end]``: ``floor((n + begin + end - k) / s) + 1`` (ceil: a window that starts in
    the end padding is dropped)."""
    window = Window((kernel, 1), (stride, 1), (before, 0), ceil_mode=ceil, padding_end=(after, 0))
    assert window.output_length(size, 0) == expected
    top, bottom, _, _ = window.explicit_padding(size, 4)
    assert top == before and bottom >= after
    assert conv_output_size(size, kernel, stride, top, bottom) == expected
    assert window.declared_padding() == (before, after, 0, 0)
