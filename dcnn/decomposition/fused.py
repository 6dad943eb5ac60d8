"""The fused tiling (pure, no MPI): the tensors a block of consecutive layers hands over, cut into a grid of tiles.

The output map of the fused block (the whole tileable part, or a prefix of it) is cut into a ``Ty x Tx``
grid of tiles; each tile's input region is traced backwards through the fused nodes (:func:`trace_tile`), so a
tile is computable from the input image alone, and the regions of neighbouring tiles overlap. In a DAG the
trace goes through every branch: the box of a tensor a tile computes is the cover of what all its readers in
the block need. The block may end at any node: when it ends inside a residual block or an Inception module,
every tensor a later node still reads (the block's output so far and its skip, the finished branches) is cut by
the same grid and handed over (:func:`cut_tensors`), to be assembled whole for the layers after the block. A
global reduction (a squeeze-and-excitation pooling) ends what can be tiled (:func:`tileable_depth`). The engine
that runs the tiles is :class:`dcnn.parallel.fused.FusedEngine`; the reuse policy's plan is
:mod:`dcnn.decomposition.reuse`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from dcnn.decomposition.geometry import Box, block_boxes, cover, layer_input
from dcnn.decomposition.spatial import GLOBAL_LAYERS, spatial_depth
from dcnn.errors import PlanError
from dcnn.network.graph import INPUT, Network
from dcnn.network.layers import Shape
from dcnn.network.window import Padding

__all__ = ["HALO_POLICIES", "FusedPlan", "Tile", "check_tile_grid", "cut_tensors", "finest_grid", "plan_fused",
           "spatial_depth", "tileable_depth", "trace_tile"]

HALO_POLICIES = ("recompute", "reuse")


@dataclass(frozen=True)
class Tile:
    """One task: a box of each tensor the fused block hands over and, per fused node, what computing it takes.

    Attributes
    ----------
    index : int
        Task number (row-major over the tile grid).
    steps : list of (Box, Box, Padding)
        Per fused node: output box, box of its (first) input, map-border padding.
    input : Box
        The region of the input image the tile reads.
    outputs : tuple of Box
        Per cut tensor (:attr:`FusedPlan.cut`), the box of it the tile hands over: the tile's block of that
        tensor's map in the grid; the tiles' blocks partition each map.
    """

    index: int
    steps: list[tuple[Box, Box, Padding]]
    input: Box
    outputs: tuple[Box, ...] = ()

    @property
    def output(self) -> Box:
        """The tile's box of the fused block's last node's output map."""
        return self.steps[-1][0]


@dataclass(frozen=True)
class FusedPlan:
    """Tiles of a fused block for one input shape.

    Attributes
    ----------
    depth : int
        Number of fused layers (from layer 0).
    grid : tuple of int
        ``(Ty, Tx)``.
    tiles : list of Tile
        Row-major.
    shapes : list of tuple
        Map shapes of the fused block: its input, then each node's output.
    cut : tuple of str
        The tensors the block hands over (:func:`cut_tensors`): the last node's output, and in a block ending
        inside a residual block or module, the skips and branches later nodes still read.
    """

    network: Network
    depth: int
    grid: tuple[int, int]
    tiles: list[Tile]
    shapes: list[Shape]
    cut: tuple[str, ...] = ()

    @property
    def output_shape(self) -> Shape:
        """Shape of the fused block's last node's output map."""
        return self.shapes[-1]

    @property
    def cut_shapes(self) -> list[Shape]:
        """Per-image shapes of the :attr:`cut` tensors."""
        return [self.shapes[self.network.tensor_index(name)] for name in self.cut]

    def cut_values(self) -> int:
        """Values per image of every cut tensor: what the tiles hand over, assembled whole on every rank."""
        return sum(math.prod(shape) for shape in self.cut_shapes)

    def macs_per_pixel(self) -> list[int]:
        """Per fused layer, the multiply-accumulates of one output pixel (all channels) of one image."""
        costs = self.network.costs(self.shapes[0])[:self.depth]
        # Whole numbers: K * C/g * kh * kw for a convolution, 0 otherwise.
        return [row.macs // max(1, row.out_shape[1] * row.out_shape[2]) for row in costs]

    def plain_macs(self) -> int:
        """Multiply-accumulates per image of the fused layers run untiled."""
        return sum(row.macs for row in self.network.costs(self.shapes[0])[:self.depth])

    def macs(self) -> tuple[int, int]:
        """``(tiled, plain)`` multiply-accumulates per image: what the tiles compute, and the plain network."""
        tiled = sum(rate * tile.steps[layer][0].area for tile in self.tiles
                    for layer, rate in enumerate(self.macs_per_pixel()))
        return tiled, self.plain_macs()

    def redundant_macs(self) -> int:
        """Multiply-accumulates per image spent recomputing overlaps (tiled minus plain)."""
        tiled, plain = self.macs()
        return tiled - plain


def cut_tensors(network: Network, depth: int) -> tuple[str, ...]:
    """The tensors computed by the first ``depth`` nodes that a later node reads (or the network output), in
    topological order: what a fused block of ``depth`` nodes hands to the layers after it.

    For a chain, and for a block ending where one tensor carries everything, it is node ``depth - 1``'s output
    alone; a block ending inside a residual block also hands over the skip tensor the block's add still needs,
    one ending inside an Inception module the finished branches. The network input, when a later node reads it,
    is not counted: every rank holds it whole.
    """
    last = network.last_uses()
    return tuple(name for name, _ in network.layers[:depth] if last[name] >= depth)


def tileable_depth(network: Network) -> tuple[int, str | None]:
    """The most nodes a fused block may hold, and why not more (``None`` when the limit is the classifier head,
    :func:`~dcnn.decomposition.spatial.spatial_depth`).

    A tile holds a part of each map, so a global reduction inside the convolutional part (the average pooling of
    a squeeze-and-excitation gate, which needs the whole map) ends what can be tiled.
    """
    limit = spatial_depth(network)
    for index, (name, layer) in enumerate(network.layers[:limit]):
        if isinstance(layer, GLOBAL_LAYERS):
            return index, f"node {name} ({layer.describe()}) reduces the whole map, of which a tile holds a part"
    return limit, None


def finest_grid(network: Network, input_shape: Shape, depth: int | None = None) -> tuple[int, int]:
    """The finest tile grid a block of ``depth`` nodes (default: every tileable one) allows on ``input_shape``: the
    smallest height and width among the maps it hands over (``(0, 0)`` when nothing can be tiled)."""
    depth = tileable_depth(network)[0] if depth is None else depth
    shapes = network.shapes(input_shape)
    sizes = [shapes[network.tensor_index(name)][1:] for name in cut_tensors(network, depth)]
    return (min(h for h, _ in sizes), min(w for _, w in sizes)) if sizes else (0, 0)


def trace_tile(network: Network, shapes: list[Shape], depth: int, boxes: dict[str, Box]) -> tuple[
        list[tuple[Box, Box, Padding]], Box]:
    """What each of the first ``depth`` nodes must compute so that the block yields ``boxes`` of its cut tensors.

    Nodes are visited backwards; the box of a tensor is the cover of what all its readers in the block need and
    of the part of it the tile hands over (for a chain, just the next layer's input box).

    Parameters
    ----------
    network : Network
        The model.
    shapes : list of tuple
        Its per-image shapes (:meth:`Network.shapes`).
    depth : int
        Nodes in the block.
    boxes : dict of str to Box
        Per tensor of :func:`cut_tensors`, the part of it the tile hands over.

    Returns
    -------
    steps : list of (Box, Box, Padding)
        Per node, first to last: the output box it computes, the box of its first input it reads, and the
        map-border padding that replaces the rest of that input (see :func:`~dcnn.decomposition.geometry.input_box`).
    input : Box
        The region of the network input the tile reads.
    """
    wanted: dict[str, list[Box]] = {name: [box] for name, box in boxes.items()}
    steps: list[tuple[Box, Box, Padding]] = []
    for index in reversed(range(depth)):
        (name, layer), sources = network.layers[index], network.inputs[index]
        out = cover(wanted.get(name, []))
        needed, padding = layer_input(layer.window, shapes[network.tensor_index(sources[0])], out)
        steps.append((out, needed, padding))
        for position, source in enumerate(sources):
            wanted.setdefault(source, []).append(needed if position == 0 else out)
    return steps[::-1], cover(wanted.get(INPUT, []))


def check_tile_grid(network: Network, input_shape: Shape, grid: tuple[int, int], depth: int | None = None) -> int:
    """Check that a tile grid and depth fit an input shape (shape inference only); return the depth.

    A block may end at any node of the topological order, inside a residual block or module too: what later
    nodes read from it is handed over whole (:func:`cut_tensors`).

    Raises
    ------
    PlanError
        If the depth is not within the convolutional part, or reaches past a global reduction (see
        :func:`tileable_depth`), or the grid is finer than a map the block hands over.
    """
    limit, reason = tileable_depth(network)
    whole = spatial_depth(network)
    if depth is None:
        depth = limit
    if not 1 <= depth <= whole:
        raise PlanError(f"--fuse-depth must be between 1 and {limit} (the layers before {network.name}'s first "
                        f"global layer), got {depth}")
    if depth > limit:
        raise PlanError(f"--fuse-depth {depth} cannot be tiled: {reason}; fuse at most {limit} layers or use "
                        f"--mode spatial")
    if min(grid) < 1:
        raise PlanError(f"tile grid {grid[0]}x{grid[1]} must be at least 1x1")
    shapes = network.shapes(input_shape)
    for name in sorted(cut_tensors(network, depth), key=lambda name: shapes[network.tensor_index(name)][1:]):
        height, width = shapes[network.tensor_index(name)][1:]
        if grid[0] > height or grid[1] > width:
            what = "output map of layer" if name == network.layers[depth - 1][0] else "map handed over by layer"
            raise PlanError(f"tile grid {grid[0]}x{grid[1]} is finer than the {height}x{width} {what} {name}; use "
                            f"at most {min(grid[0], height)}x{min(grid[1], width)} or fuse fewer layers")
    return depth


def plan_fused(network: Network, input_shape: Shape, grid: tuple[int, int], depth: int | None = None) -> FusedPlan:
    """Cut the tensors the first ``depth`` layers (every tileable one by default) hand over into a tile grid.

    Every cut tensor's map is split by the same ``Ty x Tx`` grid; tile ``t`` hands over block ``t`` of each.

    Raises
    ------
    PlanError
        As :func:`check_tile_grid`.
    """
    depth = check_tile_grid(network, input_shape, grid, depth)
    all_shapes = network.shapes(input_shape)
    cut = cut_tensors(network, depth)
    blocks = [block_boxes(*all_shapes[network.tensor_index(name)][1:], grid) for name in cut]
    tiles = []
    for index, boxes in enumerate(zip(*blocks)):
        steps, read = trace_tile(network, all_shapes, depth, dict(zip(cut, boxes)))
        tiles.append(Tile(index, steps, read, tuple(boxes)))
    return FusedPlan(network, depth, tuple(grid), tiles, all_shapes[:depth + 1], cut)
