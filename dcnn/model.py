"""Print a model's layer table: ``python -m dcnn.model`` (see :mod:`dcnn.cli.model`)."""

import sys

from dcnn.cli.model import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
