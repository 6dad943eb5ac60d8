"""Simulate work stealing on a modelled cluster: ``python -m dcnn.simulate`` (see :mod:`dcnn.cli.simulate`)."""

import sys

from dcnn.cli.simulate import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
