"""Task splitting and the batch-mode knobs (no MPI)."""

import numpy as np
import pytest

from dcnn.errors import InputError
from dcnn.io.scan import Skip
from dcnn.parallel.batch import TaskSplit, decode_skips, encode_skips, parse_capacities, parse_throttle


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
