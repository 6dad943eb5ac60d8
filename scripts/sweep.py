#!/usr/bin/env python
"""Run a sweep of dcnn.cli.infer jobs (node counts x image counts x modes) from a TOML file, with SLURM or mpiexec.

Each job writes its own HDF5 file, ``results/sweeps/<name>/<model>-<mode>-<images>-np<N>.h5``; analyse them
with ``python -m dcnn.analyze results/sweeps/<name>/*.h5 --table FILE.md --plots DIR``. Image counts use the
bundled 128x128 faces (``data/faces.h5``) repeated to each count, written once to ``data/sweep/faces-<count>.h5``.

Usage::

    python scripts/sweep.py slurm/sweeps/paper_table.toml            # print the sbatch commands
    python scripts/sweep.py slurm/sweeps/paper_table.toml --submit   # submit them (and --wait for them)
    python scripts/sweep.py slurm/sweeps/paper_table.toml --local    # run them here with mpiexec, in order
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from dcnn.errors import DcnnError
from dcnn.io.sweep import Sweep, load_sweep

ROOT = Path(__file__).resolve().parents[1]


def image_set(count: int) -> Path:
    """The bundled 128x128 faces repeated to ``count`` images (written once)."""
    path = ROOT / "data" / "sweep" / f"faces-{count}.h5"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(ROOT / "data" / "faces.h5") as source:
            images = source["images"][()]
        repeated = np.resize(images, (count, *images.shape[1:]))
        temporary = path.with_suffix(".tmp")
        with h5py.File(temporary, "w") as handle:
            handle.create_dataset("images", data=repeated, chunks=(1, *images.shape[1:]))
        os.replace(temporary, path)
    return path


def jobs(sweep: Sweep, results: Path) -> list[dict]:
    """One entry per (model, mode, image count, node count): its name, rank count, input and output."""
    counts = [None] if sweep.images is None else sweep.images
    entries = []
    for model in sweep.models:
        for mode in sweep.modes:
            for count in counts:
                source = str(ROOT / sweep.input) if count is None else str(image_set(count))
                for nodes in sweep.nodes:
                    label = f"{model}-{mode}-{'set' if count is None else count}-np{nodes}"
                    entries.append({"name": f"{sweep.name}-{label}", "nodes": nodes, "images": count, "mode": mode,
                                    "output": results / sweep.name / f"{label}.h5",
                                    "arguments": ["--model", model, "--input", source, "--mode", mode,
                                                  *sweep.arguments]})
    return entries


def sbatch_command(sweep: Sweep, job: dict, wait: bool, parallel: bool) -> list[str]:
    """The sbatch line of one job. Unless ``parallel``, all jobs of a sweep share a name and run one at a time
    (``--dependency=singleton``), so that their timings do not disturb each other."""
    order = [] if parallel else [f"--job-name={sweep.name}", "--dependency=singleton"]
    return ["sbatch", *(["--wait"] if wait else []), *(order or [f"--job-name={job['name']}"]),
            f"--ntasks={job['nodes']}",
            f"--cpus-per-task={sweep.cpus_per_task}", f"--time={sweep.time}",
            f"--output={job['output'].with_suffix('.out')}", "slurm/infer.sbatch", *job["arguments"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="sweep file (TOML), e.g. slurm/sweeps/paper_table.toml")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--submit", action="store_true", help="submit the jobs with sbatch")
    group.add_argument("--local", action="store_true", help="run the jobs here with mpiexec, one after another")
    parser.add_argument("--wait", action="store_true", help="with --submit: wait for every job to finish")
    parser.add_argument("--results", default=str(ROOT / "results" / "sweeps"),
                        help="folder of the sweeps' result files (default: results/sweeps)")
    parser.add_argument("--parallel", action="store_true",
                        help="let SLURM run the jobs at the same time (default: one after another, for timing)")
    args = parser.parse_args()
    try:
        sweep = load_sweep(args.config)
    except DcnnError as error:
        raise SystemExit(f"sweep: {error}") from None
    entries = jobs(sweep, Path(args.results).resolve())
    for job in entries:
        job["output"].parent.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, "DCNN_OUTPUT": str(job["output"])}
        if args.local:
            mpiexec = Path(sys.executable).parent / "mpiexec"
            # As slurm/infer.sbatch: a job file from an earlier sweep is resumed ("nothing to do" when complete).
            target = "--resume" if job["output"].exists() else "--output"
            command = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(job["nodes"]), sys.executable,
                       "-m", "dcnn.infer", "--threads", str(sweep.cpus_per_task), target,
                       str(job["output"]), *job["arguments"]]
        else:
            command = sbatch_command(sweep, job, args.wait, args.parallel)
        print(("DCNN_OUTPUT=" + shlex.quote(str(job["output"])) + " " if not args.local else "")
              + shlex.join(command), flush=True)
        if args.submit or args.local:
            done = subprocess.run(command, cwd=ROOT, env=environment, check=False)
            if done.returncode != 0:  # the job said why on its stderr: one line more, naming it, no traceback
                print(f"sweep: job {job['name']} failed (exit status {done.returncode}); the later jobs were not run",
                      file=sys.stderr)
                raise SystemExit(done.returncode)


if __name__ == "__main__":
    main()
