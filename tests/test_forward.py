"""The compiled executor against a layer-by-layer float64 reference, and against PyTorch where installed."""

import itertools

import numpy as np
import pytest
import reference
from conftest import random_array
from torch_oracle import torch_forward

from dcnn.exec.forward import Forward, fusion_plan
from dcnn.network.graph import Network
from dcnn.network.layers import (
    ELU,
    Affine,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    LeakyReLU,
    Linear,
    LocalResponseNorm,
    MaxPool2d,
    ReLU,
    Softmax,
    Tanh,
)
from dcnn.network.weights import init_weights
from dcnn.network.zoo import get_model


def tiny_network() -> Network:
    """Every layer type the reference knows, at sizes the direct loops handle quickly."""
    layers = [
        ("features.0", Conv2d(3, 16, 5, stride=2, padding=2)), ("features.1", BatchNorm2d(16)),
        ("features.2", ReLU()), ("features.3", MaxPool2d(3, 2, ceil_mode=True)),
        ("features.4", Conv2d(16, 20, 3, padding=1, dilation=1, groups=4)), ("features.5", Tanh()),
        ("features.6", AvgPool2d(2, 2, padding=1, ceil_mode=True)),
        ("flatten", Flatten()), ("classifier.0", Dropout()), ("classifier.1", Linear(20 * 3 * 3, 7)),
    ]
    return Network("tiny", tuple(layers), (3, 17, 19))


@pytest.mark.parametrize("fuse", [True, False])
def test_tiny_network_matches_reference(rng, fuse):
    network = tiny_network()
    weights = init_weights(network, 4)
    x = random_array(rng, 2, 3, 17, 19)
    expected = reference.forward(network, weights, x)
    actual = Forward(network, weights, fuse=fuse)(x)
    assert actual.shape == (2, 7)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_remaining_layer_types_match_reference(rng):
    layers = [
        ("a.0", Conv2d(3, 8, 3, padding=(1, 0))), ("a.1", LeakyReLU(0.1)),
        ("a.2", LocalResponseNorm(3, 1e-2, 0.75, 2.0)),
        ("a.3", Conv2d(8, 16, 2, stride=(1, 2))), ("a.4", Affine(16)), ("a.5", ELU(0.7)), ("a.6", ReLU()),
        ("flatten", Flatten()), ("b.0", Linear(16 * 8 * 3, 5)), ("b.1", Softmax()),
    ]
    network = Network("mixed", tuple(layers), (3, 9, 9))
    weights = init_weights(network, 2)
    x = random_array(rng, 3, 3, 9, 9)
    actual = Forward(network, weights)(x)
    np.testing.assert_allclose(actual, reference.forward(network, weights, x), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(actual.sum(axis=1), 1, rtol=1e-5)


def test_lenet_matches_reference(rng):
    network = get_model("lenet5")
    weights = init_weights(network, 1)
    x = random_array(rng, 3, 1, 32, 32)
    np.testing.assert_allclose(Forward(network, weights)(x), reference.forward(network, weights, x),
                               rtol=1e-4, atol=1e-5)


def test_input_is_not_modified(rng):
    network = tiny_network()
    forward = Forward(network, init_weights(network))
    x = random_array(rng, 1, 3, 17, 19)
    before = x.copy()
    forward(x)
    np.testing.assert_array_equal(x, before)


def test_partial_runs_compose(rng):
    network = get_model("lenet5")
    forward = Forward(network, init_weights(network))
    x = random_array(rng, 2, 1, 32, 32)
    middle = forward.run(x, 0, 4)
    np.testing.assert_allclose(forward.run(middle, 4), forward(x), rtol=1e-6)


# Every zoo network at odd sizes (LeNet-5 takes only 32 x 32).
ZOO_SIZES = {"lenet5": (32, 32), "alexnet": (67, 71), "vgg11": (33, 37), "vgg13": (35, 33), "vgg16": (45, 41),
             "vgg19": (37, 35), "vgg11_bn": (41, 47), "vgg13_bn": (33, 35), "vgg16_bn": (39, 33), "vgg19_bn": (35, 39)}


@pytest.mark.parametrize("name", sorted(ZOO_SIZES))
def test_every_zoo_network_matches_pytorch(rng, name):
    network = get_model(name)
    weights = init_weights(network, 3)
    x = random_array(rng, 2, network.in_channels, *ZOO_SIZES[name])
    expected = torch_forward(network, weights, x)
    actual = Forward(network, weights)(x)
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


def test_ceil_mode_average_pool_with_explicit_border_padding(rng):
    """Regression: the divisor counts the symmetric padding, never the ceil_mode overhang, also when a caller
    (the spatial engine) passes the border padding explicitly."""
    layer = AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=True)
    x = random_array(rng, 1, 2, 8, 8)
    op = Forward(Network("pool", (("p", layer),), (2, 8, 8)), {}).ops[0]
    expected = reference.pool2d(x, (3, 3), (2, 2), (1, 1), True, "avg", True)
    np.testing.assert_allclose(op(x), expected, rtol=1e-5)
    np.testing.assert_allclose(op(x, layer.window.explicit_padding(8, 8)), expected, rtol=1e-5)


def test_a_partial_run_never_ends_inside_a_folded_group(rng):
    """A batch norm folded into its convolution cannot be the first layer of a partial run; an executor
    compiled to stop after the convolution leaves it unfolded, so the two parts compose exactly."""
    network = get_model("vgg11_bn")
    weights = init_weights(network, 3)
    forward = Forward(network, weights)
    x = random_array(rng, 1, 3, 33, 35)
    with pytest.raises(ValueError, match=r"features\.1"):
        forward.run(x, 0, 1)
    head = Forward(network, weights, stop=1)
    assert len(head.ops) == 1 and head.boundaries == {0, 1}
    rest = Forward(Network("rest", network.layers[1:], (64, 33, 35)), weights)
    expected = forward(x)
    np.testing.assert_allclose(rest(head(x)), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_an_affine_after_a_convolution_is_folded_into_it(rng):
    """dlib's per-channel affine (the face detector's batch norm) folds into the convolution before it, and the
    ReLU after it fuses, as for a batch norm: the absorbed layers run as identities, the result is unchanged."""
    layers = [("a.0", Conv2d(3, 6, 3, stride=2)), ("a.1", Affine(6)), ("a.2", ReLU()), ("a.3", Conv2d(6, 4, 3))]
    network = Network("affine", tuple(layers), (3, 15, 13))
    weights = init_weights(network, 2)
    assert fusion_plan(network) == {0: (1, True)}
    folded = Forward(network, weights)
    assert folded.boundaries == {0, 3, 4}
    x = random_array(rng, 2, 3, 15, 13)
    expected = reference.forward(network, weights, x)
    np.testing.assert_allclose(folded(x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("name, shape", [("lenet5", (1, 32, 32)), ("vgg11", (3, 64, 72)), ("resnet18", (3, 67, 73)),
                                         ("mobilenet_v2", (3, 67, 73))])
def test_results_do_not_depend_on_the_thread_count(name, shape):
    """Chunk bounds are fixed by the layer, not by the threads, so a run resumed with another --threads continues
    bit for bit (the old multiple-of-threads chunking gave LeNet-5 logits 3e-7 apart at 1 and 2 threads)."""
    from dcnn.kernels import threads

    network = get_model(name)
    weights = init_weights(network, seed=0)
    x = np.random.default_rng(0).random((3, *shape)).astype(np.float32)
    before = threads.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            threads.set_num_threads(count)
            results.append(Forward(network, weights).run(x))
    finally:
        threads.set_num_threads(before)
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


@pytest.mark.parametrize("name, shape, tail", [("vgg11", (3, 40, 36), "flatten"), ("resnet18", (3, 45, 39), "flatten")])
def test_a_batch_runs_its_convolutional_part_in_cache_sized_blocks(monkeypatch, name, shape, tail):
    """The layers before the flat tail run a few images at a time (one here: a tiny L3), the fully connected
    layers on the whole batch; the result agrees with the whole batch run layer by layer."""
    from dcnn.exec import forward as forward_module

    network = get_model(name)
    forward = Forward(network, init_weights(network, seed=0))
    assert network.layers[forward.head_stop][0] == tail
    x = np.random.default_rng(1).random((3, *shape)).astype(np.float32)
    whole = forward.run(x)
    assert forward.block_plan(shape, 3) == [(0, forward.head_stop, 3)]
    monkeypatch.setattr(forward_module, "cache_bytes", lambda level: 1)
    assert forward.block_plan(shape, 3) == [(0, forward.head_stop, 1)]
    np.testing.assert_allclose(forward(x), whole, rtol=1e-4, atol=1e-5 * np.abs(whole).max())


@pytest.mark.parametrize("name, shape", [("vgg11", (3, 64, 64)), ("resnet18", (3, 64, 64))])
def test_later_smaller_layers_run_more_images_at_a_time(monkeypatch, name, shape):
    """Per-layer blocks: an L3 that holds one image at the first layers but several at the later ones runs
    segments of growing image counts, cut only where one tensor crosses (never inside a residual block) and
    after, not before, a layer that shrinks the map; the result agrees with the whole batch."""
    from dcnn.exec import forward as forward_module

    network = get_model(name)
    forward = Forward(network, init_weights(network, seed=0))
    live = network.live_values(shape)
    # Room for 1.5 of the first layer's tensors per image: one image there, more once the maps shrink.
    monkeypatch.setattr(forward_module, "cache_bytes", lambda level: forward_module.BLOCK_CACHE_SHARE * 6 * live[0])
    plan = forward.block_plan(shape, 4)
    images = [count for _, _, count in plan]
    assert images[0] == 1 and images[-1] == 4 and images == sorted(images) and len(set(images)) == len(images)
    assert plan[0][0] == 0 and plan[-1][1] == forward.head_stop
    assert all(stop == start for (_, stop, _), (start, _, _) in itertools.pairwise(plan))
    sizes = [int(np.prod(s)) for s in network.shapes(shape)]
    for _, cut, _ in plan[:-1]:
        assert cut in forward.cuts
        assert not (cut + 1 in forward.cuts and sizes[cut + 1] < sizes[cut])  # cut after the pool, not before it
    x = np.random.default_rng(2).random((4, *shape)).astype(np.float32)
    whole = forward.run(x)
    np.testing.assert_allclose(forward(x), whole, rtol=1e-4, atol=1e-5 * np.abs(whole).max())


def test_a_cut_is_where_only_one_tensor_crosses():
    network = get_model("resnet18")
    forward = Forward(network, init_weights(network, seed=0))
    names = [name for name, _ in network.layers]
    inside = names.index("layer1.0.conv2")  # the block's input is still read by its residual add
    assert inside not in forward.cuts and names.index("layer1.0.relu") in forward.cuts
    assert forward.head_stop in forward.cuts


def test_a_fully_convolutional_network_runs_its_batch_whole():
    vgg = get_model("vgg11")
    network = Network("vgg11 head", vgg.layers[:5], (3, 16, 16))
    assert Forward(network, init_weights(network, seed=0)).head_stop is None


def test_a_default_input_too_small_for_the_layers_does_not_stop_a_larger_run():
    """Kernels choose their method at the declared input's maps; one that cannot run there is no error."""
    from dcnn.network.graph import GraphBuilder

    graph = GraphBuilder()
    graph.add("c", Conv2d(3, 4, 9))
    network = graph.build("n", (3, 8, 8))
    weights = init_weights(network, 0)
    x = np.ones((1, 3, 16, 16), np.float32)
    expected = reference.conv2d(x, weights["c.weight"], weights["c.bias"], (1, 1), (0, 0, 0, 0), (1, 1), 1)
    np.testing.assert_allclose(Forward(network, weights)(x), expected, rtol=1e-5, atol=1e-5)


def test_kernel_row_convolutions_read_the_one_before_in_place(rng):
    """The face detector's chain of 5x5 stride-2 convolutions: the second and third read the output of the one
    before in place (the first two are given readers), bit for bit what their copies gave."""
    from dcnn.faces.detect import mmod_network

    network = mmod_network()
    forward = Forward(network, init_weights(network))
    kernels = [op.kernel for op in forward.ops if op is not None and op.kernel is not None]
    assert [kernel.reader is not None for kernel in kernels] == [True, True] + [False] * (len(kernels) - 2)
    x = random_array(rng, 3, 3, 101, 77)
    actual = forward(x)
    for kernel in kernels:
        kernel.reader = None
    np.testing.assert_array_equal(actual, forward(x))


def test_one_process_engine_reads_kernel_row_outputs_in_place(monkeypatch):
    """Batch mode's engine (one process, no MPI) hands each layer its input box, a view of the layer before's
    output: the face detector's second and third convolutions still read those in place (no copy of their
    input), bit for bit what the engine gives with copies."""
    from dcnn.faces.detect import mmod_network
    from dcnn.kernels import conv
    from dcnn.parallel.spatial import SpatialEngine

    network = mmod_network()
    weights = init_weights(network)
    forward = Forward(network, weights)
    # 117 rows: each convolution's box holds all rows of its input (as the detector's 982 at 128 x 128 images,
    # upsampled): fewer rows are copied, their rows past the box being data, not zeros.
    x = np.random.default_rng(4).standard_normal((2, 3, 117, 97), dtype=np.float32)
    copies = []
    row_phases = conv._row_phases_into
    monkeypatch.setattr(conv, "_row_phases_into", lambda planes, x, *rest: copies.append(x.shape[1]) or
                        row_phases(planes, x, *rest))
    with SpatialEngine(network, weights, x.shape[1:], None, forward=forward) as engine:
        actual = engine(x)
        assert 16 not in copies and copies.count(32) == 1  # .3 and .6 read in place, .9 copies its padding
        for op in forward.ops:
            if op.kernel is not None:
                op.kernel.reader = None
        np.testing.assert_array_equal(actual, engine(x))
