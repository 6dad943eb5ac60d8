"""The fused tiling (pure, no MPI): the output of a block of consecutive layers cut into a grid of tiles.

The output map of the fused block (the whole convolutional part, or a prefix of it) is cut into a ``Ty x Tx``
grid of tiles; each tile's input region is traced backwards through the fused layers
(:func:`dcnn.decomposition.geometry.trace_region`), so a tile is computable from the input image alone, and the
regions of neighbouring tiles overlap. The engine that runs the tiles is :class:`dcnn.parallel.fused.FusedEngine`;
the reuse policy's plan is :mod:`dcnn.decomposition.reuse`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcnn.decomposition.geometry import Box, block_boxes, trace_region
from dcnn.decomposition.spatial import spatial_depth
from dcnn.errors import PlanError
from dcnn.network.graph import Network
from dcnn.network.layers import Shape
from dcnn.network.window import Padding

__all__ = ["OVERLAP_POLICIES", "FusedPlan", "Tile", "plan_fused", "spatial_depth", "sub_network"]

OVERLAP_POLICIES = ("recompute", "reuse")


@dataclass(frozen=True)
class Tile:
    """One task: a box of the fused block's output and, per fused layer, what computing it takes.

    Attributes
    ----------
    index : int
        Task number (row-major over the tile grid).
    steps : list of (Box, Box, Padding)
        Per fused layer: output box, input box, map-border padding.
    """

    index: int
    steps: list[tuple[Box, Box, Padding]]

    @property
    def output(self) -> Box:
        """The tile's box of the fused block's output map."""
        return self.steps[-1][0]

    @property
    def input(self) -> Box:
        """The region of the input image the tile reads."""
        return self.steps[0][1]


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
        Map shapes of the fused block: its input, then each layer's output.
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
    block), named ``"<name>[start:]"``."""
    return Network(f"{network.name}[{start}:]", network.layers[start:], input_shape, network.preprocessing,
                   network.description)


def plan_fused(network: Network, input_shape: Shape, grid: tuple[int, int], depth: int | None = None) -> FusedPlan:
    """Cut the output of the first ``depth`` layers (all convolutional ones by default) into a tile grid.

    Raises
    ------
    PlanError
        If the depth is not within the convolutional part, or the grid is finer than the fused output map.
    """
    limit = spatial_depth(network)
    depth = limit if depth is None else depth
    if not 1 <= depth <= limit:
        raise PlanError(f"--fuse-depth must be between 1 and {limit} (the layers before {network.name}'s first "
                        f"global layer), got {depth}")
    if min(grid) < 1:
        raise PlanError(f"tile grid {grid[0]}x{grid[1]} must be at least 1x1")
    shapes = network.shapes(input_shape)[:depth + 1]
    height, width = shapes[-1][1:]
    if grid[0] > height or grid[1] > width:
        raise PlanError(f"tile grid {grid[0]}x{grid[1]} is finer than the {height}x{width} output map of layer "
                        f"{network.layers[depth - 1][0]}; use at most {min(grid[0], height)}x{min(grid[1], width)} "
                        f"or fuse fewer layers")
    windows = [layer.window for _, layer in network.layers[:depth]]
    tiles = [Tile(index, trace_region(windows, shapes, box))
             for index, box in enumerate(block_boxes(height, width, grid))]
    return FusedPlan(network, depth, tuple(grid), tiles, shapes)
