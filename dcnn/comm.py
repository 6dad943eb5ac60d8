"""The MPI layer: the only library module that imports :mod:`mpi4py`.

So far it holds what every entry point needs: collective verdicts on errors (never let one rank fail alone),
the per-rank thread policy, and provenance about the MPI library.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

from mpi4py import MPI

from .errors import DcnnError

__all__ = [
    "MPI", "AgreedError", "agree_on_error", "collective", "hostnames", "mpi_library_version", "ranks_per_node",
    "world",
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


def mpi_library_version() -> str:
    """The first line of the MPI library's version string."""
    return MPI.Get_library_version().strip().splitlines()[0].strip()


class AgreedError(DcnnError):
    """An error every rank has agreed on; rank 0 reports it, every rank exits with the same code."""


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
