"""Distributed work stealing on MPI-3 one-sided windows.

Tasks are the integers ``0 .. N-1``; the engines give them meaning (a chunk of images, a tile). Every rank can
derive the task list from the plan, so a queue is an interval ``[head, tail)`` of task ids.

- **Queue words.** Each rank exposes a window (``MPI.Win.Allocate``) whose first 64-bit word packs its interval
  as ``head << 32 | tail``. All reads and writes of queue words are MPI atomics under one passive-target epoch
  (``Lock_all`` at start, ``Flush`` after each operation), so there is no master and no two-sided message.
- **Owner.** Takes the task at the head with ``Compare_and_swap``: ``(h, t) -> (h + 1, t)`` while ``h < t``.
- **Thief.** Picks a random victim, reads its word, and claims the upper half with ``Compare_and_swap``:
  ``(h, t) -> (h, t - k)``, ``k = ceil((t - h) / 2)``; then publishes ``[t - k, t)`` as its own interval. A
  failed swap (the owner or another thief got there first) just means trying again.
- **Termination.** Rank 0's window also holds counters of finished tasks and items, advanced with
  ``Fetch_and_op(SUM)``. A rank with no work and no successful steal stops when the task counter reaches ``N``,
  which is exact: a task counts only after it is finished.
- **Heterogeneous ranks.** Initial intervals are proportional to per-rank capacities
  (:func:`dcnn.decomposition.intervals.initial_intervals`); stealing corrects whatever the weights get wrong.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from dcnn.decomposition.intervals import initial_intervals
from dcnn.io.schema import STEAL_FIELDS as FIELDS
from dcnn.parallel.comm import free_windows

__all__ = ["FIELDS", "StealQueue", "StealStats", "pack", "unpack"]

_WORDS = 3          # queue word; on rank 0 also: tasks finished, items finished
_QUEUE, _TASKS_DONE, _ITEMS_DONE = 0, 1, 2
_LOW = (1 << 32) - 1
MAX_TASKS = 1 << 31


def pack(head: int, tail: int) -> int:
    """One int64 word for the interval ``[head, tail)``."""
    return (head << 32) | tail


def unpack(word: int) -> tuple[int, int]:
    """``(head, tail)`` of a queue word."""
    return (int(word) >> 32) & _LOW, int(word) & _LOW


@dataclass
class StealStats:
    """What one rank's scheduler did.

    Attributes
    ----------
    tasks_run : int
        Tasks this rank executed.
    steals_attempted, steals_succeeded : int
        Steal attempts, and those that claimed work.
    tasks_stolen : int
        Tasks this rank took from others.
    idle_seconds : float
        Time with no task in hand (stealing, backing off, waiting for termination).
    queue_seconds : float
        Time inside queue operations (pops, steals, counter updates): the scheduler's overhead.
    """

    tasks_run: int = 0
    steals_attempted: int = 0
    steals_succeeded: int = 0
    tasks_stolen: int = 0
    idle_seconds: float = 0.0
    queue_seconds: float = 0.0

    def as_array(self) -> np.ndarray:
        """The counters as a float vector (the order of :data:`FIELDS`)."""
        return np.array([getattr(self, name) for name in FIELDS], dtype=float)




class StealQueue:
    """A distributed task queue over ``comm``; collective to create and to close.

    Parameters
    ----------
    comm : MPI.Comm
        The ranks that share the work.
    num_tasks : int
        Tasks are ``0 .. num_tasks - 1``.
    capacities : sequence of float, optional
        Relative speed of each rank, for the initial split (equal by default).
    steal : bool
        Allow stealing (``False`` keeps the static split, for comparison).
    tasks : sequence of int, optional
        Run only these task ids (a resumed run); the queue then works on positions in this list.
    seed : int
        Seed of the victim choice (mixed with the rank).
    """

    def __init__(self, comm: MPI.Comm, num_tasks: int, capacities: Sequence[float] | None = None,
                 steal: bool = True, tasks: Sequence[int] | None = None, seed: int = 0):
        self.comm = comm
        self.tasks = None if tasks is None else np.asarray(tasks, dtype=np.int64)
        self.num_tasks = num_tasks if tasks is None else len(self.tasks)
        if self.num_tasks >= MAX_TASKS:
            raise ValueError(f"at most {MAX_TASKS - 1} tasks, got {self.num_tasks}")
        self.steal = steal and comm.size > 1
        self.stats = StealStats()
        self._random = random.Random(seed * 1_000_003 + comm.rank)
        self._result = np.zeros(1, np.int64)
        self._window = MPI.Win.Allocate(_WORDS * 8, disp_unit=8, comm=comm)
        memory = np.frombuffer(self._window.tomemory(), dtype=np.int64)
        memory[:] = 0
        interval = initial_intervals(self.num_tasks, capacities or [1.0] * comm.size)[comm.rank]
        memory[_QUEUE] = pack(*interval)
        self._window.Lock_all()
        self._window.Sync()
        comm.Barrier()
        self._closed = False

    # -- atomics -------------------------------------------------------------------------------------------
    def _fetch_and_op(self, value: int, rank: int, slot: int, op: MPI.Op) -> int:
        """One atomic read-modify-write, completed; its time counts as scheduler overhead."""
        start = time.perf_counter()
        self._window.Fetch_and_op(np.array([value], np.int64), self._result, rank, slot, op=op)
        self._window.Flush(rank)
        self.stats.queue_seconds += time.perf_counter() - start
        return int(self._result[0])

    def _read(self, rank: int, slot: int) -> int:
        return self._fetch_and_op(0, rank, slot, MPI.NO_OP)

    def _swap(self, rank: int, expected: int, new: int) -> bool:
        start = time.perf_counter()
        origin, compare = np.array([new], np.int64), np.array([expected], np.int64)
        self._window.Compare_and_swap(origin, compare, self._result, rank, _QUEUE)
        self._window.Flush(rank)
        self.stats.queue_seconds += time.perf_counter() - start
        return int(self._result[0]) == expected

    def _add(self, slot: int, amount: int) -> int:
        return self._fetch_and_op(amount, 0, slot, MPI.SUM) + amount

    # -- queue operations ----------------------------------------------------------------------------------
    def _pop(self) -> int | None:
        """Take the head of this rank's own interval, or ``None`` if it is empty."""
        rank = self.comm.rank
        while True:
            head, tail = unpack(self._read(rank, _QUEUE))
            if head >= tail:
                return None
            if self._swap(rank, pack(head, tail), pack(head + 1, tail)):
                return head

    def _try_steal(self) -> bool:
        """One attempt to move half of a random victim's interval into this rank's own."""
        rank, size = self.comm.rank, self.comm.size
        victim = self._random.randrange(size - 1)
        victim += victim >= rank
        self.stats.steals_attempted += 1
        head, tail = unpack(self._read(victim, _QUEUE))
        if head >= tail:
            return False
        count = (tail - head + 1) // 2
        if not self._swap(victim, pack(head, tail), pack(head, tail - count)):
            return False
        # Nobody else writes an empty queue word, so this swap cannot fail; a swap (rather than a REPLACE) keeps
        # every access to queue words the same kind of atomic, which MPI requires for atomicity.
        own = self._read(rank, _QUEUE)
        if not self._swap(rank, own, pack(tail - count, tail)):
            raise RuntimeError("a queue word changed while empty: scheduler bug")
        self.stats.steals_succeeded += 1
        self.stats.tasks_stolen += count
        return True

    def next_task(self, on_idle: Callable[[], None] | None = None) -> int | None:
        """The next task for this rank, or ``None`` once every task of the run is finished.

        While it has no work, a rank steals (if allowed) with exponential back-off, calling ``on_idle`` (for
        example to receive results) between attempts.
        """
        task = self._pop()
        if task is None:
            task = self._idle(on_idle)
        if task is None:
            return None
        return int(task if self.tasks is None else self.tasks[task])

    def _idle(self, on_idle: Callable[[], None] | None) -> int | None:
        start = time.perf_counter()
        delay = 1e-4
        task = None
        while task is None:
            if self.steal and self._try_steal():
                task = self._pop()
                delay = 1e-4
                continue
            if self._read(0, _TASKS_DONE) >= self.num_tasks:
                break
            if on_idle is not None:
                on_idle()
            time.sleep(delay)
            delay = min(delay * 2, 5e-3)
        self.stats.idle_seconds += time.perf_counter() - start
        return task

    def task_done(self, items: int = 1) -> int:
        """Record one finished task of ``items`` items; returns the items finished so far by everyone."""
        self.stats.tasks_run += 1
        self._add(_TASKS_DONE, 1)
        return self._add(_ITEMS_DONE, items)

    def __iter__(self) -> Iterator[int]:
        """Yield task ids until all are finished; each is counted finished when the next one is asked for."""
        while (task := self.next_task()) is not None:
            yield task
            self.task_done()

    def close(self) -> None:
        """End the access epoch and free the window (collective)."""
        if not self._closed:
            self._closed = True
            free_windows(self.comm, self._window)

    def __enter__(self) -> StealQueue:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
