"""Glue shared by the command-line entry points: one-line errors, exit codes, no stranded ranks.

Exit codes: 0 success, 2 a problem with the user's input or configuration (reported in one line on rank 0),
1 an unexpected failure (a bug; reported with its traceback). When one rank fails outside a collective
check while others run, the job is aborted with ``MPI.Abort`` so that no rank waits forever.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from .comm import AgreedError, world
from .errors import DcnnError

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "Interrupted", "add_common_arguments", "given_options", "run_main"]

EXIT_USAGE = 2
EXIT_FAILURE = 1
#: Seconds the other ranks give rank 0 to close its result file before a signal ends the job.
CLOSE_GRACE = 2.0


class Interrupted(BaseException):
    """SIGINT or SIGTERM (SLURM's time limit) arrived; the exit code is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.code = 128 + signum


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` and ``--debug``, which every entry point takes."""
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                  args: argparse.Namespace) -> frozenset[str]:
    """The destinations of the options on the command line (``args`` holds defaults for the others).

    Parsing again into a namespace that already has every destination (as ``None``) keeps argparse from
    filling in defaults, so what is not ``None`` afterwards was given.
    """
    probe = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args))))
    return frozenset(key for key, value in vars(probe).items() if value is not None)


def run_main(body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run ``body`` and turn errors into messages and exit codes.

    ``args.given`` holds the options given on the command line (:func:`given_options`).

    ``body`` does its validation inside :func:`dcnn.comm.collective` blocks, so a :class:`AgreedError`
    reaches every rank together; rank 0 prints it. Any other error on one rank aborts the whole job.
    """
    args = parser.parse_args(argv)
    args.given = given_options(parser, argv, args)
    comm = world()
    prefix = "dcnn: error: " if comm.size == 1 else f"dcnn: error (rank {comm.rank}): "
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_interrupted)
    try:
        return body(args)
    except AgreedError as error:
        if args.debug:
            traceback.print_exc()
        if comm.rank == 0:
            print(f"dcnn: error: {error}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except Interrupted as interruption:
        if comm.rank == 0:
            print(f"dcnn: interrupted by {interruption}", file=sys.stderr, flush=True)
        elif comm.size > 1:
            time.sleep(CLOSE_GRACE)  # rank 0 closes the result file first
        code = interruption.code
    except DcnnError as error:
        if args.debug:
            traceback.print_exc()
        print(f"{prefix}{error}", file=sys.stderr, flush=True)
        code = EXIT_USAGE
    except Exception:
        print(f"{prefix}unexpected failure, please report it:", file=sys.stderr)
        traceback.print_exc()
        sys.stderr.flush()
        code = EXIT_FAILURE
    if comm.size > 1:
        comm.Abort(code)
    return code
