"""Fused-tile engine: the paper's and DeepThings' method.

The output map of a block of consecutive layers (the fused block: the whole convolutional part, or a prefix
of it) is cut into a ``Ty x Tx`` grid of tiles (:func:`dcnn.decomposition.fused.plan_fused`). Each tile is one
task of the work-stealing queue; its input region is traced backwards through the fused layers
(:func:`dcnn.decomposition.fused.trace_tile`), so a rank computes a tile from the input image alone.
Neighbouring tiles overlap in their traced regions. Two policies:

- *recompute*: every tile computes its whole region; no communication until the tiles are assembled, at the
  price of redundant multiply-accumulates (counted by the plan).
- *reuse* (:mod:`dcnn.decomposition.reuse`, :mod:`dcnn.parallel.strip_pool`): the tiles run in three checkerboard
  phases, each a work-stealing queue of its own. Tiles of the first phase compute their whole region and publish
  the strips their neighbours need into the strip pool (one-sided windows); later tiles ``Get`` those strips and
  compute only the rest. A tile whose producers have not published recomputes its whole region (a counted fallback).

The layers after the fused block run on the spatial engine.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import fields

import numpy as np

from dcnn.decomposition.fused import HALO_POLICIES, plan_fused, sub_network
from dcnn.decomposition.geometry import Box, assemble_boxes, cover
from dcnn.decomposition.reuse import NUM_CLASSES, Strip, plan_reuse
from dcnn.errors import PlanError
from dcnn.exec.forward import Forward, apply_op
from dcnn.network.graph import BYTES_PER_VALUE, INPUT, Network
from dcnn.network.layers import Shape
from dcnn.network.window import Padding
from dcnn.parallel.comm import MPI, allgather_blocks
from dcnn.parallel.spatial import LayerStats, SpatialEngine
from dcnn.parallel.steal import StealQueue
from dcnn.parallel.strip_pool import StripPool

__all__ = ["COUNTER_FIELDS", "FusedEngine", "compile_fused"]

#: Per-rank counters of a fused run (``FusedEngine.counters``), in this order.
COUNTER_FIELDS = ("tiles_run", "tiles_reused", "fallbacks", "macs", "bytes_put", "bytes_got", "pool_seconds")

def compile_fused(network: Network, weights: Mapping[str, np.ndarray], depth: int) -> tuple[Forward, Forward | None]:
    """The executors a fused run needs, for every input shape: the first ``depth`` layers (nothing folded across
    ``depth``) and the layers after them (``None`` when there are none)."""
    fused = Forward(network, weights, stop=depth)
    if depth == len(network):
        return fused, None
    rest = sub_network(network, depth, network.shapes(network.input_shape)[depth])
    return fused, Forward(rest, weights)


class FusedEngine:
    """Run a network with its first layers fused into stealable tiles.

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
    halo_policy : {"recompute", "reuse"}
        What a tile does with the regions it shares with its neighbours.
    forwards : tuple of Forward, optional
        The executors of the fused layers and of the layers after them, already compiled (:func:`compile_fused`;
        engines of other input shapes share them); compiled here by default.

    Attributes
    ----------
    counters : dict
        This rank's :data:`COUNTER_FIELDS`: tiles run, tiles that borrowed strips, fallbacks to recomputing,
        multiply-accumulates computed in the fused layers, strip bytes put and got, seconds in pool calls.
    tile_seconds : ndarray
        Compute seconds per tile (this rank's share; summed over calls).
    """

    def __init__(self, network: Network, weights: Mapping[str, np.ndarray], input_shape: Shape, comm: MPI.Comm,
                 grid: tuple[int, int], depth: int | None = None, steal: bool = True, halo_policy: str = "recompute",
                 forwards: tuple[Forward, Forward | None] | None = None):
        if halo_policy not in HALO_POLICIES:
            raise PlanError(f"halo policy must be one of {', '.join(HALO_POLICIES)}, got {halo_policy!r}")
        self.comm = comm
        self.fused_plan = plan_fused(network, input_shape, grid, depth)
        self.reuse_plan = plan_reuse(self.fused_plan, comm.size) if halo_policy == "reuse" else None
        self.halo_policy = halo_policy
        # Folding is decided over the fused layers only: the layers after them run in ``rest``.
        fused_forward, rest_forward = forwards if forwards is not None else compile_fused(network, weights,
                                                                                          self.fused_plan.depth)
        self.forward = fused_forward
        self.steal = steal
        self._stats = LayerStats.zeros(len(network))
        self.tile_seconds = np.zeros(len(self.fused_plan.tiles))
        self._counts = dict.fromkeys(COUNTER_FIELDS, 0)
        self._rates = self.fused_plan.macs_per_pixel()
        # Readers of each tensor among the fused nodes, and the tile's output, which the caller holds.
        self._readers: dict[str, int] = {network.layers[self.fused_plan.depth - 1][0]: 1}
        for sources in network.inputs[:self.fused_plan.depth]:
            for name in sources:
                self._readers[name] = self._readers.get(name, 0) + 1
        self._pool: StripPool | None = None
        self._sequence = 0
        self.rest = None
        if self.fused_plan.depth < len(network):
            rest = sub_network(network, self.fused_plan.depth, self.fused_plan.output_shape)
            self.rest = SpatialEngine(rest, weights, self.fused_plan.output_shape, comm, forward=rest_forward)

    @property
    def counters(self) -> dict[str, float]:
        """This rank's :data:`COUNTER_FIELDS`, summed over calls (see the class attributes)."""
        counts = dict(self._counts)
        if self._pool is not None:
            counts["bytes_put"] += self._pool.bytes_put
            counts["bytes_got"] += self._pool.bytes_got
            counts["pool_seconds"] += self._pool.seconds
        return counts

    @property
    def stats(self) -> LayerStats:
        """This rank's per-layer counters over the whole network: the fused layers' and those of the rest."""
        if self.rest is None:
            return self._stats
        depth = self.fused_plan.depth
        names = [field.name for field in fields(LayerStats)]
        combined = LayerStats(*(getattr(self._stats, name).copy() for name in names))
        for name in names:
            getattr(combined, name)[depth:] += getattr(self.rest.stats, name)
        return combined

    @property
    def tiles_run(self) -> int:
        """Tiles this rank computed (summed over calls)."""
        return self._counts["tiles_run"]

    def close(self) -> None:
        """Free the strip pool and the communicator of the layers after the fused block (collective)."""
        if self._pool is not None:
            self._account_pool()
            self._pool.close()
            self._pool = None
        if self.rest is not None:
            self.rest.close()

    def __enter__(self) -> FusedEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run on a ``(B, C, H, W)`` batch present on every rank; every rank returns the full output."""
        x = np.asarray(x, dtype=np.float32)
        computed: dict[int, np.ndarray] = {}
        if self.reuse_plan is None:
            with StealQueue(self.comm, len(self.fused_plan.tiles), steal=self.steal) as queue:
                for index in queue:
                    computed[index] = self._compute(index, self.fused_plan.tiles[index].steps, x)
        else:
            self._sequence += 1
            pool = self._pool_for(x.shape[0])
            for cls in range(NUM_CLASSES):
                members = self.reuse_plan.tiles_of_class(cls)
                if members:
                    with StealQueue(self.comm, len(members), steal=self.steal, tasks=members) as queue:
                        for index in queue:
                            computed[index] = self._run_reusing(index, x, pool)
        self._counts["tiles_run"] += len(computed)
        fused = self._assemble(computed, x.shape[0])
        return fused if self.rest is None else self.rest(fused)

    # -- reuse policy --------------------------------------------------------------------------------------
    def _pool_for(self, batch: int) -> StripPool:
        """The strip pool, (re)allocated when a batch is larger than its slots (collective)."""
        if self._pool is None or self._pool.batch < batch:
            if self._pool is not None:
                self._account_pool()
                self._pool.close()
            self._pool = StripPool(self.comm, self.reuse_plan, batch)
        return self._pool

    def _account_pool(self) -> None:
        """Move the pool's byte and time counts into the engine's counters."""
        self._counts = self.counters

    def _run_reusing(self, index: int, x: np.ndarray, pool: StripPool) -> np.ndarray:
        """One tile of the reuse policy: borrow its strips if they are ready, else recompute; publish its own."""
        incoming = self.reuse_plan.incoming[index]
        if pool.ready(sorted({strip.producer for strip in incoming}), self._sequence):
            borrowed = list(zip(incoming, pool.fetch(incoming, x.shape[0])))
            steps = self.reuse_plan.steps[index]
            self._counts["tiles_reused"] += bool(incoming)
            for strip, _ in borrowed:
                self._stats.bytes_received[strip.layer] += x.shape[0] * BYTES_PER_VALUE * strip.elements
        else:
            borrowed, steps = [], self.fused_plan.tiles[index].steps
            self._counts["fallbacks"] += 1
        outgoing = self.reuse_plan.outgoing[index]
        output = self._compute(index, steps, x, borrowed, outgoing, pool)
        if outgoing:
            pool.mark_ready(index, self._sequence)
        return output

    # -- both policies -------------------------------------------------------------------------------------
    def _compute(self, index: int, steps: list[tuple[Box, Box, Padding]], x: np.ndarray,
                 borrowed: list[tuple[Strip, np.ndarray]] = (), outgoing: list[Strip] = (),
                 pool: StripPool | None = None) -> np.ndarray:
        """Compute one tile's boxes node by node from the input, its own results and borrowed strips.

        Each tensor's box is kept until the tile's last node that reads it; an in-place op overwrites only a
        box no later node of the tile reads.
        """
        strips_in, strips_out = defaultdict(list), defaultdict(list)
        for strip in outgoing:
            strips_out[strip.layer].append(strip)
        for strip, values in borrowed:
            strips_in[strip.layer].append((strip.box, values))
        batch = x.shape[0]
        network = self.fused_plan.network
        names = [name for name, _ in network.layers]
        regions: dict[str, tuple[np.ndarray | None, Box]] = {INPUT: (x, Box(0, x.shape[2], 0, x.shape[3]))}
        pending = dict(self._readers)
        # Per tensor, the cover of what this tile's readers need: what borrowed strips complete, once.
        wanted: dict[str, list[Box]] = defaultdict(list)
        for layer, (box, source_box, _) in enumerate(steps):
            for position, name in enumerate(network.inputs[layer]):
                wanted[name].append(source_box if position == 0 else box)
        for layer, (box, source_box, padding) in enumerate(steps):
            sources = network.inputs[layer]
            if box.empty:
                regions[names[layer]] = (None, box)
                continue
            start = time.perf_counter()
            op = self.forward.ops[layer]
            arguments = []
            for position, name in enumerate(sources):
                array, held = regions[name]
                need = source_box if position == 0 else box
                if not held.contains(need):
                    whole = cover(wanted[name])
                    array, held = self._source(whole, held, array, strips_in[names.index(name)], batch), whole
                    regions[name] = (array, held)
                arguments.append(array[(slice(None), slice(None), *need.slices(held))])
            writable = [name != INPUT and pending[name] == 1 and sources.count(name) == 1 for name in sources]
            region = apply_op(op, arguments, writable, padding if op.layer.window is not None else None)
            for name in sources:
                pending[name] -= 1
                if pending[name] == 0:
                    regions.pop(name)
            regions[names[layer]] = (region, box)
            elapsed = time.perf_counter() - start
            self._stats.compute_seconds[layer] += elapsed
            self.tile_seconds[index] += elapsed
            self._counts["macs"] += self._rates[layer] * box.area * batch
            for strip in strips_out[layer]:
                pool.publish(strip, region[(slice(None), slice(None), *strip.box.slices(box))])
                self._stats.bytes_sent[layer] += batch * BYTES_PER_VALUE * strip.elements
        return regions[names[len(steps) - 1]][0]

    @staticmethod
    def _source(source_box: Box, held: Box, region: np.ndarray | None, strips: list[tuple[Box, np.ndarray]],
                batch: int) -> np.ndarray:
        """``source_box`` of a tensor: a view of the tile's own box of it, or assembled with borrowed strips."""
        if held.contains(source_box) and region is not None:
            return region[(slice(None), slice(None), *source_box.slices(held))]
        channels = region.shape[1] if region is not None else strips[0][1].shape[1]
        source = np.empty((batch, channels, source_box.height, source_box.width), np.float32)
        own = held.intersect(source_box)
        if not own.empty:
            source[(slice(None), slice(None), *own.slices(source_box))] = \
                region[(slice(None), slice(None), *own.slices(held))]
        for box, values in strips:
            source[(slice(None), slice(None), *box.slices(source_box))] = values
        return source

    def _assemble(self, computed: dict[int, np.ndarray], batch: int) -> np.ndarray:
        """Every rank's tile outputs into the whole fused output map, on every rank."""
        owners = self.comm.allgather(sorted(computed))
        channels = self.fused_plan.output_shape[0]
        order = [index for indices in owners for index in indices]
        counts = [sum(batch * channels * self.fused_plan.tiles[i].output.area for i in indices) for indices in owners]
        local = np.concatenate([computed[i].reshape(-1) for i in sorted(computed)]) if computed else \
            np.zeros(0, np.float32)
        start = time.perf_counter()
        flat = allgather_blocks(self.comm, local, counts)
        self._stats.wait_seconds[self.fused_plan.depth - 1] += time.perf_counter() - start
        return assemble_boxes(flat, [self.fused_plan.tiles[i].output for i in order], (batch, channels),
                              self.fused_plan.output_shape[1:])
