"""The fused tiling (pure, no MPI): the output of a block of consecutive layers cut into a grid of tiles.

The output map of the fused block (the whole convolutional part, or a prefix of it) is cut into a ``Ty x Tx``
grid of tiles; each tile's input region is traced backwards through the fused nodes (:func:`trace_tile`), so a
tile is computable from the input image alone, and the regions of neighbouring tiles overlap. In a DAG the
trace goes through every branch: the box of a tensor a tile computes is the cover of what all its readers in
the block need. The block must end where one tensor carries everything later nodes read (not inside a residual
block, whose skip would cross the cut). The engine that runs the tiles is :class:`dcnn.parallel.fused.FusedEngine`;
the reuse policy's plan is :mod:`dcnn.decomposition.reuse`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcnn.decomposition.geometry import Box, block_boxes, cover, layer_input
from dcnn.decomposition.spatial import spatial_depth
from dcnn.errors import PlanError
from dcnn.network.graph import INPUT, Network
from dcnn.network.layers import Shape
from dcnn.network.window import Padding

__all__ = ["HALO_POLICIES", "FusedPlan", "Tile", "check_tile_grid", "crossing_read", "plan_fused", "spatial_depth",
           "sub_network", "trace_tile"]

HALO_POLICIES = ("recompute", "reuse")


@dataclass(frozen=True)
class Tile:
    """One task: a box of the fused block's output and, per fused layer, what computing it takes.

    Attributes
    ----------
    index : int
        Task number (row-major over the tile grid).
    steps : list of (Box, Box, Padding)
        Per fused node: output box, box of its (first) input, map-border padding.
    input : Box
        The region of the input image the tile reads.
    """

    index: int
    steps: list[tuple[Box, Box, Padding]]
    input: Box

    @property
    def output(self) -> Box:
        """The tile's box of the fused block's output map."""
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
    """

    network: Network
    depth: int
    grid: tuple[int, int]
    tiles: list[Tile]
    shapes: list[Shape]

    @property
    def output_shape(self) -> Shape:
        """Shape of the fused block's output map."""
        return self.shapes[-1]

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


def sub_network(network: Network, start: int, input_shape: Shape) -> Network:
    """Layers ``start..`` of ``network`` as a network of their own on ``input_shape`` (what runs after the fused
    block), named ``"<name>[start:]"``; node ``start - 1``'s output becomes its input.

    Raises
    ------
    ValueError
        If a node after ``start`` reads a tensor computed before node ``start - 1`` (see :func:`crossing_read`).
    """
    before = network.layers[start - 1][0] if start > 0 else INPUT
    inputs = tuple(tuple(INPUT if source == before else source for source in sources)
                   for sources in network.inputs[start:])
    return Network(f"{network.name}[{start}:]", network.layers[start:], input_shape, network.preprocessing,
                   network.description, inputs=inputs)


def crossing_read(network: Network, depth: int) -> tuple[str, str] | None:
    """A node after the first ``depth`` nodes that reads a tensor of the block other than its output, as
    ``(node, tensor)``; ``None`` when the block's output is all that later nodes read (always, for a chain)."""
    names = [name for name, _ in network.layers]
    inside = {INPUT, *names[:depth - 1]}
    for name, sources in zip(names[depth:], network.inputs[depth:]):
        crossing = [source for source in sources if source in inside]
        if crossing:
            return name, crossing[0]
    return None


def trace_tile(network: Network, shapes: list[Shape], depth: int, box: Box) -> tuple[list[tuple[Box, Box, Padding]],
                                                                                      Box]:
    """What each of the first ``depth`` nodes must compute so that the last one produces ``box``.

    Nodes are visited backwards; the box of a tensor is the cover of what all its readers in the block need
    (for a chain, just the next layer's input box).

    Parameters
    ----------
    network : Network
        The model.
    shapes : list of tuple
        Its per-image shapes (:meth:`Network.shapes`).
    depth : int
        Nodes in the block.
    box : Box
        The wanted part of node ``depth - 1``'s output.

    Returns
    -------
    steps : list of (Box, Box, Padding)
        Per node, first to last: the output box it computes, the box of its first input it reads, and the
        map-border padding that replaces the rest of that input (see :func:`~dcnn.decomposition.geometry.input_box`).
    input : Box
        The region of the network input the tile reads.
    """
    wanted: dict[str, list[Box]] = {network.layers[depth - 1][0]: [box]}
    steps: list[tuple[Box, Box, Padding]] = []
    for index in reversed(range(depth)):
        (name, layer), sources = network.layers[index], network.inputs[index]
        out = cover(wanted.get(name, []))
        needed, padding = layer_input(layer.window, shapes[network.tensor_index(sources[0])], out)
        steps.append((out, needed, padding))
        for source in sources:
            wanted.setdefault(source, []).append(needed)
    return steps[::-1], cover(wanted[INPUT])


def check_tile_grid(network: Network, input_shape: Shape, grid: tuple[int, int], depth: int | None = None) -> int:
    """Check that a tile grid and depth fit an input shape (shape inference only); return the depth.

    Raises
    ------
    PlanError
        If the depth is not within the convolutional part or cuts a branch (a later node reads a tensor of the
        block besides its output), or the grid is finer than the fused output map.
    """
    limit = spatial_depth(network)
    depth = limit if depth is None else depth
    if not 1 <= depth <= limit:
        raise PlanError(f"--fuse-depth must be between 1 and {limit} (the layers before {network.name}'s first "
                        f"global layer), got {depth}")
    crossing = crossing_read(network, depth)
    if crossing is not None:
        cuts = [d for d in range(1, limit + 1) if crossing_read(network, d) is None]
        nearest = [d for d in (max((d for d in cuts if d < depth), default=None),
                               min((d for d in cuts if d > depth), default=None)) if d is not None]
        advice = (f"fuse {' or '.join(map(str, nearest))} layers instead" if nearest
                  else "no depth ends outside a branch; use --mode spatial or batch")
        raise PlanError(f"--fuse-depth {depth} cuts {network.name} inside a branch: node {crossing[0]} after the "
                        f"fused block reads {crossing[1]} from inside it; {advice}")
    if min(grid) < 1:
        raise PlanError(f"tile grid {grid[0]}x{grid[1]} must be at least 1x1")
    height, width = network.shapes(input_shape)[depth][1:]
    if grid[0] > height or grid[1] > width:
        raise PlanError(f"tile grid {grid[0]}x{grid[1]} is finer than the {height}x{width} output map of layer "
                        f"{network.layers[depth - 1][0]}; use at most {min(grid[0], height)}x{min(grid[1], width)} "
                        f"or fuse fewer layers")
    return depth


def plan_fused(network: Network, input_shape: Shape, grid: tuple[int, int], depth: int | None = None) -> FusedPlan:
    """Cut the output of the first ``depth`` layers (all convolutional ones by default) into a tile grid.

    Raises
    ------
    PlanError
        As :func:`check_tile_grid`.
    """
    depth = check_tile_grid(network, input_shape, grid, depth)
    all_shapes = network.shapes(input_shape)
    shapes = all_shapes[:depth + 1]
    height, width = shapes[-1][1:]
    tiles = [Tile(index, *trace_tile(network, all_shapes, depth, box))
             for index, box in enumerate(block_boxes(height, width, grid))]
    return FusedPlan(network, depth, tuple(grid), tiles, shapes)
