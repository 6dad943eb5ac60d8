"""The pool of large output buffers: reuse only memory nobody holds."""

import gc
import platform
import subprocess
import sys
import threading

import numpy as np
import pytest

from dcnn.kernels import memory


@pytest.fixture(autouse=True)
def _small_pool(monkeypatch):
    monkeypatch.setattr(memory, "POOL_MIN_BYTES", 4096)
    monkeypatch.setattr(memory, "_local", threading.local())


def test_small_arrays_are_plain_numpy():
    array = memory.empty_float32((10, 10))
    assert array.dtype == np.float32 and array.flags.c_contiguous and array.flags.writeable
    assert not memory._idle()


def test_buffer_returns_only_when_every_view_is_gone():
    array = memory.empty_float32((4, 1024))
    view = array[1:, ::2]
    del array
    gc.collect()
    assert not memory._idle()
    del view
    gc.collect()
    assert len(memory._idle()) == 1


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
    assert len(memory._idle()) == memory.POOL_BUFFERS


def test_much_smaller_request_gets_a_new_buffer():
    large = memory.empty_float32((8192,))
    address = large.__array_interface__["data"][0]
    del large
    gc.collect()
    small = memory.empty_float32((2048,))
    assert small.__array_interface__["data"][0] != address
    assert len(memory._idle()) == 1


def test_each_thread_keeps_its_own_buffers():
    """Two task threads that each free POOL_BUFFERS outputs keep all of them (a shared pool kept three)."""
    kept = {}
    barrier = threading.Barrier(2)

    def run(name):
        arrays = [memory.empty_float32((4096 + 64 * i,)) for i in range(memory.POOL_BUFFERS)]
        addresses = {a.__array_interface__["data"][0] for a in arrays}
        del arrays
        gc.collect()
        barrier.wait()  # both threads have given their buffers back before either takes one
        again = [memory.empty_float32((4096 + 64 * i,)) for i in range(memory.POOL_BUFFERS)]
        kept[name] = addresses == {a.__array_interface__["data"][0] for a in again}

    threads = [threading.Thread(target=run, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert kept == {"a": True, "b": True}


STEADY_HEAP_SCRIPT = """
import resource
import threading
import numpy as np
from dcnn.kernels.memory import steady_heap
assert steady_heap()
def batch():  # mid-sized arrays, as a network's layers allocate them, freed together
    arrays = [np.ones(n, np.float32) for n in (3_000_000, 5_000_000, 2_500_000, 4_000_000)]
    del arrays
def on_a_thread():  # as a task thread runs its tasks
    thread = threading.Thread(target=batch)
    thread.start()
    thread.join()
batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    batch()
    on_a_thread()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_a_steady_heap_pages_in_a_batch_s_arrays_once():
    """After the first batch, arrays below the pool come from heap memory already paged in, also on other threads
    (glibc's own thresholds trimmed and faulted 1,490 pages per batch here)."""
    result = subprocess.run([sys.executable, "-c", STEADY_HEAP_SCRIPT], capture_output=True, text=True, timeout=120,
                            check=True)
    assert int(result.stdout) < 50
