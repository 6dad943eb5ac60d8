"""The pool of large output buffers: reuse only memory nobody holds."""

import gc
import subprocess
import sys

import numpy as np
import pytest

from dcnn.kernels import memory


@pytest.fixture(autouse=True)
def _small_pool(monkeypatch):
    monkeypatch.setattr(memory, "POOL_MIN_BYTES", 4096)
    monkeypatch.setattr(memory, "_idle", [])


def test_small_arrays_are_plain_numpy():
    array = memory.empty_float32((10, 10))
    assert array.dtype == np.float32 and array.flags.c_contiguous and array.flags.writeable
    assert not memory._idle


def test_buffer_returns_only_when_every_view_is_gone():
    array = memory.empty_float32((4, 1024))
    view = array[1:, ::2]
    del array
    gc.collect()
    assert not memory._idle
    del view
    gc.collect()
    assert len(memory._idle) == 1


def test_live_arrays_never_share_memory_and_freed_memory_is_reused():
    first = memory.empty_float32((2, 4096))
    first[...] = 1
    second = memory.empty_float32((2, 4096))
    assert second.flags.writeable and second.shape == (2, 4096)
    assert not np.shares_memory(first, second)
    address = first.__array_interface__["data"][0]
    del first
    gc.collect()
    third = memory.empty_float32((2, 4000))  # within 25 % of the freed size: reused
    assert third.__array_interface__["data"][0] == address
    assert not np.shares_memory(third, second)


def test_pool_keeps_at_most_pool_buffers():
    arrays = [memory.empty_float32((4096,)) for _ in range(memory.POOL_BUFFERS + 2)]
    del arrays
    gc.collect()
    assert len(memory._idle) == memory.POOL_BUFFERS


def test_much_smaller_request_gets_a_new_buffer():
    large = memory.empty_float32((8192,))
    address = large.__array_interface__["data"][0]
    del large
    gc.collect()
    small = memory.empty_float32((2048,))
    assert small.__array_interface__["data"][0] != address
    assert len(memory._idle) == 1


THREAD_ARENA = """
import resource
import numpy as np
from dcnn.kernels import threads

def batch():  # a live set above a thread arena's 64 MiB heap, of arrays below the buffer pool's 32 MiB
    arrays = [np.ones(count << 20, np.float32) for count in (5, 5, 7, 1)]
    del arrays

def faults_of_ten_batches():
    for _ in range(3):
        batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        batch()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

threads.set_num_threads(2)
with threads.task_threads() as pool:
    print(pool.submit(faults_of_ten_batches).result())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_task_thread_reuses_its_freed_heap_instead_of_faulting_it_in_again():
    """Before: glibc unmapped a task thread's arena heaps once their arrays were freed and faulted them in again
    for the next batch (about 10,000 page faults per ten batches of this pattern); task threads now keep the freed
    heap (``keep_freed_heap``)."""
    done = subprocess.run([sys.executable, "-c", THREAD_ARENA], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 1000
