"""Names shared by the writers and the readers of result files (no MPI, no HDF5): the columns of per-rank tables.

``/stats/steal`` holds one row per rank and one column per name of :data:`STEAL_FIELDS` (the file repeats them
in ``/stats/steal_fields``); readers pick columns by name with :func:`column`, never by position.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STEAL_FIELDS", "column"]

#: The work-stealing counters of one rank (:class:`dcnn.parallel.steal.StealStats`), in column order.
STEAL_FIELDS = ("tasks_run", "steals_attempted", "steals_succeeded", "tasks_stolen", "idle_seconds", "queue_seconds")


def column(table: np.ndarray, name: str, fields: tuple[str, ...] = STEAL_FIELDS) -> np.ndarray:
    """The column ``name`` of a ``(ranks, len(fields))`` table, one value per rank.

    Raises
    ------
    KeyError
        For a name not in ``fields``.
    """
    if name not in fields:
        raise KeyError(f"no column {name!r}; the columns are {', '.join(fields)}")
    return table[:, fields.index(name)]
