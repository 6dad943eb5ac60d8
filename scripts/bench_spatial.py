#!/usr/bin/env python
"""Benchmark the spatial engine: strong scaling, exchange cost, halo geometry and FC-sharding memory.

Run it without mpirun; it launches ``mpiexec -n P`` workers of itself:

1. **Scaling**: VGG-16's convolution stack on one ``--size`` x ``--size`` image (1024 by default) at np 1 and 2,
   one thread per rank, with and without overlapping the halo exchange: wall time, parallel efficiency
   ``T1 / (P * T_P)``, the share of time spent waiting for halos, what overlap hid, and bytes moved per rank.
2. **Geometry** (no run): halo bytes over block bytes, per convolution layer, at np 4, 9, 16 and 20.
3. **Memory**: peak RSS per rank for VGG-16 at 224 x 224 (whole network, FC layers sharded) at np 1, 2 and 4,
   against the parameter bytes the FC shards should save.

Usage: ``python scripts/bench_spatial.py [--size 1024] [--repeats 2] [--output results/bench_spatial.json]``
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from benchlib import add_report_arguments, conv_stack, launch, report_output, report_rank, timed_calls

from dcnn.decomposition.spatial import plan_spatial
from dcnn.network.layers import Conv2d, Linear
from dcnn.network.zoo import get_model

SCALING_RANKS = (1, 2)
MEMORY_RANKS = (1, 2, 4)
GEOMETRY_RANKS = (4, 9, 16, 20)


# -- workers (run under mpiexec) -------------------------------------------------------------------------------
def worker_scaling(folder: str, size: int, repeats: int, comm_overlap: bool) -> None:
    from mpi4py import MPI

    from dcnn.kernels.threads import set_num_threads
    from dcnn.network.weights import init_weights
    from dcnn.parallel.spatial import SpatialEngine

    comm = MPI.COMM_WORLD
    set_num_threads(1)
    network = conv_stack()
    shape = (3, size, size)
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    with SpatialEngine(network, init_weights(network, 0), shape, comm, comm_overlap=comm_overlap) as engine:
        engine(x)  # warm-up: plans the exchanges, touches the workspace
        engine.stats = type(engine.stats).zeros(len(network))
        times = timed_calls(engine, x, comm, repeats)
        stats = engine.stats
        report_rank(folder, comm.rank, {
            "seconds": min(times), "grid": list(engine.spatial_plan.dims),
            "compute": (stats.compute_seconds / repeats).tolist(), "wait": (stats.wait_seconds / repeats).tolist(),
            "bytes_sent": int(stats.bytes_sent.sum() // repeats), "bytes_received": int(stats.bytes_received.sum()
                                                                                        // repeats),
            "layers": [name for name, _ in network.layers]})


def worker_memory(folder: str) -> None:
    from mpi4py import MPI

    from dcnn.decomposition.spatial import fc_shard_rows
    from dcnn.io.results import peak_rss_bytes
    from dcnn.kernels.threads import set_num_threads
    from dcnn.network.weights import init_weights
    from dcnn.parallel.spatial import SpatialEngine

    comm = MPI.COMM_WORLD
    set_num_threads(1)
    network = get_model("vgg16")
    shape = (3, 224, 224)
    weights = init_weights(network, 0, rows=fc_shard_rows(network, comm.size, comm.rank))
    weight_bytes = sum(value.nbytes for value in weights.values())
    with SpatialEngine(network, weights, shape, comm) as engine:
        engine(np.zeros((1, *shape), np.float32))
    report_rank(folder, comm.rank, {"peak_rss_bytes": peak_rss_bytes(), "weight_bytes": weight_bytes})


# -- driver ----------------------------------------------------------------------------------------------------
def scaling(size: int, repeats: int) -> dict:
    results = {}
    for comm_overlap in (True, False):
        for ranks in SCALING_RANKS:
            rows = launch(__file__, ranks, "scaling", str(size), str(repeats), "1" if comm_overlap else "0")
            results[f"np{ranks}_{'overlap' if comm_overlap else 'no_overlap'}"] = rows
    # Both np=1 runs do the same work (no halos); the faster one is the conservative baseline.
    t1 = min(results["np1_overlap"][0]["seconds"], results["np1_no_overlap"][0]["seconds"])
    summary = {"size": size, "t1_seconds": t1}
    print(f"\n1. VGG-16 conv stack on {size}x{size}, one thread per rank (min of {repeats} runs)")
    print(f"{'np':>3} {'overlap':>8} {'seconds':>8} {'efficiency':>10} {'wait share':>10} {'MB sent/rank':>12}")
    for key, rows in results.items():
        ranks = len(rows)
        seconds = max(row["seconds"] for row in rows)
        wait = np.mean([sum(row["wait"]) for row in rows])
        sent = np.mean([row["bytes_sent"] for row in rows]) / 2**20
        efficiency = t1 / (ranks * seconds)
        summary[key] = {"seconds": seconds, "efficiency": efficiency, "wait_share": wait / seconds,
                        "mb_sent_per_rank": sent, "grid": rows[0]["grid"]}
        print(f"{ranks:>3} {'yes' if 'no_' not in key else 'no':>8} {seconds:8.2f} {efficiency:10.1%} "
              f"{wait / seconds:10.1%} {sent:12.1f}")
    hidden = (np.mean([sum(r["wait"]) for r in results["np2_no_overlap"]])
              - np.mean([sum(r["wait"]) for r in results["np2_overlap"]]))
    summary["np2_wait_hidden_seconds"] = hidden
    print(f"np=2: overlap changed the halo wait by {-hidden:+.3f} s per image (negative: time hidden)")
    per_layer = np.mean([r["wait"] for r in results["np2_overlap"]], axis=0)
    per_layer_off = np.mean([r["wait"] for r in results["np2_no_overlap"]], axis=0)
    names = results["np2_overlap"][0]["layers"]
    summary["np2_per_layer_wait"] = {n: [float(a), float(b)] for n, a, b in zip(names, per_layer, per_layer_off)
                                     if b > 0}
    return summary


def geometry(sizes: tuple[int, ...] = (224, 1024)) -> dict:
    network = conv_stack()
    table = {}
    for size in sizes:
        print(f"\n2. halo bytes / block bytes per conv layer of VGG-16 at {size}x{size} (geometry only)")
        print(f"{'layer':<12} {'input':>13}" + "".join(f"{f'np={p}':>9}" for p in GEOMETRY_RANKS))
        plans = {p: plan_spatial(network, (3, size, size), _dims(p)) for p in GEOMETRY_RANKS}
        rows = {}
        for index, layer_plan in enumerate(plans[GEOMETRY_RANKS[0]].layers):
            if not isinstance(layer_plan.layer, Conv2d) or index == 0:
                continue
            ratios = []
            for p in GEOMETRY_RANKS:
                lp = plans[p].layers[index]
                held = sum(box.area for box in lp.held)
                ratios.append(lp.halo_bytes() / (held * lp.in_shape[0] * 4))
            name = network.layers[index][0]
            rows[name] = dict(zip(map(str, GEOMETRY_RANKS), ratios))
            shape = "x".join(map(str, layer_plan.in_shape))
            print(f"{name:<12} {shape:>13}" + "".join(f"{r:9.3f}" for r in ratios))
        table[size] = rows
    return table


def _dims(ranks: int) -> tuple[int, int]:
    from mpi4py import MPI

    return tuple(MPI.Compute_dims(ranks, 2))


def memory() -> dict:
    network = get_model("vgg16")
    fc_bytes = 4 * sum(spec.size for name, layer in network.layers if isinstance(layer, Linear)
                       for spec in layer.tensors().values())
    print("\n3. peak RSS per rank, VGG-16 at 224x224 in spatial mode (FC layers sharded)")
    print(f"{'np':>3} {'peak RSS MiB (max rank)':>24} {'weights MiB':>12} {'drop vs np=1 MiB':>17} "
          f"{'FC saving expected MiB':>23}")
    results = {}
    for ranks in MEMORY_RANKS:
        rows = launch(__file__, ranks, "memory")
        results[ranks] = {"peak_rss_bytes": [r["peak_rss_bytes"] for r in rows],
                          "weight_bytes": [r["weight_bytes"] for r in rows]}
    base = max(results[1]["peak_rss_bytes"])
    for ranks, row in results.items():
        peak = max(row["peak_rss_bytes"])
        expected = fc_bytes * (1 - 1 / ranks)
        row.update(drop_bytes=base - peak, expected_fc_saving_bytes=expected)
        print(f"{ranks:>3} {peak / 2**20:24.0f} {max(row['weight_bytes']) / 2**20:12.0f} "
              f"{(base - peak) / 2**20:17.0f} {expected / 2**20:23.0f}")
    return {"fc_bytes": fc_bytes, "runs": results}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        folder, kind = sys.argv[2], sys.argv[3]
        if kind == "scaling":
            worker_scaling(folder, int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1")
        else:
            worker_memory(folder)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    add_report_arguments(parser, "results/bench_spatial.json")
    parser.add_argument("--skip", nargs="*", default=[], choices=["scaling", "geometry", "memory"])
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    report = {"command": " ".join(["python", *sys.argv])}
    if "scaling" not in args.skip:
        report["scaling"] = scaling(args.size, args.repeats)
    if "geometry" not in args.skip:
        report["geometry"] = geometry()
    if "memory" not in args.skip:
        report["memory"] = memory()
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
