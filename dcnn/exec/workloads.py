"""The workloads of a run: what one task computes from a range of images (pure, no MPI).

A workload's ``run(images, start, stop, network_for)`` reads images ``start .. stop - 1`` and returns their
outputs; ``network_for(input_shape)`` gives the callable that runs the network on a batch of that shape (a
:class:`~dcnn.exec.forward.Forward`, or one of the parallel engines). The batch task loop
(:func:`dcnn.parallel.batch.run_tasks`) hands the tasks out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcnn.faces.detect import FaceDetector, to_records
from dcnn.faces.pipeline import DEFAULT_TOLERANCE, FaceDescriber, Gallery, identify
from dcnn.io.images import ImageSet
from dcnn.network.graph import Preprocessing

__all__ = ["Classification", "Detection", "Recognition"]


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

    def run(self, images: ImageSet, start: int, stop: int, network_for) -> np.ndarray:
        """Logits of images ``start .. stop - 1``, one forward pass per run of equally sized images."""
        outputs = []
        for first, last in _same_size_runs(images, start, stop):
            batch = images.read(first, last, self.preprocessing)
            outputs.append(network_for(batch.shape[1:])(batch))
        return np.concatenate(outputs)


@dataclass
class Detection:
    """Detector outputs: :data:`~dcnn.faces.detect.DETECTION_DTYPE` records, per image by descending confidence."""

    detector: FaceDetector

    def run(self, images: ImageSet, start: int, stop: int, network_for) -> np.ndarray:
        """Detections in images ``start .. stop - 1``; equally sized images share one pyramid batch."""
        records = []
        for first, last in _same_size_runs(images, start, stop):
            tensor, rects = self.detector.prepare(images.read_pixels(first, last))
            scores = network_for(tensor.shape[1:])(tensor)
            records.append(to_records([self.detector.decode(s, rects) for s in scores], first))
        return np.concatenate(records)


@dataclass
class Recognition:
    """The workload of a recognition run: a task's detections, then their landmarks, descriptors and identities.

    Attributes
    ----------
    detection : Detection
        Runs the detector network (in any mode, through ``network_for``).
    describer : FaceDescriber
        Landmarks and descriptors, on the rank that runs the task.
    gallery : Gallery or None
        Known people; without one every face is unknown.
    tolerance : float
        The largest distance that still names a person.
    """

    detection: Detection
    describer: FaceDescriber
    gallery: Gallery | None = None
    tolerance: float = DEFAULT_TOLERANCE

    def run(self, images: ImageSet, start: int, stop: int, network_for) -> np.ndarray:
        """:data:`FACE_DTYPE` rows of the faces in images ``start .. stop - 1``."""
        records = self.detection.run(images, start, stop, network_for)
        pixels = [images.read_pixels(index, index + 1)[0] for index in range(start, stop)]
        faces = self.describer.faces(pixels, records, start)
        if self.gallery is not None:
            faces["identity"], faces["distance"] = identify(faces["descriptor"], self.gallery, self.tolerance)
        return faces
