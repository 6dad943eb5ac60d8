"""The initial intervals of the task queue (pure, no MPI)."""

import itertools

import numpy as np
import pytest

from dcnn.decomposition.intervals import initial_intervals


@pytest.mark.parametrize("num_tasks,capacities", [(10, [1, 1, 1]), (7, [1, 0, 2]), (0, [1, 1]), (1000, [0.3, 1.7])])
def test_initial_intervals_cover_in_proportion(num_tasks, capacities):
    intervals = initial_intervals(num_tasks, capacities)
    assert intervals[0][0] == 0 and intervals[-1][1] == num_tasks
    assert all(a[1] == b[0] for a, b in itertools.pairwise(intervals))
    sizes = np.array([b - a for a, b in intervals])
    expected = np.array(capacities) / sum(capacities) * num_tasks
    assert np.all(np.abs(sizes - expected) <= 1)


def test_initial_intervals_reject_bad_capacities():
    with pytest.raises(ValueError):
        initial_intervals(10, [0, 0])
    with pytest.raises(ValueError):
        initial_intervals(10, [1, -1])
