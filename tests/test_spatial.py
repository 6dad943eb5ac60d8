"""The spatial engine under real mpiexec: distributed logits equal the single-process logits.

Run with ``mpiexec -n N python -m pytest --with-mpi -m mpi`` (``scripts/test`` does, for several N).
Every assertion is on values gathered to all ranks, so all ranks pass or fail together.
"""

import functools

import numpy as np
import pytest
from conftest import sharded_weights
from mpi4py import MPI

from dcnn.decomposition.spatial import FC_ROW_ALIGNMENT, fc_shard_rows
from dcnn.exec.forward import Forward
from dcnn.network.graph import Network
from dcnn.network.layers import Flatten, Linear
from dcnn.network.weights import init_weights
from dcnn.network.zoo import get_model
from dcnn.parallel.comm import idle_barrier
from dcnn.parallel.spatial import SpatialEngine

pytestmark = pytest.mark.mpi
COMM = MPI.COMM_WORLD
SEED = 11


def model_weights(name: str) -> tuple[dict, dict | None]:
    """``(shard, full)``: this rank's weights (FC layers hold only its rows), and on rank 0 the full weights."""
    return sharded_weights(get_model(name), SEED, COMM)


def shard_weights(name: str) -> dict:
    """This rank's weights."""
    return model_weights(name)[0]


@functools.lru_cache(maxsize=1)
def reference(name: str, shape: tuple[int, ...], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Input and single-process logits, computed on rank 0 (which alone holds all the weights) and broadcast.

    The other ranks sleep in the barrier instead of spinning, so rank 0 gets the cores.
    """
    x = np.random.default_rng(sum(shape)).standard_normal((batch, *shape)).astype(np.float32)
    full = model_weights(name)[1]
    logits = Forward(get_model(name), full)(x) if COMM.rank == 0 else None
    idle_barrier(COMM)
    return x, COMM.bcast(logits, root=0)


def grids(size: int, which: str = "all") -> list[tuple[int, int] | None]:
    """The default grid; with ``which="all"`` also 1 x P, P x 1, and 2 x 3 where P = 6."""
    options = [None] if which == "default" else [None, (1, size), (size, 1)] + ([(2, 3)] if size == 6 else [])
    return [g for i, g in enumerate(options) if g not in options[:i]]


def run_spatial(name, shape, batch, dims, comm_overlap=True):
    x, expected = reference(name, shape, batch)
    with SpatialEngine(get_model(name), shard_weights(name), shape, COMM, dims, comm_overlap=comm_overlap) as engine:
        actual = engine(x)
        stats, plan = engine.stats, engine.spatial_plan
    return actual, expected, stats, plan


def assert_same_everywhere(actual, expected):
    error = float(np.abs(actual - expected).max() / np.abs(expected).max())
    errors = COMM.allgather(error)
    assert max(errors) <= 1e-4, errors


# (model, per-image input, batch, grids): every kind of model on every grid at small or odd sizes, and the large
# networks end to end at 224 x 224 on the default grid (each of those costs seconds per rank count). VGG-19 is
# VGG-16 with more of the same layers (one builder): it is left to the single-process and PyTorch tests.
CASES = [
    ("lenet5", (1, 32, 32), 3, "all"),
    ("alexnet", (3, 227, 231), 1, "all"),
    ("alexnet", (3, 224, 224), 2, "default"),
    ("vgg16", (3, 83, 101), 1, "all"),
    ("vgg16", (3, 224, 224), 1, "default"),
    ("vgg11_bn", (3, 32, 48), 2, "all"),
    ("vgg16_bn", (3, 67, 45), 1, "all"),
    ("vgg19_bn", (3, 40, 33), 1, "default"),
    # DAGs: residual adds with strided 1x1 shortcuts, inverted residuals with depthwise convolutions, fire and
    # Inception concatenations. At 67 x 73 the last maps have 3 rows: grids of P x 1 with P > 3 leave ranks idle.
    ("resnet18", (3, 67, 73), 3, "all"),
    ("resnet50", (3, 67, 73), 1, "default"),
    ("mobilenet_v2", (3, 67, 73), 1, "all"),
    ("squeezenet1_1", (3, 67, 73), 2, "all"),
    ("googlenet", (3, 67, 73), 1, "all"),
    # Squeeze-and-excitation gates: global average pooling over split maps (an allreduce), gates on every rank.
    ("mobilenet_v3_small", (3, 37, 41), 2, "all"),
]


@pytest.mark.parametrize("name,shape,batch,which", CASES,
                         ids=["-".join(map(str, (c[0], "x".join(map(str, c[1][1:]))))) for c in CASES])
def test_spatial_equals_single_process(name, shape, batch, which):
    for dims in grids(COMM.size, which):
        actual, expected, _, _ = run_spatial(name, shape, batch, dims)
        assert actual.shape == expected.shape
        assert_same_everywhere(actual, expected)


def test_without_overlap_gives_the_same_result():
    """The last case's model and input (weights and reference cached): halos of convolutions, pools and
    concatenations received before any of the block is computed."""
    actual, expected, _, _ = run_spatial(*CASES[-1][:3], None, comm_overlap=False)
    assert_same_everywhere(actual, expected)


@pytest.mark.parametrize("dims_kind", ["default", "row", "column"])
def test_exchanged_bytes_equal_the_geometry(dims_kind):
    dims = {"default": None, "row": (1, COMM.size), "column": (COMM.size, 1)}[dims_kind]
    batch = 2
    _, _, stats, plan = run_spatial("alexnet", (3, 227, 231), batch, dims)
    received = COMM.allreduce(stats.bytes_received)
    sent = COMM.allreduce(stats.bytes_sent)
    for layer in plan.layers:
        predicted = sum(need.area - need.intersect(own).area for need, own in zip(layer.needed, layer.held)
                        ) * layer.in_shape[0] * 4 * batch if layer.windowed else 0
        assert received[layer.index] == predicted == layer.halo_bytes(batch)
        assert sent[layer.index] == received[layer.index]


def test_fc_weights_are_sharded():
    rows = COMM.allgather(shard_weights("alexnet")["classifier.1.weight"].shape[0])  # drawn by the test before
    assert sum(rows) == 4096 and max(rows) - min(rows) <= FC_ROW_ALIGNMENT


def test_fc_shards_compute_the_single_process_logits_bit_for_bit():
    """Regression: shards of 334 rows (np 3) rounded the last bit differently from the whole layer's GEMM, which
    turned the equal logits of a constant-weight model (ONNX's light models) into a one-hot softmax."""
    network = Network("constant", (("flatten", Flatten()), ("fc", Linear(1024, 1000))), (1024, 1, 1))
    rows = fc_shard_rows(network, COMM.size, COMM.rank)
    x = np.random.default_rng(0).standard_normal((1, 1024, 1, 1)).astype(np.float32)
    weights = {"fc.weight": np.full((1000, 1024), 0.01, np.float32), "fc.bias": np.zeros(1000, np.float32)}
    expected = Forward(network, weights)(x)
    shard = {key: value[slice(*rows[key])] for key, value in weights.items()}
    engine = SpatialEngine(network, shard, (1024, 1, 1), COMM)
    logits = engine(x)
    engine.close()
    np.testing.assert_array_equal(logits, expected)
    assert (logits == logits[0, 0]).all()


def test_unusual_layers_pointwise_first_ceil_avgpool_padding_only_windows():
    """Regression: a ReLU first (the replicated input must be cropped to the block), a ceil_mode average pool
    (border padding passed by the engine must not count the overhang), and a 1x1 convolution with padding 3
    (blocks whose windows read only padding)."""
    from dcnn.network.graph import Network
    from dcnn.network.layers import AvgPool2d, Conv2d, Flatten, Linear, ReLU

    layers = (("f.0", ReLU()), ("f.1", Conv2d(3, 6, 3, padding=1)), ("f.2", AvgPool2d(3, 2, 1, True, True)),
              ("f.3", Conv2d(6, 4, 1, padding=3)), ("f.4", ReLU()), ("flatten", Flatten()),
              ("fc", Linear(4 * 15 * 16, 5)))
    network = Network("unusual", layers, (3, 17, 19))
    x = np.random.default_rng(2).standard_normal((2, 3, 17, 19)).astype(np.float32)
    expected = Forward(network, init_weights(network, 1))(x)
    weights = init_weights(network, 1, rows=fc_shard_rows(network, COMM.size, COMM.rank))
    for dims in grids(COMM.size):
        with SpatialEngine(network, weights, (3, 17, 19), COMM, dims) as engine:
            actual = engine(x)
        assert_same_everywhere(actual, expected)


def test_squeeze_and_excitation_gates_equal_pytorch_and_sum_over_the_ranks():
    """MobileNetV3-Small on an odd size against PyTorch: every gate's pooling adds the ranks' block sums (its
    bytes counted as sent and received once per rank), the gate's layers run whole on every rank."""
    import torch

    from dcnn.testing.torch_models import torch_model

    name, shape = "mobilenet_v3_small", (3, 45, 39)
    x, _ = reference(name, shape, 1)
    expected = None
    if COMM.rank == 0:
        with torch.no_grad():
            expected = torch_model(name, model_weights(name)[1])(torch.from_numpy(x)).numpy()
    expected = COMM.bcast(expected)
    actual, _, stats, plan = run_spatial(name, shape, 1, (COMM.size, 1))
    assert_same_everywhere(actual, expected)
    pools = [layer for layer in plan.layers if layer.vector and layer.layer.kind == "adaptiveavgpool"]
    assert len(pools) == 9 and all(layer.reduces == (COMM.size > 1) for layer in pools)
    for layer in pools:
        assert stats.bytes_sent[layer.index] == (8 * layer.out_shape[0] if COMM.size > 1 else 0)
