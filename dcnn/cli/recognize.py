"""``python -m dcnn.recognize``: face recognition over an image set, on every rank, written to HDF5.

Every image goes through dlib's pipeline as :mod:`dcnn.faces.pipeline` runs it: MMOD detection (in any of
``dcnn.infer``'s modes: batch by default, images stolen across ranks; spatial or fused to split the detector
over the ranks for large images), then 5 landmarks, an aligned 150x150 chip and a 128-D descriptor per face (in
batch mode on the rank that ran the task; in spatial and fused mode the task's faces dealt to the ranks and
gathered on rank 0), and with ``--known`` the nearest known person. The gallery is described once, on
rank 0, and broadcast. Outputs (one row per face, aligned with ``/outputs/detections``) are documented in
``docs/results.md``; runs resume like every ``dcnn.infer`` run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dcnn.cli import infer
from dcnn.cli.common import run_main
from dcnn.errors import DcnnError, InputError, one_line
from dcnn.exec.forward import Forward
from dcnn.exec.workloads import DETECTOR, Recognition, is_detector
from dcnn.faces.models import DESCRIPTOR_MODEL, LANDMARK_MODEL
from dcnn.faces.pipeline import DEFAULT_TOLERANCE, FACE_DTYPE, FaceDescriber, load_gallery
from dcnn.io.images import image_formats
from dcnn.io.numbers import check_number
from dcnn.io.results import stored_path
from dcnn.parallel.comm import collective, world
from dcnn.planner.recognition import recognition_stage

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """``dcnn.infer``'s parser (modes, batching, resume...) with the recognition options."""
    parser = infer.build_parser(detector_only=True)
    parser.prog = "python -m dcnn.recognize"
    parser.description = ("Detect, align, describe and identify faces over an image set (dlib's face recognition) "
                          "and write landmarks, descriptors and identities to HDF5.")
    parser.epilog = ("Input: an HDF5 file with an N x H x W x 3 uint8 dataset, or a folder of image files "
                     f"({', '.join(image_formats())}). "
                     "Output: /outputs/detections, /outputs/landmarks (M x 5 x 2), /outputs/descriptors (M x 128) "
                     "and with --known /outputs/identity, /outputs/distance, /known/names, /known/descriptors; "
                     "see docs/results.md. " + infer.RENAMED_NOTE)
    parser.add_argument("--known", metavar="DIR",
                        help="gallery of known people: each image in DIR is one person named by its file stem, "
                             "or each subfolder one person with several images directly in it (the smallest "
                             "distance over them counts); two entries naming one person (ann.png and ann.jpg, or "
                             "ann.png and ann/) are refused; hidden entries, other files and folders within a "
                             "person's folder are skipped with a note; an image with several faces uses the "
                             "largest, one without a face is an error. A resumed run needs the same images (by "
                             "content; the folder may have moved)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="D",
                        help="largest descriptor distance that still names a known person (default: 0.6)")
    parser.add_argument("--jitter", type=int, default=0, metavar="N",
                        help="describe each face as the mean over N randomly shifted, scaled, turned and "
                             "mirrored copies, as dlib's num_jitters (default: 0; 1 is the same as 0)")
    return parser


def _recognition_job(args: argparse.Namespace, comm, local_ranks: int) -> infer.Job:
    """``dcnn.infer``'s detector job with the recognition workload (no gallery yet)."""
    if not is_detector(args.model):
        raise InputError(f"--model {args.model}: recognition runs dlib's face detector ({DETECTOR}) only")
    check_number(args.tolerance, "--tolerance", above=0)
    describer = FaceDescriber.load(Forward, args.jitter)
    job = infer._validate(args, comm, local_ranks,
                          recognition_stage(describer.landmarks, describer.descriptor.network))
    job.workload = Recognition(job.workload, describer, None, args.tolerance)
    job.outputs = FACE_DTYPE
    job.attributes = {"workload": "recognition", "known": stored_path(args.known) if args.known else "none",
                      "tolerance": args.tolerance,
                      "jitter": args.jitter, "landmark_model": LANDMARK_MODEL, "descriptor_model": DESCRIPTOR_MODEL}
    return job


def _validate(args: argparse.Namespace, comm, local_ranks: int) -> infer.Job:
    """Check everything; rank 0 describes the gallery, which every rank then receives."""
    failure, job = None, None
    try:
        job = _recognition_job(args, comm, local_ranks)
    except DcnnError as error:
        failure = error
    gallery, warnings, fingerprint = None, [], None
    with collective(comm):  # every rank enters, so a failure on any rank reaches all of them
        if failure is not None:
            raise failure
        if args.known and comm.rank == 0:
            detector = job.workload.detection.detector
            gallery, warnings = load_gallery(args.known, detector, Forward(detector.network, detector.weights),
                                             job.workload.describer)
            fingerprint = gallery.fingerprint()
    gallery, warnings, fingerprint = comm.bcast((gallery, warnings, fingerprint), root=0)
    if comm.rank == 0 and not args.quiet:
        if gallery is not None and gallery.note:
            print(one_line(f"dcnn: {gallery.note}"), file=sys.stderr, flush=True)
        for warning in warnings:
            print(one_line(f"dcnn: warning: --known {warning}"), file=sys.stderr, flush=True)
    if gallery is not None:
        job.workload.gallery = gallery
        # a resumed run must have the gallery's images, wherever the folder now is (dcnn.cli.infer._resume_keys)
        job.attributes["known_fingerprint"] = fingerprint
        job.known = {"names": [gallery.names[p] for p in gallery.person], "descriptors": gallery.descriptors}
    return job


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dcnn.recognize``."""
    return run_main(lambda args: infer.run(args, _validate), build_parser(), argv, comm=world())


if __name__ == "__main__":
    sys.exit(main())
