"""Task splitting and the batch-mode knobs (no MPI)."""

import threading
import time

import numpy as np
import pytest

from dcnn.errors import InputError
from dcnn.io.scan import Skip
from dcnn.kernels import threads
from dcnn.modes import concurrent_tasks
from dcnn.parallel.batch import (
    TaskSplit,
    _run_on_task_threads,
    decode_skips,
    encode_skips,
    parse_capacities,
    parse_throttle,
)


def test_task_split_covers_every_image_once():
    split = TaskSplit(10, 4)
    assert split.num_tasks == 3
    assert [split.bounds(t) for t in range(3)] == [(0, 4), (4, 8), (8, 10)]


def test_pending_tasks_are_those_with_a_missing_image():
    split = TaskSplit(10, 4)
    done = np.zeros(10, np.uint8)
    assert split.pending(done).tolist() == [0, 1, 2]
    done[:4] = 1
    done[8] = 1
    assert split.pending(done).tolist() == [1, 2]
    assert split.pending(np.ones(10, np.uint8)).tolist() == []


def test_throttle_and_capacity_parsing():
    assert parse_throttle(["1:4", "0:2.5"], 2) == {1: 4.0, 0: 2.5}
    assert parse_capacities("1,0.5,2", 3) == [1.0, 0.5, 2.0]
    assert parse_capacities(None, 3) is None


@pytest.mark.parametrize("spec", ["1", "a:2", "5:2", "1:0.5"])
def test_throttle_errors(spec):
    with pytest.raises(InputError, match="--throttle"):
        parse_throttle([spec], 2)


@pytest.mark.parametrize("text", ["1,2", "1,x,1", "0,0,0", "1,-1,1"])
def test_capacity_errors(text):
    with pytest.raises(InputError, match="--capacity"):
        parse_capacities(text, 3)


def test_skip_records_survive_a_result_message():
    skipped = [Skip(3, "/d/café.png", "cannot read image (truncated)"), Skip(12, "/d/\udcff.jpg", ""),
               Skip(0, "", "6x8 images are too small")]
    assert decode_skips(encode_skips(skipped)) == skipped
    assert decode_skips(encode_skips([])) == []


@pytest.mark.mpi
@pytest.mark.parametrize("count", [0, 1, 5])
def test_dealt_parts_are_computed_once_and_gathered_in_order_on_rank_0(count):
    from mpi4py import MPI

    from dcnn.parallel.batch import _dealing

    comm = MPI.COMM_WORLD
    computed = []

    def compute(first, last):
        computed.append((first, last))
        return np.arange(10 * first, 10 * last)

    rows = _dealing(comm)(count, compute)
    assert len(computed) == 1
    everyone = comm.allgather(computed[0])
    assert [last - first for first, last in everyone] == sorted((last - first for first, last in everyone),
                                                                reverse=True)
    assert sum(last - first for first, last in everyone) == count  # each part on one rank
    if comm.rank == 0:
        assert rows.tolist() == list(range(10 * count))
    else:
        assert rows is None


def test_a_rank_runs_tasks_on_its_threads_only_with_enough_tasks_for_them():
    assert concurrent_tasks("batch", 2, 4, 2) == 2 and concurrent_tasks("batch", 4, 9, 2) == 4
    assert concurrent_tasks("batch", 2, 3, 2) == 1  # fewer tasks than threads: the threads share each layer
    assert concurrent_tasks("batch", 1, 10, 1) == 1
    assert concurrent_tasks("spatial", 2, 10, 1) == concurrent_tasks("single", 2, 10, 1) == 1


class FakeQueue:
    """Tasks 0..n-1 in order; once they are all handed out, next_task waits (calling on_idle) until every one is
    done, as the work-stealing queue does; a wait that never ends fails instead of hanging."""

    def __init__(self, count):
        self.left, self.count, self.done, self.handed = list(range(count)), count, 0, []

    def next_task(self, on_idle=None):
        if self.left:
            self.handed.append(self.left.pop(0))
            return self.handed[-1]
        for _ in range(10_000):
            if self.done >= self.count:
                return None
            on_idle()
            time.sleep(0.001)
        raise AssertionError("the tasks running on the task threads were never counted done")

    def task_done(self, items=1):
        self.done += 1
        return self.done


def run_on_threads(queue, compute):
    finished, polls = [], []

    def finish(*result):  # run_tasks delivers the task, then counts it done
        finished.append((result, threading.current_thread()))
        queue.task_done()

    try:
        threads.set_num_threads(2)
        _run_on_task_threads(queue, compute, finish, lambda: polls.append(1))
    finally:
        threads.set_num_threads(1)
    return finished, polls


def test_task_threads_run_every_task_once_and_the_main_thread_delivers_them():
    """Five tasks on two task threads; the queue only ends once the main thread has counted the last ones done,
    which it does while it waits in the queue."""
    queue = FakeQueue(5)

    def compute(task):
        time.sleep(0.01 * (task % 2))
        return task, threading.current_thread().name, threads.get_num_threads()

    finished, polls = run_on_threads(queue, compute)
    assert sorted(result[0] for result, _ in finished) == list(range(5)) and queue.done == 5 and polls
    assert all(name.startswith("dcnn-task") and count == 1 for (_, name, count), _ in finished)
    assert {thread for _, thread in finished} == {threading.main_thread()}


def test_a_failed_task_ends_the_loop_after_the_running_task_finishes():
    """The error propagates once the other running task is done (its buffers are not freed under it), and no
    task is taken after the failure."""
    queue, ended = FakeQueue(6), threading.Event()

    def compute(task):
        if task == 1:
            raise RuntimeError("task 1 failed")
        time.sleep(0.2)
        ended.set()
        return (task,)

    with pytest.raises(RuntimeError, match="task 1 failed"):
        run_on_threads(queue, compute)
    assert ended.is_set() and queue.handed == [0, 1]


class TwoTasks:
    """A queue of tasks 0 and 1 for :func:`_run_on_task_threads` (no MPI)."""

    def __init__(self):
        self.tasks = [0, 1]

    def next_task(self, on_idle):
        return self.tasks.pop(0) if self.tasks else None


def run_until_cancelled(task: int, stopped: threading.Event) -> tuple[int]:
    """A long task on a task thread: it checks for cancellation, and sets ``stopped`` when it is cancelled."""
    deadline = time.monotonic() + 60  # a hang guard only: a cancelled task stops at once
    try:
        while time.monotonic() < deadline:
            threads.stop_if_cancelled()
            time.sleep(0.01)
    except threads.TasksCancelled:
        stopped.set()
        raise
    return (task,)


def test_a_failed_task_thread_keeps_the_tasks_that_finish_beside_it():
    """Before: when a task failed on one task thread, a task another thread finished after it was dropped (a
    resume computed it again). It is delivered before the failure propagates."""

    failing = threading.Event()
    delivered = []

    def compute(task):
        if task == 1:
            failing.set()
            raise RuntimeError("task 1 failed")
        failing.wait()
        time.sleep(0.5)  # ends after the main thread has seen task 1 fail (on any machine, the result is the same)
        return (task,)

    try:
        threads.set_num_threads(2)
        with pytest.raises(RuntimeError, match="task 1 failed"):
            _run_on_task_threads(TwoTasks(), compute, delivered.append, lambda: None)
    finally:
        threads.set_num_threads(1)
    assert delivered == [0]


def test_an_interruption_while_failed_tasks_neighbours_finish_still_cancels_them():
    """Before: Ctrl-C while the main thread waited for the tasks running beside a failed one left them uncancelled
    (the exit then waited for whole tasks). The interruption now cancels them: they stop at their next check."""
    import signal

    failing, stopped = threading.Event(), threading.Event()

    def compute(task):
        if task == 1:
            failing.set()
            raise RuntimeError("task 1 failed")
        failing.wait()
        return run_until_cancelled(task, stopped)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        threads.set_num_threads(2)
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        with pytest.raises(KeyboardInterrupt):
            _run_on_task_threads(TwoTasks(), compute, lambda *outputs: None, lambda: None)
        assert stopped.wait(60)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        threads.set_num_threads(1)


def test_a_failed_delivery_writes_nothing_more_and_cancels_the_running_tasks():
    """A write that fails (the file) is not retried for the tasks beside it: they are cancelled, not delivered."""

    started, stopped, delivered = threading.Event(), threading.Event(), []

    def compute(task):
        if task == 0:
            started.wait()  # task 1 runs when task 0's delivery fails
            return (task,)
        started.set()
        return run_until_cancelled(task, stopped)

    def finish(task):
        delivered.append(task)
        raise OSError(28, "No space left on device")

    try:
        threads.set_num_threads(2)
        with pytest.raises(OSError, match="No space"):
            _run_on_task_threads(TwoTasks(), compute, finish, lambda: None)
        assert stopped.wait(60)
    finally:
        threads.set_num_threads(1)
    assert delivered == [0]
