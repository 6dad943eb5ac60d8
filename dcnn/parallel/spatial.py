"""Spatial engine: one image (or batch) split over a 2-D grid of ranks, with a halo exchange per tensor.

Plan: :func:`dcnn.decomposition.spatial.plan_spatial` (pure, no MPI) says who holds, needs and sends which
block of every tensor; at the first global layer the map is gathered on every rank, and every fully connected
layer is split by output neurons, whose outputs are allgathered.

Run: :class:`SpatialEngine` runs the nodes in topological order. The first windowed reader of a tensor posts
the tensor's receives, then its sends, computes the part of its output block that needs no halo while the
messages are in flight, waits, and computes the border strips; later readers of the tensor (a residual
shortcut, another Inception branch) slice their input from the box already assembled. Each rank's blocks are
freed after their last reader.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np

from dcnn.decomposition.geometry import (
    Box,
    assemble_boxes,
    input_box,
)
from dcnn.decomposition.spatial import SpatialLayerPlan, fc_shards, plan_spatial
from dcnn.exec.forward import Forward, apply_op
from dcnn.network.graph import INPUT, Network
from dcnn.network.layers import Linear, Shape
from dcnn.parallel.comm import MPI, HaloExchange, allgather_blocks, cartesian

__all__ = ["LayerStats", "SpatialEngine"]

#: Overlap exchange with compute only when the halo-free interior is at least this share of the block.
COMM_OVERLAP_MIN_INTERIOR = 0.5

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

    def add(self, other: LayerStats) -> None:
        """Add the counters of another engine of the same network to these."""
        for field in fields(self):
            getattr(self, field.name)[...] += getattr(other, field.name)


class SpatialEngine:
    """Run a network with every layer's map split over a Cartesian grid of ranks.

    Parameters
    ----------
    network : Network
        The model.
    weights : mapping
        Validated weights; fully connected tensors hold only this rank's rows
        (see :func:`~dcnn.decomposition.spatial.fc_shard_rows`).
    input_shape : tuple of int
        Per-image input ``(C, H, W)``; plans are built for it once.
    comm : MPI.Comm or None
        The ranks to split over; ``None``: this process alone, as a 1 x 1 grid that makes no MPI call (batch
        mode, whose engines run on task threads that must not call MPI, :func:`dcnn.kernels.threads.task_threads`).
    dims : tuple of int, optional
        ``(Py, Px)``; ``MPI.Compute_dims`` by default.
    comm_overlap : bool
        Compute the halo-free interior while the halos are in flight.
    forward : Forward, optional
        The network already compiled (engines of other input shapes share one); compiled here by default.
    start : int
        Run nodes ``start ..`` only (the layers after a fused block): the call then takes, by name, every tensor
        computed before ``start`` that they read, whole (:func:`~dcnn.decomposition.fused.cut_tensors`).
    """

    def __init__(self, network: Network, weights: Mapping[str, np.ndarray], input_shape: Shape, comm: MPI.Comm,
                 dims: tuple[int, int] | None = None, comm_overlap: bool = True, forward: Forward | None = None,
                 start: int = 0):
        self.comm = None if comm is None else cartesian(comm, dims)
        self.rank = 0 if self.comm is None else self.comm.rank
        self.spatial_plan = plan_spatial(network, input_shape, (1, 1) if self.comm is None else tuple(self.comm.dims),
                                         start)
        self.forward = forward if forward is not None else Forward(network, weights, start=start)
        self.comm_overlap = comm_overlap
        self.stats = LayerStats.zeros(len(network))
        self._exchanges: dict[tuple[int, int], HaloExchange] = {}

    def close(self) -> None:
        """Free the Cartesian communicator and the exchange buffers (collective; a second call does nothing)."""
        self._exchanges.clear()
        if self.comm is not None and self.comm != MPI.COMM_NULL:
            self.comm.Free()

    def __enter__(self) -> SpatialEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Run on a ``(B, C, H, W)`` batch present on every rank (with ``start``: the tensors the nodes after it
        read, by name, each whole on every rank); every rank returns the full output."""
        network = self.spatial_plan.network
        given = {name: np.asarray(value, dtype=np.float32)
                 for name, value in (x.items() if isinstance(x, Mapping) else [(INPUT, x)])}
        # Per tensor: this rank's block and its box; the box assembled by its exchange; readers left. The given
        # tensors are whole on every rank and never overwritten.
        blocks: dict[str, tuple[np.ndarray, Box]] = {name: (value, Box(0, value.shape[2], 0, value.shape[3]))
                                                      for name, value in given.items()}
        self._given = set(given)
        regions: dict[str, tuple[np.ndarray, Box]] = {}
        pending: dict[str, int] = {}
        for layer_plan in self.spatial_plan.layers:
            for name in layer_plan.sources:
                pending[name] = pending.get(name, 0) + 1
        for layer_plan in self.spatial_plan.layers:
            name = network.layers[layer_plan.index][0]
            out = self._run_node(layer_plan, blocks, regions, pending)
            for source in layer_plan.sources:
                pending[source] -= 1
                if pending[source] == 0 and source != INPUT:
                    blocks.pop(source)
                    regions.pop(source, None)
            blocks[name] = (out, layer_plan.out_blocks[self.rank])
        last = self.spatial_plan.layers[-1] if self.spatial_plan.layers else None
        if last is not None:
            out = blocks[network.layers[last.index][0]][0]
            out = out if last.vector else self._gather_map(out, last)
        else:
            out = given[network.inputs[self.spatial_plan.gather_index][0]]
        for index in range(self.spatial_plan.gather_index, len(self.forward.ops)):
            out = self._run_global(index, out)
        return out

    # -- spatial part --------------------------------------------------------------------------------------
    def _exchange(self, layer_plan: SpatialLayerPlan, batch: int) -> HaloExchange:
        key = (layer_plan.index, batch)
        if key not in self._exchanges:
            held, needed = layer_plan.held[self.rank], layer_plan.exchanged[self.rank]
            sends = [(t.dest, t.box.slices(held)) for t in layer_plan.transfers if t.source == self.rank]
            receives = [(t.source, t.box.slices(needed)) for t in layer_plan.transfers if t.dest == self.rank]
            self._exchanges[key] = HaloExchange(self.comm, sends, receives, (batch, layer_plan.in_shape[0]),
                                                tag=layer_plan.index)
        return self._exchanges[key]

    def _run_node(self, layer_plan: SpatialLayerPlan, blocks: dict[str, tuple[np.ndarray, Box]],
                  regions: dict[str, tuple[np.ndarray, Box]], pending: dict[str, int]) -> np.ndarray:
        op = self.forward.ops[layer_plan.index]
        index, rank = layer_plan.index, self.rank
        own = layer_plan.out_blocks[rank]
        if layer_plan.reduces:
            return self._global_mean(layer_plan, blocks[layer_plan.sources[0]][0])
        if not layer_plan.windowed:
            start = time.perf_counter()
            arguments, writable = [], []
            for name in layer_plan.sources:
                block, box = blocks[name]
                # A whole tensor (the input image, a fused block's hand-over): keep only this rank's block of it;
                # a squeeze-and-excitation vector broadcasts over the block, and a vector node reads all whole.
                whole = layer_plan.vector or name in self.spatial_plan.vectors
                arguments.append(block if whole or box == own else block[(slice(None), slice(None),
                                                                           *own.slices(box))])
                writable.append(name not in self._given and pending[name] == 1
                                and layer_plan.sources.count(name) == 1)
            out = apply_op(op, arguments, writable)
            self.stats.compute_seconds[index] += time.perf_counter() - start
            return out
        name = layer_plan.sources[0]
        block, held = blocks[name]
        batch = block.shape[0]
        out = np.empty((batch, layer_plan.out_shape[0], own.height, own.width), np.float32)
        if layer_plan.exchanged is None:
            # An earlier reader exchanged this tensor: the box it assembled covers this node's needs too.
            source, source_box = regions[name]
            if not own.empty:
                out, seconds = self._box_output(layer_plan, own, source, source_box)
                self.stats.compute_seconds[index] += seconds
            return out
        needed, interior = layer_plan.exchanged[rank], layer_plan.interior[rank]
        exchange = self._exchange(layer_plan, batch)
        self.stats.bytes_sent[index] += exchange.bytes_sent
        self.stats.bytes_received[index] += exchange.bytes_received
        overlapped = (self.comm_overlap and exchange.receives and not interior.empty
                   and interior.area >= COMM_OVERLAP_MIN_INTERIOR * own.area)
        exchange.start(block)
        compute = 0.0
        if overlapped:
            compute += self._compute_box(layer_plan, interior, block, held, out, own)
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
        regions[name] = (source, source_box)
        self.stats.wait_seconds[index] += time.perf_counter() - start
        if own.empty:
            pass
        elif overlapped:
            for strip in _border_strips(own, interior):
                compute += self._compute_box(layer_plan, strip, source, source_box, out, own)
        else:
            out, seconds = self._box_output(layer_plan, own, source, source_box)
            compute += seconds
        self.stats.compute_seconds[index] += compute
        return out

    def _global_mean(self, layer_plan: SpatialLayerPlan, block: np.ndarray) -> np.ndarray:
        """Global average pooling of a split map: this rank's block sums, added over the ranks, over ``H * W``."""
        start = time.perf_counter()
        sums = block.sum(axis=(2, 3), dtype=np.float64)
        self.stats.compute_seconds[layer_plan.index] += time.perf_counter() - start
        start = time.perf_counter()
        if self.comm is not None:
            self.comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
        self.stats.wait_seconds[layer_plan.index] += time.perf_counter() - start
        self.stats.bytes_sent[layer_plan.index] += sums.nbytes
        self.stats.bytes_received[layer_plan.index] += sums.nbytes
        height, width = layer_plan.in_shape[1:]
        return (sums / (height * width)).astype(np.float32)[:, :, None, None]

    def _box_output(self, layer_plan: SpatialLayerPlan, box: Box, source: np.ndarray,
                    source_box: Box) -> tuple[np.ndarray, float]:
        """The outputs ``box`` computed from ``source`` (which holds ``source_box`` of the input map), and the
        seconds it took."""
        window = layer_plan.layer.window
        in_shape = layer_plan.in_shape
        explicit = window.explicit_padding(in_shape[1], in_shape[2])
        need, padding = input_box(box, window.kernel, window.stride, window.dilation, explicit, in_shape[1],
                                  in_shape[2])
        start = time.perf_counter()
        result = self.forward.ops[layer_plan.index](source[(slice(None), slice(None), *need.slices(source_box))],
                                                    padding)
        return result, time.perf_counter() - start

    def _compute_box(self, layer_plan: SpatialLayerPlan, box: Box, source: np.ndarray, source_box: Box,
                     out: np.ndarray, out_box: Box) -> float:
        """Compute the outputs ``box`` into their part of ``out`` (which holds ``out_box``); the seconds it
        took. A box that is the whole block is :meth:`_box_output` itself, without this copy."""
        result, seconds = self._box_output(layer_plan, box, source, source_box)
        start = time.perf_counter()
        out[(slice(None), slice(None), *box.slices(out_box))] = result
        return seconds + time.perf_counter() - start

    def _gather_map(self, block: np.ndarray, last: SpatialLayerPlan) -> np.ndarray:
        """Allgather every rank's block of the last spatial map into the whole map on every rank."""
        batch, channels = block.shape[:2]
        counts = [batch * channels * box.area for box in last.out_blocks]
        start = time.perf_counter()
        flat = (np.ascontiguousarray(block, np.float32).reshape(-1) if self.comm is None
                else allgather_blocks(self.comm, block, counts))
        gather = self.spatial_plan.gather_index
        index = gather if gather < len(self.stats.wait_seconds) else last.index
        self.stats.wait_seconds[index] += time.perf_counter() - start
        self.stats.bytes_sent[index] += 4 * counts[self.rank] * (self.spatial_plan.size - 1)
        self.stats.bytes_received[index] += 4 * (sum(counts) - counts[self.rank])
        return assemble_boxes(flat, last.out_blocks, (batch, channels), last.out_shape[1:])

    # -- global part ---------------------------------------------------------------------------------------
    def _run_global(self, index: int, x: np.ndarray) -> np.ndarray:
        op = self.forward.ops[index]
        start = time.perf_counter()
        out = op(x)
        self.stats.compute_seconds[index] += time.perf_counter() - start
        if not isinstance(op.layer, Linear) or self.spatial_plan.size == 1:
            return out
        batch = out.shape[0]
        counts = [batch * (stop - begin) for begin, stop in fc_shards(op.layer.out_features, self.spatial_plan.size)]
        start = time.perf_counter()
        gathered = allgather_blocks(self.comm, out.T, counts)
        self.stats.wait_seconds[index] += time.perf_counter() - start
        self.stats.bytes_sent[index] += 4 * counts[self.rank] * (self.spatial_plan.size - 1)
        self.stats.bytes_received[index] += 4 * (sum(counts) - counts[self.rank])
        return np.ascontiguousarray(gathered.reshape(op.layer.out_features, batch).T)


def _border_strips(block: Box, interior: Box) -> list[Box]:
    """``block`` minus ``interior`` as up to four disjoint strips (top, bottom, left, right)."""
    strips = [Box(block.top, interior.top, block.left, block.right),
              Box(interior.bottom, block.bottom, block.left, block.right),
              Box(interior.top, interior.bottom, block.left, interior.left),
              Box(interior.top, interior.bottom, interior.right, block.right)]
    return [strip for strip in strips if not strip.empty]
