#!/usr/bin/env python
"""Benchmark the fused-tile engine: recompute against reuse, and fused tiles against per-layer halo exchange.

Run it without mpirun; it launches ``mpiexec -n P`` workers of itself (one thread per rank) for P in 1 and 2:

- **VGG-16's convolution stack** on one ``--size`` x ``--size`` image (512 by default), all 31 layers fused;
- **dlib's MMOD face detector** (its real weights) on a 1000 x 500 image (its 3 x 1852 x 1022 pyramid), all 19
  layers fused;

each in spatial mode (per-layer halo exchange over a rank grid) and in fused mode with several tile grids and both
overlap policies. Per configuration: wall time per image (best of ``--repeats`` after a warm-up), the
multiply-accumulates computed against the plain network (redundancy), bytes moved between ranks (halos, strips and
the final gather) and fallbacks. (Memory per mode is measured by ``scripts/bench_memory.py``: here every
configuration runs in the same processes.)

Usage: ``python scripts/bench_fused.py [--size 512] [--repeats 2] [--output results/bench_fused.json]``
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from benchlib import add_report_arguments, conv_stack, launch, report_output, report_rank, timed_calls

RANKS = (1, 2)
#: (mode, tile grid, policy) per workload; the 8x8 recompute run of VGG-16 would compute 7x the plain network.
CONFIGURATIONS = {
    "vgg16": [("spatial", None, None), ("fused", "2x2", "recompute"), ("fused", "2x2", "reuse"),
              ("fused", "4x4", "recompute"), ("fused", "4x4", "reuse"), ("fused", "8x8", "reuse")],
    "mmod": [("spatial", None, None), ("fused", "2x2", "recompute"), ("fused", "2x2", "reuse"),
             ("fused", "4x4", "recompute"), ("fused", "4x4", "reuse"), ("fused", "8x8", "recompute"),
             ("fused", "8x8", "reuse")],
}


def workload(name: str, size: int):
    """``(network, weights, input shape)`` of one benchmark workload."""
    from dcnn.network.weights import init_weights

    if name == "vgg16":
        network = conv_stack()
        return network, init_weights(network, 0), (3, size, size)
    from dcnn.faces.detect import FaceDetector

    detector = FaceDetector.load(None, 0)
    return detector.network, detector.weights, detector.input_shape(500, 1000)


# -- worker (runs under mpiexec) -------------------------------------------------------------------------------
def worker(folder: str, name: str, size: int, repeats: int) -> None:
    from mpi4py import MPI

    from dcnn.kernels.threads import set_num_threads
    from dcnn.parallel.fused import FusedEngine
    from dcnn.parallel.spatial import SpatialEngine

    comm = MPI.COMM_WORLD
    set_num_threads(1)
    network, weights, shape = workload(name, size)
    x = np.random.default_rng(0).uniform(-1, 1, (1, *shape)).astype(np.float32)
    reports = []
    for mode, tiles, policy in CONFIGURATIONS[name]:
        if mode == "spatial":
            engine = SpatialEngine(network, weights, shape, comm)
        else:
            engine = FusedEngine(network, weights, shape, comm, tuple(map(int, tiles.split("x"))), halo_policy=policy)
        with engine:
            engine(x)  # warm-up: allocates windows and workspaces
            before = dict(engine.counters) if mode == "fused" else {}
            sent = int(engine.stats.bytes_sent.sum())
            times = timed_calls(engine, x, comm, repeats)
            report = {"mode": mode, "tiles": tiles, "policy": policy, "seconds": min(times),
                      "bytes_sent": (int(engine.stats.bytes_sent.sum()) - sent) // repeats}
            if mode == "fused":
                after = engine.counters
                report.update({key: (after[key] - before[key]) / repeats for key in after})
                report["plain_macs"] = engine.fused_plan.plain_macs()
                report["gather_bytes"] = 4 * int(np.prod(engine.fused_plan.output_shape)) * (comm.size - 1) // comm.size
        reports.append(report)
    report_rank(folder, comm.rank, {"runs": reports})


# -- driver ----------------------------------------------------------------------------------------------------
def bench(name: str, size: int, repeats: int) -> dict:
    from dcnn.network.graph import format_shape

    network, _, shape = workload(name, size)
    plain = sum(row.macs for row in network.costs(shape))
    results = {ranks: launch(__file__, ranks, name, str(size), str(repeats)) for ranks in RANKS}
    spatial_np1 = next(run["seconds"] for run in results[1][0]["runs"] if run["mode"] == "spatial")
    print(f"\n{network.name} on {format_shape(shape)} ({plain / 1e9:.1f} GMAC per image), one thread per rank, "
          f"best of {repeats}; speedup against spatial mode at np=1 (the plain network on one rank)")
    print(f"{'np':>3} {'configuration':<22} {'seconds':>8} {'speedup':>8} {'MACs/plain':>11} {'MB moved':>9} "
          f"{'fallbacks':>9}")
    rows = []
    for ranks, reports in results.items():
        for index, run in enumerate(reports[0]["runs"]):
            per_rank = [report["runs"][index] for report in reports]
            seconds = max(r["seconds"] for r in per_rank)
            if run["mode"] == "fused":
                macs = sum(r["macs"] for r in per_rank) / plain
                moved = sum(r["bytes_got"] for r in per_rank) + run["gather_bytes"] * ranks
                fallbacks = sum(r["fallbacks"] for r in per_rank)
                label = f"fused {run['tiles']} {run['policy']}"
            else:
                macs, moved, fallbacks, label = 1.0, sum(r["bytes_sent"] for r in per_rank), 0, "spatial"
            row = {"ranks": ranks, "configuration": label, "seconds": seconds, "speedup": spatial_np1 / seconds,
                   "macs_over_plain": macs, "bytes_moved": moved, "fallbacks": fallbacks}
            rows.append(row)
            print(f"{ranks:>3} {label:<22} {seconds:8.2f} {row['speedup']:8.2f} {macs:11.2f} {moved / 1e6:9.2f} "
                  f"{fallbacks:>9.0f}")
    return {"network": network.name, "input_shape": list(shape), "plain_macs": plain, "rows": rows}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="VGG-16 input size (default 512)")
    parser.add_argument("--repeats", type=int, default=2)
    add_report_arguments(parser, "results/bench_fused.json")
    parser.add_argument("--only", choices=sorted(CONFIGURATIONS), help="run one workload")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    report = {"command": " ".join(["python", *sys.argv])}
    for name in [args.only] if args.only else CONFIGURATIONS:
        report[name] = bench(name, args.size, args.repeats)
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
