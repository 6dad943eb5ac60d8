#!/usr/bin/env python
"""Benchmark dcnn's convolution kernel and whole-network forward against this machine's sgemm and PyTorch.

Measures, in one run (so the ratios share the machine's state):

1. the single-precision GEMM rate (2048^3, numpy/OpenBLAS) at 1 and 2 threads: the hardware reference;
2. per VGG-16 convolution layer at 224x224: GFLOP/s of dcnn's kernel at 1 and 2 threads, its fraction of the
   sgemm rate, and PyTorch's ``conv2d`` on the same data where PyTorch is installed;
3. the whole VGG-16 forward pass (batch 1, same weights) at 1 and 2 threads: dcnn and PyTorch, and the ratio.

Timings are the median of ``--repeats`` runs after a warm-up, with dcnn and PyTorch interleaved.

Usage: ``python scripts/bench_kernels.py [--repeats 5] [--output results/bench_kernels.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from dcnn.exec.forward import Forward
from dcnn.kernels import threads
from dcnn.kernels.conv import Conv2dKernel, Workspace
from dcnn.network.layers import Conv2d
from dcnn.network.weights import init_weights
from dcnn.network.zoo import get_model

try:
    import torch
except ImportError:  # PyTorch is an optional benchmark reference.
    torch = None


def median_seconds(function, repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def set_threads(count: int) -> None:
    threads.set_num_threads(count)
    if torch is not None:
        torch.set_num_threads(count)


def sgemm_rate(repeats: int, size: int = 2048) -> float:
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    return 2 * size**3 / median_seconds(lambda: a @ a, repeats) / 1e9


def conv_layers(network, input_shape):
    """Unique (layer, input shape) pairs of the network's convolutions."""
    seen, rows = set(), []
    for row in network.costs(input_shape):
        if isinstance(row.layer, Conv2d) and (row.layer, row.in_shape) not in seen:
            seen.add((row.layer, row.in_shape))
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="thread counts to measure (default 1,2)")
    parser.add_argument("--output", default="results/bench_kernels.json")
    args = parser.parse_args()
    thread_counts = [int(t) for t in args.threads.split(",")]
    network = get_model("vgg16")
    input_shape = (3, 224, 224)
    weights = init_weights(network, 0)
    rng = np.random.default_rng(1)
    report = {"command": " ".join(["python", *sys.argv]), "machine": platform.processor() or platform.machine(),
              "torch": None if torch is None else torch.__version__, "threads": thread_counts,
              "sgemm_gflops": {}, "layers": [], "forward": {}}

    for count in thread_counts:
        set_threads(count)
        report["sgemm_gflops"][count] = sgemm_rate(args.repeats)
    print("sgemm 2048^3: " + ", ".join(f"{t} thread(s) {g:.1f} GFLOP/s" for t, g in report["sgemm_gflops"].items()))

    print(f"\n{'layer':<12} {'input':<11} {'convolution':<26} {'threads':>7} {'dcnn GF/s':>10} {'% sgemm':>8} "
          f"{'torch GF/s':>11}")
    for row in conv_layers(network, input_shape):
        layer = row.layer
        x = rng.standard_normal((1, *row.in_shape), dtype=np.float32)
        weight = weights[f"{row.name}.weight"]
        kernel = Conv2dKernel(weight, weights[f"{row.name}.bias"], layer.stride, layer.dilation, layer.groups)
        workspace = Workspace()
        padding = layer.window.explicit_padding(*row.in_shape[1:])
        flops = 2 * row.macs
        entry = {"name": row.name, "layer": layer.describe(), "in_shape": row.in_shape, "gflop": flops / 1e9}
        for count in thread_counts:
            set_threads(count)
            dcnn_rate = flops / median_seconds(partial(kernel, x, padding, workspace), args.repeats) / 1e9
            torch_rate = None
            if torch is not None:
                bias = weights[f"{row.name}.bias"]
                torch_conv = partial(torch.nn.functional.conv2d, torch.from_numpy(x), torch.from_numpy(weight),
                                     torch.from_numpy(bias), layer.stride, layer.padding)
                with torch.no_grad():
                    torch_rate = flops / median_seconds(torch_conv, args.repeats) / 1e9
            fraction = dcnn_rate / report["sgemm_gflops"][count]
            entry[f"dcnn_gflops_{count}t"] = dcnn_rate
            entry[f"sgemm_fraction_{count}t"] = fraction
            entry[f"torch_gflops_{count}t"] = torch_rate
            shape = "x".join(map(str, row.in_shape))
            torch_text = f"{torch_rate:11.1f}" if torch_rate else f"{'-':>11}"
            print(f"{row.name:<12} {shape:<11} {layer.describe():<26} {count:>7} {dcnn_rate:10.1f} "
                  f"{100 * fraction:7.0f}% {torch_text}")
        report["layers"].append(entry)

    forward = Forward(network, weights)
    image = rng.standard_normal((1, *input_shape), dtype=np.float32)
    torch_model = _torch_vgg16(weights) if torch is not None else None
    print()
    for count in thread_counts:
        set_threads(count)
        dcnn_times, torch_times = [], []
        forward(image)
        if torch_model is not None:
            with torch.no_grad():
                torch_model(torch.from_numpy(image))
        for _ in range(args.repeats):
            dcnn_times.append(median_seconds(lambda: forward(image), 1))
            if torch_model is not None:
                with torch.no_grad():
                    torch_times.append(median_seconds(lambda: torch_model(torch.from_numpy(image)), 1))
        dcnn_s = statistics.median(dcnn_times)
        total_flops = 2 * sum(r.macs for r in network.costs(input_shape))
        result = {"dcnn_seconds": dcnn_s, "dcnn_gflops": total_flops / dcnn_s / 1e9}
        line = f"VGG-16 forward, batch 1, {count} thread(s): dcnn {dcnn_s * 1e3:.0f} ms"
        if torch_times:
            torch_s = statistics.median(torch_times)
            result.update(torch_seconds=torch_s, ratio_dcnn_over_torch=dcnn_s / torch_s)
            line += f", PyTorch {torch_s * 1e3:.0f} ms, ratio dcnn/PyTorch {dcnn_s / torch_s:.2f}"
        report["forward"][count] = result
        print(line)

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output}")


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
