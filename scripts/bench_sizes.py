#!/usr/bin/env python
"""Real collections: time per image with every image of its own size against one size, and peak memory against
the planner's prediction for many-size folders, ``.npz`` spatial runs and ``--fuse-depth`` runs.

Each case is a real ``python -m dcnn.infer`` run (under ``mpiexec`` at ``--ranks``); figures come from its result
file (``elapsed_seconds``, ``images_computed``, ``/stats/peak_rss_bytes``, ``/stats/predicted_peak_bytes``).
Images are face crops from ``data/faces.h5`` resized to each size, so the detector finds faces.

Usage: ``python scripts/bench_sizes.py [--ranks 2] [--images 600] [--output results/bench_sizes.json]``
(text table on stdout). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
from benchlib import add_report_arguments, mpi_launcher, report_output
from PIL import Image

from dcnn.network.weights import init_weights, save_weights
from dcnn.network.zoo import get_model

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


def folder(path: Path, sizes: list[tuple[int, int]]) -> Path:
    """PNG face crops of the given sizes."""
    path.mkdir(parents=True, exist_ok=True)
    with h5py.File(ROOT / "data" / "faces.h5") as handle:
        faces = handle["images"][()]
    for index, (height, width) in enumerate(sizes):
        Image.fromarray(faces[index % len(faces)]).resize((width, height)).save(path / f"{index:05d}.png")
    return path


def run(name: str, ranks: int, output: Path, *args: str) -> dict:
    """One dcnn.infer run; its figures from the result file."""
    launcher = mpi_launcher(ranks) if ranks > 1 else []
    command = [*launcher, sys.executable, "-m", "dcnn.infer", "--threads", "1", "--quiet", "--output", str(output),
               *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{name}: {done.stderr.strip()}")
    with h5py.File(output) as handle:
        attrs = handle.attrs
        measured = handle["stats/peak_rss_bytes"][()]
        predicted = handle["stats/predicted_peak_bytes"][()]
        return {"case": name, "ranks": ranks, "plan": str(attrs["plan"]), "images": int(attrs["images_computed"]),
                "seconds": float(attrs["elapsed_seconds"]),
                "ms_per_image": 1e3 * float(attrs["elapsed_seconds"]) / int(attrs["images_computed"]),
                "measured_mib": (measured / MIB).round(1).tolist(),
                "predicted_mib": (predicted / MIB).round(1).tolist(),
                "within_prediction": bool(attrs["memory_within_prediction"]),
                "prediction_over_measured": float((predicted / measured).min()), "arguments": list(args)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--images", type=int, default=600, help="images in the many-sizes and same-size folders")
    add_report_arguments(parser, "results/bench_sizes.json")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    rng = np.random.default_rng(0)
    side = int(np.ceil(np.sqrt(args.images)))
    many = [(48 + h, 48 + w) for h in range(side) for w in range(side)][:args.images]
    rng.shuffle(many)
    mean = tuple(int(v) for v in np.rint(np.mean(many, axis=0)))
    photos = [(int(h), int(w)) for h, w in rng.integers(120, 520, (24, 2))]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        many_folder = folder(scratch / "many", many)
        same_folder = folder(scratch / "same", [mean] * args.images)
        photo_folder = folder(scratch / "photos", photos)
        cases = [
            ("many sizes, batch", args.ranks, many_folder, ["--mode", "batch"]),
            ("one size, batch", args.ranks, same_folder, ["--mode", "batch"]),
            ("many sizes, spatial", args.ranks, many_folder, ["--mode", "spatial", "--batch-size", "1"]),
            ("one size, spatial", args.ranks, same_folder, ["--mode", "spatial", "--batch-size", "1"]),
            ("many sizes, fused recompute 2x2", args.ranks, many_folder,
             ["--mode", "fused", "--tiles", "2x2", "--halo-policy", "recompute", "--batch-size", "1"]),
            ("one size, fused recompute 2x2", args.ranks, same_folder,
             ["--mode", "fused", "--tiles", "2x2", "--halo-policy", "recompute", "--batch-size", "1"]),
            ("24 photo sizes, single, upsample 1", 1, photo_folder, ["--mode", "single", "--upsample", "1",
                                                                     "--batch-size", "1"]),
            ("24 photo sizes, spatial", args.ranks, photo_folder, ["--mode", "spatial"]),
            ("24 photo sizes, fused reuse 3x3", args.ranks, photo_folder, ["--mode", "fused", "--tiles", "3x3"]),
            ("24 photo sizes, fused 3x3 --fuse-depth 6", args.ranks, photo_folder,
             ["--mode", "fused", "--tiles", "3x3", "--halo-policy", "recompute", "--fuse-depth", "6"]),
        ]
        for name, ranks, images, extra in cases:
            rows.append(run(name, ranks, scratch / f"run{len(rows)}.h5", "--input", str(images), *extra))
            print_row(rows[-1])
        network = get_model("alexnet")
        save_weights(scratch / "alexnet.npz", init_weights(network, 1))
        with h5py.File(scratch / "small.h5", "w") as handle:
            handle["images"] = rng.integers(0, 256, (4, 160, 160, 3), dtype=np.uint8)
        rows.append(run("alexnet .npz weights, spatial", args.ranks, scratch / "alexnet.h5", "--model", "alexnet",
                        "--weights", str(scratch / "alexnet.npz"), "--input", str(scratch / "small.h5"),
                        "--mode", "spatial", "--top", "0"))
        print_row(rows[-1])
    report = {"command": " ".join(["python", *sys.argv]), "ranks": args.ranks, "images": args.images,
              "many_sizes": len(set(many)), "same_size": mean, "runs": rows}
    report_file.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


def print_row(row: dict) -> None:
    if not getattr(print_row, "header", False):
        print(f"{'case':<42} {'np':>2} {'images':>6} {'ms/image':>9} {'measured MiB':>15} {'predicted MiB':>15} "
              f"{'pred/meas':>9}")
        print_row.header = True
    measured = "/".join(f"{v:.0f}" for v in row["measured_mib"])
    predicted = "/".join(f"{v:.0f}" for v in row["predicted_mib"])
    print(f"{row['case']:<42} {row['ranks']:>2} {row['images']:>6} {row['ms_per_image']:9.1f} {measured:>15} "
          f"{predicted:>15} {row['prediction_over_measured']:9.2f}", flush=True)


if __name__ == "__main__":
    main()
