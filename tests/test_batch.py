"""Task splitting and the batch-mode knobs (no MPI)."""

import numpy as np
import pytest

from dcnn.errors import InputError
from dcnn.parallel.batch import TaskSplit, parse_capacities, parse_throttle


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
