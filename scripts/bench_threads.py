#!/usr/bin/env python
"""Benchmark two threads in one rank against two ranks of one thread, through the real command line.

Runs ``mpiexec -n P python -m dcnn.infer --mode batch --threads T`` for (P, T) = (1, 1), (1, 2) and (2, 1) on
the same images, interleaved ``--repeats`` times, and reads each result file's elapsed time. The target (issue 18)
is two threads per rank within 10 % of two ranks: ``seconds(1 x 2) / seconds(2 x 1) <= 1.1``. With
``--before DIR`` the 1 x 2 configuration also runs on the dcnn package of another checkout (``PYTHONPATH=DIR``,
e.g. the code before a change), interleaved with the others, so before and after come from one run. The CPU
model, BLAS kernel and load average are recorded.

Usage: ``python scripts/bench_threads.py [--model mmod --upsample 1] [--input data/faces.h5] [--batch-size 8]
[--repeats 3] [--before DIR] [--output results/bench_threads.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import add_report_arguments, describe_machine, load_average, machine_info, report_output

from dcnn.analysis.analyze import load_summary

CONFIGURATIONS = ((1, 1), (1, 2), (2, 1))
#: The configuration also run on the ``--before`` checkout.
BEFORE = (1, 2)


def run(ranks: int, threads: int, output: Path, args: argparse.Namespace, code: str | None = None) -> float:
    """Elapsed seconds of one ``dcnn.infer`` run with ``ranks`` ranks of ``threads`` threads (on the dcnn package
    of the checkout ``code`` if given)."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    command = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks), sys.executable, "-m",
               "dcnn.infer", "--mode", "batch", "--model", args.model, "--upsample", str(args.upsample),
               "--input", args.input, "--output", str(output), "--batch-size", str(args.batch_size),
               "--threads", str(threads), "--quiet"]
    env = os.environ if code is None else {**os.environ, "PYTHONPATH": code}
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(command)}\n{done.stderr}")
    return float(load_summary(str(output)).elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mmod")
    parser.add_argument("--upsample", type=int, default=1)
    parser.add_argument("--input", default="data/faces.h5")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", metavar="DIR", help="also run 1 x 2 on the dcnn of this checkout")
    add_report_arguments(parser, "results/bench_threads.json")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    machine = machine_info()
    print(describe_machine(machine))
    load = {"start": load_average()}
    print(f"load average {load['start'][0]:.2f} at the start (the runs share 2 cores with whatever else runs)")
    configurations = [(*config, None) for config in CONFIGURATIONS] + ([(*BEFORE, args.before)] if args.before else [])
    seconds = {config: [] for config in configurations}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for ranks, threads, code in configurations:
                output = Path(folder) / f"np{ranks}t{threads}{'b' if code else ''}r{repeat}.h5"
                seconds[(ranks, threads, code)].append(run(ranks, threads, output, args, code))
    load["end"] = load_average()
    median = {config: statistics.median(values) for config, values in seconds.items()}
    ratio = median[(1, 2, None)] / median[(2, 1, None)]
    print(f"{args.model} (upsample {args.upsample}) on {args.input}, batch size {args.batch_size}, median of "
          f"{args.repeats} interleaved runs")
    for (ranks, threads, code), value in median.items():
        print(f"  {ranks} rank(s) x {threads} thread(s){f' before ({code})' if code else ''}: {value:7.2f} s  "
              f"(speedup over 1 x 1: {median[(1, 1, None)] / value:.2f})")
    print(f"two threads in one rank / two ranks of one thread: {ratio:.2f} (target <= 1.10)")
    if args.before:
        print(f"  before: {median[(*BEFORE, args.before)] / median[(2, 1, None)]:.2f}")
    print(f"load average {load['end'][0]:.2f} at the end")
    report = {"command": " ".join(["python", *sys.argv]), "machine": machine, "model": args.model,
              "upsample": args.upsample, "input": args.input, "batch_size": args.batch_size,
              "seconds": {_key(*config): values for config, values in seconds.items()},
              "median_seconds": {_key(*config): value for config, value in median.items()},
              "ratio_threads_over_ranks": ratio, "load_average": load}
    if args.before:
        report["before"] = args.before
        report["ratio_before"] = median[(*BEFORE, args.before)] / median[(2, 1, None)]
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


def _key(ranks: int, threads: int, code: str | None) -> str:
    return f"{ranks}x{threads}" + (" before" if code else "")


if __name__ == "__main__":
    main()
