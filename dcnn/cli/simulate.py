"""A discrete-event simulation of batch mode on P nodes: the paper's table for clusters this machine does not have.

``python -m dcnn.simulate``: calibrate the model of :mod:`dcnn.analysis.simulate` on the paper's table or on result
files, print the simulated grid of nodes by images, and the planner's memory per node.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dcnn.analysis.analyze import count_of
from dcnn.analysis.simulate import PAPER_TABLE, Machine, calibrate, format_comparison, paper_comparison, simulate
from dcnn.cli.common import MAX_THREADS, add_common_arguments, add_force_argument, output_path, run_main
from dcnn.errors import InputError
from dcnn.io.numbers import check_number, parse_number
from dcnn.modes import concurrent_tasks
from dcnn.network.graph import parse_shape


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dcnn.simulate``."""
    parser = argparse.ArgumentParser(
        prog="python -m dcnn.simulate",
        description="Simulate batch-mode face detection on P nodes (dcnn's work stealing, a network model, "
                    "calibrated node speed) and compare with the paper's table.")
    parser.add_argument("--calibrate", choices=("paper", "paper-all", "files"), default="paper",
                        help="paper (default): fit a RockPro64 node to the paper's 3-node column; paper-all: fit "
                             "the whole table with a serial part per image (Amdahl); files: fit to the result "
                             "files given with --runs (this machine)")
    parser.add_argument("--runs", nargs="*", default=[], metavar="H5", help="dcnn result files for --calibrate files")
    parser.add_argument("--nodes", default="3,6,9,12,15,18,20", help="node counts (comma-separated)")
    parser.add_argument("--images", default="100,1000,5000,10000,50000", help="image counts (comma-separated)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, metavar="T",
                        help="threads per node, as python -m dcnn.infer --threads (default: 1): a node runs T tasks "
                             "at once when the run leaves it T tasks, each holding its own working set; the "
                             "calibrated time per image is the node's, so calibrate on runs at the same threads")
    parser.add_argument("--policy", choices=("steal", "static"), default="steal")
    parser.add_argument("--jitter", type=float, default=0.05, help="coefficient of variation of task durations")
    parser.add_argument("--image", default="128x128", metavar="HxW",
                        help="face image size, for the planner's memory per node (default 128x128)")
    parser.add_argument("--ram", default="4GiB", help="RAM per node, for the memory check (default 4GiB)")
    parser.add_argument("--markdown", metavar="FILE",
                        help="also write the comparison with the paper as Markdown (--calibrate paper or paper-all)")
    add_force_argument(parser, "the --markdown file")
    add_common_arguments(parser)
    return parser


def _file_points(paths: Sequence[str]) -> list[tuple[int, int, float]]:
    from dcnn.analysis.analyze import load_summary

    points = []
    for path in paths:
        summary = load_summary(path)
        if summary.status == "complete" and summary.mode == "batch":
            points.append((summary.ranks, summary.images_computed, summary.elapsed))
    return points


def _memory_line(args: argparse.Namespace, nodes: int, images: int) -> str:
    """The planner's batch-mode memory per node for the face detector at ``--image`` (the same on every node),
    for ``images`` images on ``nodes`` nodes: the most tasks a node runs at once of the grid (the largest image
    count on the fewest nodes, :func:`dcnn.modes.concurrent_tasks`), as the simulation runs them."""
    from dcnn.faces.detect import FaceDetector
    from dcnn.planner.plan import Cluster, format_bytes, parse_bytes, plan_for

    height, width = parse_shape(args.image)[-2:]
    detector = FaceDetector.load(None, 0)
    cluster = Cluster.uniform(nodes, parse_bytes(args.ram), threads=args.threads, task_threads=args.threads)
    plan = plan_for(detector.network, detector.input_shape(height, width), cluster, "batch", args.batch_size,
                    images=images)
    verdict = "fits" if plan.overflow(cluster) is None else "DOES NOT FIT"
    at_once = concurrent_tasks("batch", args.threads, -(-images // args.batch_size), nodes)
    return (f"memory per node (planner, batch mode, {height}x{width} images, batch {args.batch_size}, "
            f"{count_of(at_once, 'task')} at once): {format_bytes(plan.peak())} of {format_bytes(cluster.budget(0))} "
            f"({verdict})")


#: The most images a simulation takes: it runs every task as an event, so time and memory grow with the images
#: (10^8 at the default batch: about a minute and 1.3 GB here; 10^12 ran for days before).
MAX_IMAGES = 10**8
#: The most nodes a simulation takes: its state grows with them (10^8 nodes: 2.7 GB within seconds, climbing);
#: 100,000 nodes simulate in seconds.
MAX_NODES = 100_000


def run(args: argparse.Namespace) -> int:
    """Calibrate, simulate the grid, print it (and the comparison with the paper)."""
    from dcnn.planner.plan import parse_bytes

    nodes = [parse_number(v, "--nodes: each count", integer=True, minimum=1, maximum=MAX_NODES)
             for v in args.nodes.split(",")]
    images = [parse_number(v, "--images: each count", integer=True, minimum=1, maximum=MAX_IMAGES)
              for v in args.images.split(",")]
    check_number(args.batch_size, "--batch-size", minimum=1)
    check_number(args.jitter, "--jitter", minimum=0)
    check_number(args.threads, "--threads", minimum=1, maximum=MAX_THREADS)
    parse_shape(args.image)
    parse_bytes(args.ram)
    markdown = None
    if args.markdown:  # before any work: the simulation takes seconds to minutes
        if not args.calibrate.startswith("paper"):
            raise InputError(f"--markdown applies to --calibrate paper or paper-all only (it writes the comparison "
                             f"with the paper's table), not --calibrate {args.calibrate}")
        markdown = output_path(args.markdown, "--markdown", force=args.force, kind="text", inputs=args.runs)
    if args.calibrate == "paper":
        points = [(3, count, row[3]) for count, row in PAPER_TABLE.items() if 3 in row]
    elif args.calibrate == "paper-all":
        points = [(nodes, count, value) for count, row in PAPER_TABLE.items() for nodes, value in row.items()]
    else:
        measured = _file_points(args.runs)
        fewest = min((nodes for nodes, _, _ in measured), default=0)
        points = [point for point in measured if point[0] == fewest]
    startup, per_image, serial = calibrate(points, serial=args.calibrate == "paper-all")
    machine = Machine(per_image, startup, args.jitter, serial_seconds_per_image=serial)
    print(f"calibrated on {len(points)} runs ({args.calibrate}): {per_image:.4f} s per image per node, "
          f"{startup:.2f} s startup, {serial * 1e3:.2f} ms serial per image; policy {args.policy}, "
          f"batch {args.batch_size}, {count_of(args.threads, 'thread')} per node")
    print(f"{'images':>7}" + "".join(f"{n:>9}" for n in nodes) + "   (simulated seconds)")
    for count in images:
        cells = [simulate(machine, n, count, args.batch_size, policy=args.policy, threads=args.threads)["seconds"]
                 for n in nodes]
        print(f"{count:>7}" + "".join(f"{c:9.1f}" for c in cells))
    print(_memory_line(args, min(nodes), max(images)))
    if args.calibrate == "files":
        print(f"\nreal runs against the simulation calibrated on the np={fewest} runs")
        print(f"{'ranks':>5} {'images':>7} {'measured s':>11} {'simulated s':>12} {'error':>7}")
        for nodes, count, seconds in sorted(measured):
            simulated = simulate(machine, nodes, count, args.batch_size, policy=args.policy,
                                 threads=args.threads)["seconds"]
            print(f"{nodes:>5} {count:>7} {seconds:11.2f} {simulated:12.2f} {(simulated - seconds) / seconds:+7.1%}")
    if args.calibrate.startswith("paper"):
        text = format_comparison(paper_comparison(machine, args.batch_size, args.policy, threads=args.threads))
        print("\n" + text)
        if markdown:
            with open(markdown, "w") as handle:
                handle.write(f"Simulated (policy {args.policy}, batch {args.batch_size}, "
                             f"{count_of(args.threads, 'thread')} per node, calibration {args.calibrate}: "
                             f"{per_image:.4f} s per image per node, {startup:.2f} s startup, {serial * 1e3:.2f} ms "
                             f"serial per image) against the paper's table\n\n{text}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dcnn.simulate``."""
    return run_main(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
