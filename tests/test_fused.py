"""The fused-tile engine under real mpiexec: results equal the single-process ones for every tile grid."""

import numpy as np
import pytest
from conftest import sharded_weights
from mpi4py import MPI

from dcnn.decomposition.fused import spatial_depth
from dcnn.exec.forward import Forward
from dcnn.network.graph import Network
from dcnn.network.zoo import get_model
from dcnn.parallel.fused import FusedEngine

pytestmark = pytest.mark.mpi
COMM = MPI.COMM_WORLD
SEED = 3


def deepest(network, shape, grid):
    """The most layers that can be fused with a grid no finer than their output map."""
    shapes = network.shapes(shape)
    return max(d for d in range(1, spatial_depth(network) + 1)
               if shapes[d][1] >= grid[0] and shapes[d][2] >= grid[1])


_EXPECTED = {}


def reference(network, shape):
    """The single-process output for a seeded batch (rank 0 computes it once per model and shape) and, for a DAG,
    PyTorch's (the reference module of :mod:`dcnn.testing.torch_models`; ``None`` for a chain)."""
    key = (network.name, len(network), shape)
    if key not in _EXPECTED:
        x = np.random.default_rng(1).standard_normal((2, *shape)).astype(np.float32)
        expected = oracle = None
        full = weights(network)[1]
        if COMM.rank == 0:
            expected = Forward(network, full)(x)
            if not network.is_chain:
                import torch

                from dcnn.testing.torch_models import torch_model

                with torch.no_grad():
                    oracle = torch_model(network.name, full)(torch.from_numpy(x)).numpy()
        _EXPECTED[key] = (x, COMM.bcast(expected), COMM.bcast(oracle))
    return _EXPECTED[key]


def weights(network):
    """``(shard, full)``: this rank's weights, and on rank 0 the full ones (drawn once per model)."""
    return sharded_weights(network, SEED, COMM)


def run_engine(network, shape, grid, depth, halo_policy, engine_class=FusedEngine):
    """Run twice (batches of 2 and 1) and return the largest relative error over ranks and the counters."""
    x, expected, oracle = reference(network, shape)
    with engine_class(network, weights(network)[0], shape, COMM, grid, depth, halo_policy=halo_policy) as engine:
        actual = [engine(x), engine(x[:1])]
        counters = {key: COMM.allreduce(value) for key, value in engine.counters.items()}
    scale = np.abs(expected).max()
    error = max(np.abs(actual[0] - expected).max(), np.abs(actual[1] - expected[:1]).max()) / scale
    if oracle is not None:  # a DAG: against PyTorch too
        error = max(error, np.abs(actual[0] - oracle).max() / np.abs(oracle).max())
    return max(COMM.allgather(float(error))), counters, engine


# LeNet-5 (cheap) on every tile grid with both policies: grids with fewer tiles than ranks, more, odd, not square.
# AlexNet (strided 11x11 windows, overlapping pools) and VGG-11-BN (folded batch norm) each with both policies on
# one grid apiece, together all four grids: their tiles' geometry is checked for every grid without MPI
# (test_fused_plan.py, test_reuse.py), and each of their cases costs seconds per rank count.
TILE_CASES = [*(("lenet5", (1, 32, 32), grid, policy) for grid in [(2, 2), (3, 3), (4, 5), (6, 6)]
                for policy in ("recompute", "reuse")),
              ("alexnet", (3, 227, 231), (4, 5), "recompute"), ("alexnet", (3, 227, 231), (6, 6), "reuse"),
              ("vgg11_bn", (3, 64, 72), (2, 2), "recompute"), ("vgg11_bn", (3, 64, 72), (3, 3), "reuse")]


@pytest.mark.parametrize("name,shape,grid,halo_policy", TILE_CASES)
def test_fused_tiles_equal_single_process(name, shape, grid, halo_policy):
    network = get_model(name)
    depth = deepest(network, shape, grid)
    error, counters, engine = run_engine(network, shape, grid, depth, halo_policy)
    assert error <= 1e-4
    tiles = grid[0] * grid[1]
    assert counters["tiles_run"] == 2 * tiles and counters["fallbacks"] == 0
    per_image = engine.fused_plan.macs()[0] if halo_policy == "recompute" else engine.reuse_plan.macs()
    assert counters["macs"] == 3 * per_image
    if halo_policy == "reuse":
        assert counters["bytes_put"] == counters["bytes_got"] == 3 * engine.reuse_plan.strip_bytes()
        assert counters["tiles_reused"] == 2 * sum(bool(strips) for strips in engine.reuse_plan.incoming)
    else:
        assert counters["bytes_put"] == counters["bytes_got"] == 0


class SilentCorner(FusedEngine):
    """A reuse engine whose corner tile 0 computes but never publishes: the tiles that borrow from it recompute."""

    def _run_reusing(self, index, x, pool):
        if index == 0:
            return self._compute(index, self.fused_plan.tiles[index].steps, x)
        return super()._run_reusing(index, x, pool)


@pytest.mark.parametrize("grid", [(3, 3), (4, 5)])
def test_missing_strips_fall_back_to_recomputing(grid):
    network = get_model("vgg11_bn")
    error, counters, engine = run_engine(network, (3, 64, 72), grid, 7, "reuse", SilentCorner)
    assert error <= 1e-4
    consumers = {strip.consumer for strip in engine.reuse_plan.outgoing[0]}
    assert consumers and counters["fallbacks"] == 2 * len(consumers)


def test_every_fuse_depth_of_a_batch_norm_network_equals_single_process():
    """Regression: a fused block ending right after a convolution folded the next batch norm into it, and the
    layers after the block applied that batch norm again (vgg11_bn depths 1, 5, 9: relative error 0.3-0.5).
    VGG-11-BN's convolutional part (its classifier has no fusable layer and would only cost time) cut after each
    kind of layer before each kind of successor: depths 1 to 12 (conv before batch norm, batch norm before ReLU,
    ReLU before a pool and before a conv, pool before a conv), and the whole part (a single tile). Its 18 other
    depths repeat these boundaries."""
    vgg = get_model("vgg11_bn")
    network = Network("vgg11_bn features", vgg.layers[:spatial_depth(vgg)], (3, 33, 35))
    shapes = network.shapes(network.input_shape)
    for depth in [*range(1, 13), len(network)]:
        grid = (min(2, shapes[depth][1]), min(3, shapes[depth][2]))
        error, _, _ = run_engine(network, network.input_shape, grid, depth, "recompute")
        assert error <= 1e-5, (depth, network.layers[depth - 1][0])


def test_layers_after_the_fused_block_record_their_timings():
    """Regression: fused mode left the per-layer timings of every layer after the fused block at 0."""
    network, shape = get_model("lenet5"), (1, 32, 32)
    _, _, engine = run_engine(network, shape, (2, 2), 3, "recompute")
    stats = engine.stats
    # A rank whose block of a small map is empty computes nothing there; some rank computes every layer.
    computed = COMM.allreduce(stats.compute_seconds)
    assert (computed > 0).all(), computed
    assert COMM.size == 1 or COMM.allreduce(stats.bytes_received[3:].sum()) > 0


# DAGs, both policies: the whole convolutional part; depths that end after a residual add (resnet18's
# layer2.0.relu), in a fire module's concatenation (squeezenet) and inside MobileNetV2's stride-2 block; and blocks
# that end inside a residual block (resnet18 after layer1.1.conv2, after layer3.0.conv2 of a downsampling block:
# the skip is handed over too), an inverted residual (after features.5.conv.2) and an Inception module (after
# the pooling of inception3a's fourth branch: four tensors handed over); MobileNetV3-Small fused up to its first
# squeeze-and-excitation pooling, its gates run by the spatial engine.
DAG_CASES = [("resnet18", (3, 67, 73), None, (2, 2)), ("resnet18", (3, 67, 73), 27, (3, 4)),
             ("mobilenet_v2", (3, 67, 73), 30, (4, 3)), ("squeezenet1_1", (3, 67, 73), 17, (2, 3)),
             ("googlenet", (3, 67, 73), None, (2, 2)), ("resnet18", (3, 65, 71), 15, (3, 2)),
             ("resnet18", (3, 65, 71), 38, (2, 3)), ("mobilenet_v2", (3, 41, 45), 40, (2, 2)),
             ("googlenet", (3, 37, 41), 27, (2, 3)), ("mobilenet_v3_small", (3, 37, 41), None, (2, 2))]


@pytest.mark.parametrize("name,shape,depth,grid", DAG_CASES)
@pytest.mark.parametrize("halo_policy", ["recompute", "reuse"])
def test_fused_tiles_of_a_dag_equal_single_process(name, shape, depth, grid, halo_policy):
    network = get_model(name)
    error, counters, engine = run_engine(network, shape, grid, depth, halo_policy)
    assert error <= 1e-4
    assert counters["tiles_run"] == 2 * grid[0] * grid[1] and counters["fallbacks"] == 0
    if halo_policy == "reuse":
        assert counters["macs"] == 3 * engine.reuse_plan.macs() < 3 * engine.fused_plan.macs()[0]
        assert counters["bytes_put"] == counters["bytes_got"] == 3 * engine.reuse_plan.strip_bytes() > 0
    else:
        assert counters["macs"] == 3 * engine.fused_plan.macs()[0]
