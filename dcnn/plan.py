"""Choose a mode, grid and batch for a cluster: ``python -m dcnn.plan`` (see :mod:`dcnn.cli.plan`)."""

import sys

from dcnn.cli.plan import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
