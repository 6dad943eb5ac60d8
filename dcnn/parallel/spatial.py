"""Spatial engine: one image (or batch) split over a 2-D grid of ranks, with a halo exchange per layer.

Plan (pure, no MPI): every layer's *output* map is block-split over the ``Py x Px`` grid. A windowed layer's
needed input box follows from its output block (:func:`dcnn.decomposition.geometry.input_box`); what a rank needs but does
not hold comes from the ranks that hold it (:func:`dcnn.decomposition.geometry.exchange_transfers`). Pointwise layers run on
the blocks as they are. At the first global layer (adaptive pooling, flatten, fully connected) the map is
gathered on every rank, and every fully connected layer is split by output neurons: each rank holds and
computes ``1/P`` of its rows, and the outputs are allgathered.

Run: :class:`SpatialEngine` posts each layer's receives, then its sends, computes the part of its output block
that needs no halo while the messages are in flight, waits, and computes the border strips.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from dcnn.parallel.comm import MPI, HaloExchange, allgather_blocks, cartesian
from dcnn.exec.forward import Forward
from dcnn.decomposition.geometry import (
    Box,
    Transfer,
    assemble_boxes,
    block_boxes,
    exchange_transfers,
    input_box,
    interior_box,
    split_extent,
)
from dcnn.network.graph import Network
from dcnn.kernels.conv import Padding
from dcnn.network.layers import AdaptiveAvgPool2d, Flatten, Layer, Linear, Shape, Softmax

__all__ = ["LayerStats", "SpatialEngine", "SpatialLayerPlan", "SpatialPlan", "fc_shard_rows", "plan_spatial"]

#: Layers that end the spatial part: the map is gathered before the first of them.
GLOBAL_LAYERS = (AdaptiveAvgPool2d, Flatten, Linear, Softmax)
#: Overlap exchange with compute only when the halo-free interior is at least this share of the block.
OVERLAP_MIN_INTERIOR = 0.5


@dataclass(frozen=True)
class SpatialLayerPlan:
    """Who holds, needs and sends what for one layer of the spatial part.

    Attributes
    ----------
    index : int
        Layer index in the network.
    layer : Layer
        The layer spec.
    in_shape, out_shape : tuple of int
        Per-image map shapes.
    held : list of Box
        The input box each rank holds (the whole map on every rank for the first layer).
    out_blocks : list of Box
        The output block each rank computes.
    needed, padding : list
        Per rank, the input box its output block reads and the map-border padding (windowed layers).
    interior : list of Box
        Per rank, the outputs computable without any halo.
    transfers : list of Transfer
        Every message of this layer's exchange.
    """

    index: int
    layer: Layer
    in_shape: Shape
    out_shape: Shape
    held: list[Box]
    out_blocks: list[Box]
    needed: list[Box]
    padding: list[Padding]
    interior: list[Box]
    transfers: list[Transfer]

    @property
    def windowed(self) -> bool:
        """True for convolution and pooling layers."""
        return self.layer.window is not None

    def halo_bytes(self, batch: int = 1) -> int:
        """Bytes every rank together receives in this layer's exchange."""
        return sum(t.box.area for t in self.transfers) * self.in_shape[0] * 4 * batch


@dataclass(frozen=True)
class SpatialPlan:
    """The spatial decomposition of a network for one input shape and grid.

    Attributes
    ----------
    dims : tuple of int
        ``(Py, Px)``.
    layers : list of SpatialLayerPlan
        The spatial part, layers ``0 .. gather_index - 1``.
    gather_index : int
        Index of the first global layer (``len(network)`` for a fully convolutional network).
    gathered_shape : tuple of int
        The map shape gathered on every rank.
    """

    network: Network
    input_shape: Shape
    dims: tuple[int, int]
    layers: list[SpatialLayerPlan]
    gather_index: int
    gathered_shape: Shape

    @property
    def size(self) -> int:
        """Number of ranks in the grid."""
        return self.dims[0] * self.dims[1]


def plan_spatial(network: Network, input_shape: Shape, dims: tuple[int, int]) -> SpatialPlan:
    """Plan the spatial decomposition (pure; the same on every rank)."""
    shapes = network.shapes(input_shape)
    size = dims[0] * dims[1]
    whole = Box(0, input_shape[1], 0, input_shape[2])
    held = [whole] * size
    plans = []
    gather_index = len(network)
    for index, (_, layer) in enumerate(network.layers):
        if isinstance(layer, GLOBAL_LAYERS):
            gather_index = index
            break
        in_shape, out_shape = shapes[index], shapes[index + 1]
        out_blocks = block_boxes(out_shape[1], out_shape[2], dims)
        window = layer.window
        if window is None:
            needed, padding = list(out_blocks), [(0, 0, 0, 0)] * size
            interior = list(out_blocks)
        else:
            explicit = window.explicit_padding(in_shape[1], in_shape[2])
            geometry = (window.kernel, window.stride, window.dilation, explicit, in_shape[1], in_shape[2])
            boxes = [input_box(out, *geometry) for out in out_blocks]
            needed, padding = [b for b, _ in boxes], [p for _, p in boxes]
            interior = [interior_box(out, own, *geometry) for out, own in zip(out_blocks, held)]
        transfers = exchange_transfers(held, needed) if window is not None else []
        plans.append(SpatialLayerPlan(index, layer, in_shape, out_shape, held, out_blocks, needed, padding,
                                      interior, transfers))
        held = out_blocks
    return SpatialPlan(network, tuple(input_shape), tuple(dims), plans, gather_index, shapes[gather_index])


def fc_shard_rows(network: Network, size: int, rank: int) -> dict[str, tuple[int, int]]:
    """Rows of every fully connected layer's tensors that ``rank`` holds: its ``1/size`` of the neurons."""
    rows = {}
    for name, layer in network.layers:
        if isinstance(layer, Linear):
            shard = split_extent(layer.out_features, size)[rank]
            rows[f"{name}.weight"] = shard
            if layer.bias:
                rows[f"{name}.bias"] = shard
    return rows


@dataclass
class LayerStats:
    """Per-layer counters of one rank, summed over calls.

    Attributes
    ----------
    compute_seconds, wait_seconds : numpy.ndarray
        Time in kernels, and time blocked waiting for messages or in collectives.
    bytes_sent, bytes_received : numpy.ndarray
        Payload bytes this rank sent and received.
    """

    compute_seconds: np.ndarray
    wait_seconds: np.ndarray
    bytes_sent: np.ndarray
    bytes_received: np.ndarray

    @classmethod
    def zeros(cls, layers: int) -> LayerStats:
        return cls(np.zeros(layers), np.zeros(layers), np.zeros(layers, np.int64), np.zeros(layers, np.int64))


class SpatialEngine:
    """Run a network with every layer's map split over a Cartesian grid of ranks.

    Parameters
    ----------
    network : Network
        The model.
    weights : mapping
        Validated weights; fully connected tensors hold only this rank's rows (see :func:`fc_shard_rows`).
    input_shape : tuple of int
        Per-image input ``(C, H, W)``; plans are built for it once.
    comm : MPI.Comm
        The ranks to split over.
    dims : tuple of int, optional
        ``(Py, Px)``; ``MPI.Compute_dims`` by default.
    overlap : bool
        Compute the halo-free interior while the halos are in flight.
    """

    def __init__(self, network: Network, weights: Mapping[str, np.ndarray], input_shape: Shape, comm: MPI.Comm,
                 dims: tuple[int, int] | None = None, overlap: bool = True):
        self.comm = cartesian(comm, dims)
        self.rank = self.comm.rank
        self.plan = plan_spatial(network, input_shape, tuple(self.comm.dims))
        self.forward = Forward(network, weights)
        self.overlap = overlap
        self.stats = LayerStats.zeros(len(network))
        self._exchanges: dict[tuple[int, int], HaloExchange] = {}

    def close(self) -> None:
        """Free the Cartesian communicator."""
        if self.comm != MPI.COMM_NULL:
            self.comm.Free()

    def __enter__(self) -> SpatialEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run on a ``(B, C, H, W)`` batch present on every rank; every rank returns the full output."""
        block = np.asarray(x, dtype=np.float32)
        for layer_plan in self.plan.layers:
            block = self._run_layer(layer_plan, block)
        last = self.plan.layers[-1] if self.plan.layers else None
        out = self._gather_map(block, last) if last is not None else block
        for index in range(self.plan.gather_index, len(self.forward.ops)):
            out = self._run_global(index, out)
        return out

    # -- spatial part --------------------------------------------------------------------------------------
    def _exchange(self, layer_plan: SpatialLayerPlan, batch: int) -> HaloExchange:
        key = (layer_plan.index, batch)
        if key not in self._exchanges:
            held, needed = layer_plan.held[self.rank], layer_plan.needed[self.rank]
            sends = [(t.dest, t.box.slices(held)) for t in layer_plan.transfers if t.source == self.rank]
            receives = [(t.source, t.box.slices(needed)) for t in layer_plan.transfers if t.dest == self.rank]
            self._exchanges[key] = HaloExchange(self.comm, sends, receives, (batch, layer_plan.in_shape[0]),
                                                tag=layer_plan.index)
        return self._exchanges[key]

    def _run_layer(self, layer_plan: SpatialLayerPlan, block: np.ndarray) -> np.ndarray:
        op = self.forward.ops[layer_plan.index]
        index, rank = layer_plan.index, self.rank
        if not layer_plan.windowed:
            start = time.perf_counter()
            # The first layer holds the whole (replicated) input: keep only this rank's block of it.
            held, own = layer_plan.held[rank], layer_plan.out_blocks[rank]
            source = block[(slice(None), slice(None), *own.slices(held))] if held != own else block
            out = op(source.copy() if op.in_place and index == 0 else source)
            self.stats.compute_seconds[index] += time.perf_counter() - start
            return out
        held, needed = layer_plan.held[rank], layer_plan.needed[rank]
        out_box, interior = layer_plan.out_blocks[rank], layer_plan.interior[rank]
        batch = block.shape[0]
        out_channels = layer_plan.out_shape[0]
        exchange = self._exchange(layer_plan, batch)
        self.stats.bytes_sent[index] += exchange.bytes_sent
        self.stats.bytes_received[index] += exchange.bytes_received
        out = np.empty((batch, out_channels, out_box.height, out_box.width), np.float32)
        overlap = (self.overlap and exchange.receives and not interior.empty
                   and interior.area >= OVERLAP_MIN_INTERIOR * out_box.area)
        exchange.start(block)
        compute = 0.0
        if overlap:
            compute += self._compute_box(layer_plan, interior, block, held, out, out_box)
        start = time.perf_counter()
        if exchange.receives or not held.contains(needed):
            assembled = np.empty((batch, block.shape[1], needed.height, needed.width), np.float32)
            local = held.intersect(needed)
            if not local.empty:
                assembled[(slice(None), slice(None), *local.slices(needed))] = \
                    block[(slice(None), slice(None), *local.slices(held))]
            exchange.finish(assembled)
            source, source_box = assembled, needed
        else:
            exchange.finish(block)
            source, source_box = block, held
        self.stats.wait_seconds[index] += time.perf_counter() - start
        if out_box.empty:
            pass
        elif overlap:
            for strip in _border_strips(out_box, interior):
                compute += self._compute_box(layer_plan, strip, source, source_box, out, out_box)
        else:
            compute += self._compute_box(layer_plan, out_box, source, source_box, out, out_box)
        self.stats.compute_seconds[index] += compute
        return out

    def _compute_box(self, layer_plan: SpatialLayerPlan, box: Box, source: np.ndarray, source_box: Box,
                     out: np.ndarray, out_box: Box) -> float:
        """Compute the outputs ``box`` from ``source`` (which holds ``source_box`` of the input map)."""
        window = layer_plan.layer.window
        in_shape = layer_plan.in_shape
        explicit = window.explicit_padding(in_shape[1], in_shape[2])
        need, padding = input_box(box, window.kernel, window.stride, window.dilation, explicit, in_shape[1],
                                  in_shape[2])
        start = time.perf_counter()
        result = self.forward.ops[layer_plan.index](source[(slice(None), slice(None), *need.slices(source_box))],
                                                    padding)
        out[(slice(None), slice(None), *box.slices(out_box))] = result
        return time.perf_counter() - start

    def _gather_map(self, block: np.ndarray, last: SpatialLayerPlan) -> np.ndarray:
        """Allgather every rank's block of the last spatial map into the whole map on every rank."""
        batch, channels = block.shape[:2]
        counts = [batch * channels * box.area for box in last.out_blocks]
        start = time.perf_counter()
        flat = allgather_blocks(self.comm, block, counts)
        index = self.plan.gather_index if self.plan.gather_index < len(self.stats.wait_seconds) else last.index
        self.stats.wait_seconds[index] += time.perf_counter() - start
        self.stats.bytes_sent[index] += 4 * counts[self.rank] * (self.plan.size - 1)
        self.stats.bytes_received[index] += 4 * (sum(counts) - counts[self.rank])
        return assemble_boxes(flat, last.out_blocks, (batch, channels), last.out_shape[1:])

    # -- global part ---------------------------------------------------------------------------------------
    def _run_global(self, index: int, x: np.ndarray) -> np.ndarray:
        op = self.forward.ops[index]
        start = time.perf_counter()
        out = op(x)
        self.stats.compute_seconds[index] += time.perf_counter() - start
        if not isinstance(op.layer, Linear) or self.plan.size == 1:
            return out
        batch = out.shape[0]
        counts = [batch * (stop - begin) for begin, stop in split_extent(op.layer.out_features, self.plan.size)]
        start = time.perf_counter()
        gathered = allgather_blocks(self.comm, out.T, counts)
        self.stats.wait_seconds[index] += time.perf_counter() - start
        self.stats.bytes_sent[index] += 4 * counts[self.rank] * (self.plan.size - 1)
        self.stats.bytes_received[index] += 4 * (sum(counts) - counts[self.rank])
        return np.ascontiguousarray(gathered.reshape(op.layer.out_features, batch).T)


def _border_strips(block: Box, interior: Box) -> list[Box]:
    """``block`` minus ``interior`` as up to four disjoint strips (top, bottom, left, right)."""
    strips = [Box(block.top, interior.top, block.left, block.right),
              Box(interior.bottom, block.bottom, block.left, block.right),
              Box(interior.top, interior.bottom, block.left, interior.left),
              Box(interior.top, interior.bottom, interior.right, block.right)]
    return [strip for strip in strips if not strip.empty]
