"""Communicator helpers of the MPI layer (:mod:`dcnn.parallel`, the only subpackage that imports mpi4py).

It holds collective verdicts on errors (never let one rank fail alone), the node topology for the thread
policy, provenance about the MPI library, the Cartesian grid, the per-layer halo exchange and the gathers of
the spatial engine.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import mpi4py
import numpy as np
from mpi4py import MPI

from dcnn.errors import AgreedError, DcnnError, PlanError

__all__ = [
    "MPI", "AgreedError", "HaloExchange", "agree_on_error", "allgather_blocks", "cartesian", "collective",
    "free_windows", "hostnames", "idle_barrier", "mpi4py_version", "mpi_library_version", "mpi_thread_level",
    "ranks_per_node", "world",
]


def world() -> MPI.Comm:
    """The default communicator of the command-line tools."""
    return MPI.COMM_WORLD


def agree_on_error(comm: MPI.Comm, message: str | None) -> str | None:
    """Collective: every rank passes its own error message (or ``None``); all get the same verdict.

    Returns
    -------
    str or None
        The message of the lowest rank that failed, prefixed with that rank when it is not rank 0, or
        ``None`` when every rank succeeded.
    """
    messages = comm.allgather(message)
    for rank, text in enumerate(messages):
        if text is not None:
            return text if rank == 0 or comm.size == 1 else f"rank {rank}: {text}"
    return None


def ranks_per_node(comm: MPI.Comm) -> int:
    """How many ranks of ``comm`` share this rank's node (shared-memory domain)."""
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return local.size
    finally:
        local.Free()


def hostnames(comm: MPI.Comm) -> list[str]:
    """Every rank's hostname, in rank order (collective)."""
    return comm.allgather(socket.gethostname())


def mpi4py_version() -> str:
    """The version of mpi4py."""
    return mpi4py.__version__


def mpi_thread_level() -> str:
    """The thread level MPI was initialised with (``funneled``, ``multiple``, ...; see
    :data:`dcnn.parallel.THREAD_LEVEL`)."""
    names = {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled", MPI.THREAD_SERIALIZED: "serialized",
             MPI.THREAD_MULTIPLE: "multiple"}
    return names[MPI.Query_thread()]


def mpi_library_version() -> str:
    """The first line of the MPI library's version string."""
    return MPI.Get_library_version().strip().splitlines()[0].strip()


@contextmanager
def collective(comm: MPI.Comm) -> Iterator[None]:
    """Run a block on every rank and agree on its outcome.

    A :class:`~dcnn.errors.DcnnError` raised in the block on any rank makes the block raise
    :class:`AgreedError` with that message on *every* rank, so no rank is left waiting in a later collective.
    Every rank must enter the block.
    """
    message = None
    try:
        yield
    except DcnnError as error:
        message = str(error)
    verdict = agree_on_error(comm, message)
    if verdict is not None:
        raise AgreedError(verdict)


def cartesian(comm: MPI.Comm, dims: tuple[int, int] | None = None) -> MPI.Cartcomm:
    """A non-periodic 2-D Cartesian communicator over ``comm`` (no reordering: rank order is row-major).

    Parameters
    ----------
    dims : tuple of int, optional
        ``(Py, Px)``; by default ``MPI.Compute_dims(comm.size, 2)``.

    Raises
    ------
    PlanError
        If ``Py * Px`` differs from the number of ranks.
    """
    dims = tuple(MPI.Compute_dims(comm.size, 2)) if dims is None else tuple(dims)
    if len(dims) != 2 or dims[0] * dims[1] != comm.size or min(dims) < 1:
        raise PlanError(f"grid {'x'.join(map(str, dims))} needs {dims[0] * dims[1]} ranks, but {comm.size} "
                        f"were started")
    return comm.Create_cart(list(dims), periods=[False, False], reorder=False)


class HaloExchange:
    """One layer's halo exchange for one rank, planned once and run for every batch.

    Parameters
    ----------
    comm : MPI.Comm or None
        The communicator of the grid (``None`` for a rank alone: no sends, no receives, no MPI call).
    sends : list of (int, tuple of slice)
        ``(peer, (rows, cols))``: the part of this rank's block that goes to ``peer``.
    receives : list of (int, tuple of slice)
        ``(peer, (rows, cols))``: where in the assembled input the part from ``peer`` goes.
    leading_shape : tuple of int
        ``(B, C)`` of the blocks.
    tag : int
        Message tag (the layer index), so exchanges of different layers never match.

    Notes
    -----
    Receives are posted first, then every send is packed into its own contiguous, preallocated buffer and
    posted; :meth:`finish` waits and unpacks. Buffers use MPI datatypes of numpy arrays (upper-case methods, no
    pickling).
    """

    def __init__(self, comm: MPI.Comm, sends, receives, leading_shape: tuple[int, int], tag: int):
        self.comm = comm
        self.tag = tag
        self.sends = [(peer, where, np.empty((*leading_shape, *_extent(where)), np.float32)) for peer, where in sends]
        self.receives = [(peer, where, np.empty((*leading_shape, *_extent(where)), np.float32))
                         for peer, where in receives]
        self.bytes_sent = sum(buffer.nbytes for _, _, buffer in self.sends)
        self.bytes_received = sum(buffer.nbytes for _, _, buffer in self.receives)
        self._requests: list[MPI.Request] = []

    def start(self, block: np.ndarray) -> None:
        """Post all receives, then pack and post all sends of ``block`` (this rank's ``(B, C, h, w)`` block)."""
        requests = [self.comm.Irecv(buffer, source=peer, tag=self.tag) for peer, _, buffer in self.receives]
        for peer, (rows, cols), buffer in self.sends:
            buffer[...] = block[:, :, rows, cols]
            requests.append(self.comm.Isend(buffer, dest=peer, tag=self.tag))
        self._requests = requests

    def finish(self, assembled: np.ndarray) -> None:
        """Wait for every message and copy the received parts into ``assembled``."""
        if self._requests:  # none on a grid of one rank, which may have no communicator (SpatialEngine)
            MPI.Request.Waitall(self._requests)
        self._requests = []
        for _, (rows, cols), buffer in self.receives:
            assembled[:, :, rows, cols] = buffer


def _extent(where: tuple[slice, slice]) -> tuple[int, int]:
    rows, cols = where
    return rows.stop - rows.start, cols.stop - cols.start


def allgather_blocks(comm: MPI.Comm, block: np.ndarray, counts: list[int]) -> np.ndarray:
    """Concatenate every rank's contiguous ``block`` (flattened) in rank order, on every rank.

    ``counts[r]`` is the element count of rank ``r``'s block.
    """
    received = np.empty(sum(counts), dtype=np.float32)
    displacements = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    comm.Allgatherv(np.ascontiguousarray(block, dtype=np.float32).reshape(-1),
                    [received, counts, displacements, MPI.FLOAT])
    return received


def idle_barrier(comm: MPI.Comm, interval: float = 0.002) -> None:
    """A barrier that sleeps between polls instead of spinning.

    MPI libraries busy-wait in blocking calls. When ranks outnumber cores (oversubscribed runs, or ranks that
    wait while one rank does serial work), spinning ranks steal the cores the working rank needs.
    """
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(interval)


def free_windows(comm: MPI.Comm, *windows: MPI.Win) -> None:
    """End the passive-target epoch (``Lock_all``) of each of ``windows``, wait until every rank of ``comm`` has,
    then free them (collective: the steal queue's and the strip pool's windows live for their whole lifetime in one
    epoch each)."""
    for window in windows:
        window.Unlock_all()
    comm.Barrier()
    for window in windows:
        window.Free()
