"""The spatial plan without MPI: blocks tile every map, FC shards partition the neurons, halos are minimal."""

import numpy as np
import pytest

from dcnn.decomposition.geometry import split_extent
from dcnn.decomposition.spatial import fc_shard_rows, plan_spatial
from dcnn.network.zoo import get_model


@pytest.mark.parametrize("name,shape", [("alexnet", (3, 227, 231)), ("vgg16", (3, 64, 72)), ("lenet5", (1, 32, 32))])
@pytest.mark.parametrize("dims", [(1, 1), (2, 3), (4, 1), (3, 3)])
def test_output_blocks_tile_every_map(name, shape, dims):
    plan = plan_spatial(get_model(name), shape, dims)
    assert plan.layers, "every zoo model starts with a spatial part"
    for layer in plan.layers:
        owner = np.zeros(layer.out_shape[1:], int)
        for box in layer.out_blocks:
            owner[box.slices()] += 1
        assert (owner == 1).all()
    assert plan.gathered_shape == plan.layers[-1].out_shape


def test_first_layer_needs_no_exchange_and_pointwise_layers_never_do():
    plan = plan_spatial(get_model("vgg11"), (3, 40, 40), (2, 2))
    assert plan.layers[0].transfers == []
    assert all(not layer.transfers for layer in plan.layers if not layer.windowed)
    assert any(layer.transfers for layer in plan.layers if layer.windowed)


def test_aligned_pools_exchange_nothing():
    """2x2/2 pools whose output splits evenly read exactly the rank's own block; the 14 -> 7 pool does not."""
    plan = plan_spatial(get_model("vgg16"), (3, 224, 224), (2, 2))
    pools = [layer for layer in plan.layers if layer.layer.kind == "maxpool"]
    assert [layer.out_shape[1] for layer in pools] == [112, 56, 28, 14, 7]
    assert all(layer.transfers == [] for layer in pools[:4])
    assert pools[4].transfers


@pytest.mark.parametrize("dims", [(2, 2), (1, 5), (4, 5)])
def test_halo_bytes_equal_needed_minus_held(dims):
    plan = plan_spatial(get_model("alexnet"), (3, 227, 231), dims)
    for layer in plan.layers:
        expected = sum(need.area - need.intersect(own).area if layer.windowed else 0
                       for need, own in zip(layer.needed, layer.held))
        assert layer.halo_bytes(batch=2) == expected * layer.in_shape[0] * 4 * 2


def test_small_maps_leave_blocks_empty():
    plan = plan_spatial(get_model("vgg11"), (3, 32, 48), (4, 2))
    last = plan.layers[-1]
    assert last.out_shape[1:] == (1, 1)
    assert sum(not box.empty for box in last.out_blocks) == 1


@pytest.mark.parametrize("size", [1, 3, 7, 4097])
def test_fc_shards_partition_the_neurons(size):
    network = get_model("alexnet")
    shards = [fc_shard_rows(network, size, rank) for rank in range(size)]
    for key in shards[0]:
        rows = [shard[key] for shard in shards]
        out_features = rows[-1][1]
        assert rows == split_extent(out_features, size)
