"""Helpers shared by the MPI benchmarks: the VGG convolution stack and launching workers under mpiexec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dcnn.network.graph import Network
from dcnn.network.zoo import get_model


def conv_stack(name: str = "vgg16") -> Network:
    """The network's layers up to (excluding) its adaptive pool: the fully convolutional part."""
    network = get_model(name)
    layers = tuple((n, layer) for n, layer in network.layers if n.startswith("features"))
    return Network(f"{name}-features", layers, network.input_shape, network.preprocessing)


def launch(script: str, ranks: int, *worker_args: str) -> list[dict]:
    """Run ``script --worker FOLDER ARGS`` under mpiexec with one thread per rank; each rank's report in order."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    launcher = str(mpiexec) if mpiexec.exists() else "mpiexec"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run([launcher, "-n", str(ranks), sys.executable, script, "--worker", folder,
                               *worker_args], capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise SystemExit(f"worker failed (np={ranks}):\n{done.stdout}\n{done.stderr}")
        return [json.loads((Path(folder) / f"rank{rank}.json").read_text()) for rank in range(ranks)]


def report_rank(folder: str, rank: int, values: dict) -> None:
    """A worker's report: one JSON file per rank."""
    (Path(folder) / f"rank{rank}.json").write_text(json.dumps(values))


def timed_calls(engine, x, comm, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` collective calls ``engine(x)``, each between two barriers."""
    times = []
    for _ in range(repeats):
        comm.Barrier()
        start = time.perf_counter()
        engine(x)
        comm.Barrier()
        times.append(time.perf_counter() - start)
    return times
