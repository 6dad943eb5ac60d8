"""Run CNN inference on images across MPI ranks: ``python -m dcnn.infer`` (see :mod:`dcnn.cli.infer`)."""

import sys

from dcnn.cli.infer import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
