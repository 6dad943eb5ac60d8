"""The reuse plan without MPI: classes, computed boxes, strips that cover every input, pool slots."""

import itertools

import numpy as np
import pytest

from dcnn.decomposition.fused import plan_fused
from dcnn.decomposition.geometry import Box
from dcnn.decomposition.reuse import plan_reuse, tile_class
from dcnn.network.zoo import get_model

CASES = [("alexnet", (3, 227, 231), (3, 3), None), ("vgg11_bn", (3, 64, 72), (4, 5), 7),
         ("vgg16", (3, 83, 101), (6, 6), 10), ("vgg16", (3, 96, 96), (2, 2), None)]


def test_classes_are_a_checkerboard():
    assert [tile_class(i, (3, 3)) for i in range(9)] == [0, 1, 0, 1, 2, 1, 0, 1, 0]
    assert [tile_class(i, (1, 4)) for i in range(4)] == [0, 1, 0, 1]


@pytest.mark.parametrize("name,shape,grid,depth", CASES)
@pytest.mark.parametrize("ranks", [1, 3])
def test_every_input_is_own_or_borrowed(name, shape, grid, depth, ranks):
    fused = plan_fused(get_model(name), shape, grid, depth)
    plan = plan_reuse(fused, ranks)
    for index, steps in enumerate(plan.steps):
        traced = fused.tiles[index].steps
        assert steps[-1][0] == traced[-1][0], "every tile computes its whole output"
        if plan.classes[index] == 0:
            assert steps == traced and not plan.incoming[index]
        for layer in range(1, fused.depth):
            source = steps[layer][1]
            assert traced[layer][1].contains(source) and traced[layer][0].contains(steps[layer][0])
            covered = np.zeros((source.height, source.width), bool)
            own = steps[layer - 1][0].intersect(source)
            if not own.empty:
                covered[own.slices(source)] = True
            for strip in plan.incoming[index]:
                if strip.layer == layer - 1:
                    assert plan.classes[strip.producer] < plan.classes[index]
                    assert plan.steps[strip.producer][layer - 1][0].contains(strip.box)
                    assert source.contains(strip.box) and not strip.box.empty
                    covered[strip.box.slices(source)] = True
            assert covered.all(), (index, layer)


@pytest.mark.parametrize("name,shape,grid,depth", CASES)
def test_reuse_computes_less_than_recompute_and_at_least_what_is_needed(name, shape, grid, depth):
    """Reuse never computes less than the union of the traced regions (which can be below the plain network's
    count: rows that a floor-mode pooling drops are needed by no tile)."""
    fused = plan_fused(get_model(name), shape, grid, depth)
    needed = 0
    for layer, rate in enumerate(fused.macs_per_pixel()):
        union = np.zeros(fused.shapes[layer + 1][1:], bool)
        for tile in fused.tiles:
            union[tile.steps[layer][0].slices()] = True
        needed += rate * int(union.sum())
    assert needed <= plan_reuse(fused, 2).macs() < fused.macs()[0]


def test_one_tile_needs_no_strips():
    plan = plan_reuse(plan_fused(get_model("vgg11"), (3, 64, 64), (1, 1)), 2)
    assert plan.strips == [] and plan.pool_elements == [0, 0] and plan.macs() == plan.fused.plain_macs()


def test_a_shallow_block_reuses_everything():
    """With few layers the halos are narrow: every pixel is computed once, as in the plain network."""
    fused = plan_fused(get_model("vgg11"), (3, 64, 64), (4, 4), depth=4)
    assert plan_reuse(fused, 2).macs() == fused.plain_macs()


@pytest.mark.parametrize("ranks", [1, 2, 5])
def test_pool_slots_do_not_overlap_and_fill_each_home(ranks):
    plan = plan_reuse(plan_fused(get_model("vgg16"), (3, 83, 101), (4, 5), 10), ranks)
    for home in range(ranks):
        slots = sorted((s.offset, s.offset + s.elements) for s in plan.strips if s.home == home)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(slots))
        assert (slots[-1][1] if slots else 0) == plan.pool_elements[home]
    homes = {}
    for strip in plan.strips:
        assert homes.setdefault(strip.producer, strip.home) == strip.home
    assert plan.strip_bytes() == 4 * sum(plan.pool_elements)
    if ranks > 1:
        assert max(plan.pool_elements) < sum(plan.pool_elements)


def test_strip_of_a_small_example():
    """Two tiles side by side, one 3x3 convolution: the right tile borrows one column, with a stride-1 halo."""
    from dcnn.network.graph import Network
    from dcnn.network.layers import Conv2d

    network = Network("tiny", (("a", Conv2d(1, 1, 3, padding=1)), ("b", Conv2d(1, 1, 3, padding=1))), (1, 8, 8))
    plan = plan_reuse(plan_fused(network, (1, 8, 8), (1, 2)), 1)
    assert plan.classes == [0, 1]
    assert plan.steps[0][0][0] == Box(0, 8, 0, 5)
    assert plan.steps[1][0][0] == Box(0, 8, 5, 8)
    (strip,) = plan.strips
    assert (strip.producer, strip.consumer, strip.layer, strip.box) == (0, 1, 0, Box(0, 8, 3, 5))
