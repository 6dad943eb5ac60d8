"""Large output arrays on memory that is already paged in.

glibc serves every allocation above its mmap threshold (at most 32 MiB on 64-bit Linux) with fresh pages from
the kernel, and the first touch of each 4 KiB page is a fault. On the project's virtual machines that costs
about 1 GB/s: VGG-16's first convolution writes a 51 MB output at batch 4, and paging it in took 40-90 ms, more
than half the layer. Smaller arrays do not pay it, because glibc reuses their freed heap memory, so without
this a larger batch is slower per image than batch 1.

:func:`empty_float32` hands out such large arrays on anonymous ``mmap`` buffers and takes each buffer back when
its array (and every view of it) is gone. A buffer is reused for a later request of the same size or up to 25 %
smaller; at most :data:`POOL_BUFFERS` idle buffers are kept per thread, so the pool holds at most that many
outputs beyond what each thread holds itself. Per thread, because batch mode's task threads each run a whole
network at once (:mod:`dcnn.parallel.batch`): with one shared pool of three, two task threads at the face
detector's batch 16 evicted each other's buffers and paged in fresh ones every batch (1 x 2 threads on 480 faces:
120-630k page faults against 130k for two ranks). A thread's idle buffers are unmapped when it ends.

Below the pool, :func:`steady_heap` keeps glibc from returning freed heap memory to the kernel between batches
and from serving mid-sized arrays with fresh pages, whose faults its own heuristics otherwise bring and take away
as the sizes a network allocates change.
"""

from __future__ import annotations

import ctypes
import math
import mmap
import threading
import weakref

import numpy as np

__all__ = ["HEAP_TRIM_BYTES", "POOL_BUFFERS", "POOL_MIN_BYTES", "empty_float32", "steady_heap"]

#: Arrays of at least this size come from the pool: glibc's largest mmap threshold on 64-bit Linux.
POOL_MIN_BYTES = 32 << 20
#: Idle buffers kept: the input and output of one layer, which is what a network run alternates between, and
#: the network's input (the face detector's pyramid, 52 MB at batch 16: with two, each batch paged in a fresh
#: 70 MB output for its first layer, about 3 ms per image).
POOL_BUFFERS = 3

#: Freed memory at the top of glibc's heap that :func:`steady_heap` lets it keep rather than trim.
HEAP_TRIM_BYTES = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # mallopt parameters (glibc's malloc.h)

_local = threading.local()


def _idle() -> list[mmap.mmap]:
    """The calling thread's idle buffers, oldest first."""
    idle = getattr(_local, "idle", None)
    if idle is None:
        idle = _local.idle = []
    return idle


def _take(nbytes: int) -> mmap.mmap:
    """An idle buffer of the calling thread of ``nbytes`` to ``nbytes / 0.75`` bytes (the smallest such), or a
    new one."""
    idle = _idle()
    for buffer in sorted((buffer for buffer in idle if nbytes <= len(buffer) <= nbytes * 4 // 3), key=len):
        try:  # a finalizer run by a garbage collection in between may have evicted it
            idle.remove(buffer)
        except ValueError:
            continue
        return buffer
    return mmap.mmap(-1, nbytes)


def _give_back(buffer: mmap.mmap) -> None:
    """Keep ``buffer`` for reuse by the thread that drops it, dropping that thread's oldest idle one beyond
    :data:`POOL_BUFFERS`."""
    idle = _idle()
    idle.append(buffer)
    del idle[:-POOL_BUFFERS]


def empty_float32(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised, writable, C-contiguous float32 array; a large one on reused, paged-in memory.

    Parameters
    ----------
    shape : tuple of int
        The array's shape.

    Returns
    -------
    numpy.ndarray
        Below :data:`POOL_MIN_BYTES`, a plain ``numpy.empty``. Otherwise a view of a pooled anonymous ``mmap``
        that returns to the pool when the array and all its views have been garbage collected.
    """
    count = math.prod(shape)
    if 4 * count < POOL_MIN_BYTES:
        return np.empty(shape, dtype=np.float32)
    buffer = _take(4 * count)
    array = np.frombuffer(memoryview(buffer)[:4 * count], dtype=np.float32)
    # numpy keeps its own memoryview as the base of the array and of every view of it: when that dies, the
    # memory is free (the memoryview passed in above is already gone by then).
    weakref.finalize(array.base, _give_back, buffer)
    return array.reshape(shape)


def steady_heap() -> bool:
    """Fix glibc's malloc for the process: arrays below :data:`POOL_MIN_BYTES` from the heap, up to
    :data:`HEAP_TRIM_BYTES` of freed heap kept, and one heap for every thread.

    By default glibc moves both thresholds as a program frees memory (up to 32 MiB for mmap), so whether a
    batch's mid-sized arrays (the face detector's pyramid levels, 3-13 MB at batch 16) come from reused heap or
    from fresh, faulting pages depends on the order of earlier frees: a change of one layer's buffer sizes made
    the detector fault 350 pages per image (0.5 ms) more. Fixed, they never fault after the first batch. What is
    kept is memory the run used at its peak, so the peak does not grow. Threads would each get an arena of their
    own, which glibc trims whatever the thresholds: batch mode's task threads share the main heap instead (their
    few, large allocations hardly contend for its lock; the detector at 1 rank x 2 threads on 480 faces: 44k
    page faults against 73-128k, and 0.29 s for each thread's first task against 0.43). Call it before any
    thread starts; the command line does (:func:`dcnn.cli.common.run_main`).

    Returns
    -------
    bool
        Whether the thresholds were set (``False`` where the C library has no glibc ``mallopt``).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.restype, mallopt.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
    return all(mallopt(parameter, value) for parameter, value in (
        (_M_MMAP_THRESHOLD, POOL_MIN_BYTES), (_M_TRIM_THRESHOLD, HEAP_TRIM_BYTES), (_M_ARENA_MAX, 1)))
