#!/usr/bin/env python
"""Benchmark batch mode: throughput, scheduler overhead, and load balance with a slow rank.

Runs the real command line (``mpiexec -n P python -m dcnn.infer --mode batch``) on a generated image set and
reads the result files:

1. images/s at np 1 and 2, one thread per rank, and the parallel efficiency;
2. the scheduler's overhead: time in queue operations (MPI atomics) over the run's rank-seconds;
3. load balance at np 2 with rank 1 slowed four times (``--throttle 1:4``), with and without stealing,
   against the ideal balanced makespan ``W / (1 + 1/4)``, where ``W`` is the np=1 run's busy time.

Usage: ``python scripts/bench_batch.py [--model alexnet] [--size 128] [--images 256] [--batch-size 2]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
from benchlib import add_report_arguments, report_output

from dcnn.analysis.analyze import load_summary
from dcnn.io.schema import column


def run(ranks: int, data: Path, output: Path, args: argparse.Namespace, *extra: str) -> dict:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    command = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks), sys.executable, "-m",
               "dcnn.infer", "--mode", "batch", "--model", args.model, "--input", str(data), "--output", str(output),
               "--batch-size", str(args.batch_size), "--threads", "1", "--quiet", *extra]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(command)}\n{done.stderr}")
    summary = load_summary(str(output))
    queue = column(summary.steal, "queue_seconds").sum()
    return {"ranks": ranks, "options": list(extra), "seconds": summary.elapsed,
            "images_per_second": summary.images_per_second, "busy_seconds": summary.busy.tolist(),
            "tasks_per_rank": summary.tasks.tolist(),
            "steals_succeeded": int(column(summary.steal, "steals_succeeded").sum()),
            "queue_overhead": float(queue / (summary.elapsed * ranks))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    add_report_arguments(parser, "results/bench_batch.json")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "images.h5"
        with h5py.File(data, "w") as handle:
            handle["images"] = np.random.default_rng(0).integers(0, 256, (args.images, args.size, args.size, 3),
                                                                 dtype=np.uint8)
        runs = {
            "np1": run(1, data, Path(folder) / "np1.h5", args),
            "np2": run(2, data, Path(folder) / "np2.h5", args),
            "np2_slow_rank_steal": run(2, data, Path(folder) / "steal.h5", args, "--throttle", "1:4"),
            "np2_slow_rank_no_steal": run(2, data, Path(folder) / "nosteal.h5", args, "--throttle", "1:4",
                                          "--no-steal"),
        }
    t1 = runs["np1"]["seconds"]
    ideal = sum(runs["np1"]["busy_seconds"]) / (1 + 1 / 4)
    print(f"{args.model} on {args.images} images of {args.size}x{args.size}, batch size {args.batch_size}, "
          f"one thread per rank")
    print(f"{'run':<24} {'seconds':>8} {'images/s':>9} {'efficiency':>10} {'queue overhead':>15} {'tasks/rank':>12} "
          f"{'steals':>7}")
    for name, result in runs.items():
        efficiency = t1 / (result["ranks"] * result["seconds"])
        result["efficiency"] = efficiency
        print(f"{name:<24} {result['seconds']:8.2f} {result['images_per_second']:9.2f} {efficiency:10.1%} "
              f"{result['queue_overhead']:15.3%} {result['tasks_per_rank']!s:>12} {result['steals_succeeded']:>7}")
    for name in ("np2_slow_rank_steal", "np2_slow_rank_no_steal"):
        runs[name]["makespan_over_ideal"] = runs[name]["seconds"] / ideal
    print(f"\nrank 1 four times slower: ideal balanced makespan {ideal:.2f} s; with stealing "
          f"{runs['np2_slow_rank_steal']['seconds']:.2f} s ({runs['np2_slow_rank_steal']['makespan_over_ideal']:.2f}x "
          f"ideal), without {runs['np2_slow_rank_no_steal']['seconds']:.2f} s "
          f"({runs['np2_slow_rank_no_steal']['makespan_over_ideal']:.2f}x ideal)")
    report = {"command": " ".join(["python", *sys.argv]), "ideal_makespan_seconds": ideal, "runs": runs}
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
