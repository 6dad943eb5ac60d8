"""The exception types dcnn raises for problems a user can fix.

Every error that reaches the command line as a one-line message derives from :class:`DcnnError`. Anything
else is a bug and is reported with a traceback.
"""

__all__ = ["DAMAGED_FILE_ERRORS", "AgreedError", "DcnnError", "InputError", "PlanError", "ShapeError", "WeightsError"]

#: What h5py, zipfile, NumPy and Pillow raise for damaged or truncated files (h5py reports corrupt metadata as
#: OSError, KeyError or RuntimeError; NumPy's .npy header parser and Pillow's PNG reader raise SyntaxError);
#: readers turn these into dcnn's own errors.
DAMAGED_FILE_ERRORS = (OSError, KeyError, RuntimeError, ValueError, EOFError, SyntaxError)


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


class AgreedError(DcnnError):
    """An error every rank has agreed on; rank 0 reports it, every rank exits with the same code."""
