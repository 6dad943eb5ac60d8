"""Glue shared by the command-line entry points: one-line errors, exit codes, no stranded ranks.

Exit codes: 0 success, 2 a problem with the user's input or configuration (reported in one line on rank 0),
1 an unexpected failure (a bug; reported with its traceback). When one rank fails outside a collective
check while others run, the job is aborted with ``MPI.Abort`` so that no rank waits forever.

This module never imports mpi4py: the parallel command (``dcnn.infer``) passes its communicator to
:func:`run_main`; the serial tools (``dcnn.model``, ``dcnn.plan``, ``dcnn.analyze``, ``dcnn.simulate``) pass
none and run without MPI. Started under a launcher anyway, each rank runs the tool on its own and only the
launcher's rank 0 (:func:`launcher_rank`) prints results and errors.
"""

from __future__ import annotations

import _thread
import argparse
import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from dcnn import __version__
from dcnn.errors import AgreedError, DcnnError, InputError, one_line, out_of_space

__all__ = [
    "EXIT_BROKEN_PIPE", "EXIT_FAILURE", "EXIT_USAGE", "MAX_THREADS", "OUTPUT_KINDS", "Interrupted",
    "add_common_arguments", "add_force_argument", "check_distinct", "check_replaceable", "exit_command",
    "exit_on_interrupt_while_starting", "given_options", "is_kind", "launcher_rank", "output_folder", "output_path",
    "run_main",
]

EXIT_USAGE = 2
#: The most kernel threads a rank may start (``--threads`` of dcnn.infer and dcnn.plan; far beyond any node's
#: cores, more is a slip).
MAX_THREADS = 1024
EXIT_FAILURE = 1
#: The reader of our output went away (``| head``): the shell's code for a process ended by SIGPIPE.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
#: Seconds the other ranks give rank 0 to close its result file before a signal ends the job. Rank 0 ends the job
#: itself (``MPI.Abort``) as soon as it has, so this bounds only a rank 0 that is stuck; a shorter wait aborted a
#: rank 0 that a busy machine left without a core for it, before it printed the resume line. Less than
#: :data:`SIGNAL_GRACE`, after which the signalled ranks' watchdogs end them.
CLOSE_GRACE = 5.0
#: Seconds a failing rank waits between printing its error and ending the job (``MPI.Abort``): MPICH's Hydra, told
#: of the abort, stops forwarding the ranks' output, and dropped the whole error line (stderr empty, exit 2) in about
#: one run in eight of a two-rank job whose rank failed on an unreadable image.
FORWARD_GRACE = 0.5
#: Seconds a process may take to end after SIGINT or SIGTERM before the watchdog ends it (see :func:`_watchdog`).
SIGNAL_GRACE = 10.0
_watching = False
#: Environment variables in which MPI launchers give each process its rank: MPICH's Hydra and Intel MPI (PMI),
#: Open MPI, and PMIx launchers such as ``srun --mpi=pmix``.
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


class Interrupted(BaseException):
    """SIGINT or SIGTERM (SLURM's time limit) arrived; the exit code is 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.code = 128 + signum
        #: What the interruption left, for its message ("nothing was written"); set where the command knows.
        self.note = ""


def exit_on_interrupt_while_starting() -> None:
    """Until :func:`run_main` takes over, end the process at SIGINT or SIGTERM with one line and ``128 + signal``.

    A command spends its first second or so importing numpy, SciPy, h5py and mpi4py; Python's default would
    print a ``KeyboardInterrupt`` traceback from every rank (and ignore SIGTERM's chance to say anything). Nothing
    is written before :func:`run_main` runs the command's body, so there is nothing to close: the launcher's rank
    0 (:func:`launcher_rank`) says so and every rank ends at once. The command modules (``python -m dcnn.infer``
    and the others) call this before they import anything else.
    """

    def stop(signum: int, frame) -> None:
        if launcher_rank() == 0:
            name = signal.Signals(signum).name
            os.write(2, f"dcnn: interrupted by {name} while starting; nothing was written\n".encode())
        os._exit(128 + signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


def exit_command(code: int) -> NoReturn:
    """End a command (``python -m dcnn.X``) with exit status ``code``, ignoring SIGINT and SIGTERM from here on.

    The command's work is over (its result file closed, or the job aborted); what remains is the interpreter's
    teardown and MPI's finalize, which waits for the other ranks: a rank done first waits there while rank 0
    writes the run's final tables. Python restores the default action of a signal it handled before that wait,
    so a Ctrl-C then killed the waiting rank, and MPICH printed its "BAD TERMINATION" banner over a run that had
    finished (rank 0 is still interruptible until it returns, and closes the file as ever).
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(code)


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


#: Seconds after which a lost :class:`Interrupted` is delivered again (see :func:`_redelivering`).
REDELIVERY_DELAY = 0.01


def _redelivering(hook: Callable) -> Callable:
    """``sys.unraisablehook`` that delivers a lost :class:`Interrupted` to the main thread again.

    Python runs a signal's handler wherever the main thread is; inside a weakref callback or a ``__del__`` (which
    the garbage collector runs between any two lines, h5py's object registry at every task) the exception it
    raises cannot propagate: Python prints "Exception ignored" and the program went on as if no signal had come
    (under mpiexec the other ranks then aborted the run before rank 0 printed its resume line). A timer thread
    interrupts the main thread again (``_thread.interrupt_main``) once it is out of the callback, where the
    handler raises into the program; should it land in another such callback, it is delivered again. Other
    exceptions go to ``hook``.
    """

    def unraisable(info) -> None:
        if isinstance(info.exc_value, Interrupted):
            timer = threading.Timer(REDELIVERY_DELAY, _thread.interrupt_main, (info.exc_value.signum,))
            timer.daemon = True
            timer.start()
        else:
            hook(info)

    unraisable.redelivers = True
    return unraisable


def _serve_for(comm, seconds: float) -> None:
    """Wait ``seconds`` while answering MPI: rank 0 may be inside a call that needs this rank's progress (a lock
    of this rank's steal-queue window, a message), and handles its own signal only when that call returns; a
    plain sleep here would keep it there until this rank aborts the job, before it closed its file or said how
    to resume."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        comm.Iprobe()
        time.sleep(0.01)


def _watchdog() -> None:
    """Make sure SIGINT and SIGTERM end this process within :data:`SIGNAL_GRACE` seconds (once per process).

    Python runs signal handlers only between bytecodes, so a process blocked in a library call (an HDF5 open,
    an MPI wait, a file lock) ignores them. The C-level handler still writes the signal number to the wakeup fd;
    a thread waiting on it gives the normal path (close the result file, print the resume line) the grace
    period, then writes one line and ends the process with ``128 + signal`` (under mpiexec the launcher then
    ends the other ranks).
    """
    global _watching
    if _watching or threading.current_thread() is not threading.main_thread():
        return
    _watching = True
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def watch() -> None:
        while (signum := os.read(read_end, 1)[0]) not in (signal.SIGINT, signal.SIGTERM):
            pass  # a signal another library handles
        time.sleep(SIGNAL_GRACE)
        os.write(2, f"dcnn: still running {SIGNAL_GRACE:g} s after {signal.Signals(signum).name} (blocked in a "
                    f"library call); ending it\n".encode())
        os._exit(128 + signum)

    threading.Thread(target=watch, name="dcnn-signal-watchdog", daemon=True).start()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quiet``, ``--debug`` and ``--version``, which every entry point takes."""
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"dcnn {__version__}")


def add_model_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """The model, given as the positional ``MODEL`` or as ``--model MODEL`` (as ``python -m dcnn.infer`` takes it);
    exactly one of them (checked by :func:`run_main`, into ``args.model``)."""
    parser.add_argument("model", nargs="?", metavar="MODEL", help=help)
    parser.add_argument("--model", dest="model_option", metavar="MODEL", help="the model, as the positional MODEL")


def _resolve_model(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Merge ``--model`` into ``args.model``: a usage error if both or neither is given."""
    option = args.__dict__.pop("model_option")
    if option is not None and args.model is not None:
        parser.error(f"give the model once: as MODEL ({args.model}) or as --model ({option}), not both")
    if option is None and args.model is None:
        parser.error("the model is required: give it as MODEL or as --model MODEL")
    args.model = args.model if option is None else option


def output_folder(path: str | Path, flag: str) -> Path:
    """The folder ``path``, created if missing, for the files a command is about to write into it.

    Raises
    ------
    InputError
        When it cannot be created (a file is in the way, no permission), in one line naming the flag.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{flag} {path}: cannot create the folder ({error.strerror})") from None
    return path


#: The kinds of file an option writes, as :func:`is_kind` tells them, and as its messages name them. ``--force``
#: replaces an existing file only when it is of the kind the option writes (as ``dcnn.infer --force`` replaces
#: only a dcnn result file): a notes file is not replaced by a PNG, a photo not by a CSV.
OUTPUT_KINDS = {"text": "a text file", "png": "a PNG image", "image set": "an image set made by scripts/make_*.py"}
#: Bytes read from the start of an existing file to tell whether it is text (no NUL byte among them).
TEXT_PROBE = 64 << 10
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def add_force_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--force``: replace the existing ``what`` (the files the command writes); without it they are refused.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The command's parser.
    what : str
        The files the command writes, in words (``"the --csv, --table, --draw and --plots files"``).
    """
    parser.add_argument("--force", action="store_true",
                        help=f"replace {what} if it already exists (without --force an existing file is refused "
                             f"before any work; even with it, only a file of the kind written is replaced, never one "
                             f"of the command's own inputs)")


def is_kind(path: str | Path, kind: str) -> bool:
    """Whether the existing file ``path`` is of ``kind`` (a key of :data:`OUTPUT_KINDS`).

    ``text``: no NUL byte in its first :data:`TEXT_PROBE` bytes (a CSV, Markdown, notes; not a photo, an HDF5 or
    PNG file); ``png``: the PNG signature; ``image set``: HDF5 whose ``made_by`` attribute names one of dcnn's
    ``scripts/make_*.py`` (``data/faces.h5``; not a result file, nor a user's own image set). A file that cannot
    be read is of no kind.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(TEXT_PROBE)
    except OSError:
        return False
    if kind == "text":
        return b"\0" not in head
    if kind == "png":
        return head.startswith(PNG_SIGNATURE)
    if kind == "image set":
        import h5py  # only here: the serial tools' parsers start without it

        try:
            with h5py.File(path, "r", locking=False) as handle:
                made_by = handle.attrs.get("made_by", "")
        except (OSError, ValueError):
            return False
        made_by = made_by.decode(errors="replace") if isinstance(made_by, bytes) else str(made_by)
        return made_by.startswith("scripts/make_")
    raise ValueError(f"unknown output kind {kind!r}")


def _same_file(path: Path, other: str | Path) -> bool:
    try:
        return os.path.samefile(path, other)
    except (OSError, ValueError):
        return False


def check_replaceable(path: str | Path, flag: str, *, force: bool = False, kind: str | None = None,
                      inputs: Sequence[str | Path] = ()) -> None:
    """Refuse, before any work, to replace the existing file ``path`` unless asked (``--force``) and safe.

    Parameters
    ----------
    path : path
        The file the option ``flag`` is about to write.
    flag : str
        The option, for the message (``--csv``).
    force : bool
        ``--force`` was given: an existing file of ``kind`` may be replaced.
    kind : str, optional
        The kind of file the option writes (a key of :data:`OUTPUT_KINDS`); with ``force``, a non-empty file of
        another kind is still refused. ``None``: any file.
    inputs : sequence of path
        The command's own input files, never replaced, even with ``force``.

    Raises
    ------
    InputError
        In one line naming the flag and the file, saying how to go on.
    """
    path = Path(path)
    if not path.exists():
        return
    if any(_same_file(path, source) for source in inputs):
        raise InputError(f"{flag} {path}: is an input of this command and is never replaced, even with --force; "
                         f"choose another {flag}")
    if not force:
        raise InputError(f"{flag} {path}: already exists; give --force to replace it, or choose another {flag}")
    if kind is not None and path.stat().st_size and not is_kind(path, kind):
        raise InputError(f"{flag} {path}: exists and is not {OUTPUT_KINDS[kind]} (--force replaces only those); "
                         f"remove it or choose another {flag}")


def output_path(path: str | Path, flag: str, *, force: bool = False, kind: str | None = None,
                inputs: Sequence[str | Path] = ()) -> Path:
    """The file ``path`` with its folder created (:func:`output_folder`), for a file a command is about to write.

    Call it before any work: an existing file is refused unless ``force`` (:func:`check_replaceable`).

    Parameters
    ----------
    path : path
        The file to write.
    flag : str
        The option that names it, for messages (``--csv``).
    force, kind, inputs
        As :func:`check_replaceable`.

    Raises
    ------
    InputError
        When the folder cannot be created, ``path`` is a folder, or it exists and may not be replaced, in one line
        naming the flag.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a folder, not a file name")
    try:
        output_folder(path.parent, flag)
    except InputError:
        raise InputError(f"{flag} {path}: cannot create the folder {path.parent}") from None
    check_replaceable(path, flag, force=force, kind=kind, inputs=inputs)
    return path


def check_distinct(outputs: Sequence[tuple[str, Path]]) -> None:
    """Refuse two options that would write one file (``--csv t.csv --table t.md``, whose CSV is ``t.csv``).

    Parameters
    ----------
    outputs : sequence of (str, Path)
        Each file a command is about to write, with the option that names it.

    Raises
    ------
    InputError
        Naming both options and the file.
    """
    seen: dict[str, str] = {}
    for flag, path in outputs:
        key = os.path.realpath(path)
        if key in seen:
            raise InputError(f"{flag} {path}: {seen[key]} writes the same file; choose another {flag}")
        seen[key] = flag


@contextlib.contextmanager
def _stdout_silenced(silent: bool) -> Iterator[None]:
    """Send standard output nowhere while ``silent`` (``--quiet``; a serial tool's ranks other than 0)."""
    if not silent:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield


@contextlib.contextmanager
def _silenced(silent: bool) -> Iterator[None]:
    """Send standard output and standard error (``argparse``'s messages) nowhere while ``silent``."""
    with _stdout_silenced(silent), open(os.devnull, "w") as devnull, \
            contextlib.redirect_stderr(devnull if silent else sys.stderr):
        yield


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None, rank: int) -> argparse.Namespace:
    """Parse on every rank; only rank 0 prints ``--help``, ``--version`` and usage errors (exit 0 or 2 on all)."""
    with _silenced(rank != 0):
        args = parser.parse_args(argv)
        if "model_option" in args:
            _resolve_model(parser, args)
        return args


def _quietly_closed_pipe() -> int:
    """Our reader closed the pipe: point standard output at /dev/null (so the interpreter's last flush does not
    fail again) and end with the shell's SIGPIPE code, without a traceback (the Python documentation's advice)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                  args: argparse.Namespace) -> frozenset[str]:
    """The destinations of the options on the command line (``args`` holds defaults for the others).

    Parsing again into a namespace that already has every destination (as ``None``) keeps argparse from
    filling in defaults, so what is not ``None`` afterwards was given.
    """
    probe = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(vars(args))))
    return frozenset(key for key, value in vars(probe).items() if value is not None)


def launcher_rank() -> int:
    """This process's rank as an MPI launcher numbered it, read from the environment (0 without a launcher)."""
    for name in RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def run_main(body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
             argv: Sequence[str] | None = None, comm=None) -> int:
    """Parse arguments, run ``body`` and turn errors into messages and exit codes.

    Parameters
    ----------
    body : callable
        The command, given the parsed arguments; returns the exit code.
    parser : argparse.ArgumentParser
        The command's parser.
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).
    comm : mpi4py.MPI.Comm, optional
        The communicator of a parallel command. ``body`` then does its validation inside
        :func:`dcnn.parallel.comm.collective` blocks, so a :class:`~dcnn.errors.AgreedError` reaches every rank
        together; rank 0 prints it. Any other error on one rank aborts the whole job. ``None`` (a serial tool):
        no MPI; errors are printed by the launcher's rank 0 only (:func:`launcher_rank`).

    ``args.given`` holds the options given on the command line (:func:`given_options`).
    """
    rank, size = (comm.rank, comm.size) if comm is not None else (launcher_rank(), 1)
    args = _parse(parser, argv, rank)
    args.given = given_options(parser, argv, args)
    prefix = "dcnn: error: " if size == 1 else f"dcnn: error (rank {rank}): "
    # Before any thread of ours starts (the watchdog's would keep a malloc arena of its own); here, not at the
    # top: the parser and its errors come before numpy's import.
    from dcnn.kernels.memory import steady_heap

    steady_heap()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_interrupted)
    if not getattr(sys.unraisablehook, "redelivers", False):
        sys.unraisablehook = _redelivering(sys.unraisablehook)
    _watchdog()
    try:
        with _stdout_silenced(args.quiet or (comm is None and rank != 0)):
            code = body(args)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except BrokenPipeError:
        return _quietly_closed_pipe()
    except AgreedError as error:
        if args.debug:
            traceback.print_exc()
        if rank == 0:
            print(one_line(f"dcnn: error: {error}"), file=sys.stderr, flush=True)
        return EXIT_USAGE
    except Interrupted as interruption:
        if rank == 0:
            note = f"; {interruption.note}" if interruption.note else ""
            print(one_line(f"dcnn: interrupted by {interruption}{note}"), file=sys.stderr, flush=True)
        elif size > 1:
            _serve_for(comm, CLOSE_GRACE)  # rank 0 closes the result file first
        code = interruption.code
    except DcnnError as error:
        if args.debug:
            traceback.print_exc()
        if comm is not None or rank == 0:
            print(one_line(f"{prefix}{error}"), file=sys.stderr, flush=True)
        code = EXIT_USAGE
    except Exception as error:
        if (reason := out_of_space(error)) is not None:  # the disk filled up: the user's to fix, not a bug
            if args.debug:
                traceback.print_exc()
            print(one_line(f"{prefix}{reason}"), file=sys.stderr, flush=True)
            code = EXIT_USAGE
        else:
            # What failed comes first, on the one line a launcher surely forwards: MPICH's Hydra, ending the job
            # on this rank's MPI_Abort, may drop the traceback lines still in its pipe (seen under load).
            what = next(iter(str(error).splitlines()), "")
            print(one_line(f"{prefix}unexpected failure, please report it: {type(error).__name__}: {what}"),
                  file=sys.stderr, flush=True)
            traceback.print_exc()
            sys.stderr.flush()
            code = EXIT_FAILURE
    if size > 1:
        time.sleep(FORWARD_GRACE)
        comm.Abort(code)
    return code
