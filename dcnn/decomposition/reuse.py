"""Overlap reuse between fused tiles (pure): which tile computes what, and which strips it borrows.

The tiles of a fused block fall into three classes by their grid position, a checkerboard:
``class = (i % 2) + (j % 2)``. In a 3x3 grid A B C / D E F / G H I, the corners A, C, G, I (class 0) depend on
nobody; B, D, F, H (class 1) reuse what class 0 computed; E (class 2) reuses classes 0 and 1. This is the
data-reuse scheme of the paper and of DeepThings.

For tile ``t`` and fused layer ``l``, let ``N`` be the region the tile needs (its traced region, as with the
recompute policy) and ``K_u`` what each lower-class tile ``u`` computes of the same map. Tile ``t`` computes
``K_t = bbox(N - union of K_u)`` itself. Its input region ``input_box(K_t)`` lies inside the previous layer's
``N``, which is covered by its own previous ``K_t`` and its lower-class neighbours' ``K_u``: the tile assembles
it from its own results and *strips* borrowed from them. In a DAG the same holds per tensor: ``N`` of a tensor
is the cover of its readers' needs, so the cover of what the tile's readers need from their ``K`` boxes lies in
it, and the tile borrows, once per tensor, the strips that complete that cover (and of a tensor the block hands
over, the tile's block of it: ``N`` holds that block too). Every strip (producer, consumer,
layer, box) is fixed by
the plan, so each gets a fixed slot in the strip pool of its *home* rank (the producer tile's index modulo the
rank count), sized per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from dcnn.decomposition.geometry import Box, bounding_box, bounding_box_of_difference, cover, layer_input
from dcnn.network.graph import INPUT
from dcnn.network.window import Padding

__all__ = ["NUM_CLASSES", "ReusePlan", "Strip", "plan_reuse", "tile_class"]

NUM_CLASSES = 3


def tile_class(index: int, grid: tuple[int, int]) -> int:
    """Checkerboard class of the tile at row-major ``index`` of ``grid``: 0 independent, 1 and 2 dependent."""
    row, col = divmod(index, grid[1])
    return row % 2 + col % 2


@dataclass(frozen=True)
class Strip:
    """A part of one tile's output of one layer that another tile reads instead of recomputing.

    Attributes
    ----------
    producer, consumer : int
        Tile indices.
    layer : int
        The fused layer whose output map the strip belongs to.
    box : Box
        The strip, in that map's coordinates.
    channels : int
        Channels of that map.
    home : int
        The rank whose strip pool holds the strip (all strips of one producer share a home; producers are
        spread over the ranks by bytes).
    offset : int
        Elements per image before the strip in its home's pool (a batch of ``B`` images starts at ``B * offset``).
    """

    producer: int
    consumer: int
    layer: int
    box: Box
    channels: int
    home: int
    offset: int

    @property
    def elements(self) -> int:
        """float32 values per image."""
        return self.channels * self.box.area


@dataclass(frozen=True)
class ReusePlan:
    """The reuse policy for a fused plan and a rank count.

    Attributes
    ----------
    fused : FusedPlan
        The tiles and their traced (needed) regions.
    ranks : int
        Ranks that hold the strip pool.
    classes : list of int
        Per tile, its class.
    steps : list of list of (Box, Box, Padding)
        Per tile and fused layer: the output box the tile computes (``K``), the input box that reads and the
        map-border padding; the same triples as :attr:`Tile.steps`, with smaller boxes.
    strips : list of Strip
        Every strip, grouped by home rank in offset order.
    pool_elements : list of int
        Per rank, float32 values per image of the strips it holds.
    """

    fused: object
    ranks: int
    classes: list[int]
    steps: list[list[tuple[Box, Box, Padding]]]
    strips: list[Strip]
    pool_elements: list[int]

    @cached_property
    def incoming(self) -> list[list[Strip]]:
        """Per tile, the strips it reads."""
        table: list[list[Strip]] = [[] for _ in self.classes]
        for strip in self.strips:
            table[strip.consumer].append(strip)
        return table

    @cached_property
    def outgoing(self) -> list[list[Strip]]:
        """Per tile, the strips it publishes."""
        table: list[list[Strip]] = [[] for _ in self.classes]
        for strip in self.strips:
            table[strip.producer].append(strip)
        return table

    def tiles_of_class(self, cls: int) -> list[int]:
        """Indices of the tiles of one class, in grid order."""
        return [index for index, value in enumerate(self.classes) if value == cls]

    def macs(self) -> int:
        """Multiply-accumulates per image that the tiles compute under this policy."""
        rates = self.fused.macs_per_pixel()
        return sum(rate * steps[layer][0].area for steps in self.steps for layer, rate in enumerate(rates))

    def strip_bytes(self) -> int:
        """Bytes per image written into the strip pool (each strip is also read once, by its consumer)."""
        return 4 * sum(strip.elements for strip in self.strips)


def plan_reuse(fused, ranks: int) -> ReusePlan:
    """The reuse policy for ``fused`` (a :class:`~dcnn.decomposition.fused.FusedPlan`), pool over ``ranks``.

    In a DAG each node's ``K`` and input boxes follow as in a chain; a tile borrows strips per *tensor*: those
    that complete the cover of what all the tile's readers of the tensor need.
    """
    network, depth, tiles = fused.network, fused.depth, fused.tiles
    shapes = network.shapes(fused.shapes[0])
    classes = [tile_class(tile.index, fused.grid) for tile in tiles]
    order = sorted(range(len(tiles)), key=lambda index: (classes[index], index))
    computed: list[list[Box]] = [[] for _ in tiles]
    steps: list[list[tuple[Box, Box, Padding]]] = [[] for _ in tiles]
    borrowed = []
    for index in order:  # by class: the lower classes' boxes are known when a tile is planned
        lower = [other for other in order if classes[other] < classes[index]]
        needs: dict[int, list[Box]] = {}
        for layer in range(depth):
            box = bounding_box_of_difference(tiles[index].steps[layer][0], [computed[u][layer] for u in lower])
            computed[index].append(box)
            sources = network.inputs[layer]
            needed, padding = layer_input(network.layers[layer][1].window,
                                          shapes[network.tensor_index(sources[0])], box)
            steps[index].append((box, needed, padding))
            for position, source in enumerate(sources):
                if source != INPUT:
                    needs.setdefault(network.tensor_index(source) - 1, []).append(needed if position == 0 else box)
        for name, box in zip(fused.cut, tiles[index].outputs):  # what the tile hands over, borrowed as needed
            needs.setdefault(network.tensor_index(name) - 1, []).append(box)
        for source, boxes in needs.items():
            producers = [(other, computed[other][source]) for other in lower]
            borrowed.extend((index, source, producer, strip) for producer, strip in
                            _borrow(cover(boxes), computed[index][source], producers))
    channels = [shape[0] for shape in shapes[1:depth + 1]]
    homes = _homes(borrowed, channels, ranks)
    strips, used = [], [0] * ranks
    for consumer, layer, producer, box in sorted(borrowed, key=lambda item: (homes[item[2]], item)):
        home = homes[producer]
        strip = Strip(producer, consumer, layer, box, channels[layer], home, used[home])
        used[home] += strip.elements
        strips.append(strip)
    return ReusePlan(fused, ranks, classes, steps, strips, used)


def _homes(borrowed: list, channels: list[int], ranks: int) -> dict[int, int]:
    """A home rank per producer tile: the largest producers first, each to the rank holding the fewest bytes."""
    size: dict[int, int] = {}
    for _, layer, producer, box in borrowed:
        size[producer] = size.get(producer, 0) + channels[layer] * box.area
    load, homes = [0] * ranks, {}
    for producer in sorted(size, key=lambda p: (-size[p], p)):
        home = load.index(min(load))
        homes[producer] = home
        load[home] += size[producer]
    return homes


def _borrow(needed: Box, own: Box, producers: list[tuple[int, Box]]) -> list[tuple[int, Box]]:
    """Strips that, with the ``own`` box, cover ``needed``: ``(producer, box)`` pairs, none inside what is held."""
    if needed.empty or own.contains(needed):
        return []
    missing = np.ones((needed.height, needed.width), bool)
    held = own.intersect(needed)
    if not held.empty:
        missing[held.slices(needed)] = False
    strips = []
    for producer, computed in producers:
        part = computed.intersect(needed)
        if part.empty or not missing[part.slices(needed)].any():
            continue
        box = bounding_box(missing[part.slices(needed)], part)
        missing[box.slices(needed)] = False
        strips.append((producer, box))
    if missing.any():
        raise AssertionError(f"reuse plan leaves {int(missing.sum())} pixels of {needed} uncovered")
    return strips

