#!/usr/bin/env python
"""Benchmark the planner's memory model: measured peak RSS per rank against its prediction, per mode.

Each configuration is a real ``python -m dcnn.infer`` run (under mpiexec for np > 1, one thread per rank); the
result file holds both ``/stats/peak_rss_bytes`` and ``/stats/predicted_peak_bytes``. The last row is the
paper's limit case: a set of 1000x500 images under a 200 MiB budget per rank with ``--plan auto``.

Usage: ``python scripts/bench_memory.py [--output results/bench_memory.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
from benchlib import add_report_arguments, mpi_launcher, report_output

ROOT = Path(__file__).resolve().parents[1]
SAMPLES, FACES = str(ROOT / "data" / "samples.h5"), str(ROOT / "data" / "faces.h5")
RUNS = [
    (1, ["--model", "vgg16", "--input", SAMPLES, "--mode", "batch", "--batch-size", "1"]),
    (1, ["--model", "vgg16", "--input", SAMPLES, "--mode", "batch", "--batch-size", "4"]),
    (2, ["--model", "vgg16", "--input", SAMPLES, "--mode", "spatial", "--batch-size", "2"]),
    (2, ["--model", "vgg16", "--input", SAMPLES, "--mode", "fused", "--tiles", "4x4", "--batch-size", "2"]),
    (1, ["--input", FACES, "--dataset", "wide", "--mode", "batch", "--batch-size", "1"]),
    (1, ["--input", FACES, "--dataset", "wide", "--mode", "batch", "--batch-size", "2"]),
    (2, ["--input", FACES, "--dataset", "wide", "--mode", "spatial", "--batch-size", "1"]),
    (2, ["--input", FACES, "--dataset", "wide", "--mode", "fused", "--tiles", "4x4", "--halo-policy", "reuse",
         "--batch-size", "1"]),
    (2, ["--input", FACES, "--dataset", "wide", "--mode", "fused", "--tiles", "4x4", "--halo-policy", "recompute",
         "--batch-size", "1"]),
    (2, ["--input", FACES, "--dataset", "wide", "--plan", "auto", "--mem-per-rank", "200MiB"]),
]


def run(ranks: int, args: list[str], folder: str) -> dict:
    output = Path(folder) / "run.h5"
    output.unlink(missing_ok=True)
    command = [*mpi_launcher(ranks), sys.executable, "-m", "dcnn.infer", "--quiet", "--threads", "1", "--output",
               str(output), *args]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr}")
    with h5py.File(output) as handle:
        measured = handle["stats/peak_rss_bytes"][()].astype(float)
        predicted = handle["stats/predicted_peak_bytes"][()].astype(float)
        errors = (predicted - measured) / measured
        return {"ranks": ranks, "arguments": args, "plan": str(handle.attrs["plan"]),
                "model": str(handle.attrs["model"]), "measured_mib": (measured / 2**20).round(1).tolist(),
                "predicted_mib": (predicted / 2**20).round(1).tolist(),
                "error": float(errors[np.argmax(np.abs(errors))])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_report_arguments(parser, "results/bench_memory.json")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    rows = []
    print(f"{'np':>3} {'model':<7} {'plan':<28} {'measured MiB (per rank)':>24} {'predicted MiB':>14} {'error':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for ranks, arguments in RUNS:
            row = run(ranks, arguments, folder)
            rows.append(row)
            measured = "/".join(f"{value:.0f}" for value in row["measured_mib"])
            print(f"{ranks:>3} {row['model']:<7} {row['plan']:<28} {measured:>24} {max(row['predicted_mib']):14.0f} "
                  f"{row['error']:+7.1%}")
    errors = [row["error"] for row in rows]
    print(f"prediction error (predicted - measured) / measured: {min(errors):+.1%} to {max(errors):+.1%}")
    report = {"command": " ".join(["python", *sys.argv]), "runs": rows}
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
