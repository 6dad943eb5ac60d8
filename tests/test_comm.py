"""The MPI layer under real mpiexec (run with ``mpiexec -n N python -m pytest --with-mpi``)."""

import pytest
from mpi4py import MPI

from dcnn.errors import AgreedError, InputError
from dcnn.parallel.comm import agree_on_error, collective, free_windows, hostnames, ranks_per_node

pytestmark = pytest.mark.mpi


def test_no_error_is_no_verdict():
    assert agree_on_error(MPI.COMM_WORLD, None) is None


def test_every_rank_learns_the_lowest_failing_rank():
    comm = MPI.COMM_WORLD
    failing = comm.size - 1
    verdict = agree_on_error(comm, "disk full" if comm.rank == failing else None)
    expected = "disk full" if failing == 0 else f"rank {failing}: disk full"
    assert comm.allgather(verdict) == [expected] * comm.size


def test_collective_block_raises_on_every_rank():
    comm = MPI.COMM_WORLD
    raised = False
    try:
        with collective(comm):
            if comm.rank == comm.size // 2:
                raise InputError("bad path")
    except AgreedError as error:
        raised = "bad path" in str(error)
    assert comm.allgather(raised) == [True] * comm.size


def test_collective_block_passes_when_all_succeed():
    with collective(MPI.COMM_WORLD):
        value = MPI.COMM_WORLD.rank
    assert value == MPI.COMM_WORLD.rank


@pytest.mark.mpi(min_size=2)
def test_node_topology():
    comm = MPI.COMM_WORLD
    names = hostnames(comm)
    assert len(names) == comm.size
    assert ranks_per_node(comm) == names.count(names[comm.rank])


def test_free_windows_ends_every_epoch_and_frees_every_window():
    comm = MPI.COMM_WORLD
    windows = [MPI.Win.Allocate(8, disp_unit=8, comm=comm) for _ in range(2)]
    for window in windows:
        window.Lock_all()
    free_windows(comm, *windows)
    assert all(window == MPI.WIN_NULL for window in windows)
