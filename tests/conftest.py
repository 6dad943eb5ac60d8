"""Shared fixtures. MPI tests are marked ``mpi`` and run only under ``mpirun ... pytest --with-mpi``."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def rng():
    """A seeded generator, so every failure reproduces."""
    return np.random.default_rng(12345)


def random_array(rng, *shape):
    """float32 standard normal values of ``shape``."""
    return rng.standard_normal(shape).astype(np.float32)


def oracle(module: str):
    """Import a test oracle (``torch``, ``dlib``): skipped where it is not installed, but never in CI.

    The ``test`` extra installs both, and CI (``CI`` set in the environment) must run every comparison with
    them: there a missing oracle is an import error, not a skip.
    """
    import importlib
    import os

    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


def mpi_command(ranks: int) -> list[str]:
    """The launcher prefix for ``ranks`` processes: the MPI next to this Python first, then PATH.

    Open MPI needs ``--oversubscribe`` on small machines (and its root guard lifted, done by the caller's
    environment); MPICH's hydra oversubscribes as it is.
    """
    import os
    import shutil
    import subprocess

    here = Path(sys.executable).parent
    for name in ("mpiexec", "mpirun"):
        candidate = here / name
        launcher = str(candidate) if candidate.exists() else shutil.which(name)
        if launcher:
            break
    else:
        pytest.skip("no MPI launcher (mpiexec/mpirun) found")
    version = subprocess.run([launcher, "--version"], capture_output=True, text=True).stdout
    extra = ["--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else []
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return [launcher, "-n", str(ranks), *extra]


def write_digits(path: Path, count: int, seed: int, side: int = 32) -> Path:
    """An HDF5 image set at ``path``: ``images``, ``count`` random grey ``side x side`` images (uint8, NHWC)."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle["images"] = np.random.default_rng(seed).integers(0, 256, (count, side, side, 1), dtype=np.uint8)
    return path


_WEIGHTS: dict = {}


def sharded_weights(network, seed: int, comm, keep: int = 1) -> tuple[dict, dict | None]:
    """``(shard, full)``: the seeded weights of ``network`` as this rank of ``comm`` holds them (fully connected
    layers only its rows, :func:`~dcnn.decomposition.spatial.fc_shard_rows`) and, on rank 0, all of them,
    assembled from every rank's rows (so the large layers are drawn once, in parallel). Collective.

    The last ``keep`` networks' are kept, so consecutive cases of one model draw them once: VGG's classifier
    alone is 120 M values, seconds to draw.
    """
    from dcnn.decomposition.spatial import fc_shard_rows
    from dcnn.network.weights import init_weights

    key = (network.name, len(network), seed, comm.size)
    if key not in _WEIGHTS:
        rows = fc_shard_rows(network, comm.size, comm.rank)
        shard = init_weights(network, seed, rows=rows)
        gathered = comm.gather({name: shard[name] for name in rows}, root=0)
        full = None
        if comm.rank == 0:
            full = {name: np.concatenate([part[name] for part in gathered]) if name in rows else value
                    for name, value in shard.items()}
        while len(_WEIGHTS) >= keep:
            _WEIGHTS.pop(next(iter(_WEIGHTS)))
        _WEIGHTS[key] = (shard, full)
    return _WEIGHTS[key]


def rank_pids(marker: str) -> list[int]:
    """PIDs of the Python ``dcnn.infer`` rank processes whose command line contains ``marker`` (not mpiexec)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(marker.encode() in part for part in cmdline) and b"dcnn.infer" in cmdline and \
                    not any(b"mpiexec" in part for part in cmdline[:1]):
                pids.append(int(entry.name))
    return pids


def launcher_rank_of(pid: int) -> int:
    """The rank an MPI launcher gave process ``pid``, from its environment (as
    :func:`dcnn.cli.common.launcher_rank` reads a process's own); 0 without one."""
    from dcnn.cli.common import RANK_VARIABLES

    environment = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                       if b"=" in item)
    for name in RANK_VARIABLES:
        if environment.get(name.encode(), b"").isdigit():
            return int(environment[name.encode()])
    return 0


@pytest.fixture(autouse=True)
def mpi_fence(request):
    """Barrier before and after every MPI test, so one test's messages never meet another's."""
    if request.node.get_closest_marker("mpi") is None:
        yield
        return
    from mpi4py import MPI

    MPI.COMM_WORLD.Barrier()
    yield
    MPI.COMM_WORLD.Barrier()
