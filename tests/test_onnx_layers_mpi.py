"""The layers ONNX models bring (asymmetric padding, constant Pad, Clip, channel shuffle, global max pool) in
spatial and fused mode under real mpiexec: results equal the single-process ones.

Run with ``mpiexec -n N python -m pytest --with-mpi -m mpi`` (``scripts/test`` does, for several N).
"""

import numpy as np
import pytest
from mpi4py import MPI

from dcnn.decomposition.spatial import fc_shard_rows
from dcnn.exec.forward import Forward
from dcnn.network.graph import GraphBuilder
from dcnn.network.layers import (
    AdaptiveMaxPool2d,
    AvgPool2d,
    ChannelShuffle,
    Clip,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    Pad2d,
    ReLU,
    Softmax,
)
from dcnn.network.weights import init_weights
from dcnn.parallel.fused import FusedEngine
from dcnn.parallel.spatial import SpatialEngine

pytestmark = pytest.mark.mpi
COMM = MPI.COMM_WORLD
SHAPE = (3, 23, 26)


def onnx_style_network():
    """What the ONNX reader builds for a TensorFlow-style model: SAME padding (asymmetric), a constant Pad
    with a non-zero value, pools with asymmetric pads, count_include_pad and ceil_mode, Clip, a global max
    pool, a channel shuffle and a classifier."""
    graph = GraphBuilder()
    graph.add("pad", Pad2d((1, 2, 0, 3), 0.5))
    graph.add("conv1", Conv2d(3, 6, 3, stride=2, padding=(0, 1), padding_end=(1, 0)))
    graph.add("clip", Clip(-0.5, 1.5))
    graph.add("shuffle", ChannelShuffle(3))
    graph.add("avg", AvgPool2d(3, 1, (1, 0), count_include_pad=True, padding_end=(0, 2)))
    graph.add("max", MaxPool2d(2, 2, (0, 1), ceil_mode=True, padding_end=(1, 0)))
    graph.add("conv2", Conv2d(6, 5, 3, padding=1))
    graph.add("relu", ReLU())
    graph.add("gmp", AdaptiveMaxPool2d(1))
    graph.add("flatten", Flatten())
    graph.add("fc", Linear(5, 4))
    graph.add("softmax", Softmax())
    return graph.build("onnx_style", SHAPE)


@pytest.fixture(scope="module")
def case():
    network = onnx_style_network()
    x = np.random.default_rng(4).standard_normal((2, *SHAPE)).astype(np.float32)
    expected = Forward(network, init_weights(network, 5))(x)
    return network, x, expected, init_weights(network, 5, rows=fc_shard_rows(network, COMM.size, COMM.rank))


def assert_same_everywhere(actual, expected):
    errors = COMM.allgather(float(np.abs(actual - expected).max() / np.abs(expected).max()))
    assert max(errors) <= 1e-5, errors


@pytest.mark.parametrize("dims", [None, (1, COMM.size), (COMM.size, 1)])
def test_spatial(case, dims):
    network, x, expected, weights = case
    with SpatialEngine(network, weights, SHAPE, COMM, dims) as engine:
        assert_same_everywhere(engine(x), expected)


@pytest.mark.parametrize("halo_policy", ["recompute", "reuse"])
@pytest.mark.parametrize("grid,depth", [((2, 2), None), ((3, 2), 4)])
def test_fused(case, grid, depth, halo_policy):
    network, x, expected, weights = case
    with FusedEngine(network, weights, SHAPE, COMM, grid, depth, halo_policy=halo_policy) as engine:
        assert_same_everywhere(engine(x), expected)
