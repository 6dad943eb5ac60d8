"""The kernel thread policy."""

import threading

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


def test_default_threads_respects_omp(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert threads.default_num_threads() >= 1
