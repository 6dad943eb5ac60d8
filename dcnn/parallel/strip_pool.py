"""The strip pool of the reuse policy: strips of intermediate maps in one-sided MPI windows.

Each rank exposes two windows: the float32 strips it is *home* to (fixed slots from the
:class:`~dcnn.decomposition.reuse.ReusePlan`, ``B`` images per slot) and one ready flag per tile. A producer tile
``Put`` s each strip into its home as soon as the layer is computed, completes the puts with ``Flush`` and then raises
its flag with an atomic ``REPLACE`` of the image batch's sequence number (so flags never need resetting between
batches). A consumer reads the flags of its producers atomically and, if all hold the current sequence number, ``Get``
s its strips. Like :mod:`dcnn.parallel.steal` this module is part of the communication layer: one passive-target epoch
(``Lock_all``) per window for the pool's lifetime.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from dcnn.decomposition.reuse import ReusePlan, Strip
from dcnn.parallel.comm import MPI, free_windows

__all__ = ["StripPool"]


class StripPool:
    """Strip slots and ready flags for batches of up to ``batch`` images (collective to create and to close).

    Parameters
    ----------
    comm : MPI.Comm
        The ranks of the fused engine; ``comm.size`` must equal ``reuse_plan.ranks``.
    reuse_plan : ReusePlan
        Strips, their homes and offsets.
    batch : int
        Largest batch the slots must hold.

    Attributes
    ----------
    bytes_put, bytes_got : int
        Strip bytes this rank wrote and read.
    seconds : float
        Time this rank spent in the pool's MPI calls.
    """

    def __init__(self, comm: MPI.Comm, reuse_plan: ReusePlan, batch: int):
        if comm.size != reuse_plan.ranks:
            raise ValueError(f"reuse plan for {reuse_plan.ranks} ranks used on {comm.size}")
        self.reuse_plan, self.batch = reuse_plan, batch
        self.bytes_put = self.bytes_got = 0
        self.seconds = 0.0
        self._pending: list[np.ndarray] = []
        self._homes_written: set[int] = set()
        self._result = np.zeros(1, np.int64)
        self._data = MPI.Win.Allocate(4 * max(1, batch * reuse_plan.pool_elements[comm.rank]), disp_unit=4, comm=comm)
        self._flags = MPI.Win.Allocate(8 * len(reuse_plan.classes), disp_unit=8, comm=comm)
        np.frombuffer(self._flags.tomemory(), dtype=np.int64)[:] = 0
        self._data.Lock_all()
        self._flags.Lock_all()
        self._flags.Sync()
        comm.Barrier()
        self._comm = comm
        self._closed = False

    @staticmethod
    def flag_home(tile: int, ranks: int) -> int:
        """The rank that holds a tile's ready flag."""
        return tile % ranks

    def publish(self, strip: Strip, values: np.ndarray) -> None:
        """Start writing one strip (``(B, C, h, w)`` values) into its slot; completed by :meth:`mark_ready`."""
        start = time.perf_counter()
        values = np.array(values, dtype=np.float32, order="C")  # a private copy: the caller may reuse its map
        self._pending.append(values)
        self._data.Put(values, strip.home, target=(values.shape[0] * strip.offset, values.size, MPI.FLOAT))
        self._homes_written.add(strip.home)
        self.bytes_put += values.nbytes
        self.seconds += time.perf_counter() - start

    def mark_ready(self, tile: int, sequence: int) -> None:
        """Complete this tile's puts, then raise its flag to ``sequence``."""
        start = time.perf_counter()
        for home in self._homes_written:
            self._data.Flush(home)
        self._pending.clear()
        self._homes_written.clear()
        home = self.flag_home(tile, self.reuse_plan.ranks)
        self._flags.Accumulate([np.array([sequence], np.int64), MPI.INT64_T], home, target=(tile, 1, MPI.INT64_T),
                               op=MPI.REPLACE)
        self._flags.Flush(home)
        self.seconds += time.perf_counter() - start

    def ready(self, tiles: Iterable[int], sequence: int) -> bool:
        """True when every tile of ``tiles`` has published its strips for batch ``sequence``."""
        start = time.perf_counter()
        try:
            for tile in tiles:
                home = self.flag_home(tile, self.reuse_plan.ranks)
                self._flags.Fetch_and_op(np.zeros(1, np.int64), self._result, home, tile, op=MPI.NO_OP)
                self._flags.Flush(home)
                if int(self._result[0]) != sequence:
                    return False
            return True
        finally:
            self.seconds += time.perf_counter() - start

    def fetch(self, strips: list[Strip], batch: int) -> list[np.ndarray]:
        """Read strips (whose producers are :meth:`ready`) as ``(batch, C, h, w)`` arrays."""
        start = time.perf_counter()
        arrays = []
        for strip in strips:
            values = np.empty((batch, strip.channels, strip.box.height, strip.box.width), np.float32)
            self._data.Get(values, strip.home, target=(batch * strip.offset, values.size, MPI.FLOAT))
            arrays.append(values)
            self.bytes_got += values.nbytes
        for home in {strip.home for strip in strips}:
            self._data.Flush(home)
        self.seconds += time.perf_counter() - start
        return arrays

    def close(self) -> None:
        """End the epochs and free the windows (collective)."""
        if not self._closed:
            self._closed = True
            free_windows(self._comm, self._data, self._flags)
