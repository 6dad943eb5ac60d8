#!/usr/bin/env python
"""Benchmark dcnn's convolution kernel and whole-network forward against sgemm, PyTorch and onnxruntime.

Measures, in one run (so the ratios share the machine's state), with the CPU model, cache sizes and BLAS
kernel recorded:

1. the single-precision GEMM rate (2048^3, numpy/OpenBLAS) at each thread count: the hardware reference;
2. per convolution layer of VGG-16 at 224x224 and of dlib's MMOD face detector on one 128x128 image at
   upsample 1 (its 3x982x280 pyramid): GFLOP/s of dcnn's kernel, the formulation it chose, its fraction of
   the sgemm rate, and PyTorch's ``conv2d`` on the same data;
3. the whole VGG-16 forward pass (same weights) at batch 1 and at ``--batch`` per image: dcnn (its default
   kernels, and ``dcnn_exact``: the exact formulations only, as ``--exact-conv`` runs), PyTorch and onnxruntime
   (the same weights exported to ONNX with ``torch.onnx.export``), and the ratios;
4. with ``--infer-images N``, VGG-16 through the real command, ``python -m dcnn.infer --mode single --threads 1``
   on ``N`` generated 224x224 images at batch 1 and at ``--batch``, per image: the network time the result file
   records (``/timing/compute_seconds``) and its elapsed time, alternated with onnxruntime running the same
   number of images at the same batch in this process (wall clock, whatever ``--clock`` says: the result file's
   times are wall-clock times).

Timings are medians of ``--repeats`` runs after a warm-up, with the runtimes and both batch sizes interleaved.
``--clock cpu`` times with the process's CPU time instead of the wall clock: on a machine shared with other jobs
that is the figure they do not distort (preemption costs no CPU time), and at one thread it equals the wall time
of a quiet machine; at several threads it sums the threads, so use it with ``--threads 1``.

Usage: ``python scripts/bench_kernels.py [--repeats 5] [--threads 1,2] [--batch 4] [--clock wall|cpu]
[--infer-images 8] [--output results/bench_kernels.json]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import h5py
import numpy as np
from benchlib import CLOCKS, add_report_arguments, describe_machine, machine_info, median_seconds, report_output

from dcnn.exec.forward import Forward
from dcnn.faces.detect import FaceDetector
from dcnn.kernels import threads
from dcnn.kernels.conv import Conv2dKernel, Workspace, set_exact
from dcnn.network.layers import Conv2d
from dcnn.network.weights import init_weights
from dcnn.network.zoo import get_model

try:
    import torch
except ImportError:  # PyTorch is an optional benchmark reference.
    torch = None
try:
    import onnxruntime
except ImportError:  # so is onnxruntime (it needs PyTorch to export the model).
    onnxruntime = None


clock = CLOCKS["wall"]


def set_threads(count: int) -> None:
    threads.set_num_threads(count)
    if torch is not None:
        torch.set_num_threads(count)


def sgemm_rate(repeats: int, size: int = 2048) -> float:
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    return 2 * size**3 / median_seconds(lambda: a @ a, repeats, clock) / 1e9


def conv_layers(network, input_shape):
    """Unique (layer, input shape) pairs of the network's convolutions."""
    seen, rows = set(), []
    for row in network.costs(input_shape):
        if isinstance(row.layer, Conv2d) and (row.layer, row.in_shape) not in seen:
            seen.add((row.layer, row.in_shape))
            rows.append(row)
    return rows


def layer_table(title, network, weights, input_shape, thread_counts, report, repeats, rng):
    """Per-convolution GFLOP/s of dcnn and PyTorch at each thread count, printed and returned."""
    print(f"\n{title}\n{'layer':<12} {'input':<11} {'convolution':<26} {'method':<14} {'threads':>7} "
          f"{'dcnn GF/s':>10} {'% sgemm':>8} {'torch GF/s':>11}")
    entries = []
    for row in conv_layers(network, input_shape):
        layer = row.layer
        x = rng.standard_normal((1, *row.in_shape), dtype=np.float32)
        weight, bias = weights[f"{row.name}.weight"], weights.get(f"{row.name}.bias")
        kernel = Conv2dKernel(weight, bias, layer.stride, layer.dilation, layer.groups)
        workspace = Workspace()
        padding = layer.window.explicit_padding(*row.in_shape[1:])
        flops = 2 * row.macs
        entry = {"name": row.name, "layer": layer.describe(), "method": kernel.method, "in_shape": row.in_shape,
                 "gflop": flops / 1e9}
        for count in thread_counts:
            set_threads(count)
            dcnn_rate = flops / median_seconds(partial(kernel, x, padding, workspace), repeats, clock) / 1e9
            torch_rate = None
            if torch is not None:
                torch_conv = partial(torch.nn.functional.conv2d, torch.from_numpy(x), torch.from_numpy(weight),
                                     None if bias is None else torch.from_numpy(bias), layer.stride, layer.padding)
                with torch.no_grad():
                    torch_rate = flops / median_seconds(torch_conv, repeats, clock) / 1e9
            fraction = dcnn_rate / report["sgemm_gflops"][count]
            entry[f"dcnn_gflops_{count}t"] = dcnn_rate
            entry[f"sgemm_fraction_{count}t"] = fraction
            entry[f"torch_gflops_{count}t"] = torch_rate
            shape = "x".join(map(str, row.in_shape))
            torch_text = f"{torch_rate:11.1f}" if torch_rate else f"{'-':>11}"
            print(f"{row.name:<12} {shape:<11} {layer.describe():<26} {kernel.method:<14} {count:>7} "
                  f"{dcnn_rate:10.1f} {100 * fraction:7.0f}% {torch_text}")
        entries.append(entry)
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="thread counts to measure (default 1,2)")
    parser.add_argument("--batch", type=int, default=4, help="the larger batch of the forward pass (default 4)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall clock (default) or process CPU time (for one thread on a shared machine)")
    parser.add_argument("--infer-images", type=int, default=0,
                        help="also run VGG-16 on this many images through python -m dcnn.infer (default 0: not)")
    add_report_arguments(parser, "results/bench_kernels.json")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    global clock
    clock = CLOCKS[args.clock]
    thread_counts = [int(t) for t in args.threads.split(",")]
    network = get_model("vgg16")
    input_shape = (3, 224, 224)
    weights = init_weights(network, 0)
    rng = np.random.default_rng(1)
    machine = machine_info()
    report = {"command": " ".join(["python", *sys.argv]), "machine": machine,
              "torch": None if torch is None else torch.__version__,
              "onnxruntime": None if onnxruntime is None else onnxruntime.__version__, "threads": thread_counts,
              "clock": args.clock,
              "sgemm_gflops": {}, "layers": [], "mmod_layers": [], "forward": {}}
    report["load_average"] = os.getloadavg()
    print(describe_machine(machine))
    print(f"times: median of {args.repeats}, {args.clock} clock; load average {report['load_average'][0]:.2f} "
          "at the start")

    for count in thread_counts:
        set_threads(count)
        report["sgemm_gflops"][count] = sgemm_rate(args.repeats)
    print("sgemm 2048^3: " + ", ".join(f"{t} thread(s) {g:.1f} GFLOP/s" for t, g in report["sgemm_gflops"].items()))

    report["layers"] = layer_table("VGG-16, 224x224, batch 1", network, weights, input_shape, thread_counts,
                                   report, args.repeats, rng)
    detector = FaceDetector.load(upsample=1)
    pyramid_shape = detector.input_shape(128, 128)
    report["mmod_layers"] = layer_table(f"MMOD face detector, 128x128 upsample 1 ({'x'.join(map(str, pyramid_shape))}"
                                        f" pyramid), batch 1", detector.network, detector.weights, pyramid_shape,
                                        thread_counts, report, args.repeats, rng)

    forward = Forward(network, weights)
    set_exact(True)  # the same network on the exact formulations only (--exact-conv), for the ratio in one run
    exact_forward = Forward(network, weights)
    set_exact(False)
    torch_model = _torch_vgg16(weights) if torch is not None else None
    print()
    total_flops = 2 * sum(r.macs for r in network.costs(input_shape))
    for count in thread_counts:
        set_threads(count)
        session = _onnx_session(torch_model, input_shape, count) if onnxruntime and torch_model else None
        # Both batch sizes and every runtime interleaved in one loop: "batch N no slower per image than batch 1"
        # compares figures taken under the same load.
        batches = list(dict.fromkeys((1, args.batch)))
        runners = {}
        for batch in batches:
            images = rng.standard_normal((batch, *input_shape), dtype=np.float32)
            runners[batch, "dcnn"] = partial(forward, images)
            runners[batch, "dcnn_exact"] = partial(exact_forward, images)
            if torch_model is not None:
                runners[batch, "torch"] = partial(torch_model, torch.from_numpy(images))
            if session is not None:
                runners[batch, "onnxruntime"] = partial(session.run, None, {"image": images})
        samples = {key: [] for key in runners}
        with torch.no_grad() if torch is not None else nullcontext():
            for run in runners.values():
                run()
            for _ in range(args.repeats):
                for (batch, name), run in runners.items():
                    start = clock()
                    run()
                    samples[batch, name].append((clock() - start) / batch)
        for batch in batches:
            names = [name for size, name in runners if size == batch]
            result = {f"{name}_seconds_per_image": statistics.median(samples[batch, name]) for name in names}
            dcnn_s = result["dcnn_seconds_per_image"]
            result["dcnn_gflops"] = total_flops / dcnn_s / 1e9
            line = f"VGG-16 forward, batch {batch}, {count} thread(s), per image: dcnn {dcnn_s * 1e3:.0f} ms"
            for name in names[1:]:
                other = result[f"{name}_seconds_per_image"]
                result[f"ratio_dcnn_over_{name}"] = dcnn_s / other
                line += f", {name} {other * 1e3:.0f} ms (dcnn/{name} {dcnn_s / other:.2f})"
            if batch != 1:
                result["ratio_dcnn_over_dcnn_batch1"] = dcnn_s / report["forward"][f"{count}t_batch1"][
                    "dcnn_seconds_per_image"]
                line += f"; dcnn batch {batch}/batch 1 per image {result['ratio_dcnn_over_dcnn_batch1']:.2f}"
            report["forward"][f"{count}t_batch{batch}"] = result
            print(line)

    if args.infer_images and torch_model is not None and onnxruntime is not None:
        set_threads(1)
        report["infer"] = infer_table(args.infer_images, list(dict.fromkeys((1, args.batch))), args.repeats,
                                      _onnx_session(torch_model, input_shape, 1), rng)

    report_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


def infer_table(count: int, batches: list[int], repeats: int, session, rng) -> dict:
    """VGG-16 through ``python -m dcnn.infer --mode single --threads 1`` on ``count`` generated 224x224 images at
    each batch size, alternated with onnxruntime ``session`` on as many images at the same batch; per image,
    medians of ``repeats`` runs: dcnn's network time (the result file's ``/timing/compute_seconds``), its elapsed
    time (reading images and writing results too), onnxruntime's time, and the ratios; all wall clock, as the
    result file records them."""
    samples: dict = {batch: {"dcnn": [], "dcnn_elapsed": [], "onnxruntime": []} for batch in batches}
    with tempfile.TemporaryDirectory(prefix="bench_kernels_") as folder:
        source = Path(folder) / "images.h5"
        with h5py.File(source, "w") as images:
            images["images"] = rng.integers(0, 256, (count, 224, 224, 3), dtype=np.uint8)
        for repeat in range(repeats):
            for batch in batches:
                output = Path(folder) / f"out_{batch}_{repeat}.h5"
                subprocess.run([sys.executable, "-m", "dcnn.infer", "--model", "vgg16", "--mode", "single",
                                "--threads", "1", "--batch-size", str(batch), "--input", str(source), "--output",
                                str(output), "--quiet"], check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
                with h5py.File(output, "r") as result:
                    samples[batch]["dcnn"].append(float(result["timing/compute_seconds"][()].sum()) / count)
                    samples[batch]["dcnn_elapsed"].append(float(result.attrs["elapsed_seconds"]) / count)
                x = rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
                session.run(None, {"image": x})
                start = time.perf_counter()  # wall clock, as the result file's times
                for _ in range(-(-count // batch)):
                    session.run(None, {"image": x})
                samples[batch]["onnxruntime"].append((time.perf_counter() - start) / (-(-count // batch) * batch))
    table = {}
    for batch in batches:
        row = {f"{name}_seconds_per_image": statistics.median(values) for name, values in samples[batch].items()}
        row["ratio_dcnn_over_onnxruntime"] = row["dcnn_seconds_per_image"] / row["onnxruntime_seconds_per_image"]
        table[f"batch{batch}"] = row
        elapsed = row["dcnn_elapsed_seconds_per_image"]
        print(f"VGG-16 through python -m dcnn.infer, {count} images, batch {batch}, per image: dcnn "
              f"{row['dcnn_seconds_per_image'] * 1e3:.0f} ms in its layers ({elapsed * 1e3:.0f} "
              f"ms elapsed), onnxruntime {row['onnxruntime_seconds_per_image'] * 1e3:.0f} ms (dcnn/onnxruntime "
              f"{row['ratio_dcnn_over_onnxruntime']:.2f})")
    return table


def _onnx_session(torch_model, input_shape, count):
    """An onnxruntime session of the PyTorch model (same weights), ``count`` intra-op threads."""
    buffer = io.BytesIO()
    example = torch.zeros((1, *input_shape))
    torch.onnx.export(torch_model, (example,), buffer, dynamo=False, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}})
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = count
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def _torch_vgg16(weights):
    """VGG-16 in torchvision's layout built from torch.nn, loaded with the same weights."""
    nn = torch.nn
    layers, channels = [], 3
    for item in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(*layers))
    model.add_module("avgpool", nn.AdaptiveAvgPool2d(7))
    model.add_module("flatten", nn.Flatten())
    model.add_module("classifier", nn.Sequential(
        nn.Linear(25088, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, 1000)))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return model.eval()


if __name__ == "__main__":
    main()
