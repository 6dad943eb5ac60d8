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

from dcnn.decomposition.fused import HALO_POLICIES, plan_fused
from dcnn.decomposition.geometry import Box, assemble_boxes
from dcnn.decomposition.reuse import NUM_CLASSES, Strip, plan_reuse
from dcnn.errors import PlanError
from dcnn.exec.forward import Forward
from dcnn.exec.tiles import run_tile
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
    """The executors a fused run needs, for every input shape: the first ``depth`` layers and the layers after
    them (``None`` when there are none); nothing is folded across ``depth``."""
    fused = Forward(network, weights, stop=depth)
    return fused, None if depth == len(network) else Forward(network, weights, start=depth)


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
        Layers to fuse, ending at any node (default: every tileable one,
        :func:`~dcnn.decomposition.fused.tileable_depth`).
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
        self._pool: StripPool | None = None
        self._sequence = 0
        self.rest = None
        if self.fused_plan.depth < len(network):
            self.rest = SpatialEngine(network, weights, input_shape, comm, forward=rest_forward,
                                      start=self.fused_plan.depth)

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
        combined = LayerStats(*(getattr(self._stats, field.name).copy() for field in fields(LayerStats)))
        combined.add(self.rest.stats)
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
        tensors = self._assemble(computed, x.shape[0])
        if self.rest is None:
            return tensors[self.fused_plan.cut[-1]]
        if self.fused_plan.network.last_uses()[INPUT] >= self.fused_plan.depth:
            tensors[INPUT] = x
        return self.rest(tensors)

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
                 pool: StripPool | None = None) -> list[np.ndarray]:
        """Compute one tile (:func:`~dcnn.exec.tiles.run_tile`) and publish its outgoing strips as it goes."""
        batch = x.shape[0]
        strips_out = defaultdict(list)
        for strip in outgoing:
            strips_out[strip.layer].append(strip)

        def computed(layer: int, region: np.ndarray, box: Box) -> None:
            self._counts["macs"] += self._rates[layer] * box.area * batch
            for strip in strips_out[layer]:
                pool.publish(strip, region[(slice(None), slice(None), *strip.box.slices(box))])
                self._stats.bytes_sent[layer] += batch * BYTES_PER_VALUE * strip.elements

        seconds = np.zeros(len(steps))
        outputs = run_tile(self.forward, steps, x, self.fused_plan.cut, self.fused_plan.tiles[index].outputs,
                           [(strip.layer, strip.box, values) for strip, values in borrowed], computed, seconds)
        self._stats.compute_seconds[:len(steps)] += seconds
        self.tile_seconds[index] += seconds.sum()
        return outputs

    def _assemble(self, computed: dict[int, list[np.ndarray]], batch: int) -> dict[str, np.ndarray]:
        """Every rank's tile blocks into each whole cut tensor, on every rank (one allgather)."""
        owners = self.comm.allgather(sorted(computed))
        plan = self.fused_plan
        channels = [shape[0] for shape in plan.cut_shapes]
        order = [index for indices in owners for index in indices]
        counts = [sum(batch * c * box.area for i in indices for c, box in zip(channels, plan.tiles[i].outputs))
                  for indices in owners]
        local = np.concatenate([block.reshape(-1) for i in sorted(computed) for block in computed[i]]) \
            if computed else np.zeros(0, np.float32)
        start = time.perf_counter()
        flat = allgather_blocks(self.comm, local, counts)
        self._stats.wait_seconds[plan.depth - 1] += time.perf_counter() - start
        # Per rank, its tiles' blocks in tile order, each tile's blocks in cut order: split per tensor.
        parts: list[list[np.ndarray]] = [[] for _ in plan.cut]
        offset = 0
        for i in order:
            for k, (c, box) in enumerate(zip(channels, plan.tiles[i].outputs)):
                parts[k].append(flat[offset:offset + batch * c * box.area])
                offset += batch * c * box.area
        return {name: assemble_boxes(np.concatenate(parts[k]), [plan.tiles[i].outputs[k] for i in order],
                                     (batch, channels[k]), shape[1:])
                for k, (name, shape) in enumerate(zip(plan.cut, plan.cut_shapes))}
