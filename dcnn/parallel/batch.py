"""Tasks over an image set: the batch engine (data parallel, work stealing) and the loop every mode shares.

A *task* is a fixed chunk of ``batch_size`` consecutive images (the last may be shorter). Tasks never change
between runs of the same configuration, so a resumed run recomputes exactly the batches that were lost and
its outputs are bit-identical to an uninterrupted run.

- In batch mode every rank runs whole tasks with its own copy of the network. Tasks come from the one-sided
  work-stealing queue (:class:`dcnn.parallel.steal.StealQueue`); each rank reads its images straight from the input.
  A rank of ``T > 1`` kernel threads runs up to ``T`` tasks at once, each on a task thread at one kernel thread
  (:func:`dcnn.kernels.threads.task_threads`), exactly as ``T`` single-threaded ranks would: its main thread
  takes the tasks from the queue, delivers their outputs and makes every MPI call; the task threads make none.
  (Splitting each task's images between the threads instead would change the batches the network sees, and a
  classifier's logits depend on them in the last bits: ResNet-18 on 7 images differs by 1.3e-4 when run as 4 + 3.)
- In single and spatial mode the ranks go through the tasks in order together.

Rank 0 is the only writer. Other ranks send each task's outputs to it as one message (the queue itself uses no
two-sided messages); rank 0 receives them between its own tasks and while idle.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Container, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

import numpy as np

from dcnn.decomposition.geometry import split_extent
from dcnn.errors import InputError
from dcnn.io.images import ImageSet
from dcnn.io.numbers import parse_number
from dcnn.io.progress import Progress
from dcnn.io.results import ResultWriter, encode_outputs
from dcnn.io.scan import Skip
from dcnn.kernels.threads import cancel_tasks, get_num_threads, task_threads
from dcnn.modes import concurrent_tasks
from dcnn.parallel.comm import MPI
from dcnn.parallel.steal import FIELDS, StealQueue

__all__ = [
    "InOrderTasks", "ResultChannel", "TaskSplit", "parse_capacities", "parse_throttle",
    "run_tasks",
]

RESULT_TAG = 17
#: Seconds the main thread of a rank with task threads waits for one of them before it polls for results again.
POLL_SECONDS = 0.01
_HEADER = 6  # task, first image, stop, start time, end time, length of the skip records


@dataclass(frozen=True)
class TaskSplit:
    """Images ``0 .. num_images - 1`` in tasks of ``batch_size`` consecutive images."""

    num_images: int
    batch_size: int

    @property
    def num_tasks(self) -> int:
        """Number of tasks."""
        return -(-self.num_images // self.batch_size)

    def bounds(self, task: int) -> tuple[int, int]:
        """``(first image, stop)`` of ``task``."""
        start = task * self.batch_size
        return start, min(self.num_images, start + self.batch_size)

    def pending(self, done: np.ndarray) -> np.ndarray:
        """Tasks with at least one image not done (all of them for a fresh run)."""
        return np.array([t for t in range(self.num_tasks) if not done[slice(*self.bounds(t))].all()], dtype=np.int64)


def parse_throttle(specs: Sequence[str], size: int) -> dict[int, float]:
    """``["RANK:FACTOR", ...]`` to ``{rank: factor}``; a factor of 4 makes that rank 4 times slower.

    Raises
    ------
    InputError
        If a spec is not ``RANK:FACTOR``, the rank is not below ``size``, or the factor is not a finite number
        of at least 1.
    """
    throttle = {}
    for spec in specs:
        try:
            rank_text, factor_text = spec.split(":")
        except ValueError:
            raise InputError(f"--throttle takes RANK:FACTOR such as 1:4, got {spec!r}") from None
        rank = parse_number(rank_text, f"--throttle {spec}: the rank", integer=True, minimum=0, maximum=size - 1)
        throttle[rank] = parse_number(factor_text, f"--throttle {spec}: the factor", minimum=1)
    return throttle


def parse_capacities(text: str | None, size: int) -> list[float] | None:
    """``"1,1,0.5"`` to one non-negative weight per rank (``None`` stays ``None``: equal weights).

    Raises
    ------
    InputError
        If there are not ``size`` weights, one is not a finite non-negative number, or all are zero.
    """
    if text is None:
        return None
    values = [parse_number(value, "--capacity: each weight", minimum=0) for value in text.split(",")]
    if len(values) != size or sum(values) <= 0:
        raise InputError(f"--capacity needs {size} non-negative weights (one per rank), not all zero; "
                         f"got {text!r}")
    return values


def encode_skips(skipped: Sequence[Skip]) -> np.ndarray:
    """Skip records as float64 values for a result message: per record its index, then the UTF-8 bytes of its
    path and of its reason, each preceded by its length (every value is exact in a float64)."""
    values: list[float] = []
    for skip in skipped:
        values.append(skip.index)
        for text in (skip.path, skip.reason):
            data = text.encode("utf-8", "surrogateescape")
            values += [len(data), *data]
    return np.array(values, np.float64)


def decode_skips(values: np.ndarray) -> list[Skip]:
    """The inverse of :func:`encode_skips`."""
    skipped, position = [], 0
    codes = values.astype(np.int64)
    while position < len(codes):
        index, position = int(codes[position]), position + 1
        texts = []
        for _ in range(2):
            length = int(codes[position])
            texts.append(bytes(codes[position + 1:position + 1 + length].astype(np.uint8)).decode("utf-8",
                                                                                                 "surrogateescape"))
            position += 1 + length
        skipped.append(Skip(index, *texts))
    return skipped


class ResultChannel:
    """Moves each task's outputs to rank 0, which writes them.

    Parameters
    ----------
    comm : MPI.Comm
        The ranks of the run.
    writer : ResultWriter or None
        The writer on rank 0; ``None`` elsewhere.
    """

    def __init__(self, comm: MPI.Comm, writer: ResultWriter | None):
        self.comm = comm
        self.writer = writer
        self.written = 0
        self._pending: list[tuple[MPI.Request, np.ndarray]] = []
        self._status = MPI.Status()

    def deliver(self, task: int, start: int, stop: int, outputs: np.ndarray, started: float, ended: float,
                skipped: Sequence[Skip] = ()) -> None:
        """Write (rank 0) or send (other ranks) one task's outputs and the images it could not read."""
        if self.writer is not None:
            self.writer.write_task(task, start, stop, outputs, self.comm.rank, started, ended, skipped)
            self.written += 1
            return
        records = encode_skips(skipped)
        message = np.concatenate([[task, start, stop, started, ended, len(records)], records,
                                  encode_outputs(outputs, start)])
        self._pending.append((self.comm.Isend(message, dest=0, tag=RESULT_TAG), message))
        self._pending = [(r, m) for r, m in self._pending if not r.Test()]

    def poll(self) -> None:
        """Rank 0: receive and write every result that has arrived."""
        if self.writer is None:
            return
        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=RESULT_TAG, status=self._status):
            source, count = self._status.Get_source(), self._status.Get_count(MPI.DOUBLE)
            message = np.empty(count, np.float64)
            self.comm.Recv(message, source=source, tag=RESULT_TAG)
            task, start, stop, records = (int(v) for v in message[[0, 1, 2, 5]])
            skipped = decode_skips(message[_HEADER:_HEADER + records])
            self.writer.write_task(task, start, stop, self.writer.decode(message[_HEADER + records:], start), source,
                                   float(message[3]), float(message[4]), skipped)
            self.written += 1

    def drain(self, expected: int) -> None:
        """Rank 0: keep receiving until ``expected`` tasks are written in all."""
        while self.writer is not None and self.written < expected:
            self.poll()
            time.sleep(0.001)

    def close(self) -> None:
        """Other ranks: wait until rank 0 has received everything sent."""
        MPI.Request.Waitall([request for request, _ in self._pending])
        self._pending = []


class InOrderTasks:
    """The pending tasks in order, for modes in which all ranks work on every task together."""

    def __init__(self, tasks: Sequence[int]):
        self._tasks = list(tasks)
        self._next = 0
        self.items_done = 0

    def next_task(self, on_idle: Callable[[], None] | None = None) -> int | None:
        """The next task, or ``None`` at the end."""
        if self._next >= len(self._tasks):
            return None
        self._next += 1
        return self._tasks[self._next - 1]

    def task_done(self, items: int = 1) -> int:
        """Count one finished task; returns the items finished so far."""
        self.items_done += items
        return self.items_done


def _agreement(comm: MPI.Comm) -> Callable[[list[Skip]], list[Skip]]:
    """Every rank's unreadable images of a task, on every rank (one allgather per task)."""

    def agree(failed: list[Skip]) -> list[Skip]:
        union = {skip.index: skip for rank_failed in comm.allgather(failed) for skip in rank_failed}
        return [union[index] for index in sorted(union)]

    return agree


def _dealing(comm: MPI.Comm) -> Callable[[int, Callable[[int, int], np.ndarray]], np.ndarray | None]:
    """Deal a task's independent parts to the ranks that run the task together, gathered on rank 0.

    ``deal(count, compute)``: rank ``r`` computes ``compute(first, last)`` for its contiguous run of the parts
    ``0 .. count - 1`` (:func:`~dcnn.decomposition.geometry.split_extent`: sizes differing by at most one),
    returning an array of rows; rank 0 gets every rank's rows concatenated in rank order, so in the parts'
    order; the other ranks get ``None``. One gather per task.
    """

    def deal(count: int, compute: Callable[[int, int], np.ndarray]) -> np.ndarray | None:
        first, last = split_extent(count, comm.size)[comm.rank]
        rows = comm.gather(compute(first, last), root=0)
        return np.concatenate(rows) if comm.rank == 0 else None

    return deal


#: Environment variable that makes one rank fail on purpose: ``RANK:TASK`` raises ``RuntimeError`` on rank RANK
#: when it starts task TASK (for testing that a failure mid-run ends the whole job; see docs/reliability.md).
FAULT_VARIABLE = "DCNN_INJECT_FAULT"


def _injected_fault(rank: int) -> int | None:
    """The task at which this rank must fail (``None``: no fault injected)."""
    spec = os.environ.get(FAULT_VARIABLE)
    if not spec:
        return None
    try:
        fault_rank, task = (int(part) for part in spec.split(":"))
    except ValueError:
        raise InputError(f"{FAULT_VARIABLE} takes RANK:TASK, got {spec!r}") from None
    return task if fault_rank == rank else None


def run_tasks(comm: MPI.Comm, mode: str, split: TaskSplit, pending: np.ndarray, images: ImageSet, workload,
              engine_for, writer: ResultWriter | None, progress: Progress, already_done: int, clock: float,
              steal: bool = True, capacities: Sequence[float] | None = None,
              throttle: dict[int, float] | None = None, seed: int = 0, skip: Container[int] = frozenset(),
              tolerate: bool = False) -> dict[str, np.ndarray]:
    """Run the pending tasks; rank 0 writes every output. Returns this rank's statistics.

    Parameters
    ----------
    mode : str
        ``"batch"`` takes tasks from the work-stealing queue; other modes go in order on every rank.
    workload : dcnn.exec.workloads.Classification, Detection or Recognition
        What a task computes from its images. In the modes where all ranks run every task together, it may
        deal the task's independent parts (a recognition's faces) to the ranks; rank 0 delivers the task.
    engine_for : callable
        ``engine_for(shape)`` gives the runnable network for a per-image input shape.
    clock : float
        ``time.time()`` at the start of the run, shared by all ranks, for task start and end times.
    throttle : dict, optional
        ``{rank: factor}``: after each task, that rank sleeps ``factor - 1`` times the task's duration (an
        emulation knob for heterogeneous clusters).
    skip : container of int
        Images not to compute (the header scan found them unusable).
    tolerate : bool
        Skip and record an image that cannot be read mid-run instead of stopping (``--skip-unreadable``). In
        the modes where every rank reads every image the ranks agree on what they skip.
    """
    channel = ResultChannel(comm, writer)
    factor = (throttle or {}).get(comm.rank, 1.0)
    fault = _injected_fault(comm.rank)
    busy, ran = 0.0, 0
    scheduler = (StealQueue(comm, split.num_tasks, capacities, steal, tasks=pending, seed=seed)
                 if mode == "batch" else InOrderTasks(pending))

    def compute(task: int) -> tuple[int, np.ndarray, list[Skip], float, float]:
        """Run one task: its outputs, unreadable images, start and end times (makes no MPI call in batch mode)."""
        start, stop = split.bounds(task)
        started = time.time() - clock
        if task == fault:
            raise RuntimeError(f"fault injected by {FAULT_VARIABLE} on rank {comm.rank} at task {task}")
        agree = _agreement(comm) if tolerate and mode != "batch" else None
        deal = _dealing(comm) if mode != "batch" else None
        outputs, failed = workload.run(images, start, stop, engine_for, skip, tolerate, agree, deal)
        if factor > 1:
            time.sleep((factor - 1) * (time.time() - clock - started))
        return task, outputs, failed, started, time.time() - clock

    def finish(task: int, outputs: np.ndarray, failed: list[Skip], started: float, ended: float) -> None:
        """Deliver a computed task and count it done."""
        nonlocal busy, ran
        start, stop = split.bounds(task)
        busy += ended - started
        ran += 1
        if mode == "batch" or comm.rank == 0:
            channel.deliver(task, start, stop, outputs, started, ended, failed)
        done = scheduler.task_done(stop - start)
        channel.poll()
        if comm.rank == 0:
            progress.update(already_done + done)

    # No try/finally around the loop: closing the queue is collective, and a rank that failed must not enter
    # it; the command line aborts the job instead (dcnn.cli.common). A job of one rank has no one to wait for: it
    # frees its window on the way out, or MPI's finalize warns of it after the error's one line.
    at_once = concurrent_tasks(mode, get_num_threads(), len(pending), comm.size)
    try:
        if at_once > 1:
            _run_on_task_threads(scheduler, compute, finish, channel.poll)
        else:
            while (task := scheduler.next_task(on_idle=channel.poll)) is not None:
                finish(*compute(task))
    except BaseException:
        if comm.size == 1 and isinstance(scheduler, StealQueue):
            scheduler.close()
        raise
    channel.drain(len(pending))
    if comm.rank == 0:  # the last task may have ended on another rank: the run's end is reported all the same
        progress.update(already_done + sum(stop - start for start, stop in map(split.bounds, pending)))
    channel.close()
    stats = np.zeros(len(FIELDS))
    stats[FIELDS.index("tasks_run")] = ran  # the tasks this rank ran, in every mode (a batch queue counts its own)
    if isinstance(scheduler, StealQueue):
        stats = scheduler.stats.as_array()
        scheduler.close()
    # With task threads, their mean: a rank's busy time stays within its run time (its idle time is the rest).
    return {"steal": stats, "busy_seconds": np.array(busy / at_once)}


def _run_on_task_threads(scheduler: StealQueue, compute: Callable[[int], tuple], finish: Callable[..., None],
                         poll: Callable[[], None]) -> None:
    """Batch mode at ``T > 1`` kernel threads: keep ``T`` tasks running, one per task thread.

    The calling (main) thread takes a task from the queue whenever a task thread is free, and delivers each
    task when it is done (``finish``); while the queue has nothing for it (it steals, or waits for the last
    tasks of the run), it keeps delivering the tasks that finish, so the run's count of finished tasks, which
    ends that wait, includes them. The first failure of a task ends the loop: no task is taken after it, the
    tasks still running finish and are delivered (a resume does not compute them again), and its exception
    propagates. An interruption (a ``BaseException`` such as the
    command line's for SIGTERM) propagates at once.
    """
    running: set[Future] = set()

    def deliver(timeout: float) -> None:
        finished, _ = wait(running, timeout=timeout, return_when=FIRST_COMPLETED)
        for future in finished:
            running.discard(future)
            finish(*future.result())
        poll()

    pool = task_threads()
    try:
        slots, more = get_num_threads(), True
        while more or running:
            if more and len(running) < slots:
                task = scheduler.next_task(on_idle=lambda: deliver(0))
                if task is None:
                    more = False
                else:
                    running.add(pool.submit(compute, task))
            else:
                deliver(POLL_SECONDS)
    except Exception:
        pool.shutdown(wait=True)  # a failed task: the others finish first, and are kept (a resume skips them)
        with contextlib.suppress(Exception):  # the first failure is the one to report
            for future in running:
                if future.exception() is None:
                    finish(*future.result())
        raise
    except BaseException:  # interrupted (SIGINT, SIGTERM): the file is closed without waiting for the running
        cancel_tasks()     # tasks, which stop at their next layer (the process's exit waits for their threads)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
