#!/usr/bin/env python
"""Benchmark dcnn's face detector against dlib's, in one run, on the same images.

dlib (``dlib-bin``, when installed) and dcnn each detect faces in the bundled 128 x 128 images with upsample 1,
the setting of the paper's PC timing, in one process with one thread; dcnn batches ``--batch-size`` images per
forward pass. Prints images/s for both, the ratio, and whether the detections agree, with the CPU model and BLAS
kernel. Both wall time and process CPU time are recorded: on a shared machine the CPU-time ratio is the one
other jobs do not distort (it is what "per core" means), the wall-time ratio the one a lone user would see.
A second, instrumented pass over the same images splits dcnn's CPU time into the pyramid, each convolution
(with its GFLOP/s and fraction of the machine's one-thread sgemm rate, :func:`bench_kernels.sgemm_rate` timed
on CPU time) and decoding.

Usage: ``python scripts/bench_faces.py [--input data/faces.h5] [--upsample 1] [--batch-size 16]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import bench_kernels
import numpy as np
from benchlib import (
    add_report_arguments,
    describe_machine,
    face_bench,
    load_average,
    machine_info,
    report_output,
    timed,
)

from dcnn.exec.forward import Forward
from dcnn.faces.detect import FaceDetector, default_detector_path
from dcnn.network.layers import Conv2d

PAPER_CLUSTER = {"images": 50_000, "seconds": 2959, "nodes": 20}


def stage_table(detector: FaceDetector, forward: Forward, images: np.ndarray, batch_size: int,
                sgemm_gflops: float) -> dict:
    """Per-image CPU milliseconds of the pyramid, of each convolution and of decoding, and each convolution's
    GFLOP/s (printed and returned); folded layers (affine, ReLU) run inside their convolution."""
    clock = time.process_time
    pyramid = decode = 0.0
    layer_seconds = np.zeros(len(forward.ops))
    for first in range(0, len(images), batch_size):
        start = clock()
        tensor, rects = detector.prepare(images[first:first + batch_size])
        pyramid += clock() - start
        x = tensor
        for index, op in enumerate(forward.ops):
            start = clock()
            x = op(x)
            layer_seconds[index] += clock() - start
        start = clock()
        for scores in x:
            detector.decode(scores, rects)
        decode += clock() - start
    count = len(images)
    print(f"\nper image, CPU time (batch {batch_size}; sgemm 2048^3 at one thread: {sgemm_gflops:.1f} GFLOP/s)")
    print(f"{'stage':<12} {'convolution':<26} {'input':<11} {'ms':>7} {'GFLOP/s':>8} {'% sgemm':>8}")
    print(f"{'pyramid':<12} {'':<26} {'':<11} {1000 * pyramid / count:7.2f}")
    layers = []
    for index, row in enumerate(detector.network.costs(tensor.shape[1:])):
        if not isinstance(row.layer, Conv2d):
            continue
        seconds = layer_seconds[index] / count
        rate = 2 * row.macs / seconds / 1e9
        shape = "x".join(map(str, row.in_shape))
        layers.append({"name": row.name, "layer": row.layer.describe(), "in_shape": list(row.in_shape),
                       "ms_per_image": 1000 * seconds, "gflops": rate, "sgemm_fraction": rate / sgemm_gflops})
        print(f"{row.name:<12} {row.layer.describe():<26} {shape:<11} {1000 * seconds:7.2f} {rate:8.1f} "
              f"{100 * rate / sgemm_gflops:7.0f}%")
    print(f"{'decode':<12} {'':<26} {'':<11} {1000 * decode / count:7.2f}")
    total = (pyramid + decode + layer_seconds.sum()) / count
    print(f"{'total':<12} {'':<26} {'':<11} {1000 * total:7.2f}")
    return {"sgemm_gflops": sgemm_gflops, "pyramid_ms_per_image": 1000 * pyramid / count,
            "decode_ms_per_image": 1000 * decode / count, "layers": layers, "total_ms_per_image": 1000 * total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="data/faces.h5")
    parser.add_argument("--upsample", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    add_report_arguments(parser, "results/bench_faces.json")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    images, detector, forward = face_bench(args.input, args.upsample)
    detector.detect(images[:args.batch_size], forward)  # warm-up: one full batch fills the buffer pool
    machine = machine_info()
    print(describe_machine(machine))
    load_before = load_average()
    print(f"load average before: {' '.join(map(str, load_before))} (1, 5, 15 min)")

    def detect_all() -> list:
        batches = range(0, len(images), args.batch_size)
        return [found for first in batches for found in detector.detect(images[first:first + args.batch_size], forward)]

    ours, dcnn_cpu, dcnn_seconds = timed(detect_all)
    report = {"command": " ".join(["python", *sys.argv]), "machine": machine, "images": len(images),
              "image_size": list(images.shape[1:3]), "upsample": args.upsample, "threads": 1,
              "batch_size": args.batch_size, "dcnn_images_per_second": len(images) / dcnn_seconds,
              "dcnn_cpu_ms_per_image": 1000 * dcnn_cpu / len(images), "dcnn_faces": int(sum(len(d) for d in ours)),
              "load_average_before": load_before}
    print(f"dcnn: {len(images)} images of {images.shape[1]}x{images.shape[2]}, upsample {args.upsample}, 1 thread, "
          f"batch {args.batch_size}: {report['dcnn_images_per_second']:.1f} images/s "
          f"({1000 * dcnn_seconds / len(images):.0f} ms wall, {report['dcnn_cpu_ms_per_image']:.0f} ms CPU per image), "
          f"{report['dcnn_faces']} faces")
    try:
        import dlib
    except ImportError:
        print("dlib is not installed (pip install dlib-bin): no reference timing")
    else:
        oracle = dlib.cnn_face_detection_model_v1(str(default_detector_path()))
        oracle(images[0], args.upsample)
        theirs, dlib_cpu, dlib_seconds = timed(lambda: [oracle(image, args.upsample) for image in images])
        agree = all(len(a) == len(b) and all(
            max(abs(x - y) for x, y in zip(row[:4], (d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom())))
            <= 1 and abs(row[4] - d.confidence) <= 1e-3 for row, d in zip(a, b)) for a, b in zip(ours, theirs))
        report.update(dlib_version=dlib.__version__, dlib_images_per_second=len(images) / dlib_seconds,
                      dlib_cpu_ms_per_image=1000 * dlib_cpu / len(images),
                      ratio_dcnn_over_dlib=dlib_seconds / dcnn_seconds, ratio_dcnn_over_dlib_cpu=dlib_cpu / dcnn_cpu,
                      detections_agree=bool(agree))
        print(f"dlib {dlib.__version__}: {report['dlib_images_per_second']:.2f} images/s "
              f"({1000 * dlib_seconds / len(images):.0f} ms wall, "
              f"{report['dlib_cpu_ms_per_image']:.0f} ms CPU per image)")
        print(f"dcnn / dlib throughput per core: {report['ratio_dcnn_over_dlib_cpu']:.1f}x in CPU time, "
              f"{report['ratio_dcnn_over_dlib']:.1f}x in wall time; detections agree: {agree}")
    bench_kernels.clock = time.process_time
    report["stages"] = stage_table(detector, forward, images, args.batch_size, bench_kernels.sgemm_rate(3))
    cluster_rate = PAPER_CLUSTER["images"] / PAPER_CLUSTER["seconds"]
    report["paper_cluster_images_per_second"] = cluster_rate
    two_cores = 2000 / report["dcnn_cpu_ms_per_image"]
    report["two_core_seconds_for_paper_images"] = PAPER_CLUSTER["images"] / two_cores
    print(f"the paper's 20-node cluster: {cluster_rate:.1f} images/s (50,000 images in 2959 s); two cores at dcnn's "
          f"CPU-time rate would do about {two_cores:.0f} images/s: 50,000 images in "
          f"{report['two_core_seconds_for_paper_images']:.0f} s")
    report["load_average_after"] = load_average()
    print(f"load average after: {' '.join(map(str, report['load_average_after']))}")
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
