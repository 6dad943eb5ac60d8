"""``python -m dcnn.infer``: run a CNN over an image set and write the outputs to HDF5.

With no arguments it classifies the bundled sample images (``data/samples.h5``) with VGG-16 and seeded
weights, and writes ``results/<timestamp>.h5``. ``--mode spatial`` splits every image over the ranks of
``mpirun`` (see :mod:`dcnn.spatial`); ``--mode single`` runs on one process. Both record per-layer timings.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from . import __version__
from .cli import add_common_arguments, run_main
from .comm import collective, hostnames, mpi_library_version, ranks_per_node, self_comm, world
from .errors import InputError, PlanError
from .graph import Network, format_shape, parse_shape
from .images import Hdf5ImageSet, ImageSet, open_image_set
from .kernels.elementwise import softmax
from .progress import Progress
from .results import ResultWriter, peak_rss_bytes, provenance, utc_now
from .spatial import SpatialEngine, fc_shard_rows
from .threads import default_num_threads, set_num_threads
from .weights import init_weights, load_weights
from .zoo import get_model, model_names

__all__ = ["DEFAULT_INPUT", "build_parser", "main"]

DEFAULT_INPUT = Path(__file__).resolve().parents[1] / "data" / "samples.h5"
MODES = ("single", "spatial")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dcnn.infer``."""
    parser = argparse.ArgumentParser(
        prog="python -m dcnn.infer",
        description="Run CNN inference over an image set and write outputs and timings to HDF5.",
        epilog="Input: an HDF5 file with an N x H x W x C uint8 dataset (preprocessed for the model) or an "
               "N x C x H x W float32 dataset (used as is), or a folder of PNG/JPEG files. Output: HDF5 with "
               "/outputs/logits (N x classes) and the run's provenance as attributes; see docs/results.md.")
    parser.add_argument("--model", default="vgg16", metavar="NAME",
                        help=f"network to run: {', '.join(model_names())} (default: vgg16)")
    parser.add_argument("--weights", metavar="FILE",
                        help="weights as .npz or HDF5 keyed by PyTorch state_dict names "
                             "(default: seeded He initialisation, see --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation without --weights (0)")
    parser.add_argument("--input", default=str(DEFAULT_INPUT), metavar="PATH",
                        help="HDF5 image set or folder of images (default: the bundled data/samples.h5)")
    parser.add_argument("--dataset", default="images", metavar="NAME",
                        help="dataset inside the HDF5 input (default: images)")
    parser.add_argument("--output", metavar="FILE",
                        help="result file to create (default: results/<timestamp>.h5)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="B",
                        help="images per forward pass (default: 4)")
    parser.add_argument("--threads", type=int, metavar="T",
                        help="threads per rank (default: cores per node divided by ranks per node)")
    parser.add_argument("--mode", choices=MODES, default="single",
                        help="execution mode. single: one process runs everything (default). spatial: every image "
                             "is split over a 2-D grid of ranks, halos are exchanged per layer, fully connected "
                             "layers are split by output neurons (each rank holds 1/P of their weights)")
    parser.add_argument("--grid", metavar="PYxPX",
                        help="spatial mode: the rank grid, rows x columns, e.g. 2x3 (default: MPI.Compute_dims)")
    parser.add_argument("--no-overlap", action="store_true",
                        help="spatial mode: wait for halos before computing, instead of computing each block's "
                             "interior while they are in flight (for measuring what overlap hides)")
    parser.add_argument("--top", type=int, default=3, metavar="K",
                        help="classes shown per image in the summary (default: 3; 0 for none)")
    parser.add_argument("--version", action="version", version=f"dcnn {__version__}")
    add_common_arguments(parser)
    return parser


def _check_input(network: Network, images: ImageSet) -> tuple[int, ...]:
    """Raise a clear error if the images cannot go through the network; return the per-image input shape."""
    if len(images) == 0:
        raise InputError(f"{images.path}: the image set is empty")
    height, width = images.image_shape(0)
    channels = network.in_channels
    if isinstance(images, Hdf5ImageSet):
        if images.channels_last and images.channels not in (channels, 3):
            raise InputError(f"{images.path}: images have {images.channels} channels, "
                             f"{network.name} expects {channels}")
        if not images.channels_last and images.channels != channels:
            raise InputError(f"{images.path}: tensors have {images.channels} channels, "
                             f"{network.name} expects {channels}")
    shape = (channels, height, width)
    network.shapes(shape)
    return shape


def _batches(images: ImageSet, batch_size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges of at most ``batch_size`` consecutive images of one size."""
    start = 0
    while start < len(images):
        stop = start + 1
        size = images.image_shape(start)
        while stop < len(images) and stop - start < batch_size and images.image_shape(stop) == size:
            stop += 1
        yield start, stop
        start = stop


def _default_output() -> Path:
    return Path("results") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}.h5"


def parse_grid(text: str | None) -> tuple[int, int] | None:
    """``"2x3"`` to ``(2, 3)``; ``None`` stays ``None`` (MPI chooses)."""
    if text is None:
        return None
    shape = parse_shape(text)
    if len(shape) != 2:
        raise InputError(f"--grid takes ROWSxCOLS such as 2x3, got {text!r}")
    return shape  # type: ignore[return-value]


def _validate(args: argparse.Namespace, comm) -> tuple[Network, ImageSet, tuple[int, ...], dict]:
    """Check everything before any heavy work; raises :class:`DcnnError` (called inside a collective)."""
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    if args.mode == "single" and comm.size > 1:
        raise PlanError(f"--mode single runs on one process, but {comm.size} were started; "
                        f"run without mpirun, or choose --mode spatial")
    grid = parse_grid(args.grid)
    if args.mode == "spatial" and grid is not None and grid[0] * grid[1] != comm.size:
        raise PlanError(f"--grid {args.grid} needs {grid[0] * grid[1]} ranks, but {comm.size} were started")
    network = get_model(args.model)
    images = open_image_set(args.input, args.dataset)
    input_shape = _check_input(network, images)
    size, rank = (comm.size, comm.rank) if args.mode == "spatial" else (1, 0)
    rows = fc_shard_rows(network, size, rank)
    weights = (load_weights(args.weights, network, rows=rows) if args.weights
               else init_weights(network, args.seed, rows=rows))
    return network, images, input_shape, weights


def run(args: argparse.Namespace) -> int:
    """The body of ``python -m dcnn.infer`` (see :func:`dcnn.cli.run_main` for error handling)."""
    comm = world()
    with collective(comm):
        network, images, input_shape, weights = _validate(args, comm)
    threads = args.threads or max(1, default_num_threads() // ranks_per_node(comm))
    set_num_threads(threads)
    engine_comm = comm if args.mode == "spatial" else self_comm()
    engines: dict[tuple[int, ...], SpatialEngine] = {}
    writer = None
    if comm.rank == 0:
        output = Path(args.output) if args.output else _default_output()
        attributes = {
            **provenance(), "model": network.name, "mode": args.mode, "weights": args.weights or f"init:{args.seed}",
            "input": images.path, "input_shape": format_shape(input_shape), "num_images": len(images),
            "batch_size": args.batch_size, "threads": threads, "ranks": comm.size, "grid": args.grid or "auto",
            "overlap": not args.no_overlap, "mpi_library": mpi_library_version(), "started": utc_now(),
        }
        writer = ResultWriter(output, len(images), network.output_shape(input_shape)[0], attributes)
    names = hostnames(comm)
    progress = Progress(len(images), enabled=False if (args.quiet or comm.rank) else None)
    top_rows = []
    started = time.perf_counter()
    try:
        for start, stop in _batches(images, args.batch_size):
            batch = images.read(start, stop, network.preprocessing)
            shape = batch.shape[1:]
            if shape not in engines:
                network.shapes(shape)
                grid = parse_grid(args.grid) if args.mode == "spatial" else None
                engines[shape] = SpatialEngine(network, weights, shape, engine_comm, grid, overlap=not args.no_overlap)
            logits = engines[shape](batch)
            if writer is not None:
                writer.write_logits(start, logits)
            if len(top_rows) < 5 and args.top > 0:
                top_rows.extend((start + i, row) for i, row in enumerate(logits[:5 - len(top_rows)]))
            progress.update(stop)
        elapsed = time.perf_counter() - started
        stats = comm.gather(_rank_stats(network, engines.values()))
        if writer is not None:
            writer.write_group("timing", _stack(stats, ("compute_seconds", "wait_seconds", "bytes_sent",
                                                        "bytes_received")))
            writer.write_group("timing", {"layer_names": np.array([n for n, _ in network.layers], dtype="S")})
            writer.write_group("stats", _stack(stats, ("peak_rss_bytes",)))
            writer.finish(finished=utc_now(), elapsed_seconds=elapsed, images_per_second=len(images) / elapsed,
                          hostnames=names, grid="x".join(map(str, next(iter(engines.values())).plan.dims)))
    finally:
        if writer is not None:
            writer.close()
        for engine in engines.values():
            engine.close()
        images.close()
    if not args.quiet and comm.rank == 0:
        print(f"{network.name}: {len(images)} images of {format_shape(input_shape)} in {elapsed:.2f} s "
              f"({len(images) / elapsed:.2f} images/s, {args.mode} mode, {comm.size} rank(s) x {threads} "
              f"thread(s)) -> {writer.path}")
        for index, row in top_rows:
            probabilities = softmax(row[None].astype(np.float64))[0]
            best = np.argsort(probabilities)[::-1][:args.top]
            classes = ", ".join(f"{c} ({probabilities[c]:.3f})" for c in best)
            print(f"  image {index}: top classes {classes}")
    return 0


def _rank_stats(network: Network, engines) -> dict[str, np.ndarray]:
    """This rank's per-layer counters summed over its engines, and its peak memory."""
    total = {field: np.zeros(len(network), dtype) for field, dtype in (
        ("compute_seconds", float), ("wait_seconds", float), ("bytes_sent", np.int64), ("bytes_received", np.int64))}
    for engine in engines:
        for field, values in total.items():
            values += getattr(engine.stats, field)
    return {**total, "peak_rss_bytes": np.array(peak_rss_bytes())}


def _stack(per_rank: list[dict[str, np.ndarray]], fields: Sequence[str]) -> dict[str, np.ndarray]:
    """Stack each field over ranks (rank is the first axis)."""
    return {field: np.stack([stats[field] for stats in per_rank]) for field in fields}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dcnn.infer``."""
    return run_main(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
