#!/usr/bin/env python
"""Benchmark dcnn against onnxruntime on the same ONNX files: one thread each, per image.

Models: the PyTorch references of dcnn's zoo (:mod:`dcnn.testing.torch_models`, dcnn's seeded weights) exported
to ONNX at 224x224 (ResNet-50, MobileNetV2, SqueezeNet 1.1, GoogLeNet), and ONNX's own "light" test models (full
networks whose weights are constant fills; only the arithmetic counts here) whose operators dcnn supports. Each
file is read by dcnn (:func:`dcnn.network.onnx.load_onnx`) and by an onnxruntime session with one intra-op and
one inter-op thread; both run the same image (batch 1), interleaved, ``--repeats`` times after a warm-up, and the
medians are reported with the outputs' largest difference relative to their largest magnitude.

Times are the process's CPU time by default (``--clock cpu``, as ``scripts/bench_kernels.py --clock cpu``): at one
thread it equals the wall time of a quiet machine, and preemption by other jobs on a shared machine does not
inflate it. The first line names the CPU and the BLAS kernels (:func:`benchlib.describe_machine`).

Usage: ``python scripts/bench_onnx.py [--repeats 5] [--clock cpu|wall] [--models resnet50,light_vgg19,...]
[--output results/bench_onnx.json] > results/bench_onnx.txt``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from benchlib import CLOCKS, add_report_arguments, describe_machine, machine_info, report_output

from dcnn.errors import InputError
from dcnn.exec.forward import Forward
from dcnn.kernels.threads import set_num_threads
from dcnn.network.onnx import UnsupportedModelError, load_onnx
from dcnn.testing.onnx_exports import export_zoo

#: Zoo models exported from their PyTorch references.
EXPORTED = ("resnet50", "mobilenet_v2", "squeezenet1_1", "googlenet")
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
SIZE = (3, 224, 224)


def session(path: Path) -> onnxruntime.InferenceSession:
    """onnxruntime on one thread (intra- and inter-op), every graph optimisation on (its default)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no notes on unused initializers
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(name: str, path: Path, repeats: int, clock) -> dict | None:
    """Median seconds per image of dcnn and onnxruntime on ``path``; ``None`` (with the reason printed) when dcnn
    does not support the model."""
    started = clock()
    try:
        model = load_onnx(path)
    except UnsupportedModelError as error:
        print(f"{name:<22} skipped: unsupported ONNX operators {', '.join(error.nodes)}")
        return None
    except InputError as error:
        print(f"{name:<22} skipped: {str(error).removeprefix(f'{path}: ')}")
        return None
    load_seconds = clock() - started
    forward = Forward(model.network, model.weights)
    runtime = session(path)
    image = np.random.default_rng(0).standard_normal((1, *model.network.input_shape)).astype(np.float32)
    feed = {runtime.get_inputs()[0].name: image}
    ours, theirs = forward(image), runtime.run(None, feed)[0]
    samples: dict[str, list[float]] = {"dcnn": [], "onnxruntime": []}
    for _ in range(repeats):
        for key, call in (("dcnn", lambda: forward(image)), ("onnxruntime", lambda: runtime.run(None, feed))):
            start = clock()
            call()
            samples[key].append(clock() - start)
    dcnn_s, ort_s = statistics.median(samples["dcnn"]), statistics.median(samples["onnxruntime"])
    macs = sum(row.macs for row in model.network.costs())
    difference = float(np.abs(ours.reshape(-1) - theirs.reshape(-1)).max() / np.abs(theirs).max())
    row = {
        "model": name,
        "file_bytes": path.stat().st_size,
        "gmacs": macs / 1e9,
        "dcnn_seconds": dcnn_s,
        "onnxruntime_seconds": ort_s,
        "dcnn_over_onnxruntime": dcnn_s / ort_s,
        "dcnn_load_seconds": load_seconds,
        "max_relative_difference": difference,
    }
    print(
        f"{name:<22} {macs / 1e9:6.2f} {dcnn_s * 1e3:9.1f} {ort_s * 1e3:9.1f} {dcnn_s / ort_s:11.2f} "
        f"{load_seconds:8.2f} {difference:10.1e}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="process CPU time (default; one thread on a shared machine) or the wall clock",
    )
    parser.add_argument("--models", help="comma-separated subset: zoo names and light_* names (default: all)")
    add_report_arguments(parser, "results/bench_onnx.json")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    clock = CLOCKS[args.clock]
    set_num_threads(1)
    light = sorted(path.stem for path in LIGHT.glob("light_*.onnx"))
    wanted = args.models.split(",") if args.models else [*EXPORTED, *light]
    machine = machine_info()
    print(describe_machine(machine))
    print(
        f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}; batch 1, one thread each, median of "
        f"{args.repeats} interleaved runs, {args.clock} clock; {'x'.join(map(str, SIZE))} input"
    )
    print(
        f"{'model':<22} {'GMACs':>6} {'dcnn ms':>9} {'onnxrt ms':>9} {'dcnn/onnxrt':>11} {'load s':>8} {'max diff':>10}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in wanted:
            path = (
                LIGHT / f"{name}.onnx"
                if name.startswith("light_")
                else export_zoo(name, Path(folder) / f"{name}.onnx", SIZE, dynamic=False)
            )
            row = compare(name, path, args.repeats, clock)
            if row is not None:
                rows.append(row)
    if rows:
        ratios = [row["dcnn_over_onnxruntime"] for row in rows]
        print(
            f"dcnn/onnxruntime: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f} "
            f"over {len(rows)} models"
        )
    report = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine,
        "clock": args.clock,
        "repeats": args.repeats,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "models": rows,
    }
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
