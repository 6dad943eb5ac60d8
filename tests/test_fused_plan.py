"""Fused-tile plans without MPI: tiles partition the output, traces are minimal, redundancy is counted."""

import numpy as np
import pytest
import reference

from dcnn.decomposition.fused import cut_tensors, finest_grid, plan_fused, spatial_depth, tileable_depth, trace_tile
from dcnn.decomposition.geometry import Box
from dcnn.errors import PlanError
from dcnn.network.graph import Network
from dcnn.network.layers import Conv2d, MaxPool2d, ReLU
from dcnn.network.zoo import get_model


@pytest.mark.parametrize("grid", [(2, 2), (3, 3), (4, 5), (6, 6)])
def test_tiles_partition_the_fused_output(grid):
    plan = plan_fused(get_model("alexnet"), (3, 227, 231), grid, depth=9)
    owner = np.zeros(plan.output_shape[1:], int)
    for tile in plan.tiles:
        owner[tile.output.slices()] += 1
    assert (owner == 1).all() and len(plan.tiles) == grid[0] * grid[1]


def test_one_tile_has_no_redundancy_and_more_tiles_have_more():
    network = get_model("vgg11")
    one = plan_fused(network, (3, 64, 64), (1, 1))
    assert one.redundant_macs() == 0 and one.tiles[0].input.area == 64 * 64
    assert 0 < plan_fused(network, (3, 64, 64), (2, 2), depth=8).redundant_macs() < \
        plan_fused(network, (3, 64, 64), (2, 2)).redundant_macs()


def test_trace_through_a_conv_and_a_pool():
    network = Network("t", (("c", Conv2d(1, 1, 3, padding=1)), ("r", ReLU()), ("p", MaxPool2d(2))), (1, 10, 10))
    steps, read = trace_tile(network, network.shapes(), 3, {"p": Box(0, 2, 3, 5)})
    assert [s[0] for s in steps] == [Box(0, 4, 6, 10), Box(0, 4, 6, 10), Box(0, 2, 3, 5)]
    assert steps[0][1] == read == Box(0, 5, 5, 10) and steps[0][2] == (1, 0, 0, 1)


def test_bad_grids_and_depths():
    network = get_model("lenet5")
    with pytest.raises(PlanError, match="finer than the 1x1 output map"):
        plan_fused(network, (1, 32, 32), (2, 2))
    with pytest.raises(PlanError, match="--fuse-depth must be between 1 and"):
        plan_fused(network, (1, 32, 32), (1, 1), depth=spatial_depth(network) + 1)
    with pytest.raises(PlanError, match="at least 1x1"):
        plan_fused(network, (1, 32, 32), (0, 2), depth=2)


@pytest.mark.parametrize("name,depth", [("resnet18", 27), ("mobilenet_v2", 30), ("squeezenet1_1", 17),
                                        ("resnet18", 8), ("resnet18", 21), ("googlenet", 30)])
def test_tiles_of_a_dag_cover_what_every_branch_reads(name, depth):
    """Brute force: per tensor, the pixels all its readers in the block need (and the tile's block of it, for a
    tensor the block hands over) lie in the tile's box of it, and that box is their bounding box. Depths 8 and 21
    of resnet18 end inside a residual block (21: inside a downsampling one), 30 of googlenet inside a module."""
    network = get_model(name)
    shape = (3, 45, 51)
    plan = plan_fused(network, shape, (3, 2), depth)
    shapes = network.shapes(shape)
    names = [n for n, _ in network.layers]
    for tile in plan.tiles:
        wanted = {}
        for name, block in zip(plan.cut, tile.outputs, strict=True):
            wanted[name] = np.zeros(shapes[network.tensor_index(name)][1:], bool)
            wanted[name][block.slices()] = True
        for index in reversed(range(depth)):
            mask = wanted.pop(names[index])
            box = tile.steps[index][0]
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert (box.top, box.bottom, box.left, box.right) == (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
            out = np.zeros_like(mask)
            out[box.slices()] = True
            for source in network.inputs[index]:
                in_shape = shapes[network.tensor_index(source)]
                read = reference.pixels_read(network.layers[index][1], in_shape, box)
                wanted[source] = wanted.get(source, np.zeros(in_shape[1:], bool)) | read
        rows, cols = np.flatnonzero(wanted["input"].any(axis=1)), np.flatnonzero(wanted["input"].any(axis=0))
        assert (tile.input.top, tile.input.bottom, tile.input.left, tile.input.right) == (
            rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)


def test_a_block_ending_inside_a_residual_block_hands_over_the_skip_too():
    network = get_model("resnet18")
    names = [n for n, _ in network.layers]
    inside = names.index("layer1.0.conv2") + 1
    plan = plan_fused(network, (3, 67, 73), (2, 2), inside)
    # The block's output so far and the maxpool output, which the block's add still reads.
    assert plan.cut == ("maxpool", "layer1.0.conv2") and cut_tensors(network, inside + 1) == ("maxpool",
                                                                                            "layer1.0.bn2")
    for k, name in enumerate(plan.cut):
        owner = np.zeros(network.shapes((3, 67, 73))[network.tensor_index(name)][1:], int)
        for tile in plan.tiles:
            owner[tile.outputs[k].slices()] += 1
        assert (owner == 1).all()
    # After the add only its output is handed over; a chain hands over its last output.
    assert cut_tensors(network, names.index("layer1.0.add") + 1) == ("layer1.0.add",)
    assert cut_tensors(get_model("vgg11"), 5) == (get_model("vgg11").layers[4][0],)
    # A downsampling block cut after its first convolution: the finest grid is the smaller map's.
    depth = names.index("layer2.0.conv1") + 1
    assert finest_grid(network, (3, 67, 73), depth) == (9, 10)
    with pytest.raises(PlanError, match=r"tile grid 10x2 is finer than the 9x10 output map of layer layer2\.0\.conv1"):
        plan_fused(network, (3, 67, 73), (10, 2), depth)


def test_a_block_reaching_past_a_squeeze_and_excitation_pooling_is_refused_with_the_reason():
    network = get_model("mobilenet_v3_small")
    assert tileable_depth(network) == (6, "node features.1.block.1.avgpool (adaptive avgpool 1x1) reduces the whole "
                                          "map, of which a tile holds a part")
    assert plan_fused(network, (3, 37, 41), (2, 2)).depth == 6
    with pytest.raises(PlanError, match=r"--fuse-depth 7 cannot be tiled: node features\.1\.block\.1\.avgpool .* fuse "
                                        r"at most 6 layers or use --mode spatial"):
        plan_fused(network, (3, 37, 41), (2, 2), 7)
