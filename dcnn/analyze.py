"""Tables and figures from result files: ``python -m dcnn.analyze`` (see :mod:`dcnn.cli.analyze`)."""

import sys

from dcnn.cli.analyze import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
