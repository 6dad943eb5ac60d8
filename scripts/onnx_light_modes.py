#!/usr/bin/env python
"""ONNX's light models through ``python -m dcnn.infer`` under mpiexec: spatial and fused mode at 2 to 4 ranks.

Each light model that dcnn supports (``dcnn.testing.onnx_conformance.light_cases``: the shipped model, the input
ONNX's runner feeds it and its expected output) is written to an HDF5 set and run by the real command in spatial
mode at np 2, 3 and 4 and in fused mode (2x2 tiles) with both halo policies at np 2 to 4, one thread per rank; each
result file's logits are compared with the expected output at the case's own tolerance
(``numpy.testing.assert_allclose(rtol, atol)``, as ONNX's runner). The fused depth is the deepest cut of the
network whose output map still has 2x2 pixels. Models dcnn does not support are listed with the reason.

Usage: ``OMP_NUM_THREADS=1 python scripts/onnx_light_modes.py [--models squeezenet,inception_v1]
[--output results/onnx_light_modes.md]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import onnx
from benchlib import add_report_arguments, mpi_launcher, report_output

from dcnn.decomposition.fused import check_tile_grid, spatial_depth
from dcnn.errors import InputError, PlanError
from dcnn.network.onnx import UnsupportedModelError, load_onnx
from dcnn.testing.onnx_conformance import light_cases

#: (label, ranks, dcnn.infer options): spatial at np 2-4, fused with both halo policies at np 2-4.
CONFIGURATIONS = [
    *((f"spatial np{n}", n, ("--mode", "spatial")) for n in (2, 3, 4)),
    *(
        (f"fused {policy} np{n}", n, ("--mode", "fused", "--tiles", "2x2", "--halo-policy", policy))
        for policy in ("recompute", "reuse")
        for n in (2, 3, 4)
    ),
]
TILES = (2, 2)
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def fused_depth(network, shape) -> int:
    """The deepest depth that ends at a cut and leaves at least a 2x2 map for the tiles."""
    for depth in range(spatial_depth(network), 0, -1):
        try:
            return check_tile_grid(network, shape, TILES, depth)
        except PlanError:
            continue
    raise PlanError(f"{network.name}: no fused depth takes {TILES[0]}x{TILES[1]} tiles")


def run(model: Path, images: Path, output: Path, ranks: int, options: tuple[str, ...]) -> tuple[int, str, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [
            *mpi_launcher(ranks),
            sys.executable,
            "-m",
            "dcnn.infer",
            "--model",
            str(model),
            "--input",
            str(images),
            "--output",
            str(output),
            "--threads",
            "1",
            "--quiet",
            *options,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, done.stderr.strip(), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated light model names (default: all)")
    add_report_arguments(parser, "results/onnx_light_modes.md")
    args = parser.parse_args()
    report_file = report_output(args)  # checked before the benchmark runs
    wanted = set(args.models.split(",")) if args.models else None
    lines = [
        "# ONNX light models in spatial and fused mode",
        "",
        f"Written by `python scripts/onnx_light_modes.py{' --models ' + args.models if args.models else ''}`: "
        "`python -m dcnn.infer` under mpiexec, one thread per rank, fused mode with 2x2 tiles at the deepest "
        "cut that leaves a 2x2 map; logits compared with ONNX's expected output at the case's rtol/atol.",
        "",
        "| model | configuration | result | max abs. difference | seconds |",
        "|---|---|---|---:|---:|",
    ]
    failures = 0
    with tempfile.TemporaryDirectory() as folder:
        for case in light_cases():
            name = case.name.removeprefix("test_")
            if wanted is not None and name not in wanted:
                continue
            ((inputs, outputs),) = case.data_sets
            model = LIGHT / f"light_{name}.onnx"
            try:
                network = load_onnx(model).network
            except UnsupportedModelError as error:
                lines.append(f"| {name} | all | not supported: operators {', '.join(error.nodes)} | | |")
                print(f"{name}: not supported", flush=True)
                continue
            except InputError as error:
                lines.append(f"| {name} | all | not supported: {str(error).removeprefix(f'{model}: ')} | | |")
                print(f"{name}: not supported", flush=True)
                continue
            images = Path(folder) / f"{name}.h5"
            with h5py.File(images, "w") as handle:
                handle["images"] = inputs[0]
            depth = fused_depth(network, inputs[0].shape[1:])
            for label, ranks, options in CONFIGURATIONS:
                extra = ("--fuse-depth", str(depth)) if "fused" in label else ()
                output = Path(folder) / f"{name}-{label.replace(' ', '-')}.h5"
                code, error, seconds = run(model, images, output, ranks, (*options, *extra))
                if code != 0:
                    failures += 1
                    lines.append(
                        f"| {name} | {label} | **failed**: {error.splitlines()[-1] if error else code} | "
                        f"| {seconds:.1f} |"
                    )
                    continue
                with h5py.File(output) as handle:
                    got = handle["outputs/logits"][()].reshape(outputs[0].shape)
                difference = float(np.abs(got - outputs[0]).max())
                try:
                    np.testing.assert_allclose(got, outputs[0], rtol=case.rtol, atol=case.atol)
                    verdict = "passed"
                except AssertionError:
                    failures += 1
                    verdict = f"**failed** (rtol {case.rtol:g}, atol {case.atol:g})"
                lines.append(
                    f"| {name} | {label}{' depth ' + str(depth) if extra else ''} | {verdict} | "
                    f"{difference:.2e} | {seconds:.1f} |"
                )
                print(lines[-1], flush=True)
    lines += ["", f"{failures} failed configuration(s)."]
    report_file.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
