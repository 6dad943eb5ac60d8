"""Every zoo network in the distributed engines against PyTorch, under real mpiexec, at odd input sizes.

Spatial mode on one or two rank grids and fused mode on a sample of depths (one ending right after a
convolution, one anywhere), tile grids and overlap policies, each compared with PyTorch. Each network runs at one
or two of the rank counts of ``scripts/test`` (all of them at any other count), so every network meets several
rank counts while each run stays short. A property-based test draws network, input size, mode, rank grid, tile grid,
depth and policy, and compares with the single-process result and PyTorch: every rank draws the same examples
(derandomised, no shrinking) and every assertion is on values gathered from all ranks, so the ranks never part.
"""

import os

import numpy as np
import pytest
from conftest import sharded_weights
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mpi4py import MPI
from torch_oracle import torch_forward

from dcnn.decomposition.fused import HALO_POLICIES, finest_grid, spatial_depth, tileable_depth
from dcnn.exec.forward import Forward
from dcnn.network.layers import Conv2d
from dcnn.network.zoo import get_model, model_names
from dcnn.parallel.fused import FusedEngine
from dcnn.parallel.spatial import SpatialEngine

pytestmark = pytest.mark.mpi
COMM = MPI.COMM_WORLD
SEED = 7
#: The rank counts of scripts/test.
RANK_COUNTS = tuple(int(count) for count in os.environ.get("DCNN_TEST_RANKS", "1 2 3 4 6").split())
#: Odd per-image input sizes (LeNet-5 takes only 32 x 32); small, so the networks run in a fraction of a second.
SHAPES = {"lenet5": (1, 32, 32), "alexnet": (3, 65, 69), "vgg11": (3, 33, 37), "vgg13": (3, 35, 33),
          "vgg16": (3, 37, 35), "vgg19": (3, 33, 35), "vgg11_bn": (3, 35, 37), "vgg13_bn": (3, 37, 33),
          "vgg16_bn": (3, 33, 39), "vgg19_bn": (3, 39, 33), "resnet18": (3, 35, 37), "resnet34": (3, 37, 33),
          "resnet50": (3, 33, 35), "mobilenet_v2": (3, 35, 39), "mobilenet_v3_small": (3, 37, 41),
          "squeezenet1_1": (3, 39, 41),
          "googlenet": (3, 37, 35)}


def weights_of(name: str) -> tuple[dict, dict | None]:
    """``(shard, full)``: this rank's weights and, on rank 0, all of them; three networks are kept."""
    return sharded_weights(get_model(name), SEED, COMM, keep=3)


def oracles(name: str, shape: tuple[int, ...], single: bool = False) -> tuple[np.ndarray, ...]:
    """A seeded image, PyTorch's output and, with ``single``, the single-process output (computed on rank 0,
    broadcast)."""
    network = get_model(name)
    x = np.random.default_rng(sum(shape)).standard_normal((1, *shape)).astype(np.float32)
    full = weights_of(name)[1]
    results = None
    if COMM.rank == 0:
        results = (torch_forward(network, full, x),) + ((Forward(network, full)(x),) if single else ())
    return (x, *COMM.bcast(results, root=0))


def assert_close_everywhere(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """The largest error relative to the largest output, over every rank, is at most 1e-4."""
    error = float(np.abs(actual - expected).max() / np.abs(expected).max())
    errors = COMM.allgather(error)
    assert max(errors) <= 1e-4, (what, errors)


def due(name: str) -> bool:
    """Whether this rank count runs ``name``: one or two of the counts of scripts/test per network (every third), every
    count outside them."""
    if COMM.size not in RANK_COUNTS:
        return True
    return model_names().index(name) % 3 == RANK_COUNTS.index(COMM.size) % 3


def fused_samples(network, shape) -> list[tuple[int, tuple[int, int], str]]:
    """Fused configurations of one network: depth (one ending right after a convolution, one anywhere: inside a
    residual block or module of a DAG too), tile grid and policy, from a seeded generator (the deepest block runs
    in tests/test_fused.py)."""
    rng = np.random.default_rng(len(network) + COMM.size)
    cuts = list(range(1, tileable_depth(network)[0] + 1))
    after_conv = [depth for depth in cuts if isinstance(network.layers[depth - 1][1], Conv2d)] or cuts
    depths = [int(rng.choice(after_conv)), cuts[int(rng.integers(1, len(cuts) + 1)) - 1]]
    samples = []
    for number, depth in enumerate(depths):
        height, width = finest_grid(network, shape, depth)
        grid = (int(rng.integers(1, min(4, height) + 1)), int(rng.integers(1, min(4, width) + 1)))
        samples.append((depth, grid, HALO_POLICIES[number % 2]))
    return samples


@pytest.mark.parametrize("name", [name for name in model_names() if due(name)])
def test_spatial_and_fused_modes_equal_pytorch(name):
    network, shape = get_model(name), SHAPES[name]
    shard = weights_of(name)[0]
    x, expected = oracles(name, shape)
    # The default grid and, for every other network, P x 1.
    for dims in [None, (COMM.size, 1)] if COMM.size > 1 and model_names().index(name) % 2 else [None]:
        with SpatialEngine(network, shard, shape, COMM, dims) as engine:
            assert_close_everywhere(engine(x), expected, f"spatial {dims}")
    for depth, grid, policy in fused_samples(network, shape):
        with FusedEngine(network, shard, shape, COMM, grid, depth, halo_policy=policy) as engine:
            assert_close_everywhere(engine(x), expected, f"fused depth {depth} tiles {grid} {policy}")


#: The networks and input size ranges the property-based test draws from.
DRAWN = {"lenet5": ((32, 32), (32, 32)), "alexnet": ((63, 80), (63, 80)), "vgg11_bn": ((32, 48), (32, 48))}


@st.composite
def configurations(draw):
    """``(name, shape, mode, grid, depth, policy)``: a rank grid of COMM.size for spatial mode, a tile grid no
    finer than the fused output map for fused mode."""
    name = draw(st.sampled_from(sorted(DRAWN)))
    network = get_model(name)
    (low_h, high_h), (low_w, high_w) = DRAWN[name]
    shape = (network.in_channels, draw(st.integers(low_h, high_h)), draw(st.integers(low_w, high_w)))
    if draw(st.sampled_from(("spatial", "fused"))) == "spatial":
        rows = draw(st.sampled_from([d for d in range(1, COMM.size + 1) if COMM.size % d == 0]))
        return name, shape, "spatial", (rows, COMM.size // rows), None, None
    depth = draw(st.integers(1, spatial_depth(network)))
    height, width = network.shapes(shape)[depth][1:]
    grid = (draw(st.integers(1, min(5, height))), draw(st.integers(1, min(5, width))))
    return name, shape, "fused", grid, depth, draw(st.sampled_from(HALO_POLICIES))


@settings(max_examples=4, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(configuration=configurations())
def test_drawn_configurations_equal_single_process_and_pytorch(configuration):
    name, shape, mode, grid, depth, policy = configuration
    network = get_model(name)
    shard = weights_of(name)[0]
    x, expected, single = oracles(name, shape, single=True)
    if mode == "spatial":
        engine = SpatialEngine(network, shard, shape, COMM, grid)
    else:
        engine = FusedEngine(network, shard, shape, COMM, grid, depth, halo_policy=policy)
    with engine:
        actual = engine(x)
    assert_close_everywhere(actual, single, f"{configuration} against the single process")
    assert_close_everywhere(actual, expected, f"{configuration} against PyTorch")
