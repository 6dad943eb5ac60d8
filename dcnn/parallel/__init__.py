"""The MPI layer, the only subpackage that imports mpi4py: communicators, work stealing, the strip pool,
the spatial and fused engines and the batch task loop."""

import signal
import threading

import mpi4py

#: The thread level dcnn asks MPI for: the kernels' worker threads and batch mode's task threads
#: (:mod:`dcnn.kernels.threads`) never call MPI, only the main thread does, so "funneled" suffices and spares MPI
#: the locking of "multiple" (mpi4py's default).
#: Set before the first ``from mpi4py import MPI``; under ``python -m mpi4py`` MPI is already initialised, and
#: the level it got is what the result file records (``mpi_thread_level``).
THREAD_LEVEL = "funneled"
mpi4py.rc.thread_level = THREAD_LEVEL


def _initialise_mpi() -> None:
    """Initialise MPI (mpi4py does so on the first ``from mpi4py import MPI``) with SIGINT and SIGTERM at their
    default action, ending the process.

    A rank blocked in ``MPI_Init`` because another rank is already gone (Ctrl-C in a job's first second ends
    the ranks that are still importing) never returns to Python, so Python's handlers never run: it used to
    spin there until a second Ctrl-C made the launcher kill it. The handlers in place are restored afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signal dispositions change only from the main thread: the first import initialises MPI as usual
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in saved:
        signal.signal(signum, signal.SIG_DFL)
    try:
        from mpi4py import MPI  # noqa: F401
    finally:
        for signum, handler in saved.items():
            if handler is not None:  # None: a handler not installed from Python, which cannot be put back
                signal.signal(signum, handler)


_initialise_mpi()
