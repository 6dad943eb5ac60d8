"""The workloads of a run: what one task computes from a range of images (pure, no MPI).

A workload's ``run(images, start, stop, engine_for, skip, tolerate, agree, deal)`` reads images
``start .. stop - 1`` but those in ``skip``, one batch per image size (outputs stay in image order), and returns
their outputs with the images it could not read (``tolerate``: ``--skip-unreadable``); ``engine_for(input_shape)``
gives the callable that runs the network on a batch of that shape (a :class:`~dcnn.exec.forward.Forward`, or one
of the parallel engines). In the modes where all ranks run every task together (spatial, fused), ``agree`` makes
one rank's unreadable images every rank's, and ``deal(count, compute)`` shares out work that follows the network
(recognition's landmarks, chips and descriptors): each rank computes ``compute(first, last)`` for its run of the
``count`` parts, and rank 0 receives all the rows in order (the other ranks ``None``; rank 0 delivers the task).
Without ``deal`` (batch and single mode) a workload computes every part itself. The batch task loop
(:func:`dcnn.parallel.batch.run_tasks`) hands the tasks out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dcnn.errors import InputError, ShapeError
from dcnn.exec.forward import Forward
from dcnn.exec.imported import load_model_file, model_input
from dcnn.faces.descriptor import DESCRIPTOR_BATCH
from dcnn.faces.detect import DETECTION_DTYPE, MMOD_NAME, FaceDetector, to_records
from dcnn.faces.pipeline import DEFAULT_TOLERANCE, FACE_DTYPE, FaceDescriber, Gallery, identify
from dcnn.io.images import ImageSet
from dcnn.io.scan import Skip, skip_for
from dcnn.network.graph import Network, Preprocessing, format_shape, parse_shape
from dcnn.network.layers import Shape
from dcnn.network.onnx import is_onnx_path
from dcnn.network.zoo import get_model, model_names

__all__ = [
    "DETECTOR", "Classification", "Detection", "Recognition", "is_detector", "is_model_file", "workload_input",
    "workload_names",
]

#: The face detector's name among the models: ``--model mmod``, the default workload (the name of its network).
DETECTOR = MMOD_NAME
#: The image size the planner and the cost table assume for the detector when none is given (the paper's wide
#: images; ``data/faces.h5``'s ``wide`` set).
DETECTOR_IMAGE = (500, 1000)


def workload_names() -> list[str]:
    """Every name ``--model`` takes: the detector, then the classifiers of the zoo."""
    return [DETECTOR, *model_names()]


def is_model_file(name: str) -> bool:
    """Whether ``--model name`` names a model file (ONNX) rather than the detector or a zoo model: a path ending in
    ``.onnx`` (:func:`dcnn.network.onnx.is_onnx_path`), or an existing file whose name no workload has
    (``--model vgg16`` stays the zoo's VGG-16 even beside a file called ``vgg16``)."""
    return is_onnx_path(name) or (name.lower() not in workload_names() and os.path.isfile(name))


def is_detector(name: str) -> bool:
    """True for the face detector's name (its outputs are detections, not logits)."""
    return name.lower() == DETECTOR


def workload_input(name: str, size: str | None = None, detector: FaceDetector | None = None) -> tuple[
        Network, Shape, str]:
    """The network of a workload, its per-image input shape, and the image size as the user gave it.

    Parameters
    ----------
    name : str
        ``mmod``, a zoo model, or a model file (:func:`is_model_file`).
    size : str, optional
        ``[C]xHxW`` (``--input``): for the detector the image size (default ``DETECTOR_IMAGE``), whose network
        input is the image pyramid; for a classifier or a model file its input (default: the model's own; a
        model file with a dynamic size: its fixed dimensions and :data:`dcnn.network.onnx.DYNAMIC_SIZE`).
    detector : FaceDetector, optional
        The detector to use (default: the installed one, loaded).

    Returns
    -------
    tuple
        ``(network, input_shape, label)`` with ``input_shape`` ``(C, H, W)`` and ``label`` the size as given
        (``"500x1000"``), or the default one.

    Raises
    ------
    InputError, ShapeError
        For an unknown name, an unreadable or unsupported model file, or a size that is no shape or does not fit
        the network.
    """
    if is_model_file(name):
        model = load_model_file(name)
        shape = parse_shape(size, "--input", "[C]xHxW such as 3x224x224", (2, 3)) if size \
            else model.network.input_shape
        if len(shape) == 3 and shape[0] != model.network.in_channels:
            raise ShapeError(f"--input {size}: {model.path.name} takes {model.network.in_channels} channels")
        shape = model_input(model)(*shape[-2:])
        return model.network, shape, size or format_shape(shape)
    if is_detector(name):
        detector = detector or FaceDetector.load(None, 0)
        height, width = parse_shape(size)[-2:] if size else DETECTOR_IMAGE
        if min(height, width) < 10:
            raise ShapeError(f"{height}x{width} images are too small for the face detector (at least 10 x 10)")
        shape = detector.input_shape(height, width)
        detector.network.shapes(shape)
        return detector.network, shape, size or f"{height}x{width}"
    network = get_model(name)
    shape = parse_shape(size) if size else network.input_shape
    if len(shape) == 2:
        shape = (network.in_channels, *shape)
    network.shapes(shape)
    return network, shape, size or format_shape(shape)


def _untolerated(error: InputError) -> InputError:
    """An image that passed the header scan but fails mid-run (a truncated JPEG has no checksum) without
    ``--skip-unreadable``: the error says how to go on, since resuming alone would stop at it again."""
    return InputError(f"{error}; continue with --resume and --skip-unreadable to skip it (recorded in the file)")


def _size_groups(images: ImageSet, start: int, stop: int, skip: Container[int], tolerate: bool,
                 read: Callable[[list[int]], np.ndarray], agree: Callable[[list[Skip]], list[Skip]] | None = None,
                 ) -> tuple[list[tuple[list[int], np.ndarray]], list[Skip]]:
    """Images ``start .. stop - 1`` but ``skip``, read as one batch per size (sizes in order of first appearance).

    With ``tolerate`` an image that cannot be read is left out and returned as a :class:`~dcnn.io.scan.Skip`
    (``--skip-unreadable``); otherwise its :class:`~dcnn.errors.InputError` ends the task. ``agree`` (modes in
    which all ranks compute every image together) turns this rank's failures into every rank's.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    failed = []
    for index in range(start, stop):
        if index in skip:
            continue
        try:
            groups.setdefault(images.image_shape(index), []).append(index)
        except InputError as error:
            if not tolerate:
                raise _untolerated(error) from None
            failed.append(skip_for(images, index, error))
    batches = []
    for indices in groups.values():
        try:
            batches.append((indices, read(indices)))
            continue
        except InputError as error:
            if not tolerate:
                raise _untolerated(error) from None
        readable, parts = [], []
        for index in indices:  # find the images that failed; read the others one by one
            try:
                parts.append(read([index]))
                readable.append(index)
            except InputError as error:
                failed.append(skip_for(images, index, error))
        if readable:
            batches.append((readable, np.concatenate(parts)))
    if agree is not None:
        failed = agree(failed)
        dropped = {skip.index for skip in failed}
        batches = [([i for i in indices if i not in dropped], batch[[i not in dropped for i in indices]])
                   for indices, batch in batches]
        batches = [(indices, batch) for indices, batch in batches if indices]
    return batches, failed


@dataclass
class Classification:
    """Classifier outputs: the network's logits per image (NaN rows for skipped images); an output map (a model
    file whose output is ``C x H x W``) is stored flattened, ``num_outputs`` values per image in C order."""

    preprocessing: Preprocessing
    num_outputs: int
    #: Outputs are logits, not detections.
    detects: ClassVar[bool] = False

    def run(self, images: ImageSet, start: int, stop: int, engine_for, skip: Container[int] = (),
            tolerate: bool = False, agree=None, deal=None) -> tuple[np.ndarray, list[Skip]]:
        """Logits of images ``start .. stop - 1``, one forward pass per image size; and the images skipped
        because they could not be read (see :func:`_size_groups`)."""
        batches, failed = _size_groups(images, start, stop, skip, tolerate,
                                       lambda indices: images.read_at(indices, self.preprocessing), agree)
        outputs = np.full((stop - start, self.num_outputs), np.nan, np.float32)
        for indices, batch in batches:
            outputs[np.asarray(indices) - start] = engine_for(batch.shape[1:])(batch).reshape(len(indices), -1)
        return outputs, failed


@dataclass
class Detection:
    """Detector outputs: :data:`~dcnn.faces.detect.DETECTION_DTYPE` records, per image by descending confidence."""

    detector: FaceDetector
    #: Outputs are detections, not logits.
    detects: ClassVar[bool] = True

    def run(self, images: ImageSet, start: int, stop: int, engine_for, skip: Container[int] = (),
            tolerate: bool = False, agree=None, deal=None) -> tuple[np.ndarray, list[Skip]]:
        """Detections in images ``start .. stop - 1`` (equally sized images share one pyramid batch), in image
        order; and the images skipped because they could not be read (see :func:`_size_groups`)."""
        batches, failed = _size_groups(images, start, stop, skip, tolerate,
                                       lambda indices: images.read_at(indices, None), agree)
        records = [np.zeros(0, DETECTION_DTYPE)]
        for indices, pixels in batches:
            engine = engine_for(self.detector.input_shape(*pixels.shape[1:3]))
            # the compiled network, run alone (a Forward) or inside an engine: its first layer reads the pyramid
            tensor, rects = self.detector.prepare(pixels, engine if isinstance(engine, Forward) else engine.forward)
            scores = engine(tensor)
            records += [to_records([self.detector.decode(s, rects)], index) for index, s in zip(indices, scores)]
        records = np.concatenate(records)
        return records[np.argsort(records["image"], kind="stable")], failed


@dataclass
class Recognition:
    """The workload of a recognition run: a task's detections, then their landmarks, descriptors and identities.

    Attributes
    ----------
    detection : Detection
        Runs the detector network (in any mode, through ``engine_for``).
    describer : FaceDescriber
        Landmarks, chips and descriptors, on the rank that runs the task (or dealt to the ranks that run it
        together).
    gallery : Gallery or None
        Known people; without one every face is unknown.
    tolerance : float
        The largest distance that still names a person.
    """

    detection: Detection
    describer: FaceDescriber
    #: Outputs are detections (with landmarks, descriptors and identities).
    detects: ClassVar[bool] = True
    gallery: Gallery | None = None
    tolerance: float = DEFAULT_TOLERANCE

    def run(self, images: ImageSet, start: int, stop: int, engine_for, skip: Container[int] = (),
            tolerate: bool = False, agree=None, deal=None) -> tuple[np.ndarray, list[Skip]]:
        """:data:`FACE_DTYPE` rows of the faces in images ``start .. stop - 1``, and the images skipped because
        they could not be read (see :class:`Detection`).

        The task's faces, in detection order, are cut into batches of
        :data:`~dcnn.faces.descriptor.DESCRIPTOR_BATCH`; with ``deal`` each rank describes a run of whole batches
        (landmarks, chips, descriptors) and rank 0 gathers them, bit for bit the faces one rank describes
        alone; the other ranks return no rows. Identities are found on the rank that has the rows.
        """
        records, failed = self.detection.run(images, start, stop, engine_for, skip, tolerate, agree)

        def describe(first: int, last: int) -> np.ndarray:
            return self.describer.faces(lambda index: images.read_pixels(index, index + 1)[0],
                                        records[first * DESCRIPTOR_BATCH:last * DESCRIPTOR_BATCH])

        batches = -(-len(records) // DESCRIPTOR_BATCH)
        faces = describe(0, batches) if deal is None else deal(batches, describe)
        if faces is None:
            return np.zeros(0, FACE_DTYPE), failed
        if self.gallery is not None:
            faces["identity"], faces["distance"] = identify(faces["descriptor"], self.gallery, self.tolerance)
        return faces, failed
