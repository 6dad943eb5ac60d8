"""The work-stealing queue under real mpiexec: every task exactly once, termination, load balance."""

import random
import time

import pytest
from mpi4py import MPI

from dcnn.decomposition.intervals import initial_intervals
from dcnn.parallel.steal import StealQueue, pack, unpack

COMM = MPI.COMM_WORLD


def run_queue(num_tasks, delay, seed=0, steal=True, capacities=None, tasks=None, work=None):
    """Run sleeping tasks; returns (tasks per rank, stats per rank), the same on every rank.

    ``work(task)``, if given, runs after each task's sleep.
    """
    rng = random.Random(seed * 1000 + COMM.rank)
    executed = []
    with StealQueue(COMM, num_tasks, capacities=capacities, steal=steal, seed=seed, tasks=tasks) as queue:
        for task in queue:
            time.sleep(delay(rng))
            if work is not None:
                work(task)
            executed.append(task)
        stats = queue.stats
    return COMM.allgather(executed), COMM.allgather(stats)


@pytest.mark.mpi
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_thousands_of_tiny_tasks_run_exactly_once(seed):
    executed, stats = run_queue(3000, lambda rng: rng.uniform(0, 2e-4), seed=seed)
    flat = sorted(task for per_rank in executed for task in per_rank)
    assert flat == list(range(3000))
    assert sum(s.tasks_run for s in stats) == 3000
    assert all(s.steals_succeeded <= s.steals_attempted for s in stats)


@pytest.mark.mpi
def test_a_subset_of_tasks_and_empty_queues():
    subset = list(range(5, 400, 7))
    executed, _ = run_queue(0, lambda rng: 0.0, tasks=subset)
    assert sorted(t for per_rank in executed for t in per_rank) == subset
    executed, _ = run_queue(0, lambda rng: 0.0)
    assert all(not per_rank for per_rank in executed)


@pytest.mark.mpi
def test_fewer_tasks_than_ranks():
    executed, _ = run_queue(1, lambda rng: 1e-3)
    assert sorted(t for per_rank in executed for t in per_rank) == [0]


class StalledRank:
    """Task work that stalls rank 0 in its first task until the other ranks have finished every other task.

    They can only do so by stealing all of rank 0's remaining interval, so what the scheduler must do is fixed,
    whatever the machine's load: each other rank reports each finished task to rank 0 in a message. Rank 0 gives
    up after ``patience`` seconds, a guard against a hang only (the test then fails on the task counts).
    """

    def __init__(self, num_tasks, patience=120.0):
        self.comm = COMM.Dup()
        self.num_tasks, self.patience = num_tasks, patience
        self.sends, self.reported = [], 0

    def __call__(self, task):
        if self.comm.rank != 0:
            self.sends.append(self.comm.isend(task, dest=0))
            return
        if task != 0:
            return
        deadline = time.monotonic() + self.patience
        while self.reported < self.num_tasks - 1 and time.monotonic() < deadline:
            if self.comm.iprobe(source=MPI.ANY_SOURCE):
                self.comm.recv(source=MPI.ANY_SOURCE)
                self.reported += 1
            else:
                time.sleep(1e-3)

    def close(self):
        """Receive every report not yet received, complete the sends, and free the communicator."""
        sent = self.comm.gather(len(self.sends), root=0)
        if self.comm.rank == 0:
            for _ in range(sum(sent) - self.reported):
                self.comm.recv(source=MPI.ANY_SOURCE)
        MPI.Request.waitall(self.sends)
        self.comm.Free()


@pytest.mark.mpi(min_size=2)
def test_stealing_moves_a_stalled_ranks_work_and_the_static_split_does_not():
    """Regression (the test asserted a makespan in seconds, and failed on a busy machine): it now checks what the
    scheduler did. Rank 0 stalls in its first task: with stealing, the other ranks take every other task of its
    interval; without, every rank runs exactly its initial interval, in proportion to the capacities."""
    size = COMM.size
    num_tasks = 30 * size
    capacities = [0.5] + [1.0] * (size - 1)
    intervals = initial_intervals(num_tasks, capacities)
    stall = StalledRank(num_tasks)
    try:
        executed, stats = run_queue(num_tasks, lambda rng: 0.0, capacities=capacities, work=stall)
    finally:
        stall.close()
    assert executed[0] == [intervals[0][0]]
    assert sorted(t for per_rank in executed[1:] for t in per_rank) == list(range(1, num_tasks))
    assert sum(s.tasks_stolen for s in stats) >= intervals[0][1] - intervals[0][0] - 1
    assert stats[0].tasks_run == 1 and stats[0].steals_succeeded == 0
    static, _ = run_queue(num_tasks, lambda rng: 1e-4, capacities=capacities, steal=False)
    assert [sorted(tasks) for tasks in static] == [list(range(*interval)) for interval in intervals]


@pytest.mark.mpi(min_size=2)
def test_capacities_shape_the_initial_split():
    capacities = [0.0] + [1.0] * (COMM.size - 1)
    executed, _ = run_queue(50 * COMM.size, lambda rng: 0.0, capacities=capacities, steal=False)
    assert executed[0] == []


def test_pack_round_trip():
    for head, tail in [(0, 0), (5, 9), (2**31 - 2, 2**31 - 1)]:
        assert unpack(pack(head, tail)) == (head, tail)
