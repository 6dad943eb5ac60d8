"""The initial split of a task queue over ranks (pure, no MPI): contiguous intervals in proportion to capacity.

Work stealing (:mod:`dcnn.parallel.steal`) starts from these intervals; the plots and the simulator
(:mod:`dcnn.analysis`) replay them without MPI.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["initial_intervals"]


def initial_intervals(num_tasks: int, capacities: Sequence[float]) -> list[tuple[int, int]]:
    """Contiguous intervals covering ``range(num_tasks)``, sized in proportion to ``capacities``.

    >>> initial_intervals(10, [1, 1, 2])
    [(0, 2), (2, 5), (5, 10)]

    Raises
    ------
    ValueError
        If a capacity is negative or they are all zero.
    """
    weights = np.asarray(capacities, dtype=float)
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"capacities must be non-negative and not all zero, got {list(capacities)}")
    bounds = np.rint(np.concatenate([[0], np.cumsum(weights)]) / weights.sum() * num_tasks).astype(int)
    bounds[-1] = num_tasks
    return [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(weights))]
