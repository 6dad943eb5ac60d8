"""Engines by input shape, with a lifecycle: a small cache of live engines, each closed when it is evicted.

An engine (:class:`~dcnn.parallel.spatial.SpatialEngine`, :class:`~dcnn.parallel.fused.FusedEngine`, or for a rank
that runs whole images alone :class:`~dcnn.parallel.whole.WholeEngine`) is built for one per-image input shape: a
Cartesian communicator, halo buffers, for the reuse policy two RMA windows. Image folders give
almost every image its own size, so keeping one engine per size for the whole run exhausts the MPI library's
communicators (MPICH has 2,048 context ids) and grows memory with every size. :class:`EngineCache` keeps at most
``capacity`` engines alive and closes the least recently used one when another is needed; the compiled network
(:class:`~dcnn.exec.forward.Forward`) is built once by the caller and shared by all of them, so a size costs only its
plan and buffers. Per-layer counters of closed engines are kept, so a run's statistics cover every engine.

Closing an engine of several ranks is collective. Spatial and fused mode go through the same tasks in the same
order on every rank, so every rank asks for the same shapes in the same order and evicts the same engine at the
same point; batch mode builds engines without a communicator (a rank alone: no MPI call at all), and with
``per_thread`` every thread that asks has engines of its own: batch mode's task threads
(:func:`dcnn.kernels.threads.task_threads`) each run whole tasks, as ranks would, and never share an engine.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np

from dcnn.network.layers import Shape
from dcnn.parallel.fused import COUNTER_FIELDS, FusedEngine
from dcnn.parallel.spatial import LayerStats, SpatialEngine
from dcnn.parallel.whole import WholeEngine

__all__ = ["DEFAULT_CAPACITY", "Engine", "EngineCache"]

#: Live engines kept per rank. One: the planner counts one engine's buffers (halo buffers, the reuse policy's
#: strip pool), and with four alive a fused reuse run over 24 photo sizes peaked above its prediction. A task
#: runs each of its sizes once, so only a size that comes back in a later task is built again (a plan and a
#: communicator: milliseconds).
DEFAULT_CAPACITY = 1

Engine = SpatialEngine | FusedEngine | WholeEngine


class EngineCache:
    """At most ``capacity`` engines by input shape, least recently used closed first.

    Parameters
    ----------
    build : callable
        ``build(shape)`` makes the engine for a per-image input shape ``(C, H, W)``.
    layers : int
        Layers of the network (the length of the per-layer counters).
    capacity : int
        Most engines alive at once (at least 1), per thread with ``per_thread``.
    per_thread : bool
        Keep the engines of each calling thread apart (engines whose calls make no MPI call: batch mode's); the
        counters and :meth:`close` cover every thread's. Otherwise one thread (the main one) uses the cache.

    Attributes
    ----------
    first : SpatialEngine or FusedEngine or WholeEngine or None
        The first engine built (kept, closed or not, to describe the run: grid, tile plan).
    built : int
        Engines built so far (a size that comes back after its engine was closed counts again).
    """

    def __init__(self, build: Callable[[Shape], Engine], layers: int, capacity: int = DEFAULT_CAPACITY,
                 per_thread: bool = False):
        if capacity < 1:
            raise ValueError(f"an engine cache holds at least one engine, got {capacity}")
        self._build = build
        self.capacity = capacity
        self.per_thread = per_thread
        self._slots: dict[int, OrderedDict[Shape, Engine]] = {}  # live engines by thread (one slot without)
        self._lock = threading.Lock()  # guards the slots, the counters of closed engines, first and built
        self._closed = LayerStats.zeros(layers)
        self._closed_counters = dict.fromkeys(COUNTER_FIELDS, 0.0)
        self._closed_tiles: np.ndarray | None = None
        self.first: Engine | None = None
        self.built = 0

    def __call__(self, shape: Shape) -> Engine:
        """The engine for ``shape``, built (and the least recently used one closed) if it is not alive."""
        shape = tuple(shape)
        with self._lock:
            live = self._slots.setdefault(threading.get_ident() if self.per_thread else 0, OrderedDict())
        if shape in live:
            live.move_to_end(shape)
            return live[shape]
        if len(live) >= self.capacity:
            _, oldest = live.popitem(last=False)
            self._retire(oldest)
        engine = self._build(shape)
        live[shape] = engine
        with self._lock:
            self.built += 1
            if self.first is None:
                self.first = engine
        return engine

    def __len__(self) -> int:
        """Engines alive now."""
        return sum(map(len, self._live()))

    def _live(self) -> list[OrderedDict[Shape, Engine]]:
        with self._lock:
            return list(self._slots.values())

    def _retire(self, engine: Engine) -> None:
        """Close an engine, keeping its counters."""
        engine.close()
        with self._lock:
            self._closed.add(engine.stats)
            if isinstance(engine, FusedEngine):
                for field, value in engine.counters.items():
                    self._closed_counters[field] += value
                self._closed_tiles = _add(self._closed_tiles, engine.tile_seconds)

    def engines(self) -> Iterator[Engine]:
        """The live engines, least recently used first (thread by thread)."""
        return iter([engine for live in self._live() for engine in live.values()])

    def layer_stats(self) -> LayerStats:
        """This rank's per-layer counters over every engine, closed or alive."""
        total = LayerStats.zeros(len(self._closed.compute_seconds))
        total.add(self._closed)
        for engine in self.engines():
            total.add(engine.stats)
        return total

    def fused_counters(self) -> tuple[dict[str, float], np.ndarray] | None:
        """Fused mode: this rank's :data:`~dcnn.fused.COUNTER_FIELDS` and compute seconds per tile, summed over
        every engine (the tile grid is the same for every shape); ``None`` in other modes."""
        if not isinstance(self.first, FusedEngine):
            return None
        counters, tiles = dict(self._closed_counters), self._closed_tiles
        for engine in self.engines():
            for field, value in engine.counters.items():
                counters[field] += value
            tiles = _add(tiles, engine.tile_seconds)
        return counters, tiles

    def close(self) -> None:
        """Close every live engine (collective in spatial and fused mode), keeping their counters."""
        for live in self._live():
            while live:
                _, engine = live.popitem(last=False)
                self._retire(engine)

    def __enter__(self) -> EngineCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _add(total: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    return values.copy() if total is None else total + values
