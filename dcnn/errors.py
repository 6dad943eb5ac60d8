"""The exception types dcnn raises for problems a user can fix.

Every error that reaches the command line as a one-line message derives from :class:`DcnnError`. Anything
else is a bug and is reported with a traceback.
"""

import errno
import re

__all__ = [
    "DAMAGED_FILE_ERRORS", "AgreedError", "DcnnError", "InputError", "PlanError", "ShapeError", "WeightsError",
    "one_line", "out_of_space",
]

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


#: The errors a full disk or an exhausted quota raise, and how a message says them.
_NO_SPACE = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded"}


def out_of_space(error: BaseException) -> str | None:
    """What a write that failed for want of space says to the user (``path: no space left on the device``, the
    file named where the error names it), or ``None`` for any other error.

    Python raises :class:`OSError` with ``errno`` ENOSPC or EDQUOT; HDF5 (through h5py) raises ``RuntimeError``
    or ``OSError`` whose text carries ``errno = 28`` (or 122) and ``filename = '...'``.
    """
    text = str(error)
    code = getattr(error, "errno", None)
    if code not in _NO_SPACE:
        found = re.search(r"errno = (\d+)", text)
        code = int(found.group(1)) if found else None
    if code not in _NO_SPACE:
        return None
    named = getattr(error, "filename", None)
    if not named:
        found = re.search(r"filename = '([^']*)'", text)
        named = found.group(1) if found else None
    return f"{named}: {_NO_SPACE[code]}" if named else _NO_SPACE[code]


def one_line(text: str) -> str:
    """``text`` as one line of printable characters: a control character (a newline or an escape sequence in a
    file name) becomes its Python escape (``\\n``, ``\\x1b``), so a message stays the one line the launcher
    forwards and the terminal shows it as written; a byte of a file name that is not UTF-8 (which Python holds as
    a surrogate) becomes ``\\xNN``, as result files store it."""
    return "".join(char if char.isprintable() else
                   f"\\x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF else repr(char)[1:-1]
                   for char in text)
