"""Columns of per-rank result tables are picked by name."""

import numpy as np
import pytest

from dcnn.io.schema import STEAL_FIELDS, column


def test_columns_are_picked_by_name():
    table = np.arange(2 * len(STEAL_FIELDS)).reshape(2, len(STEAL_FIELDS))
    assert column(table, "steals_succeeded").tolist() == [2, 2 + len(STEAL_FIELDS)]
    assert column(table, "b", ("a", "b")).tolist() == [1, 1 + len(STEAL_FIELDS)]


def test_an_unknown_column_names_the_known_ones():
    with pytest.raises(KeyError, match="no column 'steals'; the columns are tasks_run, steals_attempted"):
        column(np.zeros((1, len(STEAL_FIELDS))), "steals")
