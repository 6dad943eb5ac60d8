"""The MPI layer, the only subpackage that imports mpi4py: communicators, work stealing, the strip pool,
the spatial and fused engines and the batch task loop."""

import mpi4py

#: The thread level dcnn asks MPI for: the kernels' worker threads and batch mode's task threads
#: (:mod:`dcnn.kernels.threads`) never call MPI, only the main thread does, so "funneled" suffices and spares MPI
#: the locking of "multiple" (mpi4py's default).
#: Set before the first ``from mpi4py import MPI``; under ``python -m mpi4py`` MPI is already initialised, and
#: the level it got is what the result file records (``mpi_thread_level``).
THREAD_LEVEL = "funneled"
mpi4py.rc.thread_level = THREAD_LEVEL
