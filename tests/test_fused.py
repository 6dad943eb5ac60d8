"""The fused-tile engine under real mpiexec: results equal the single-process ones for every tile grid."""

import numpy as np
import pytest
from mpi4py import MPI

from dcnn.forward import Forward
from dcnn.fused import FusedEngine, spatial_depth
from dcnn.spatial import fc_shard_rows
from dcnn.weights import init_weights
from dcnn.zoo import get_model

pytestmark = pytest.mark.mpi
COMM = MPI.COMM_WORLD


def deepest(network, shape, grid):
    """The most layers that can be fused with a grid no finer than their output map."""
    shapes = network.shapes(shape)
    return max(d for d in range(1, spatial_depth(network) + 1)
               if shapes[d][1] >= grid[0] and shapes[d][2] >= grid[1])


@pytest.mark.parametrize("name,shape", [("lenet5", (1, 32, 32)), ("alexnet", (3, 227, 231)), ("vgg11_bn", (3, 64, 72))])
@pytest.mark.parametrize("grid", [(2, 2), (3, 3), (4, 5), (6, 6)])
def test_fused_tiles_equal_single_process(name, shape, grid):
    network = get_model(name)
    depth = deepest(network, shape, grid)
    x = np.random.default_rng(1).standard_normal((2, *shape)).astype(np.float32)
    expected = Forward(network, init_weights(network, 3))(x) if COMM.rank == 0 else None
    expected = COMM.bcast(expected)
    weights = init_weights(network, 3, rows=fc_shard_rows(network, COMM.size, COMM.rank))
    with FusedEngine(network, weights, shape, COMM, grid, depth) as engine:
        actual = engine(x)
        tiles_run = COMM.allreduce(engine.tiles_run)
    errors = COMM.allgather(float(np.abs(actual - expected).max() / np.abs(expected).max()))
    assert max(errors) <= 1e-4, errors
    assert tiles_run == grid[0] * grid[1]
