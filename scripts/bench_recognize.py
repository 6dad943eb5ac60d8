#!/usr/bin/env python
"""Benchmark dcnn's face recognition against dlib's, on the same faces, one thread per process.

1. Descriptors per second per core: the aligned chips of every face dcnn finds in the bundled 128 x 128 images,
   described by dcnn (``--batch-size`` chips per pass) and by dlib's ``compute_face_descriptor`` on the same
   chips; landmarks per second for both on the same boxes; the largest descriptor difference.
2. The whole pipeline (detect, landmarks, chips, descriptors, identities against a 2-person gallery) in images per
   second: ``python -m dcnn.recognize`` at np 1 and 2 (batch mode) and dlib's own pipeline in one process.

Usage: ``python scripts/bench_recognize.py [--input data/faces.h5] [--batch-size 16]``; writes
``results/bench_recognize.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
from benchlib import face_bench, timed
from PIL import Image

from dcnn.faces.detect import default_detector_path, to_records
from dcnn.faces.models import DESCRIPTOR_MODEL, LANDMARK_MODEL, bundled_model
from dcnn.faces.pipeline import FaceDescriber


def pipeline_runs(input_path: str, ranks: int, known: Path, output: Path) -> float:
    """Images per second of ``python -m dcnn.recognize`` at ``ranks`` ranks (batch mode, one thread each)."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks), sys.executable, "-m",
                    "dcnn.recognize", "--input", input_path, "--known", str(known), "--output", str(output),
                    "--threads", "1", "--batch-size", "4", "--quiet"], check=True, env=env)
    with h5py.File(output) as handle:
        return float(handle.attrs["images_per_second"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="data/faces.h5")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--output", default="results/bench_recognize.json")
    args = parser.parse_args()
    import dlib

    images, detector, forward = face_bench(args.input)
    describer = FaceDescriber.load()
    records = to_records(detector.detect(images, forward), 0)
    boxes = [(int(r["image"]), np.array([[r["left"], r["top"], r["right"], r["bottom"]]])) for r in records]

    def our_landmarks():
        return [describer.landmark(images[i], box)[0] for i, box in boxes]

    predictor = dlib.shape_predictor(str(bundled_model(LANDMARK_MODEL)))
    rects = [(i, dlib.rectangle(*(int(v) for v in box[0]))) for i, box in boxes]

    def dlib_landmarks():
        return [predictor(images[i], rect) for i, rect in rects]

    parts, ours_landmark_seconds, _ = timed(our_landmarks)
    shapes, dlib_landmark_seconds, _ = timed(dlib_landmarks)
    chips = np.concatenate([describer.chips(images[i], p[None]) for (i, _), p in zip(boxes, parts)])
    describer.descriptor.describe(chips[:2])  # warm-up
    ours, ours_seconds, _ = timed(lambda: np.concatenate(
        [describer.descriptor.describe(chips[s:s + args.batch_size]) for s in range(0, len(chips), args.batch_size)]))
    recogniser = dlib.face_recognition_model_v1(str(bundled_model(DESCRIPTOR_MODEL)))
    recogniser.compute_face_descriptor(list(chips[:2]), 0)
    theirs, dlib_seconds, _ = timed(lambda: np.array(recogniser.compute_face_descriptor(list(chips), 0)))
    with tempfile.TemporaryDirectory() as folder:
        known = Path(folder) / "known"
        known.mkdir()
        Image.fromarray(images[0]).save(known / "alice.png")
        Image.fromarray(images[2]).save(known / "bob.png")
        rates = {ranks: pipeline_runs(args.input, ranks, known, Path(folder) / f"np{ranks}.h5") for ranks in (1, 2)}
    cnn = dlib.cnn_face_detection_model_v1(str(default_detector_path()))

    def dlib_pipeline():
        for image in images:
            for detection in cnn(image, 0):
                recogniser.compute_face_descriptor(image, predictor(image, detection.rect), 0)

    _, dlib_pipeline_seconds, _ = timed(dlib_pipeline)
    faces = len(chips)
    report = {
        "command": " ".join(["python", *sys.argv]), "images": len(images), "image_size": list(images.shape[1:3]),
        "faces": faces, "threads": 1, "batch_size": args.batch_size, "cores": os.cpu_count(),
        "dcnn_descriptors_per_second": faces / ours_seconds, "dlib_descriptors_per_second": faces / dlib_seconds,
        "descriptor_max_difference": float(np.abs(ours - theirs).max()),
        "dcnn_landmarks_per_second": faces / ours_landmark_seconds,
        "dlib_landmarks_per_second": faces / dlib_landmark_seconds,
        "landmarks_equal": all(np.array_equal(p, [[q.x, q.y] for q in s.parts()]) for p, s in zip(parts, shapes)),
        "dcnn_pipeline_images_per_second": {f"np{r}": rate for r, rate in rates.items()},
        "dlib_pipeline_images_per_second": len(images) / dlib_pipeline_seconds,
    }
    print(f"descriptors, {faces} faces, 1 thread: dcnn {report['dcnn_descriptors_per_second']:.1f}/s, dlib "
          f"{report['dlib_descriptors_per_second']:.1f}/s ({dlib_seconds / ours_seconds:.1f}x faster), largest "
          f"difference {report['descriptor_max_difference']:.1e}")
    print(f"landmarks: dcnn {report['dcnn_landmarks_per_second']:.0f}/s, dlib {report['dlib_landmarks_per_second']:.0f}"
          f"/s, equal: {report['landmarks_equal']}")
    print(f"pipeline on {len(images)} images of {images.shape[1]}x{images.shape[2]}: dcnn np1 {rates[1]:.2f}, np2 "
          f"{rates[2]:.2f} images/s (task time, after start-up); dlib in one process "
          f"{report['dlib_pipeline_images_per_second']:.2f} images/s")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
