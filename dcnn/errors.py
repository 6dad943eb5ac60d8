"""The exception types dcnn raises for problems a user can fix.

Every error that reaches the command line as a one-line message derives from :class:`DcnnError`. Anything
else is a bug and is reported with a traceback.
"""

__all__ = ["DcnnError", "InputError", "PlanError", "ShapeError", "WeightsError"]


class DcnnError(Exception):
    """Base class of all errors caused by user input or configuration."""


class InputError(DcnnError):
    """A missing, unreadable or malformed input file, dataset or argument."""


class ShapeError(DcnnError):
    """A tensor or image whose shape the network cannot accept."""


class WeightsError(DcnnError):
    """A weights file that is missing keys, has extra keys, or holds tensors of the wrong shape or dtype."""


class PlanError(DcnnError):
    """A run configuration that cannot be satisfied (memory budget, grid, rank count)."""
