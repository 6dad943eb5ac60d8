"""``python -m dcnn.plan``'s body: predict memory and time per mode for a model on a cluster, pick a plan.

Examples::

    python -m dcnn.plan vgg16 --nodes 20 --ram 4GiB
    python -m dcnn.plan vgg16 --nodes 4 --ram 384MiB          # refused: says what does not fit and what would
    python -m dcnn.plan mmod --input 500x1000 --nodes 2 --mem-per-rank 200MiB
    python -m dcnn.plan mmod --recognize --input 128x128 --nodes 2 --mem-per-rank 256MiB   # dcnn.recognize
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from dcnn.analysis.analyze import count_of
from dcnn.cli.common import MAX_THREADS, add_common_arguments, add_model_argument, run_main
from dcnn.errors import InputError, PlanError
from dcnn.exec.imported import PREPROCESS_CHOICES, reader_bytes
from dcnn.exec.workloads import DETECTOR, is_detector, is_model_file, workload_input
from dcnn.faces.descriptor import descriptor_network, resnet_structure
from dcnn.faces.models import LANDMARK_MODEL, bundled_model
from dcnn.faces.shape_predictor import read_shape_predictor
from dcnn.io.numbers import check_number
from dcnn.kernels.conv import set_exact
from dcnn.network.graph import format_shape
from dcnn.network.zoo import model_names
from dcnn.planner.plan import (
    DEFAULT_MACS_PER_SECOND,
    MODES,
    Cluster,
    RunPlan,
    best_plan,
    exact_conv_hint,
    for_process,
    format_bytes,
    parse_bytes,
    plans,
)
from dcnn.planner.recognition import recognition_stage

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dcnn.plan``."""
    parser = argparse.ArgumentParser(
        prog="python -m dcnn.plan",
        description="Predict per-node memory and time of each execution mode for a model on a cluster, and "
                    "choose the fastest plan that keeps every node within its memory budget (the paper's "
                    "constraints: a fraction of each node's RAM for parameters and data).")
    add_model_argument(parser, f"{DETECTOR} (dlib's face detector), one of: {', '.join(model_names())}, or an "
                                      "ONNX model file (its runtime memory counts the ONNX reader)")
    parser.add_argument("--input", metavar="[Cx]HxW",
                        help="per-image input (classifiers: default the model's own; mmod: the image size, "
                             "default 500x1000)")
    parser.add_argument("--nodes", type=int, default=20, help="number of nodes, one rank each (default: 20)")
    parser.add_argument("--ram", default="4GiB",
                        help="RAM per node with its unit, e.g. 4GiB or 512MiB (default: 4GiB, a RockPro64)")
    parser.add_argument("--fraction", type=float, default=0.8,
                        help="share of each node's RAM for parameters and data (default: 0.8, as in the paper)")
    parser.add_argument("--mem-per-rank", metavar="SIZE",
                        help="budget per rank for the whole process, with its unit, e.g. 200MiB (a bare number "
                             "is refused; replaces --ram and --fraction)")
    parser.add_argument("--cluster", metavar="FILE", help="a cluster file (TOML) of heterogeneous nodes")
    parser.add_argument("--batch-size", type=int, default=4, help="largest batch to consider (default: 4)")
    parser.add_argument("--threads", type=int, default=1, metavar="T",
                        help="kernel threads per rank, as python -m dcnn.infer --threads (default: 1; the command "
                             "printed runs with it). In batch mode a rank of T threads runs T tasks at once when "
                             "the run has T tasks per rank, each holding its batch's input and working set")
    parser.add_argument("--images", type=int, default=1000, help="images in the set, for the time (default: 1000)")
    parser.add_argument("--mode", choices=MODES, action="append",
                        help="consider only this mode (repeatable; default: all)")
    parser.add_argument("--exact-conv", action="store_true",
                        help="plan a run with --exact-conv: convolution filters in their exact kernels' layouts, "
                             "not Winograd's transformed filters (four times the 3x3 ones)")
    parser.add_argument("--all", action="store_true", help="list every candidate, not only the best per mode")
    parser.add_argument("--recognize", action="store_true",
                        help=f"{DETECTOR} only: plan a face recognition run (python -m dcnn.recognize): every node "
                             "also holds the landmark and descriptor models and describes faces a batch at a time")
    add_common_arguments(parser)
    return parser


def _cluster(args: argparse.Namespace) -> Cluster:
    if args.cluster:
        return Cluster.load(args.cluster)
    if args.mem_per_rank:
        return Cluster.per_rank_budget(args.nodes, parse_bytes(args.mem_per_rank))
    return Cluster.uniform(args.nodes, parse_bytes(args.ram), args.fraction)


def _row(plan: RunPlan, cluster: Cluster) -> str:
    items = plan.memory[max(range(cluster.size), key=plan.peak)]
    parts = ", ".join(f"{name} {format_bytes(size)}" for name, size in items.items() if size)
    fits = "fits" if plan.overflow(cluster) is None else "DOES NOT FIT"
    return f"  {plan.describe():<30} {format_bytes(plan.peak()):>11} {plan.seconds:11.1f}  {fits:<12} {parts}"


#: The most nodes planned: the spatial and fused candidates cost time per rank (VGG-16 on 4,000 nodes: 88 s and
#: 860 MB; a million ran on silently).
MAX_NODES = 4096


def run(args: argparse.Namespace) -> int:
    """Print the candidates and the choice."""
    for flag, value, maximum in (("--nodes", args.nodes, MAX_NODES), ("--batch-size", args.batch_size, None),
                                 ("--images", args.images, None), ("--threads", args.threads, MAX_THREADS)):
        check_number(value, flag, minimum=1, maximum=maximum)
    check_number(args.fraction, "--fraction", above=0, maximum=1)
    if args.recognize and not is_detector(args.model):
        raise InputError(f"--recognize plans dlib's face detector ({DETECTOR}) with the recognition models, "
                         f"not {args.model}")
    network, shape, size = workload_input(args.model, args.input)
    stage = recognition_stage(read_shape_predictor(bundled_model(LANDMARK_MODEL)),
                              descriptor_network(resnet_structure())) if args.recognize else None
    set_exact(args.exact_conv)  # the planner counts the filter layouts of the kernels the run would build
    cluster = _cluster(args)
    # Batch mode's candidates run on task threads, as dcnn.infer runs them (the planner counts the tasks per batch).
    cluster = for_process(cluster, reader_bytes(args.model) if is_model_file(args.model) else 0, args.threads,
                          args.threads)
    modes = tuple(args.mode or MODES)
    candidates = plans(network, shape, cluster, args.batch_size, args.images, modes, stage=stage)
    try:
        chosen = best_plan(candidates, network, shape, cluster, modes, stage, args.images)
    except PlanError as error:
        if args.exact_conv:
            raise
        hint = exact_conv_hint(network, shape, cluster, modes, stage, args.images, lambda: best_plan(
            plans(network, shape, cluster, args.batch_size, args.images, modes, stage=stage), network, shape, cluster,
            modes, stage, args.images))
        raise PlanError(f"{error}{hint}") from None
    budget = min(cluster.budget(rank) for rank in range(cluster.size))
    shown_input = f"{size} images" + (f" (network input {format_shape(shape)})" if is_detector(args.model) else "")
    print(f"{network.name}{' with face recognition' if stage else ''} on {shown_input}, {args.images} images, "
          f"{count_of(cluster.size, 'node')}, "
          f"budget {format_bytes(budget)} per node, {count_of(args.threads, 'thread')} per node")
    print(f"predicted seconds assume {_speeds(cluster)}, {cluster.bandwidth * 8 / 1e9:g} Gbit/s and "
          f"{cluster.latency * 1e6:g} us per message (set gmacs, bandwidth_gbit and latency_us in a --cluster file)")
    print(f"  {'plan':<30} {'peak/node':>11} {'predicted s':>11}  {'':<12} memory of the fullest node")
    shown = candidates if args.all else _best_per_configuration(candidates, cluster)
    for plan in shown:
        print(_row(plan, cluster))
    print(f"chosen: {chosen.describe()} (predicted {chosen.seconds:.1f} s, peak {format_bytes(chosen.peak())})")
    command = "dcnn.recognize" if stage else f"dcnn.infer --model {args.model}"
    # The detector reads the bundled faces by default; a classifier needs the user's images.
    placeholders = [] if is_detector(args.model) else ["--input", "IMAGES"]
    placeholders += ["--exact-conv"] if args.exact_conv else []
    if is_model_file(args.model):
        placeholders += ["--preprocess", "{" + ",".join(PREPROCESS_CHOICES) + "}"]
    arguments = placeholders + chosen.infer_arguments() + ["--threads", str(args.threads)]
    print(f"run it: mpirun -np {cluster.size} python -m {command} {' '.join(arguments)}")
    if placeholders:
        print("  with IMAGES your HDF5 image set or image folder"
              + (" and --preprocess one of " + ", ".join(PREPROCESS_CHOICES) + " for uint8 images (omit it for a "
                 "float32 set)" if is_model_file(args.model) else ""))
    return 0


def _speeds(cluster: Cluster) -> str:
    """The node speeds behind the time predictions, in GMAC/s (one figure when all nodes are equal)."""
    rates = sorted({cluster.rate(rank) / 1e9 for rank in range(cluster.size)})
    text = f"{rates[0]:g} GMAC/s per node" if len(rates) == 1 else f"{rates[0]:g} to {rates[-1]:g} GMAC/s per node"
    if cluster.macs_per_second == DEFAULT_MACS_PER_SECOND:
        text += " (a RockPro64 as the paper measured it)"
    return text


def _best_per_configuration(candidates: list[RunPlan], cluster: Cluster) -> list[RunPlan]:
    """Per mode, grid and policy: the largest batch that fits (else the smallest batch)."""
    groups: dict[tuple, list[RunPlan]] = {}
    for plan in candidates:
        groups.setdefault((plan.mode, plan.grid, plan.halo_policy), []).append(plan)

    def preference(plan: RunPlan) -> tuple[bool, int]:
        fits = plan.overflow(cluster) is None
        return fits, plan.batch if fits else -plan.batch

    return [max(group, key=preference) for group in groups.values()]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dcnn.plan``."""
    return run_main(run, build_parser(), argv)
