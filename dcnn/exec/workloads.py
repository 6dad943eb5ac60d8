"""The workloads of a run: what one task computes from a range of images (pure, no MPI).

A workload's ``run(images, start, stop, engine_for)`` reads images ``start .. stop - 1`` and returns their
outputs; ``engine_for(input_shape)`` gives the callable that runs the network on a batch of that shape (a
:class:`~dcnn.exec.forward.Forward`, or one of the parallel engines). The batch task loop
(:func:`dcnn.parallel.batch.run_tasks`) hands the tasks out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dcnn.errors import ShapeError
from dcnn.faces.detect import FaceDetector, to_records
from dcnn.faces.pipeline import DEFAULT_TOLERANCE, FaceDescriber, Gallery, identify
from dcnn.io.images import ImageSet
from dcnn.network.graph import Network, Preprocessing, format_shape, parse_shape
from dcnn.network.layers import Shape
from dcnn.network.zoo import get_model, model_names

__all__ = [
    "DETECTOR", "Classification", "Detection", "Recognition", "is_detector", "workload_input", "workload_names",
]

#: The face detector's name among the models: ``--model mmod``, the default workload.
DETECTOR = "mmod"
#: The image size the planner and the cost table assume for the detector when none is given (the paper's wide
#: images; ``data/faces.h5``'s ``wide`` set).
DETECTOR_IMAGE = (500, 1000)


def workload_names() -> list[str]:
    """Every name ``--model`` takes: the detector, then the classifiers of the zoo."""
    return [DETECTOR, *model_names()]


def is_detector(name: str) -> bool:
    """True for the face detector's name (its outputs are detections, not logits)."""
    return name.lower() == DETECTOR


def workload_input(name: str, size: str | None = None, detector: FaceDetector | None = None) -> tuple[
        Network, Shape, str]:
    """The network of a workload, its per-image input shape, and the image size as the user gave it.

    Parameters
    ----------
    name : str
        ``mmod`` or a zoo model.
    size : str, optional
        ``[C]xHxW`` (``--input``): for the detector the image size (default ``DETECTOR_IMAGE``), whose network
        input is the image pyramid; for a classifier its input (default: the model's own).
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
        For an unknown name, or a size that is no shape or does not fit the network.
    """
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


def _same_size_runs(images: ImageSet, start: int, stop: int) -> list[tuple[int, int]]:
    """``[first, last)`` runs of equally sized consecutive images in ``start .. stop - 1``."""
    runs, first = [], start
    while first < stop:
        last = first + 1
        while last < stop and images.image_shape(last) == images.image_shape(first):
            last += 1
        runs.append((first, last))
        first = last
    return runs


@dataclass
class Classification:
    """Classifier outputs: the network's logits per image."""

    preprocessing: Preprocessing
    #: Outputs are logits, not detections.
    detects: ClassVar[bool] = False

    def run(self, images: ImageSet, start: int, stop: int, engine_for) -> np.ndarray:
        """Logits of images ``start .. stop - 1``, one forward pass per run of equally sized images."""
        outputs = []
        for first, last in _same_size_runs(images, start, stop):
            batch = images.read(first, last, self.preprocessing)
            outputs.append(engine_for(batch.shape[1:])(batch))
        return np.concatenate(outputs)


@dataclass
class Detection:
    """Detector outputs: :data:`~dcnn.faces.detect.DETECTION_DTYPE` records, per image by descending confidence."""

    detector: FaceDetector
    #: Outputs are detections, not logits.
    detects: ClassVar[bool] = True

    def run(self, images: ImageSet, start: int, stop: int, engine_for) -> np.ndarray:
        """Detections in images ``start .. stop - 1``; equally sized images share one pyramid batch."""
        records = []
        for first, last in _same_size_runs(images, start, stop):
            tensor, rects = self.detector.prepare(images.read_pixels(first, last))
            scores = engine_for(tensor.shape[1:])(tensor)
            records.append(to_records([self.detector.decode(s, rects) for s in scores], first))
        return np.concatenate(records)


@dataclass
class Recognition:
    """The workload of a recognition run: a task's detections, then their landmarks, descriptors and identities.

    Attributes
    ----------
    detection : Detection
        Runs the detector network (in any mode, through ``engine_for``).
    describer : FaceDescriber
        Landmarks and descriptors, on the rank that runs the task.
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

    def run(self, images: ImageSet, start: int, stop: int, engine_for) -> np.ndarray:
        """:data:`FACE_DTYPE` rows of the faces in images ``start .. stop - 1``."""
        records = self.detection.run(images, start, stop, engine_for)
        pixels = [images.read_pixels(index, index + 1)[0] for index in range(start, stop)]
        faces = self.describer.faces(pixels, records, start)
        if self.gallery is not None:
            faces["identity"], faces["distance"] = identify(faces["descriptor"], self.gallery, self.tolerance)
        return faces
