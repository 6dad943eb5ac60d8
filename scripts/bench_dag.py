#!/usr/bin/env python
"""Benchmark the DAG zoo: ResNet-50 and MobileNetV2 against PyTorch and onnxruntime, and ResNet-50 spatial scaling.

Measures, in one run (so the ratios share the machine's state):

1. ResNet-50 and MobileNetV2 forward passes at 224x224, batch 1, one thread: dcnn, PyTorch (the reference
   modules of :mod:`dcnn.testing.torch_models`, same weights) and onnxruntime (the same module exported to ONNX,
   one intra-op thread); median of ``--repeats`` runs after a warm-up, the three interleaved;
2. ResNet-50 on one ``--size`` x ``--size`` image in spatial mode at np 1 and 2 (one thread per rank; it launches
   ``mpiexec`` workers of itself): time and parallel efficiency ``T1 / (2 T2)``;
3. with ``--breakdown``: where each network's time goes, per kind of layer (dcnn: ``--clock`` time of every op,
   with the part spent inside ctypes ``sgemm`` calls; onnxruntime: its profiler's kernel times, wall clock).

``--clock cpu`` times with each process's CPU clock instead of the wall clock: on a machine other jobs load
(more runnable processes than cores), wall times measure the scheduler; CPU seconds are what each run would take
on a core of its own (MPI waits spin, so they still count). ``auto`` (the default) takes the CPU clock when the
one-minute load average exceeds half the cores. The clock and the load averages before and after are reported.

Usage: ``python scripts/bench_dag.py [--repeats 5] [--size 1024] [--clock auto|wall|cpu] [--breakdown] [--output
results/bench_dag.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import numpy as np
from benchlib import (
    CLOCKS,
    add_report_arguments,
    describe_machine,
    launch,
    load_average,
    machine_info,
    median_seconds,
    report_output,
    report_rank,
    timed_calls,
)

from dcnn.exec.forward import Forward
from dcnn.kernels.threads import set_num_threads
from dcnn.network.weights import init_weights
from dcnn.network.zoo import get_model

MODELS = ("resnet50", "mobilenet_v2")
SCALING_RANKS = (1, 2)


def _onnx_session(name: str, module, tensor, profile_prefix: str | None = None):
    """``name``'s PyTorch ``module`` exported to ONNX and opened in onnxruntime, one thread (profiling if asked)."""
    import onnxruntime
    import torch

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / f"{name}.onnx")
        with warnings.catch_warnings():  # the legacy exporter's deprecation notice is not a result
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, (tensor,), path, input_names=["x"], dynamo=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        if profile_prefix:
            options.enable_profiling, options.profile_file_prefix = True, profile_prefix
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def forward_passes(repeats: int, clock: str = "wall") -> dict:
    import torch

    from dcnn.testing.torch_models import torch_model

    set_num_threads(1)
    torch.set_num_threads(1)
    results = {}
    print(f"1. forward pass at 224x224, batch 1, one thread (median {clock} seconds)")
    print(f"{'model':<14} {'dcnn':>8} {'PyTorch':>8} {'onnxrt':>8} {'dcnn/PyTorch':>13} {'dcnn/onnxrt':>12}")
    for name in MODELS:
        network = get_model(name)
        weights = init_weights(network, 0)
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        forward = Forward(network, weights)
        module = torch_model(name, weights)
        tensor = torch.from_numpy(x)
        session = _onnx_session(name, module, tensor)
        expected = module(tensor).detach().numpy()
        for output in (forward(x), session.run(None, {"x": x})[0]):
            assert np.abs(output - expected).max() <= 1e-3 * np.abs(expected).max(), "outputs disagree"
        samples = {"dcnn": [], "pytorch": [], "onnxruntime": []}
        with torch.no_grad():
            runs = {"dcnn": partial(forward, x), "pytorch": partial(module, tensor),
                    "onnxruntime": partial(session.run, None, {"x": x})}
            for _ in range(repeats):  # interleaved, so that drifts of the machine hit all three alike
                for key, run in runs.items():
                    samples[key].append(median_seconds(run, 1, CLOCKS[clock]))
        row = {key: statistics.median(values) for key, values in samples.items()}
        row["dcnn_over_pytorch"] = row["dcnn"] / row["pytorch"]
        row["dcnn_over_onnxruntime"] = row["dcnn"] / row["onnxruntime"]
        results[name] = row
        print(f"{name:<14} {row['dcnn']:8.3f} {row['pytorch']:8.3f} {row['onnxruntime']:8.3f} "
              f"{row['dcnn_over_pytorch']:13.2f} {row['dcnn_over_onnxruntime']:12.2f}")
    return results


def layer_kind(layer) -> str:
    """A layer's row in the breakdown: ``conv 3x3 dw /2``, ``conv 1x1``, ``Add``, ..."""
    kind = type(layer).__name__
    if kind != "Conv2d":
        return kind
    depthwise = layer.groups > 1 and layer.groups == layer.in_channels
    return (f"conv {layer.kernel_size[0]}x{layer.kernel_size[1]}" + (" dw" if depthwise else "")
            + (f" /{layer.stride[0]}" if layer.stride != (1, 1) else ""))


def _dcnn_breakdown(forward: Forward, x: np.ndarray, repeats: int, clock) -> tuple[dict, float, float]:
    """``({kind: seconds per pass}, sgemm seconds per pass, whole pass)``: every op and every ctypes sgemm
    timed on ``clock`` (the ops' timers add a few microseconds each)."""
    from dcnn.kernels import blas

    spent: dict[str, float] = {}
    gemm = [0.0]
    original = [op.run for op in forward.ops]

    def timed(run, kind):
        def call(x, padding):
            start = clock()
            out = run(x, padding)
            spent[kind] = spent.get(kind, 0.0) + clock() - start
            return out
        return call

    def timed_sgemm(*arguments):
        start = clock()
        cblas(*arguments)
        gemm[0] += clock() - start

    cblas = blas._CBLAS_SGEMM
    for op in forward.ops:
        op.run = timed(op.run, layer_kind(op.layer))
    blas._CBLAS_SGEMM = timed_sgemm
    try:
        forward(x)
        spent.clear()
        gemm[0] = 0.0
        start = clock()
        for _ in range(repeats):
            forward(x)
        whole = (clock() - start) / repeats
    finally:
        blas._CBLAS_SGEMM = cblas
        for op, run in zip(forward.ops, original):
            op.run = run
    return {kind: seconds / repeats for kind, seconds in spent.items()}, gemm[0] / repeats, whole


def _onnxruntime_breakdown(session, x: np.ndarray, repeats: int) -> dict:
    """onnxruntime's kernel time per pass by node kind (its profiler, wall clock; the first, warm-up pass left
    out), convolutions split into depthwise, 1x1 and others by their weights' shape."""
    session.run(None, {"x": x})
    for _ in range(repeats):
        session.run(None, {"x": x})
    events = sorted((event for event in json.loads(Path(session.end_profiling()).read_text())
                     if event.get("cat") == "Node" and event["name"].endswith("_kernel_time")),
                    key=lambda event: event["ts"])
    spent: dict[str, float] = {}
    for event in events[len(events) // (repeats + 1):]:
        kind, shapes = event["args"]["op_name"], event["args"].get("input_type_shape", [])
        weight = next(iter(shapes[1].values())) if kind in ("Conv", "FusedConv") and len(shapes) > 1 else None
        if weight:
            kind = "conv dw" if weight[1] == 1 and weight[2] > 1 else "conv 1x1" if weight[2:] == [1, 1] else \
                f"conv {weight[2]}x{weight[3]}"
        spent[kind] = spent.get(kind, 0.0) + event["dur"] * 1e-6
    return {kind: seconds / repeats for kind, seconds in spent.items()}


def breakdowns(repeats: int, clock: str) -> dict:
    import torch

    from dcnn.testing.torch_models import torch_model

    set_num_threads(1)
    torch.set_num_threads(1)
    results = {}
    print(f"\n3. where the time goes, per pass (dcnn: {clock} ms per kind of layer, and inside sgemm; "
          f"onnxruntime: its profiler, wall ms)")
    for name in MODELS:
        network = get_model(name)
        weights = init_weights(network, 0)
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        with tempfile.TemporaryDirectory() as folder:
            session = _onnx_session(name, torch_model(name, weights), torch.from_numpy(x), str(Path(folder) / "p"))
            reference = _onnxruntime_breakdown(session, x, repeats)
        kinds, gemm, whole = _dcnn_breakdown(Forward(network, weights), x, repeats, CLOCKS[clock])
        results[name] = {"dcnn": kinds, "dcnn_sgemm": gemm, "dcnn_pass": whole, "onnxruntime": reference}
        print(f"{name}: dcnn {whole * 1e3:.1f} ms per pass, {gemm * 1e3:.1f} of them in sgemm; onnxruntime "
              f"{sum(reference.values()) * 1e3:.1f} ms of kernels")
        for label, table in (("dcnn", kinds), ("onnxruntime", reference)):
            rows = sorted(table.items(), key=lambda item: -item[1])
            print(f"  {label:<12}" + "; ".join(f"{kind} {seconds * 1e3:.2f}" for kind, seconds in rows
                                               if seconds >= 5e-5))
    return results


def worker_scaling(folder: str, size: int, repeats: int, clock: str) -> None:
    from mpi4py import MPI

    from dcnn.decomposition.spatial import fc_shard_rows
    from dcnn.parallel.spatial import SpatialEngine

    comm = MPI.COMM_WORLD
    set_num_threads(1)
    network = get_model("resnet50")
    shape = (3, size, size)
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    weights = init_weights(network, 0, rows=fc_shard_rows(network, comm.size, comm.rank))
    with SpatialEngine(network, weights, shape, comm) as engine:
        engine(x)  # warm-up: plans the exchanges, touches the workspace
        engine.stats = type(engine.stats).zeros(len(network))
        start = time.perf_counter()
        times = timed_calls(engine, x, comm, repeats, CLOCKS[clock])
        wall = (time.perf_counter() - start) / repeats
        # The wait share is of wall time (the engine times its waits with the wall clock).
        report_rank(folder, comm.rank, {"seconds": min(times), "grid": list(engine.spatial_plan.dims),
                                        "wait_share": float(engine.stats.wait_seconds.sum() / repeats / wall),
                                        "bytes_sent": int(engine.stats.bytes_sent.sum() // repeats)})


def scaling(size: int, repeats: int, clock: str = "wall") -> dict:
    runs = {ranks: launch(__file__, ranks, "scaling", str(size), str(repeats), clock) for ranks in SCALING_RANKS}
    t1 = runs[1][0]["seconds"]
    print(f"\n2. ResNet-50 on {size}x{size} in spatial mode, one thread per rank (min of {repeats} runs, {clock} "
          f"seconds, the slowest rank's)")
    print(f"{'np':>3} {'seconds':>8} {'efficiency':>10} {'wait share':>10} {'MB sent/rank':>12}  (wait: of wall time)")
    summary = {"size": size, "clock": clock}
    for ranks, rows in runs.items():
        seconds = max(row["seconds"] for row in rows)
        wait = float(np.mean([row["wait_share"] for row in rows]))
        sent = float(np.mean([row["bytes_sent"] for row in rows])) / 2**20
        summary[f"np{ranks}"] = {"seconds": seconds, "efficiency": t1 / (ranks * seconds),
                                 "wait_share": wait, "mb_sent_per_rank": sent, "grid": rows[0]["grid"]}
        print(f"{ranks:>3} {seconds:8.2f} {t1 / (ranks * seconds):10.1%} {wait:10.1%} {sent:12.1f}")
    return summary


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_scaling(sys.argv[2], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    add_report_arguments(parser, "results/bench_dag.json")
    parser.add_argument("--skip", nargs="*", default=[], choices=["forward", "scaling"])
    parser.add_argument("--clock", default="auto", choices=["auto", *CLOCKS])
    parser.add_argument("--breakdown", action="store_true", help="time each kind of layer (section 3)")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    before = load_average()
    clock = args.clock if args.clock != "auto" else "cpu" if before[0] > 0.5 * os.cpu_count() else "wall"
    machine = machine_info()
    print(describe_machine(machine))
    print(f"load average {before[0]} {before[1]} {before[2]} on {os.cpu_count()} cores: {clock} clock")
    report = {"command": " ".join(["python", *sys.argv]), "machine": machine,
              "cores": os.cpu_count(), "clock": clock, "load_average_before": before}
    if "forward" not in args.skip:
        report["forward"] = forward_passes(args.repeats, clock)
    if "scaling" not in args.skip:
        report["scaling"] = scaling(args.size, max(1, args.repeats // 3), clock)
    if args.breakdown:
        report["breakdown"] = breakdowns(args.repeats, clock)
    report["load_average_after"] = load_average()
    print(f"\nload average after: {' '.join(map(str, report['load_average_after']))}")
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
