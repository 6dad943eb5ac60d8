"""Fused-tile plans without MPI: tiles partition the output, traces are minimal, redundancy is counted."""

import numpy as np
import pytest

from dcnn.decomposition.fused import plan_fused, spatial_depth
from dcnn.decomposition.geometry import trace_region
from dcnn.errors import PlanError
from dcnn.network.window import Window
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
    windows = [Window((3, 3), (1, 1), (1, 1)), None, Window((2, 2), (2, 2), (0, 0))]
    shapes = [(1, 10, 10), (1, 10, 10), (1, 10, 10), (1, 5, 5)]
    from dcnn.decomposition.geometry import Box

    steps = trace_region(windows, shapes, Box(0, 2, 3, 5))
    assert [s[0] for s in steps] == [Box(0, 4, 6, 10), Box(0, 4, 6, 10), Box(0, 2, 3, 5)]
    assert steps[0][1] == Box(0, 5, 5, 10) and steps[0][2] == (1, 0, 0, 1)


def test_bad_grids_and_depths():
    network = get_model("lenet5")
    with pytest.raises(PlanError, match="finer than the 1x1 output map"):
        plan_fused(network, (1, 32, 32), (2, 2))
    with pytest.raises(PlanError, match="--fuse-depth must be between 1 and"):
        plan_fused(network, (1, 32, 32), (1, 1), depth=spatial_depth(network) + 1)
    with pytest.raises(PlanError, match="at least 1x1"):
        plan_fused(network, (1, 32, 32), (0, 2), depth=2)
