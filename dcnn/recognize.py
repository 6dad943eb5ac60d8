"""Face recognition over images across MPI ranks: ``python -m dcnn.recognize`` (see :mod:`dcnn.cli.recognize`)."""

import sys

from dcnn.cli.recognize import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
