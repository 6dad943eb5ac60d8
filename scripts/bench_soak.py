#!/usr/bin/env python
"""Soak test of the work-stealing queue: 10,000 tiny tasks at np 8 (oversubscribed on small machines).

Each task busy-waits ``--work`` seconds (50 us by default). The run checks that every task ran exactly once, and
reports the wall time, tasks and steals per rank, and the share of rank-seconds spent in MPI atomics. Run it
without mpirun; it launches ``mpiexec -n 8`` workers of itself.

Usage: ``python scripts/bench_soak.py [--tasks 10000] [--ranks 8] [--repeats 3] [--output results/bench_soak.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from benchlib import add_report_arguments, launch, report_output, report_rank


def worker(folder: str, tasks: int, work: float, seed: int) -> None:
    from mpi4py import MPI

    from dcnn.parallel.steal import StealQueue

    comm = MPI.COMM_WORLD
    ran = []
    comm.Barrier()
    start = time.perf_counter()
    with StealQueue(comm, tasks, seed=seed) as queue:
        for task in queue:
            deadline = time.perf_counter() + work
            while time.perf_counter() < deadline:
                pass
            ran.append(task)
        stats = queue.stats
    elapsed = time.perf_counter() - start
    report_rank(folder, comm.rank, {"ran": ran, "seconds": elapsed, "steals": stats.steals_succeeded,
                                    "attempts": stats.steals_attempted, "queue_seconds": stats.queue_seconds,
                                    "idle_seconds": stats.idle_seconds})


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--work", type=float, default=50e-6, help="seconds of busy work per task")
    parser.add_argument("--repeats", type=int, default=3)
    add_report_arguments(parser, "results/bench_soak.json")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    runs = []
    print(f"{args.tasks} tasks of {args.work * 1e6:.0f} us at np={args.ranks}")
    print(f"{'run':>3} {'seconds':>8} {'exactly once':>12} {'tasks/rank min-max':>19} {'steals':>7} "
          f"{'attempts':>9} {'atomics share':>13}")
    for repeat in range(args.repeats):
        reports = launch(__file__, args.ranks, str(args.tasks), str(args.work), str(repeat))
        counts = np.bincount(np.concatenate([r["ran"] for r in reports]).astype(int), minlength=args.tasks)
        once = bool((counts == 1).all())
        seconds = max(r["seconds"] for r in reports)
        per_rank = [len(r["ran"]) for r in reports]
        share = sum(r["queue_seconds"] for r in reports) / (seconds * args.ranks)
        run = {"seconds": seconds, "exactly_once": once, "tasks_per_rank": per_rank,
               "steals": sum(r["steals"] for r in reports), "attempts": sum(r["attempts"] for r in reports),
               "atomics_share": share}
        runs.append(run)
        print(f"{repeat:>3} {seconds:8.2f} {once!s:>12} {f'{min(per_rank)}-{max(per_rank)}':>19} "
              f"{run['steals']:>7} {run['attempts']:>9} {share:13.2%}")
        if not once:
            raise SystemExit("a task ran twice or never: scheduler bug")
    report = {"command": " ".join(["python", *sys.argv]), "tasks": args.tasks, "ranks": args.ranks,
              "work_seconds": args.work, "runs": runs}
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
