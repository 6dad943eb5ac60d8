"""The work-stealing queue under real mpiexec: every task exactly once, termination, load balance."""

import random
import time

import pytest
from mpi4py import MPI

from dcnn.parallel.steal import StealQueue, pack, unpack

COMM = MPI.COMM_WORLD


def run_queue(num_tasks, delay, seed=0, steal=True, slow_rank=None, factor=1.0, capacities=None, tasks=None):
    """Run sleeping tasks; returns (tasks per rank, makespan, stats per rank), the same on every rank.

    The makespan runs from the end of the queue's (collective) creation to the last rank's last task, on the
    machine-wide monotonic clock.
    """
    rng = random.Random(seed * 1000 + COMM.rank)
    executed = []
    with StealQueue(COMM, num_tasks, capacities=capacities, steal=steal, seed=seed, tasks=tasks) as queue:
        start = time.monotonic()
        for task in queue:
            pause = delay(rng)
            time.sleep(pause * (factor if COMM.rank == slow_rank else 1.0))
            executed.append(task)
        end = time.monotonic()
        stats = queue.stats
    makespan = max(COMM.allgather(end)) - min(COMM.allgather(start))
    return COMM.allgather(executed), makespan, COMM.allgather(stats)


@pytest.mark.mpi
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_thousands_of_tiny_tasks_run_exactly_once(seed):
    executed, _, stats = run_queue(3000, lambda rng: rng.uniform(0, 2e-4), seed=seed)
    flat = sorted(task for per_rank in executed for task in per_rank)
    assert flat == list(range(3000))
    assert sum(s.tasks_run for s in stats) == 3000
    assert all(s.steals_succeeded <= s.steals_attempted for s in stats)


@pytest.mark.mpi
def test_a_subset_of_tasks_and_empty_queues():
    subset = list(range(5, 400, 7))
    executed, _, _ = run_queue(0, lambda rng: 0.0, tasks=subset)
    assert sorted(t for per_rank in executed for t in per_rank) == subset
    executed, _, _ = run_queue(0, lambda rng: 0.0)
    assert all(not per_rank for per_rank in executed)


@pytest.mark.mpi
def test_fewer_tasks_than_ranks():
    executed, _, _ = run_queue(1, lambda rng: 1e-3)
    assert sorted(t for per_rank in executed for t in per_rank) == [0]


@pytest.mark.mpi(min_size=2)
def test_stealing_balances_a_slow_rank_and_the_static_split_does_not():
    """Rank 0 runs four times slower. Ideal makespan: total work over total capacity (P - 1 + 1/4)."""
    size, factor, pause, per_rank = COMM.size, 4.0, 0.008, 30
    num_tasks = per_rank * size
    ideal = num_tasks * pause / (size - 1 + 1 / factor)
    _, with_stealing, stats = run_queue(num_tasks, lambda rng: pause, slow_rank=0, factor=factor)
    _, without, _ = run_queue(num_tasks, lambda rng: pause, slow_rank=0, factor=factor, steal=False)
    # The last task on the slow rank can end up to one slow task late (granularity).
    assert with_stealing <= 1.15 * ideal + factor * pause, (with_stealing, ideal)
    assert without > 1.15 * ideal, (without, ideal)
    assert sum(s.tasks_stolen for s in stats) > 0


@pytest.mark.mpi(min_size=2)
def test_capacities_shape_the_initial_split():
    capacities = [0.0] + [1.0] * (COMM.size - 1)
    executed, _, _ = run_queue(50 * COMM.size, lambda rng: 0.0, capacities=capacities, steal=False)
    assert executed[0] == []


def test_pack_round_trip():
    for head, tail in [(0, 0), (5, 9), (2**31 - 2, 2**31 - 1)]:
        assert unpack(pack(head, tail)) == (head, tail)
