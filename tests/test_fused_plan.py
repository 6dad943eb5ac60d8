"""Fused-tile plans without MPI: tiles partition the output, traces are minimal, redundancy is counted."""

import numpy as np
import pytest
import reference

from dcnn.decomposition.fused import plan_fused, spatial_depth, trace_tile
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
    steps, read = trace_tile(network, network.shapes(), 3, Box(0, 2, 3, 5))
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


@pytest.mark.parametrize("name,depth", [("resnet18", 27), ("mobilenet_v2", 30), ("squeezenet1_1", 17)])
def test_tiles_of_a_dag_cover_what_every_branch_reads(name, depth):
    """Brute force: per tensor, the pixels all its readers in the block need lie in the tile's box of it, and
    that box is their bounding box."""
    network = get_model(name)
    shape = (3, 45, 51)
    plan = plan_fused(network, shape, (3, 2), depth)
    shapes = network.shapes(shape)
    names = [n for n, _ in network.layers]
    for tile in plan.tiles:
        wanted = {names[depth - 1]: np.zeros(shapes[depth][1:], bool)}
        wanted[names[depth - 1]][tile.output.slices()] = True
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


def test_a_depth_inside_a_residual_block_is_refused_with_the_nearest_cuts():
    network = get_model("resnet18")
    names = [n for n, _ in network.layers]
    inside = names.index("layer1.0.conv2") + 1
    with pytest.raises(PlanError, match=r"--fuse-depth 8 cuts resnet18 inside a branch: node layer1\.0\.add after "
                                        r"the fused block reads maxpool from inside it; fuse 4 or 10 layers instead"):
        plan_fused(network, (3, 67, 73), (2, 2), inside)
    assert plan_fused(network, (3, 67, 73), (2, 2), names.index("layer1.0.relu") + 1).depth == 11
