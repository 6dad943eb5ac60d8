"""Fused-tile engine: the paper's and DeepThings' method.

The output map of a block of consecutive layers (the fused block: the whole convolutional part, or a prefix
of it) is cut into a ``Ty x Tx`` grid of tiles. Each tile is one task of the work-stealing queue; its input
region is traced backwards through the fused layers (:func:`dcnn.geometry.trace_region`), so a rank computes
a tile from the input image alone, with no communication until the tiles are assembled. Neighbouring tiles
overlap in their traced regions; with the *recompute* policy every tile computes its whole region, and the
plan counts the redundant multiply-accumulates that this costs. The layers after the fused block run on the
spatial engine.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .comm import MPI, allgather_blocks
from .errors import PlanError
from .forward import Forward
from .geometry import Box, assemble_boxes, block_boxes, trace_region
from .graph import Network
from .kernels.conv import Padding
from .layers import Shape
from .spatial import GLOBAL_LAYERS, LayerStats, SpatialEngine
from .steal import StealQueue

__all__ = ["FusedEngine", "FusedPlan", "Tile", "plan_fused"]


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

    def macs(self) -> tuple[int, int]:
        """``(tiled, plain)`` multiply-accumulates per image: what the tiles compute, and the plain network."""
        costs = self.network.costs(self.shapes[0])[:self.depth]
        # MACs per output pixel are whole numbers (K * C/g * kh * kw for a convolution, 0 otherwise).
        per_pixel = [row.macs // max(1, row.out_shape[1] * row.out_shape[2]) for row in costs]
        tiled = sum(rate * tile.steps[layer][0].area for tile in self.tiles for layer, rate in enumerate(per_pixel))
        return tiled, sum(row.macs for row in costs)

    def redundant_macs(self) -> int:
        """Multiply-accumulates per image spent recomputing overlaps (tiled minus plain)."""
        tiled, plain = self.macs()
        return tiled - plain


def spatial_depth(network: Network) -> int:
    """Number of layers before the first global layer (the most that can be fused)."""
    for index, (_, layer) in enumerate(network.layers):
        if isinstance(layer, GLOBAL_LAYERS):
            return index
    return len(network)


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


def _subnetwork(network: Network, start: int, input_shape: Shape) -> Network:
    return Network(f"{network.name}[{start}:]", network.layers[start:], input_shape, network.preprocessing,
                   network.description)


class FusedEngine:
    """Run a network with its first layers fused into stealable tiles (recompute policy).

    Parameters
    ----------
    network : Network
        The model.
    weights : mapping
        Validated weights; fully connected tensors hold this rank's rows (as for the spatial engine).
    input_shape : tuple of int
        Per-image input ``(C, H, W)``.
    comm : MPI.Comm
        The ranks sharing the tiles.
    grid : tuple of int
        Tile grid ``(Ty, Tx)`` over the fused output map; it may have more tiles than there are ranks.
    depth : int, optional
        Layers to fuse (default: every layer before the first global one).
    steal : bool
        Balance tiles by work stealing (else each rank keeps its initial share).
    """

    def __init__(self, network: Network, weights: Mapping[str, np.ndarray], input_shape: Shape, comm: MPI.Comm,
                 grid: tuple[int, int], depth: int | None = None, steal: bool = True):
        self.comm = comm
        self.plan = plan_fused(network, input_shape, grid, depth)
        self.forward = Forward(network, weights)
        self.steal = steal
        self.stats = LayerStats.zeros(len(network))
        self.tile_seconds = np.zeros(len(self.plan.tiles))
        self.tiles_run = 0
        self.rest = None
        if self.plan.depth < len(network):
            rest = _subnetwork(network, self.plan.depth, self.plan.output_shape)
            self.rest = SpatialEngine(rest, weights, self.plan.output_shape, comm)

    def close(self) -> None:
        """Free the communicator of the layers after the fused block."""
        if self.rest is not None:
            self.rest.close()

    def __enter__(self) -> FusedEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run_tile(self, tile: Tile, x: np.ndarray) -> np.ndarray:
        region = x[(slice(None), slice(None), *tile.input.slices())]
        for layer, (_, _, padding) in enumerate(tile.steps):
            op = self.forward.ops[layer]
            start = time.perf_counter()
            if op.layer.window is not None:
                region = op(region, padding)
            else:
                region = op(region.copy() if op.in_place and layer == 0 else region)
            elapsed = time.perf_counter() - start
            self.stats.compute_seconds[layer] += elapsed
            self.tile_seconds[tile.index] += elapsed
        return region

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run on a ``(B, C, H, W)`` batch present on every rank; every rank returns the full output."""
        x = np.asarray(x, dtype=np.float32)
        computed: dict[int, np.ndarray] = {}
        with StealQueue(self.comm, len(self.plan.tiles), steal=self.steal) as queue:
            for index in queue:
                computed[index] = self._run_tile(self.plan.tiles[index], x)
        self.tiles_run += len(computed)
        fused = self._assemble(computed, x.shape[0])
        return fused if self.rest is None else self.rest(fused)

    def _assemble(self, computed: dict[int, np.ndarray], batch: int) -> np.ndarray:
        """Every rank's tile outputs into the whole fused output map, on every rank."""
        owners = self.comm.allgather(sorted(computed))
        channels = self.plan.output_shape[0]
        order = [index for indices in owners for index in indices]
        counts = [sum(batch * channels * self.plan.tiles[i].output.area for i in indices) for indices in owners]
        local = np.concatenate([computed[i].reshape(-1) for i in sorted(computed)]) if computed else \
            np.zeros(0, np.float32)
        start = time.perf_counter()
        flat = allgather_blocks(self.comm, local, counts)
        self.stats.wait_seconds[self.plan.depth - 1] += time.perf_counter() - start
        return assemble_boxes(flat, [self.plan.tiles[i].output for i in order], (batch, channels),
                              self.plan.output_shape[1:])
