"""Activations, normalisation, linear and softmax kernels against their definitions."""

import numpy as np
import pytest
import reference
from conftest import oracle, random_array

from dcnn.kernels.elementwise import (
    affine_channels,
    batch_norm_scale_shift,
    channel_shuffle,
    clip,
    elu,
    hardsigmoid,
    leaky_relu,
    linear,
    local_response_norm,
    padded_add,
    relu,
    softmax,
    tanh,
)


def test_relu_in_place(rng):
    x = random_array(rng, 2, 3, 4, 5)
    expected = np.where(x > 0, x, 0)
    out = relu(x, out=x)
    assert out is x
    np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.2, 1.0, 1.5])
def test_leaky_relu(rng, slope):
    x = random_array(rng, 50)
    np.testing.assert_allclose(leaky_relu(x, slope), np.where(x > 0, x, slope * x), rtol=1e-6)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_elu(rng, alpha):
    x = random_array(rng, 50)
    np.testing.assert_allclose(elu(x, alpha), np.where(x > 0, x, alpha * (np.exp(x.astype(np.float64)) - 1)),
                               rtol=1e-5, atol=1e-7)


def test_tanh(rng):
    x = random_array(rng, 20)
    np.testing.assert_allclose(tanh(x), np.tanh(x.astype(np.float64)), rtol=1e-6)


def test_batch_norm_fold(rng):
    x = random_array(rng, 2, 4, 3, 3)
    weight, bias, mean = random_array(rng, 4), random_array(rng, 4), random_array(rng, 4)
    var = np.abs(random_array(rng, 4)) + 0.1
    scale, shift = batch_norm_scale_shift(weight, bias, mean, var, 1e-5)
    shape = (1, -1, 1, 1)
    expected = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5) * weight.reshape(shape) + \
        bias.reshape(shape)
    np.testing.assert_allclose(affine_channels(x, scale, shift), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8])
def test_local_response_norm(rng, size):
    x = random_array(rng, 2, 7, 3, 4)
    np.testing.assert_allclose(local_response_norm(x, size, 1e-2, 0.75, 2.0),
                               reference.local_response_norm(x, size, 1e-2, 0.75, 2.0), rtol=1e-5)


def test_linear(rng):
    x, weight, bias = random_array(rng, 3, 5), random_array(rng, 4, 5), random_array(rng, 4)
    expected = np.array([[sum(x[b, i] * weight[o, i] for i in range(5)) + bias[o] for o in range(4)]
                         for b in range(3)])
    np.testing.assert_allclose(linear(x, weight, bias), expected, rtol=1e-5, atol=1e-6)


def test_softmax_is_stable_and_normalised(rng):
    x = random_array(rng, 3, 10) * 1000
    out = softmax(x.copy())
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-6)
    assert np.array_equal(out.argmax(axis=1), x.argmax(axis=1))


@pytest.mark.parametrize("name", ["relu6", "sigmoid", "silu", "hardsigmoid", "hardswish"])
def test_activations_match_pytorch(rng, name):
    import torch

    from dcnn.kernels import elementwise

    x = random_array(rng, 2, 3, 5, 7) * 8
    x[0, 0, 0, :4] = [-3, 3, 6, 90]  # the kinks of the hard functions, and a value whose exp overflows float32
    expected = getattr(torch.nn.functional, name)(torch.from_numpy(x)).numpy()
    out = x.copy()
    np.testing.assert_allclose(getattr(elementwise, name)(x), expected, rtol=1e-6, atol=1e-6)
    assert getattr(elementwise, name)(out, out=out) is out
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("slopes", [[0.25], [0.1, -0.5, 2.0]])
def test_prelu_matches_pytorch(rng, slopes):
    import torch

    from dcnn.kernels.elementwise import prelu

    x = random_array(rng, 2, 3, 4, 5)
    weight = np.array(slopes, np.float32)
    expected = torch.nn.functional.prelu(torch.from_numpy(x), torch.from_numpy(weight)).numpy()
    np.testing.assert_allclose(prelu(x, weight), expected, rtol=1e-6, atol=1e-7)


def test_clip_and_its_reversed_bounds():
    x = np.linspace(-3, 3, 13, dtype=np.float32)
    np.testing.assert_array_equal(clip(x, -1, 2), np.clip(x, -1, 2))
    # ONNX: when min > max every value becomes max.
    np.testing.assert_array_equal(clip(x, 2, -1), np.full_like(x, -1))


def test_hardsigmoid_with_onnx_parameters():
    x = np.linspace(-5, 5, 21, dtype=np.float32)
    np.testing.assert_allclose(hardsigmoid(x, alpha=0.2, beta=0.5), np.clip(0.2 * x + 0.5, 0, 1), atol=1e-7)


def test_softmax_over_every_value_of_an_image(rng):
    x = random_array(rng, 2, 3, 2, 2)
    got = softmax(x, axis=None)
    flat = np.exp(x.reshape(2, -1) - x.reshape(2, -1).max(axis=1, keepdims=True))
    np.testing.assert_allclose(got, (flat / flat.sum(axis=1, keepdims=True)).reshape(x.shape), rtol=1e-6)


def test_affine_per_feature_of_rows(rng):
    x, scale, shift = random_array(rng, 3, 5), random_array(rng, 5), random_array(rng, 5)
    np.testing.assert_allclose(affine_channels(x, scale, shift), x * scale + shift, rtol=1e-6)


def test_channel_shuffle_matches_pytorch(rng):
    torch = oracle("torch")
    x = random_array(rng, 2, 12, 3, 2)
    expected = torch.nn.ChannelShuffle(3)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(channel_shuffle(x, 3), expected)


def test_padded_add_zero_fills_each_axis_of_the_smaller_map():
    """dlib's add_prev: the sum over the larger extent of every axis; equal shapes give the plain sum."""
    rng = np.random.default_rng(0)
    wide, small = rng.normal(size=(2, 4, 3, 3)).astype(np.float32), rng.normal(size=(2, 2, 4, 2)).astype(np.float32)
    out = padded_add(wide, small)
    expected = np.zeros((2, 4, 4, 3), np.float32)
    expected[:, :, :3, :3] = wide
    expected[:, :2, :4, :2] += small
    assert out.dtype == np.float32 and np.array_equal(out, expected)
    assert np.array_equal(padded_add(small, wide), expected)
    assert np.array_equal(padded_add(wide, wide), wide + wide)
