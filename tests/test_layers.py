"""Layer specs: defaults, validation and shape errors."""

import pytest

from dcnn.errors import ShapeError
from dcnn.network.layers import (
    AdaptiveMaxPool2d,
    AvgPool2d,
    BatchNorm2d,
    Clip,
    Concat,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    Pad2d,
    PaddedAdd,
    Softmax,
)


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


def test_merge_layers_check_their_inputs():
    from dcnn.network.layers import Add, Concat, Mul, PReLU

    assert Add().output_shape((4, 5, 6), (4, 5, 6)) == (4, 5, 6)
    with pytest.raises(ShapeError, match="one shape"):
        Add().output_shape((4, 5, 6), (4, 5, 7))
    assert Concat().output_shape((4, 5, 6), (3, 5, 6), (1, 5, 6)) == (8, 5, 6)
    with pytest.raises(ShapeError, match="one height and width"):
        Concat().output_shape((4, 5, 6), (3, 4, 6))
    assert Mul().output_shape((4, 5, 6), (4, 1, 1)) == (4, 5, 6)
    with pytest.raises(ShapeError, match="gates"):
        Mul().output_shape((4, 5, 6), (3, 1, 1))
    assert PReLU(4).tensors()["weight"].shape == (4,)
    with pytest.raises(ShapeError, match="expects 4 channels"):
        PReLU(4).output_shape((3, 2, 2))


def test_onnx_layers_shapes():
    assert Pad2d((1, 2, 0, 3)).output_shape((4, 5, 6)) == (4, 8, 9)
    assert Pad2d((1, 2, 0, 3)).window.explicit_padding(5, 6) == (1, 2, 0, 3)
    assert AdaptiveMaxPool2d(1).output_shape((7, 5, 3)) == (7, 1, 1)
    assert Clip(0, 1).output_shape((2, 3, 3)) == (2, 3, 3) and Clip(-1, 2).describe() == "clip [-1, 2]"
    assert Concat().output_shape((3,), (4,)) == (7,)
    assert Softmax().output_shape((5, 2, 2)) == (5, 2, 2)
    with pytest.raises(ShapeError, match="axis 3"):
        Softmax(3).output_shape((5, 2, 2))


def test_asymmetric_padding_of_conv_and_pools():
    conv = Conv2d(3, 4, 3, stride=2, padding=(0, 1), padding_end=(1, 0))
    assert conv.output_shape((3, 8, 8)) == (4, 4, 4) and "pad 0,1,1,0" in conv.describe()
    assert MaxPool2d(3, 2, (1, 1), padding_end=(1, 1)).padding_end is None  # symmetric after all
    assert AvgPool2d(2, 2, 0, padding_end=(1, 1)).output_shape((3, 5, 5)) == (3, 3, 3)


def test_padded_add_takes_the_larger_extent_of_every_axis():
    assert PaddedAdd().output_shape((64, 3, 3), (32, 4, 4)) == (64, 4, 4)
    with pytest.raises(ShapeError, match=r"needs a \(C, H, W\) feature map"):
        PaddedAdd().output_shape((64,), (64, 1, 1))
