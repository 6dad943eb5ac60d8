"""The kernel thread policy."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from dcnn.kernels import threads


def test_parallel_for_covers_every_item_once():
    seen, lock = [], threading.Lock()

    def body(items):
        with lock:
            seen.extend(items)

    try:
        threads.set_num_threads(3)
        threads.parallel_for(body, list(range(10)))
        assert sorted(seen) == list(range(10))
    finally:
        threads.set_num_threads(1)


def test_parallel_for_propagates_errors():
    def body(items):
        if 3 in items:
            raise RuntimeError("boom")

    try:
        threads.set_num_threads(2)
        with pytest.raises(RuntimeError, match="boom"):
            threads.parallel_for(body, list(range(6)))
    finally:
        threads.set_num_threads(1)


def test_the_calling_thread_runs_a_slice_and_waits_for_the_others():
    """The caller runs the first slice itself (it used to sleep while two pool threads ran both slices), with
    n - 1 pool threads; an error in its slice propagates only after the other slices are done."""
    ran, finished = {}, threading.Event()

    def body(items):
        ran[items[0]] = threading.current_thread()
        if items[0] == 0:
            raise RuntimeError("first slice")
        finished.wait(0.2)
        finished.set()

    try:
        threads.set_num_threads(2)
        with pytest.raises(RuntimeError, match="first slice"):
            threads.parallel_for(body, list(range(4)))
        assert finished.is_set() and ran[0] is threading.current_thread() and ran[2] is not ran[0]
        assert threads._pool._max_workers == 1
    finally:
        threads.set_num_threads(1)


def test_default_threads_respects_omp(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert threads.default_num_threads() >= 1


def test_first_import_sees_every_blas():
    """Regression: set before numpy or dcnn.kernels.blas was imported, the thread count reached no BLAS at all."""
    script = ("from dcnn.kernels import threads\nthreads.set_num_threads(1)\nimport dcnn.kernels.blas\n"
              "from threadpoolctl import threadpool_info\n"
              "blas = [i for i in threadpool_info() if i['user_api'] == 'blas']\n"
              "assert blas and all(i['num_threads'] == 1 for i in blas), blas\n")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def blas(monkeypatch):
    """A stand-in for the BLAS libraries' thread controllers that records each thread count set."""

    class FakeBlas:
        def __init__(self):
            self.calls = []

        def set_num_threads(self, count):
            self.calls.append(count)

    fake = FakeBlas()
    monkeypatch.setattr(threads, "_blas_controllers", lambda: [fake])
    monkeypatch.setattr(threads, "_blas_threads", None)
    return fake


def test_blas_threads_switch_only_when_they_change(blas):
    """BLAS is set to one thread for parallel loops and back to all only for a caller that asks for it."""
    try:
        threads.set_num_threads(2)
        for _ in range(5):
            threads.parallel_for(lambda items: None, list(range(4)))
        threads.use_blas_threads()
        threads.use_blas_threads()
        threads.parallel_for(lambda items: None, list(range(4)))
        assert blas.calls == [2, 1, 2, 1]
    finally:
        threads.set_num_threads(1)


def test_task_threads_run_each_job_at_one_kernel_thread(blas):
    """On a task thread the kernels run serially (a parallel loop is a plain call on that thread) and BLAS stays at
    one thread, set once before the jobs; the calling thread keeps its count."""

    def job(index):
        ran_on = set()
        threads.parallel_for(lambda items: ran_on.add(threading.current_thread()), list(range(8)))
        threads.use_blas_threads()
        assert threads.numeric_threads() == 2  # its sibling task thread runs numpy calls meanwhile
        return threads.get_num_threads(), ran_on == {threading.current_thread()}, threading.current_thread().name

    try:
        threads.set_num_threads(2)
        assert threads.numeric_threads() == 2
        with threads.task_threads() as pool:
            results = list(pool.map(job, range(6)))
        assert all(count == 1 and serial for count, serial, _ in results)
        assert {name.startswith("dcnn-task") for _, _, name in results} == {True}
        assert threads.get_num_threads() == 2 and blas.calls == [2, 1]
    finally:
        threads.set_num_threads(1)


def test_two_task_threads_share_one_compiled_network():
    """Regression: the convolutions' scratch buffers were one per network, so two threads running it at once
    overwrote each other's padded inputs. Each thread now has its own: every result is the serial one."""
    from dcnn.exec.forward import Forward
    from dcnn.network.graph import Network
    from dcnn.network.layers import Conv2d, ReLU
    from dcnn.network.weights import init_weights

    network = Network("tiny", (("c0", Conv2d(3, 16, 5, stride=2, padding=2)), ("r0", ReLU()),
                               ("c1", Conv2d(16, 32, 3, padding=1)), ("c2", Conv2d(32, 16, 3, padding=1))), (3, 64, 64))
    forward = Forward(network, init_weights(network, 1))
    inputs = [np.random.default_rng(seed).standard_normal((2, 3, 64, 64)).astype(np.float32) for seed in range(8)]
    expected = [forward(x) for x in inputs]
    try:
        threads.set_num_threads(2)
        with threads.task_threads() as pool:
            wrong = sum(not np.array_equal(got, want) for _ in range(10)
                        for got, want in zip(pool.map(forward, inputs), expected))
        assert wrong == 0  # with one buffer per network: 6 of 40 wrong in 5 rounds
    finally:
        threads.set_num_threads(1)


def test_cancelled_task_threads_stop_at_their_next_layer():
    """Before: an interrupted one-rank run's task threads finished their whole tasks (the process's exit waited
    for them, past the 10 s watchdog on long tasks). After cancel_tasks, a forward pass on a task thread stops at
    its next layer; the calling thread and a new pool are not affected."""
    from dcnn.exec.forward import Forward
    from dcnn.network.graph import Network
    from dcnn.network.layers import Conv2d, ReLU
    from dcnn.network.weights import init_weights

    network = Network("tiny", (("c0", Conv2d(3, 8, 3, padding=1)), ("r0", ReLU())), (3, 16, 16))
    forward = Forward(network, init_weights(network, 1))
    x = np.zeros((1, 3, 16, 16), np.float32)
    started = threading.Event()

    def job(_):
        started.set()
        deadline = time.monotonic() + 60  # a hang guard only: without the cancellation the job runs this long
        while time.monotonic() < deadline:  # a task of many forward passes
            forward(x)

    try:
        threads.set_num_threads(2)
        with threads.task_threads() as pool:
            future = pool.submit(job, 0)
            started.wait()
            threads.cancel_tasks()
            with pytest.raises(threads.TasksCancelled):
                future.result()
        threads.stop_if_cancelled()  # the calling thread is no task thread: nothing happens
        forward(x)
        with threads.task_threads() as pool:  # a new pool starts uncancelled
            assert pool.submit(forward, x).result().shape == (1, 8, 16, 16)
    finally:
        threads.set_num_threads(1)
