"""Run one fused tile (pure, no MPI): its boxes of the fused nodes, from the input, its own results and strips.

A tile of a fused block (:class:`dcnn.decomposition.fused.Tile`) computes, node by node in topological order,
the box of each node's output that the plan assigns to it, from the network input and from the boxes it
computed before; under the reuse policy (:mod:`dcnn.decomposition.reuse`) it also reads *strips* of tensors that
other tiles computed. The fused engine (:class:`dcnn.parallel.fused.FusedEngine`) moves the strips between
ranks; this module only computes, so the whole fused method runs and is tested on one process too.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from dcnn.decomposition.geometry import Box, cover
from dcnn.exec.forward import Forward, apply_op
from dcnn.network.graph import INPUT
from dcnn.network.window import Padding

__all__ = ["run_tile"]

#: A strip of tensor ``layer`` (the node that computes it): its box in that map and its ``(B, C, h, w)`` values.
Borrowed = tuple[int, Box, np.ndarray]


def run_tile(
    forward: Forward,
    steps: Sequence[tuple[Box, Box, Padding]],
    x: np.ndarray,
    cut: Sequence[str],
    outputs: Sequence[Box],
    borrowed: Sequence[Borrowed] = (),
    computed: Callable[[int, np.ndarray, Box], None] | None = None,
    seconds: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Compute one tile and return its block of each tensor it hands over.

    Each tensor's box is kept until the tile's last node that reads it; an in-place op overwrites only a box no
    later node of the tile reads. When a node needs more of a tensor than the tile computed, the tile's box of
    it is completed, once, with the borrowed strips to the cover of what all its readers (and the hand-over)
    need.

    Parameters
    ----------
    forward : Forward
        The fused nodes compiled (at least ``len(steps)`` ops).
    steps : sequence of (Box, Box, Padding)
        Per fused node: the output box the tile computes, the box of its first input it reads, the map-border
        padding (:attr:`Tile.steps`, or a reuse plan's smaller boxes).
    x : numpy.ndarray
        The whole ``(B, C, H, W)`` network input.
    cut : sequence of str
        The tensors the block hands over (:attr:`FusedPlan.cut`).
    outputs : sequence of Box
        Per cut tensor, the tile's block of it (:attr:`Tile.outputs`).
    borrowed : sequence of (int, Box, numpy.ndarray)
        Strips of other tiles: the node whose output map they belong to, their box, their values.
    computed : callable, optional
        Called as ``computed(node, values, box)`` after each node with the box the tile computed of its output
        (the engine publishes strips from it).
    seconds : numpy.ndarray, optional
        Per node, compute seconds are added here.

    Returns
    -------
    list of numpy.ndarray
        Per cut tensor, its ``(B, C, h, w)`` values over the tile's block.
    """
    network = forward.network
    names = [name for name, _ in network.layers]
    batch = x.shape[0]
    strips: dict[str, list[tuple[Box, np.ndarray]]] = defaultdict(list)
    for node, box, values in borrowed:
        strips[names[node]].append((box, values))
    # Readers left per tensor (the hand-over counts as one), and the cover of what they all need.
    pending: dict[str, int] = dict.fromkeys(cut, 1)
    wanted: dict[str, list[Box]] = defaultdict(list)
    for name, box in zip(cut, outputs):
        wanted[name].append(box)
    for layer, (box, source_box, _) in enumerate(steps):
        for position, name in enumerate(network.inputs[layer]):
            pending[name] = pending.get(name, 0) + 1
            wanted[name].append(source_box if position == 0 else box)
    regions: dict[str, tuple[np.ndarray | None, Box]] = {INPUT: (x, Box(0, x.shape[2], 0, x.shape[3]))}

    def region_of(name: str, need: Box) -> np.ndarray:
        array, held = regions[name]
        if array is None or not held.contains(need):
            whole = cover(wanted[name])
            array, held = _completed(whole, held, array, strips[name], batch), whole
            regions[name] = (array, held)
        return array[(slice(None), slice(None), *need.slices(held))]

    for layer, (box, source_box, padding) in enumerate(steps):
        sources = network.inputs[layer]
        if box.empty:
            regions[names[layer]] = (None, box)
            continue
        start = time.perf_counter()
        op = forward.ops[layer]
        arguments = [region_of(name, source_box if position == 0 else box) for position, name in enumerate(sources)]
        writable = [name != INPUT and pending[name] == 1 and sources.count(name) == 1 for name in sources]
        region = apply_op(op, arguments, writable, padding if op.layer.window is not None else None)
        for name in sources:
            pending[name] -= 1
            if pending[name] == 0:
                regions.pop(name)
        regions[names[layer]] = (region, box)
        if seconds is not None:
            seconds[layer] += time.perf_counter() - start
        if computed is not None:
            computed(layer, region, box)
    return [region_of(name, box) for name, box in zip(cut, outputs)]


def _completed(
    box: Box, held: Box, region: np.ndarray | None, strips: list[tuple[Box, np.ndarray]], batch: int
) -> np.ndarray:
    """``box`` of a tensor assembled from the tile's own ``held`` box of it and borrowed strips."""
    channels = region.shape[1] if region is not None else strips[0][1].shape[1]
    source = np.empty((batch, channels, box.height, box.width), np.float32)
    own = held.intersect(box)
    if not own.empty and region is not None:
        source[(slice(None), slice(None), *own.slices(box))] = region[(slice(None), slice(None), *own.slices(held))]
    for strip, values in strips:
        source[(slice(None), slice(None), *strip.slices(box))] = values
    return source
