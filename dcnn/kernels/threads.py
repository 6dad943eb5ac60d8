"""Thread policy for the numeric kernels.

A convolution splits its output columns into cache-sized chunks. With ``n`` threads, dcnn runs those chunks
on ``n`` worker threads (BLAS calls through :mod:`ctypes` release the GIL) while every BLAS library is held
at one thread, instead of letting BLAS split each small GEMM: that scales better. Other BLAS calls (the fully
connected layers) use ``n`` BLAS threads: :func:`use_blas_threads` gives them back before such a call.

The BLAS thread count is switched only when it has to change, never back and forth around every parallel
loop: each switch costs OpenBLAS a thread-pool reconfiguration, and switching around each of the hundreds of
loops of one forward pass made two threads slower than one (MMOD on 16 images: 1.37 s against 1.33 s at one
thread; 0.97 s without the switches).

The BLAS libraries are loaded when this module is imported, so the controller always sees them, whatever
the caller imported first.

The MPI layer chooses ``n`` per rank (cores per node divided by ranks per node), so oversubscription never
multiplies threads.

:func:`task_threads` is the other way to use the ``n`` threads: whole, independent pieces of work (batch mode's
tasks) each on a thread of its own, every such thread at one kernel thread (a thread-local setting, see
:func:`get_num_threads`): no parallel loop inside, BLAS at one thread, exactly as ``n`` single-threaded ranks
would run them. Its threads never meet inside a forward pass.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from threadpoolctl import ThreadpoolController

# The BLAS libraries must be loaded before the controller below first scans the process: one created earlier
# would never see them, and BLAS would keep one thread per core inside every worker thread. numpy loads its
# OpenBLAS, ``dcnn.kernels.blas`` SciPy's (the one the convolutions call).
from . import blas  # noqa: F401

__all__ = ["TasksCancelled", "cancel_tasks", "get_num_threads", "numeric_threads", "parallel_for", "set_num_threads",
           "stop_if_cancelled", "task_threads", "use_blas_threads"]

T = TypeVar("T")

_controller: ThreadpoolController | None = None
_num_threads = 1
_blas_threads: int | None = None  # what the BLAS libraries are set to now (None: not set by dcnn yet)
_pool: ThreadPoolExecutor | None = None
_local = threading.local()  # ``single``: this thread is one of task_threads' (its kernels run at one thread)
_cancelled = threading.Event()  # set by cancel_tasks: the task threads' jobs stop at their next check


class TasksCancelled(BaseException):
    """Raised on a task thread by :func:`stop_if_cancelled` once :func:`cancel_tasks` was called. A
    ``BaseException``, like the interruption that causes it, so no ``except Exception`` of a job swallows it."""


def _blas_controllers():
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.select(user_api="blas").lib_controllers


def set_num_threads(threads: int) -> None:
    """Use ``threads`` threads for dcnn's kernels and for BLAS calls outside them."""
    global _num_threads, _pool
    threads = max(1, int(threads))
    if threads != _num_threads and _pool is not None:
        _pool.shutdown()
        _pool = None
    _num_threads = threads
    _set_blas_threads(threads)


def _set_blas_threads(count: int) -> None:
    global _blas_threads
    if count != _blas_threads:
        for library in _blas_controllers():
            library.set_num_threads(count)
        _blas_threads = count


def use_blas_threads() -> None:
    """Let the next BLAS calls outside :func:`parallel_for` (a fully connected layer) use every thread of the
    caller (:func:`get_num_threads`: on a thread of :func:`task_threads`, one: BLAS stays at one thread)."""
    _set_blas_threads(get_num_threads())


def get_num_threads() -> int:
    """The kernel threads of the calling thread: 1 on a thread of :func:`task_threads`, else the count set by
    :func:`set_num_threads` (1 until it is called)."""
    return 1 if getattr(_local, "single", False) else _num_threads


def numeric_threads() -> int:
    """The threads of this process that may run numeric work at once, the caller's included: the count set by
    :func:`set_num_threads`, whether they are kernel threads or :func:`task_threads`. Their numpy calls take turns
    at the interpreter lock, so code that chooses between many short calls and fewer long ones asks this.

    Returns
    -------
    int
        At least 1.
    """
    return _num_threads


def _run_single() -> None:
    _local.single = True


def task_threads() -> ThreadPoolExecutor:
    """A pool of :func:`get_num_threads` threads, each running the jobs submitted to it at one kernel thread.

    On those threads :func:`get_num_threads` is 1 (the calling thread and the kernel pool keep the count of
    :func:`set_num_threads`): their parallel loops are plain calls, and BLAS is set to one thread here, before
    any job runs, and stays so while they run (their :func:`use_blas_threads` asks for one). ``n`` jobs at once
    thus compute what ``n`` single-threaded processes would, bit for bit. The caller shuts the pool down.
    """
    _set_blas_threads(1)
    _cancelled.clear()
    return ThreadPoolExecutor(max_workers=get_num_threads(), thread_name_prefix="dcnn-task", initializer=_run_single)


def cancel_tasks() -> None:
    """Make the jobs running on :func:`task_threads` stop at their next :func:`stop_if_cancelled` (an interrupted
    run: each ends within one layer instead of finishing its task, which the process's exit would wait for)."""
    _cancelled.set()


def stop_if_cancelled() -> None:
    """On a task thread after :func:`cancel_tasks`, raise :class:`TasksCancelled`; anywhere else, nothing.
    Called between the layers of a forward pass (:meth:`dcnn.exec.forward.Forward.run`)."""
    if _cancelled.is_set() and getattr(_local, "single", False):
        raise TasksCancelled


def default_num_threads() -> int:
    """Cores available to this process (``OMP_NUM_THREADS`` wins if set)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parallel_for(body: Callable[[Sequence[T]], None], items: Sequence[T]) -> None:
    """Run ``body`` on contiguous, balanced slices of ``items``, one slice per thread.

    With one thread (or one item) this is a plain call. Otherwise BLAS is made single-threaded (and stays so
    until :func:`use_blas_threads` or :func:`set_num_threads`), so the threads do not oversubscribe the cores,
    and the calling thread runs the first slice itself while ``n - 1`` pool threads run the others: it would
    otherwise sleep until they finish, and every loop would wait for one more thread to wake up (at two threads,
    one hand-off per loop instead of two). Exceptions raised in any slice propagate, after every slice is done.
    """
    global _pool
    workers = min(get_num_threads(), len(items))
    if workers <= 1:
        body(items)
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=_num_threads - 1, thread_name_prefix="dcnn-kernel")
    bounds = [len(items) * w // workers for w in range(workers + 1)]
    _set_blas_threads(1)
    futures = [_pool.submit(body, items[bounds[w]:bounds[w + 1]]) for w in range(1, workers)]
    try:
        body(items[bounds[0]:bounds[1]])
    finally:
        for future in futures:
            future.exception()  # wait: a slice must not outlive the call (its buffers may be reused at once)
    for future in futures:
        future.result()
