"""The spatial plan without MPI: blocks tile every map, FC shards partition the neurons, halos are minimal."""

from itertools import pairwise

import numpy as np
import pytest
import reference

from dcnn.decomposition.spatial import FC_ROW_ALIGNMENT, fc_shard_rows, fc_shards, plan_spatial
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


@pytest.mark.parametrize("name,size", [("alexnet", 1), ("alexnet", 3), ("alexnet", 7), ("lenet5", 121)])
def test_fc_shards_partition_the_neurons(name, size):
    """Including more ranks than any layer has neurons (LeNet-5's widest has 120: AlexNet's 4096 took 4097 plans of
    its own, 14 s, for the same case)."""
    network = get_model(name)
    shards = [fc_shard_rows(network, size, rank) for rank in range(size)]
    for key in shards[0]:
        rows = [shard[key] for shard in shards]
        out_features = rows[-1][1]
        assert rows == fc_shards(out_features, size)
        assert rows[0][0] == 0 and rows[-1][1] == out_features
        assert all(a[1] == b[0] for a, b in pairwise(rows)), "contiguous, in rank order"
        aligned = all(start % FC_ROW_ALIGNMENT == 0 for start, stop in rows if stop > start)
        assert aligned, "non-empty shards start where the whole matrix's blocks do"
        sizes = [stop - start for start, stop in rows]
        assert max(sizes) - min(sizes) <= FC_ROW_ALIGNMENT or size > out_features // FC_ROW_ALIGNMENT


@pytest.mark.parametrize("dims", [(2, 2), (3, 2), (5, 1)])
def test_a_tensor_read_by_two_windowed_nodes_is_exchanged_once_for_both(dims):
    """resnet18's layer2.0 input feeds a 3x3/2 convolution and the 1x1/2 shortcut: one exchange, covering both."""
    network = get_model("resnet18")
    plan = plan_spatial(network, (3, 67, 73), dims)
    names = [name for name, _ in network.layers]
    readers = [layer for layer in plan.layers if layer.sources == ("layer1.1.relu",)]
    assert [names[layer.index] for layer in readers] == ["layer2.0.conv1", "layer2.0.downsample.0"]
    first, second = readers
    assert second.exchanged is None and second.transfers == []
    for rank in range(dims[0] * dims[1]):
        needed = (reference.pixels_read(first.layer, first.in_shape, first.out_blocks[rank])
                  | reference.pixels_read(second.layer, second.in_shape, second.out_blocks[rank]))
        region = first.exchanged[rank]
        inside = np.zeros_like(needed)
        inside[region.slices()] = True
        assert not (needed & ~inside).any()
        if needed.any():
            rows, cols = np.flatnonzero(needed.any(axis=1)), np.flatnonzero(needed.any(axis=0))
            assert (region.top, region.bottom, region.left, region.right) == (
                rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
        received = sum(t.box.area for t in first.transfers if t.dest == rank)
        assert received == region.area - region.intersect(first.held[rank]).area


def test_adds_and_concats_exchange_nothing():
    plan = plan_spatial(get_model("googlenet"), (3, 67, 73), (2, 2))
    assert all(not layer.transfers for layer in plan.layers if layer.layer.kind in ("add", "concat"))
    assert plan.gathered_shape == (1024, 2, 2)


@pytest.mark.parametrize("block", ["layer1.0", "layer2.0"])
@pytest.mark.parametrize("dims", [(2, 2), (3, 2), (1, 4)])
def test_every_halo_of_a_residual_block_is_the_brute_force_union_of_its_readers_needs(block, dims):
    """Each tensor a residual block's windowed nodes read (an identity or a strided 1x1 skip) is exchanged once,
    for exactly the bounding box of the pixels all its windowed readers read, by enumeration; what a rank receives
    is that box minus its own block; the add's two inputs are split alike, so it needs no halo."""
    network = get_model("resnet18")
    plan = plan_spatial(network, (3, 67, 73), dims)
    names = [name for name, _ in network.layers]
    nodes = [layer for layer in plan.layers if names[layer.index].startswith(block + ".")]
    readers: dict[str, list] = {}
    for layer in nodes:
        if layer.windowed:
            readers.setdefault(layer.sources[0], []).append(layer)
    assert sum(map(len, readers.values())) == (3 if block == "layer2.0" else 2)
    for tensor, group in readers.items():
        exchanging = [layer for layer in group if layer.exchanged is not None]
        assert len(exchanging) == 1 and exchanging[0] is group[0]
        first = group[0]
        for rank in range(dims[0] * dims[1]):
            needed = np.zeros(first.in_shape[1:], bool)
            for layer in group:
                needed |= reference.pixels_read(layer.layer, layer.in_shape, layer.out_blocks[rank])
            region = first.exchanged[rank]
            if needed.any():
                rows, cols = np.flatnonzero(needed.any(axis=1)), np.flatnonzero(needed.any(axis=0))
                assert (region.top, region.bottom, region.left, region.right) == (
                    rows[0], rows[-1] + 1, cols[0], cols[-1] + 1), (tensor, rank)
            received = sum(t.box.area for t in first.transfers if t.dest == rank)
            assert received == region.area - region.intersect(first.held[rank]).area
    add = next(layer for layer in nodes if layer.layer.kind == "add")
    skip = next(layer for layer in plan.layers if names[layer.index] == add.sources[1])
    assert not add.transfers and skip.out_blocks == add.out_blocks


def test_squeeze_and_excitation_gates_are_vectors_every_rank_holds():
    network = get_model("mobilenet_v3_small")
    plan = plan_spatial(network, (3, 45, 39), (2, 2))
    names = [name for name, _ in network.layers]
    gate = ("avgpool", "fc1", "activation", "fc2", "scale_activation")
    assert plan.vectors == {name for name in names[:plan.gather_index] if name.rsplit(".", 1)[-1] in gate}
    for layer in plan.layers:
        name = names[layer.index]
        assert layer.vector == (name in plan.vectors) and not (layer.vector and layer.transfers)
        assert layer.reduces == name.endswith(".avgpool")
        if name.endswith(".scale"):  # the map times the gate: split like the map, no halo
            assert layer.out_blocks == layer.held and not layer.transfers
    assert names[plan.gather_index] == "avgpool"


def test_a_global_layer_mid_network_other_than_a_gate_is_refused():
    from dcnn.errors import PlanError
    from dcnn.network.graph import GraphBuilder
    from dcnn.network.layers import AdaptiveAvgPool2d, Conv2d, Mul

    graph = GraphBuilder()
    conv = graph.add("conv", Conv2d(3, 4, 3, padding=1))
    graph.add("pool", AdaptiveAvgPool2d(2))
    graph.add("mul", Mul(), conv, graph.add("gate", AdaptiveAvgPool2d(1), conv))
    graph.add("head", AdaptiveAvgPool2d(1))
    network = graph.build("toy", (3, 9, 10))
    with pytest.raises(PlanError, match=r"toy cannot be split spatially: node pool \(adaptive avgpool 2x2\) comes "
                                        r"before the classifier head"):
        plan_spatial(network, (3, 9, 10), (2, 1))
