"""The executor on DAG networks: the zoo's residual and branching models against PyTorch, freeing and in-place
rules, and batch-norm folding only where the convolution's output has no other reader."""

import numpy as np
import pytest
import torch
from conftest import random_array

from dcnn.exec.forward import Forward, channels_last_layers, fusion_plan
from dcnn.network.graph import GraphBuilder
from dcnn.network.layers import Add, BatchNorm2d, Clip, Concat, Conv2d, MaxPool2d, Mul, ReLU, ReLU6, Sigmoid
from dcnn.network.weights import init_weights
from dcnn.network.zoo import get_model
from dcnn.testing.torch_models import torch_model

# Odd sizes keep every block's maps odd somewhere; batch 1 and 3.
CASES = [("resnet18", (67, 73), 3), ("resnet34", (67, 73), 1), ("resnet50", (67, 73), 1),
         ("mobilenet_v2", (67, 73), 3), ("mobilenet_v2", (197, 223), 1), ("squeezenet1_1", (67, 73), 3),
         ("squeezenet1_1", (197, 223), 1), ("googlenet", (67, 73), 3), ("mobilenet_v3_small", (67, 73), 3)]


@pytest.mark.parametrize("name,size,batch", CASES)
def test_zoo_dag_matches_pytorch(rng, name, size, batch):
    network = get_model(name)
    weights = init_weights(network, seed=5)
    x = random_array(rng, batch, 3, *size)
    with torch.no_grad():
        expected = torch_model(name, weights)(torch.from_numpy(x)).numpy()
    actual = Forward(network, weights)(x)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=2e-4 * scale)


def _toy(fold_target_read_twice: bool):
    """conv -> bn -> relu, with the conv's output also read by an add when asked."""
    graph = GraphBuilder()
    conv = graph.add("conv", Conv2d(3, 4, 3, padding=1))
    graph.add("bn", BatchNorm2d(4))
    graph.add("relu", ReLU())
    if fold_target_read_twice:
        graph.add("add", Add(), "relu", conv)
    return graph.build("toy", (3, 9, 10))


def test_batch_norm_folds_only_into_a_conv_it_alone_reads(rng):
    assert fusion_plan(_toy(False)) == {0: (1, True)}
    assert fusion_plan(_toy(True)) == {}
    network = _toy(True)
    weights = init_weights(network, seed=1)
    x = random_array(rng, 2, 3, 9, 10)
    plain = Forward(network, weights, fuse=False)(x)
    np.testing.assert_allclose(Forward(network, weights)(x), plain, rtol=1e-5, atol=1e-5)
    conv = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weights["conv.weight"]),
                                      torch.from_numpy(weights["conv.bias"]), padding=1).numpy()
    normed = (conv - weights["bn.running_mean"][:, None, None]) / np.sqrt(weights["bn.running_var"][:, None, None]
                                                                         + 1e-5)
    expected = np.maximum(normed * weights["bn.weight"][:, None, None] + weights["bn.bias"][:, None, None], 0) + conv
    np.testing.assert_allclose(plain, expected, rtol=1e-4, atol=1e-4)


def test_in_place_ops_never_overwrite_a_tensor_read_later(rng):
    # relu and the add would both like to overwrite "pool"; concat and mul read it afterwards.
    graph = GraphBuilder()
    pool = graph.add("pool", MaxPool2d(2))
    graph.add("relu", ReLU(), pool)
    graph.add("sum", Add(), pool, "relu")
    graph.add("gate", Sigmoid(), "sum")
    graph.add("mul", Mul(), pool, "gate")
    graph.add("cat", Concat(), "mul", pool, pool)
    network = graph.build("branches", (2, 8, 6))
    x = random_array(rng, 3, 2, 8, 6)
    original = x.copy()
    p = x.reshape(3, 2, 4, 2, 3, 2).max(axis=(3, 5))
    total = p + np.maximum(p, 0)
    gated = p / (1 + np.exp(-total))
    np.testing.assert_allclose(Forward(network, {})(x), np.concatenate([gated, p, p], axis=1), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(x, original)


def test_run_of_a_range_refuses_a_node_reading_before_it(rng):
    network = get_model("resnet18")
    forward = Forward(network, init_weights(network))
    index = [name for name, _ in network.layers].index("layer1.0.conv2")
    with pytest.raises(ValueError, match=r"layer1\.0\.add reads 'maxpool'"):
        forward.run(random_array(rng, 1, 64, 9, 9), index, index + 4)


def test_relu6_and_a_clip_from_zero_fuse_like_relu(rng):
    """ReLU6 and Clip(0, c) are capped ReLUs fused into the convolution before them (the general, depthwise and
    pointwise kernels); a Clip from another bound is not; the result is the unfused one."""
    graph = GraphBuilder()
    graph.add("conv", Conv2d(3, 8, 3, padding=1))
    graph.add("relu6", ReLU6())
    graph.add("dw", Conv2d(8, 8, 3, stride=2, padding=1, groups=8))
    graph.add("bn", BatchNorm2d(8))
    graph.add("clip", Clip(0.0, 0.5))
    graph.add("pw", Conv2d(8, 6, 1))
    graph.add("relu6b", ReLU6())
    graph.add("pw2", Conv2d(6, 5, 1))
    graph.add("clip2", Clip(-1.0, 6.0))
    network = graph.build("capped", (3, 11, 10))
    assert fusion_plan(network) == {0: (None, True), 2: (3, True), 5: (None, True)}
    weights = init_weights(network, seed=3)
    x = 4 * random_array(rng, 2, 3, 11, 10)
    fused = Forward(network, weights)
    assert fused.boundaries == {0, 2, 5, 7, 8, 9}
    np.testing.assert_allclose(fused(x), Forward(network, weights, fuse=False)(x), rtol=1e-5, atol=1e-5)


def test_pointwise_layers_next_to_depthwise_ones_run_channels_last():
    """MobileNetV2's expansions and projections (all its 1x1 convolutions but the last, which feeds the pooling)
    run channels-last; a network without depthwise convolutions keeps every layer channels-first."""
    network = get_model("mobilenet_v2")
    names = [name for name, _ in network.layers]
    chosen = {names[index] for index in channels_last_layers(network)}
    pointwise = {name for name, layer in network.layers
                 if isinstance(layer, Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1}
    assert chosen == pointwise - {"features.18.0"} and "features.2.conv.0.0" in chosen
    assert not channels_last_layers(get_model("resnet50"))
