"""Fused tiles on one process (no MPI): every cut depth of DAG networks, both overlap policies, equals whole maps.

A fused block may end at any node, inside a residual block or an Inception module too; every tensor it hands over
(the block's output so far and the skips still needed) is assembled from the tiles' blocks and must equal the
whole-map tensor; the layers after the block, run from those tensors, give the network's output.
"""

import numpy as np
import pytest

from dcnn.decomposition.fused import cut_tensors, finest_grid, plan_fused, tileable_depth
from dcnn.decomposition.reuse import NUM_CLASSES, plan_reuse
from dcnn.exec.forward import Forward, apply_op
from dcnn.exec.tiles import run_tile
from dcnn.network.graph import INPUT
from dcnn.network.weights import init_weights
from dcnn.network.zoo import get_model

#: Small odd inputs; the tile grid of each depth is the finest of these the handed-over maps allow.
CASES = {"resnet18": ((3, 65, 71), (2, 2)), "mobilenet_v2": ((3, 41, 45), (2, 2)), "googlenet": ((3, 37, 41), (2, 2))}


def whole_tensors(forward: Forward, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor of the network on whole maps, by name."""
    network = forward.network
    tensors = {INPUT: x}
    for (name, _), sources, op in zip(network.layers, network.inputs, forward.ops):
        tensors[name] = apply_op(op, [tensors[source] for source in sources], [False] * len(sources))
    return tensors


def assembled(plan, outputs: dict[int, list[np.ndarray]], batch: int) -> dict[str, np.ndarray]:
    """The tiles' blocks of each cut tensor put together."""
    result = {}
    for k, (name, shape) in enumerate(zip(plan.cut, plan.cut_shapes)):
        whole = np.full((batch, *shape), np.nan, np.float32)
        for index, tile in enumerate(plan.tiles):
            whole[(slice(None), slice(None), *tile.outputs[k].slices())] = outputs[index][k]
        result[name] = whole
    return result


def run_tiles(forward: Forward, plan, x: np.ndarray, policy: str) -> dict[str, np.ndarray]:
    """Every tile of ``plan`` under ``policy``, the reuse policy's strips handed over through a dict."""
    if policy == "recompute":
        outputs = {tile.index: run_tile(forward, tile.steps, x, plan.cut, tile.outputs) for tile in plan.tiles}
        return assembled(plan, outputs, x.shape[0])
    reuse = plan_reuse(plan, 1)
    published, outputs = {}, {}
    for cls in range(NUM_CLASSES):
        for index in reuse.tiles_of_class(cls):

            def publish(layer, region, box, index=index):
                for strip in reuse.outgoing[index]:
                    if strip.layer == layer:
                        published[strip] = region[(slice(None), slice(None), *strip.box.slices(box))].copy()

            borrowed = [(strip.layer, strip.box, published[strip]) for strip in reuse.incoming[index]]
            outputs[index] = run_tile(
                forward, reuse.steps[index], x, plan.cut, plan.tiles[index].outputs, borrowed, publish
            )
    return assembled(plan, outputs, x.shape[0])


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_cut_depth_hands_over_exact_tensors(name):
    network = get_model(name)
    shape, grid = CASES[name]
    weights = init_weights(network, 5)
    # Unfolded ops: a block may end at any node (folding is exercised by the engines' tests).
    forward = Forward(network, weights, fuse=False)
    x = np.random.default_rng(2).standard_normal((1, *shape)).astype(np.float32)
    expected = whole_tensors(forward, x)
    inside = 0
    for depth in range(1, tileable_depth(network)[0] + 1):
        tiles = tuple(min(g, f) for g, f in zip(grid, finest_grid(network, shape, depth)))
        plan = plan_fused(network, shape, tiles, depth)
        inside += len(plan.cut) > 1
        for policy in ("recompute", "reuse"):
            for tensor, values in run_tiles(forward, plan, x, policy).items():
                reference = expected[tensor]
                error = np.abs(values - reference).max() / max(np.abs(reference).max(), 1e-6)
                assert error <= 1e-5, (depth, policy, tensor, error)
    assert inside > 10  # many depths end inside a residual block or module


@pytest.mark.parametrize(
    "name,after",
    [
        ("resnet18", "layer2.0.conv1"),
        ("resnet18", "layer3.1.bn2"),
        ("mobilenet_v2", "features.5.conv.1.0"),
        ("googlenet", "inception3b.branch3.0.conv"),
    ],
)
def test_the_layers_after_a_cut_inside_a_block_finish_the_network(name, after):
    """The compiled halves of a run cut inside a block (folding on each side) give the whole network's output."""
    network = get_model(name)
    shape, grid = CASES[name]
    weights = init_weights(network, 5)
    depth = [n for n, _ in network.layers].index(after) + 1
    plan = plan_fused(network, shape, grid, depth)
    assert len(plan.cut) > 1 and plan.cut == cut_tensors(network, depth)
    x = np.random.default_rng(3).standard_normal((2, *shape)).astype(np.float32)
    tensors = run_tiles(Forward(network, weights, stop=depth), plan, x, "reuse")
    actual = Forward(network, weights, start=depth).run(tensors, start=depth)
    expected = Forward(network, weights)(x)
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()
