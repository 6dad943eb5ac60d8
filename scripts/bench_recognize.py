#!/usr/bin/env python
"""Benchmark dcnn's face recognition against dlib's, on the same faces, one thread per process.

1. Descriptors per second per core: the aligned chips of every face dcnn finds in the bundled 128 x 128 images,
   described by dcnn (the descriptor network, a dcnn DAG run by ``Forward``, ``--batch-size`` chips per pass)
   and by dlib's ``compute_face_descriptor`` on the same chips; landmarks per second for both on the same boxes
   (dcnn: all faces of an image at once); the largest descriptor difference. Rates are per CPU second
   (``time.process_time``: the machine may be shared), wall-clock rates beside them.
2. The whole pipeline (detect, landmarks, chips, descriptors, identities against a 2-person gallery) in images per
   second: dcnn's recognition workload in this process (per CPU second), ``python -m dcnn.recognize`` at np 1
   and 2 (batch mode; the rate the result file records, task wall time after start-up, so it moves with the
   machine's load, recorded as ``load_average``) and dlib's own pipeline in this process (per CPU second).

Usage: ``python scripts/bench_recognize.py [--input data/faces.h5] [--batch-size 4]``; writes
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
from benchlib import add_report_arguments, face_bench, report_output, timed
from PIL import Image

from dcnn.exec.forward import Forward
from dcnn.exec.workloads import Detection, Recognition
from dcnn.faces.descriptor import DESCRIPTOR_BATCH
from dcnn.faces.detect import default_detector_path, to_records
from dcnn.faces.models import DESCRIPTOR_MODEL, LANDMARK_MODEL, bundled_model
from dcnn.faces.pipeline import FaceDescriber, load_gallery
from dcnn.io.images import open_image_set


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
    parser.add_argument("--batch-size", type=int, default=DESCRIPTOR_BATCH)
    add_report_arguments(parser, "results/bench_recognize.json")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    import dlib

    images, detector, forward = face_bench(args.input)
    describer = FaceDescriber.load(Forward)
    records = to_records(detector.detect(images, forward), 0)
    by_image = {int(i): records[records["image"] == i] for i in np.unique(records["image"])}
    boxes = {i: np.stack([rows[k] for k in ("left", "top", "right", "bottom")], axis=1) for i, rows in by_image.items()}
    load_before = os.getloadavg()

    def our_landmarks():
        return np.concatenate([describer.landmark(images[i], box) for i, box in boxes.items()])

    predictor = dlib.shape_predictor(str(bundled_model(LANDMARK_MODEL)))
    rects = [(i, dlib.rectangle(*(int(v) for v in box))) for i, image_boxes in boxes.items() for box in image_boxes]

    def dlib_landmarks():
        return [predictor(images[i], rect) for i, rect in rects]

    our_landmarks()  # warm-up
    parts, ours_landmark_cpu, ours_landmark_wall = timed(our_landmarks)
    shapes, dlib_landmark_cpu, dlib_landmark_wall = timed(dlib_landmarks)
    image_of_face = [i for i, _ in rects]
    chips = np.concatenate([describer.chips(images[i], p[None]) for i, p in zip(image_of_face, parts)])
    describer.descriptor.describe(chips[:2], describer.run)  # warm-up
    ours, ours_cpu, ours_wall = timed(lambda: describer.descriptor.describe(chips, describer.run, args.batch_size))
    recogniser = dlib.face_recognition_model_v1(str(bundled_model(DESCRIPTOR_MODEL)))
    recogniser.compute_face_descriptor(list(chips[:2]), 0)
    theirs, dlib_cpu, dlib_wall = timed(lambda: np.array(recogniser.compute_face_descriptor(list(chips), 0)))
    with tempfile.TemporaryDirectory() as folder:
        known = Path(folder) / "known"
        known.mkdir()
        Image.fromarray(images[0]).save(known / "alice.png")
        Image.fromarray(images[2]).save(known / "bob.png")
        gallery, _ = load_gallery(known, detector, forward, describer)
        workload = Recognition(Detection(detector), describer, gallery)
        with open_image_set(args.input) as image_set:
            _, pipeline_cpu, pipeline_wall = timed(lambda: [
                workload.run(image_set, first, min(first + 4, len(images)), lambda shape: forward)
                for first in range(0, len(images), 4)])
        rates = {ranks: pipeline_runs(args.input, ranks, known, Path(folder) / f"np{ranks}.h5") for ranks in (1, 2)}
    cnn = dlib.cnn_face_detection_model_v1(str(default_detector_path()))

    def dlib_pipeline():
        for image in images:
            for detection in cnn(image, 0):
                recogniser.compute_face_descriptor(image, predictor(image, detection.rect), 0)

    _, dlib_pipeline_cpu, dlib_pipeline_wall = timed(dlib_pipeline)
    faces = len(chips)
    report = {
        "command": " ".join(["python", *sys.argv]), "images": len(images), "image_size": list(images.shape[1:3]),
        "faces": faces, "threads": 1, "batch_size": args.batch_size, "cores": os.cpu_count(),
        "load_average": [round(v, 2) for v in (*load_before, *os.getloadavg())],
        "clock": "CPU seconds of this process (time.process_time); *_wall: wall-clock",
        "dcnn_descriptors_per_second": faces / ours_cpu, "dlib_descriptors_per_second": faces / dlib_cpu,
        "dcnn_descriptors_per_second_wall": faces / ours_wall, "dlib_descriptors_per_second_wall": faces / dlib_wall,
        "descriptor_max_difference": float(np.abs(ours - theirs).max()),
        "dcnn_landmarks_per_second": faces / ours_landmark_cpu,
        "dlib_landmarks_per_second": faces / dlib_landmark_cpu,
        "dcnn_landmarks_per_second_wall": faces / ours_landmark_wall,
        "dlib_landmarks_per_second_wall": faces / dlib_landmark_wall,
        "landmarks_equal": all(np.array_equal(p, [[q.x, q.y] for q in s.parts()]) for p, s in zip(parts, shapes)),
        "dcnn_pipeline_images_per_cpu_second": len(images) / pipeline_cpu,
        "dcnn_pipeline_images_per_second_wall": len(images) / pipeline_wall,
        "dcnn_recognize_images_per_second": {f"np{r}": rate for r, rate in rates.items()},
        "dlib_pipeline_images_per_cpu_second": len(images) / dlib_pipeline_cpu,
        "dlib_pipeline_images_per_second_wall": len(images) / dlib_pipeline_wall,
    }
    print(f"load average {report['load_average'][:3]} before, {report['load_average'][3:]} after, on "
          f"{os.cpu_count()} cores; rates per CPU second (wall-clock in the JSON file)")
    print(f"descriptors, {faces} faces, 1 thread, {args.batch_size} chips per pass: dcnn "
          f"{report['dcnn_descriptors_per_second']:.1f}/s, dlib {report['dlib_descriptors_per_second']:.1f}/s "
          f"({dlib_cpu / ours_cpu:.1f}x), largest difference {report['descriptor_max_difference']:.1e}")
    print(f"landmarks: dcnn {report['dcnn_landmarks_per_second']:.0f}/s, dlib {report['dlib_landmarks_per_second']:.0f}"
          f"/s, equal: {report['landmarks_equal']}")
    print(f"pipeline on {len(images)} images of {images.shape[1]}x{images.shape[2]}: dcnn in-process "
          f"{report['dcnn_pipeline_images_per_cpu_second']:.2f} images per CPU second, dlib "
          f"{report['dlib_pipeline_images_per_cpu_second']:.2f}; python -m dcnn.recognize np1 {rates[1]:.2f}, np2 "
          f"{rates[2]:.2f} images/s (task wall time, after start-up)")
    report_file.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
