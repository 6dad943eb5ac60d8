"""The dlib model files shipped by the PyPI package ``face_recognition_models`` (the ``[faces]`` extra)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from dcnn.errors import WeightsError

__all__ = ["DESCRIPTOR_MODEL", "DETECTOR_MODEL", "LANDMARK_MODEL", "bundled_model"]

#: dlib's MMOD CNN face detector.
DETECTOR_MODEL = "mmod_human_face_detector.dat"
#: dlib's 5-point landmark model (two points per eye corner pair and one under the nose).
LANDMARK_MODEL = "shape_predictor_5_face_landmarks.dat"
#: dlib's ResNet face descriptor network (128-D, trained for a 0.6 distance threshold).
DESCRIPTOR_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


def bundled_model(filename: str) -> Path:
    """The path of ``filename`` inside the installed ``face_recognition_models`` package.

    Raises
    ------
    WeightsError
        If the package or the file is not installed.
    """
    # find_spec locates the package without importing it (its __init__ needs setuptools' pkg_resources).
    spec = importlib.util.find_spec("face_recognition_models")
    path = None if spec is None or not spec.submodule_search_locations else \
        Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if path is None or not path.is_file():
        raise WeightsError(f"{filename} comes from the face_recognition_models package: install dcnn with the "
                           "[faces] extra (pip install -e \".[faces]\")")
    return path
