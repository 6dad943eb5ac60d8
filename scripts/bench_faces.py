#!/usr/bin/env python
"""Benchmark dcnn's face detector against dlib's, in one run, on the same images.

dlib (``dlib-bin``, when installed) and dcnn each detect faces in the bundled 128 x 128 images with upsample 1,
the setting of the paper's PC timing, in one process with one thread; dcnn batches ``--batch-size`` images per
forward pass. Prints images/s for both, the ratio, and whether the detections agree.

Usage: ``python scripts/bench_faces.py [--input data/faces.h5] [--upsample 1] [--batch-size 16]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py

from dcnn.exec.forward import Forward
from dcnn.faces.detect import FaceDetector, default_detector_path
from dcnn.kernels import threads

PAPER_CLUSTER = {"images": 50_000, "seconds": 2959, "nodes": 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="data/faces.h5")
    parser.add_argument("--upsample", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", default="results/bench_faces.json")
    args = parser.parse_args()
    with h5py.File(args.input, "r") as handle:
        images = handle["images"][()]
    threads.set_num_threads(1)
    detector = FaceDetector.load(upsample=args.upsample)
    forward = Forward(detector.network, detector.weights)
    detector.detect(images[:2], forward)  # warm-up
    start = time.perf_counter()
    ours = []
    for first in range(0, len(images), args.batch_size):
        ours += detector.detect(images[first:first + args.batch_size], forward)
    dcnn_seconds = time.perf_counter() - start
    report = {"command": " ".join(["python", *sys.argv]), "images": len(images),
              "image_size": list(images.shape[1:3]), "upsample": args.upsample, "threads": 1,
              "batch_size": args.batch_size, "dcnn_images_per_second": len(images) / dcnn_seconds,
              "dcnn_faces": int(sum(len(d) for d in ours))}
    print(f"dcnn: {len(images)} images of {images.shape[1]}x{images.shape[2]}, upsample {args.upsample}, 1 thread, "
          f"batch {args.batch_size}: {report['dcnn_images_per_second']:.1f} images/s "
          f"({1000 * dcnn_seconds / len(images):.0f} ms per image), {report['dcnn_faces']} faces")
    try:
        import dlib
    except ImportError:
        print("dlib is not installed (pip install dlib-bin): no reference timing")
    else:
        oracle = dlib.cnn_face_detection_model_v1(str(default_detector_path()))
        oracle(images[0], args.upsample)
        start = time.perf_counter()
        theirs = [oracle(image, args.upsample) for image in images]
        dlib_seconds = time.perf_counter() - start
        agree = all(len(a) == len(b) and all(
            max(abs(x - y) for x, y in zip(row[:4], (d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom())))
            <= 1 and abs(row[4] - d.confidence) <= 1e-3 for row, d in zip(a, b)) for a, b in zip(ours, theirs))
        report.update(dlib_version=dlib.__version__, dlib_images_per_second=len(images) / dlib_seconds,
                      ratio_dcnn_over_dlib=dlib_seconds / dcnn_seconds, detections_agree=bool(agree))
        print(f"dlib {dlib.__version__}: {report['dlib_images_per_second']:.2f} images/s "
              f"({1000 * dlib_seconds / len(images):.0f} ms per image)")
        print(f"dcnn / dlib throughput per core: {report['ratio_dcnn_over_dlib']:.1f}x; detections agree: {agree}")
    cluster_rate = PAPER_CLUSTER["images"] / PAPER_CLUSTER["seconds"]
    report["paper_cluster_images_per_second"] = cluster_rate
    print(f"the paper's 20-node cluster: {cluster_rate:.1f} images/s (50,000 images in 2959 s); this machine's two "
          f"cores at dcnn's rate would do about {2 * report['dcnn_images_per_second']:.0f} images/s")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
