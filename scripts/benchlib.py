"""Helpers shared by the benchmarks: the VGG convolution stack, launching workers under mpiexec, timing one call,
the face benchmarks' images and detector, the machine a benchmark ran on, and the report each writes
(``--output``, an existing file refused unless ``--force``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dcnn.cli.common import EXIT_USAGE, add_force_argument, output_path
from dcnn.errors import InputError, one_line
from dcnn.network.graph import Network
from dcnn.network.zoo import get_model

#: Benchmark clocks: the wall clock, or the process's CPU time (on a machine shared with other jobs, the figure
#: they do not distort: preemption costs no CPU time; at one thread it equals a quiet machine's wall time).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def conv_stack(name: str = "vgg16") -> Network:
    """The network's layers up to (excluding) its adaptive pool: the fully convolutional part."""
    network = get_model(name)
    layers = tuple((n, layer) for n, layer in network.layers if n.startswith("features"))
    return Network(f"{name}-features", layers, network.input_shape, network.preprocessing)


def mpi_launcher(ranks: int) -> list[str]:
    """``[mpiexec, -n, ranks]``: the launcher next to this Python, else the one on PATH."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    return [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks)]


def add_report_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """``--output`` (the report, ``default`` when not given) and ``--force`` of a benchmark or check script.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The script's parser.
    default : str
        The report's default path: the committed ``results/*`` file, refused unless ``--force``.
    """
    parser.add_argument("--output", default=default,
                        help=f"the report to write (default {default}); an existing file is refused unless --force")
    add_force_argument(parser, "the --output report")


def report_output(args: argparse.Namespace) -> Path:
    """The ``--output`` report of a script, checked before the benchmark runs (:func:`dcnn.cli.common.output_path`):
    an existing file is refused unless ``--force``, in one line on stderr, exit 2."""
    try:
        return output_path(args.output, "--output", force=args.force, kind="text")
    except InputError as error:
        print(one_line(f"dcnn: error: {error}"), file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def launch(script: str, ranks: int, *worker_args: str) -> list[dict]:
    """Run ``script --worker FOLDER ARGS`` under mpiexec with one thread per rank; each rank's report in order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run([*mpi_launcher(ranks), sys.executable, script, "--worker", folder,
                               *worker_args], capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(f"worker failed (np={ranks}):\n{done.stdout}\n{done.stderr}")
        return [json.loads((Path(folder) / f"rank{rank}.json").read_text()) for rank in range(ranks)]


def report_rank(folder: str, rank: int, values: dict) -> None:
    """A worker's report: one JSON file per rank."""
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(values))


def timed_calls(engine, x, comm, repeats: int, clock=time.perf_counter) -> list[float]:
    """Seconds of ``repeats`` collective calls ``engine(x)``, each between two barriers: wall seconds up to the
    second barrier, or with ``clock=time.process_time`` this process's CPU seconds in the call itself (on a loaded
    machine, what the call would take on a core of its own; MPI waits spin, so they count)."""
    times = []
    for _ in range(repeats):
        comm.Barrier()
        start = clock()
        engine(x)
        if clock is time.perf_counter:
            comm.Barrier()
        times.append(clock() - start)
    return times


def median_seconds(function, repeats: int, clock=time.perf_counter) -> float:
    """Median time on ``clock`` (one of :data:`CLOCKS`) of ``repeats`` calls of ``function()`` after one warm-up
    call."""
    function()
    samples = []
    for _ in range(repeats):
        start = clock()
        function()
        samples.append(clock() - start)
    return statistics.median(samples)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (runnable processes; compare with the core count)."""
    return [round(value, 2) for value in os.getloadavg()]


def timed(function, *args):
    """Call ``function(*args)`` once: ``(value, CPU seconds of this process, wall seconds)``.

    On a shared machine the CPU time is what other jobs do not distort (per-core throughput); the wall time is what
    a lone user would see.
    """
    start, start_cpu = time.perf_counter(), time.process_time()
    value = function(*args)
    return value, time.process_time() - start_cpu, time.perf_counter() - start


def face_bench(path: str, upsample: int = 1) -> tuple:
    """The face benchmarks' setting: the images of an HDF5 set (``images``, N x H x W x 3 uint8), the installed
    :class:`~dcnn.faces.detect.FaceDetector` at ``upsample`` and its compiled network (a
    :class:`~dcnn.exec.forward.Forward`), the kernels at one thread, and glibc's heap set as the command line sets
    it (:func:`dcnn.kernels.memory.steady_heap`). The MPI benchmarks do not load the detector."""
    import h5py

    from dcnn.exec.forward import Forward
    from dcnn.faces.detect import FaceDetector
    from dcnn.kernels import threads
    from dcnn.kernels.memory import steady_heap

    steady_heap()

    with h5py.File(path, "r") as handle:
        images = handle["images"][()]
    threads.set_num_threads(1)
    detector = FaceDetector.load(upsample=upsample)
    return images, detector, Forward(detector.network, detector.weights)


def machine_info() -> dict:
    """What a kernel benchmark ran on: CPU model, cache sizes, and each BLAS library with its kernel.

    dcnn's convolutions call SciPy's BLAS (``dcnn.kernels.blas``); numpy's is listed too because the FC layers use it.
    """
    from threadpoolctl import threadpool_info

    from dcnn.kernels.cache import cache_bytes, reported_bytes

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    blas = [{"library": Path(info["filepath"]).name, "api": info["internal_api"], "version": info["version"],
             "kernel": info.get("architecture")} for info in threadpool_info() if info["user_api"] == "blas"]
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cache_bytes": {f"L{level}": cache_bytes(level) for level in (1, 2, 3)},
            "reported_cache_bytes": {f"L{level}": reported_bytes(level) for level in (1, 2, 3)}, "blas": blas}


def describe_machine(info: dict) -> str:
    """One line of :func:`machine_info` for a benchmark's text output."""
    reported = info.get("reported_cache_bytes", info["cache_bytes"])
    caches = ", ".join(f"{level} {reported[level] >> 10} KiB"
                       + (f" ({size >> 10} KiB counted)" if size != reported[level] else "")
                       for level, size in info["cache_bytes"].items())
    blas = "; ".join(f"{b['library']} {b['api']} {b['version']} {b['kernel']}" for b in info["blas"])
    return f"CPU: {info['cpu']} ({info['cores']} cores; {caches}); BLAS: {blas}"
