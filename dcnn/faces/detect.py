"""dlib's MMOD CNN face detector, run by dcnn's own kernels.

``mmod_network()`` is dlib's ``net_type`` of ``cnn_face_detection_model_v1`` in dcnn's layer specs (a fully
convolutional network: three 5x5 stride-2 convolutions with 16, 32, 32 filters, three 5x5 convolutions with 45,
then a 9x9 convolution to one score map; each but the last followed by a per-channel affine and a ReLU).
:class:`FaceDetector` turns images into detections exactly as dlib does (see :mod:`dcnn.faces.pyramid`): optional 2x
upsampling, the tiled pyramid, the network, windows with a score above 0, non-max suppression, and the mapping
back through the upsampling.

The weights come from ``mmod_human_face_detector.dat``, shipped by the PyPI package ``face_recognition_models``
(the ``[faces]`` extra), or from any file given with ``--weights``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from dcnn.errors import InputError, ShapeError, WeightsError
from dcnn.faces.dlib_format import MmodModel, read_mmod
from dcnn.faces.models import DETECTOR_MODEL, bundled_model
from dcnn.faces.pyramid import (
    decode_boxes,
    nms,
    pyramid_sizes,
    pyramid_tensor,
    round_half_away,
    tiled_layout,
    upsampled_size,
)
from dcnn.network.graph import Network, Preprocessing
from dcnn.network.layers import Affine, Conv2d, Layer, ReLU, Shape
from dcnn.network.weights import require_finite

__all__ = [
    "DETECTION_DTYPE", "DETECTOR_BATCH_SIZE", "MMOD_NAME", "FaceDetector", "InputReader", "default_detector_path",
    "mmod_network", "mmod_weights", "receptive_mapping", "to_records",
]

#: The smallest image side the detector accepts (as dlib).
MIN_IMAGE_SIDE = 10
#: Images per forward pass of ``python -m dcnn.infer --model mmod`` without ``--batch-size`` (other models: 4).
#: Measured through that command (480 images of 128x128, upsample 1, one rank, one thread, CPU time per image
#: with start-up, interleaved): 41 ms at batch 4 and 8, 37-38 at 16 and 32. The kernels cost the same per image
#: at batch 4 (``scripts/bench_faces.py``); the difference is system time: at batch 4 and 8 the pyramid and the
#: first layers' outputs (13-18 MB) are below the paged-in pool's size (:mod:`dcnn.kernels.memory`), and glibc
#: returns and re-faults their pages every batch (1.2-1.7 s of system time per 480 images, against 0.4 at 16).
DETECTOR_BATCH_SIZE = 16

#: One detection: the image it belongs to, an inclusive box in that image's pixels, and the detector's score.
DETECTION_DTYPE = np.dtype([("image", np.int64), ("left", np.int32), ("top", np.int32), ("right", np.int32),
                            ("bottom", np.int32), ("confidence", np.float32)])
MMOD_FILTERS = (16, 32, 32, 45, 45, 45)
#: The MMOD network's name; :data:`dcnn.exec.workloads.DETECTOR` registers it as the ``--model`` of the detector.
MMOD_NAME = "mmod"
#: dlib's pyramid normalisation replaces mean/std preprocessing; this entry only documents the channels.
PYRAMID_INPUT = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def mmod_network() -> Network:
    """The MMOD face detector's layers, named ``features.0`` to ``features.18`` (dlib's order)."""
    layers: list[Layer] = []
    channels = 3
    for index, filters in enumerate(MMOD_FILTERS):
        stride, padding = (2, 0) if index < 3 else (1, 2)
        layers += [Conv2d(channels, filters, 5, stride=stride, padding=padding), Affine(filters), ReLU()]
        channels = filters
    layers.append(Conv2d(channels, 1, 9, padding=4))
    return Network(MMOD_NAME, tuple((f"features.{i}", layer) for i, layer in enumerate(layers)), (3, 256, 256),
                   PYRAMID_INPUT, "dlib MMOD CNN face detector (fully convolutional, on a tiled image pyramid)")


def default_detector_path() -> Path:
    """``mmod_human_face_detector.dat`` from the installed ``face_recognition_models`` package.

    Raises
    ------
    WeightsError
        If the package is not installed.
    """
    try:
        return bundled_model(DETECTOR_MODEL)
    except WeightsError as error:
        raise WeightsError(f"{error}, or pass --weights FILE.dat") from None


def mmod_weights(model: MmodModel, network: Network) -> dict[str, np.ndarray]:
    """The parsed dlib layers as a weights dict for ``network``, after checking that the structures match."""
    specs = list(network.layers)
    if len(model.layers) != len(specs):
        raise WeightsError(f"the detector file has {len(model.layers)} layers, {network.name} has {len(specs)}")
    weights = {}
    for (name, layer), parsed in zip(specs, model.layers):
        expected = {Conv2d: "con", Affine: "affine", ReLU: "relu"}[type(layer)]
        if parsed.kind != expected:
            raise WeightsError(f"layer {name}: the detector file has {parsed.kind!r}, {network.name} has {expected!r}")
        if isinstance(layer, Conv2d):
            geometry = (parsed.kernel, parsed.stride, parsed.padding)
            if parsed.weight.shape != layer.tensors()["weight"].shape or geometry != (
                    layer.kernel_size, layer.stride, layer.padding):
                raise WeightsError(f"layer {name}: the detector file has filters {parsed.weight.shape} with "
                                   f"kernel/stride/padding {geometry}, {network.name} expects "
                                   f"{layer.tensors()['weight'].shape}")
        if parsed.weight is not None:
            if parsed.weight.shape[0] != layer.tensors()["weight"].shape[0]:
                raise WeightsError(f"layer {name}: {parsed.weight.shape[0]} channels in the file, "
                                   f"{layer.tensors()['weight'].shape[0]} expected")
            weights[f"{name}.weight"] = np.ascontiguousarray(parsed.weight, dtype=np.float32)
            weights[f"{name}.bias"] = np.ascontiguousarray(parsed.bias, dtype=np.float32)
    for key, value in weights.items():
        if not np.isfinite(value).all():
            raise WeightsError(f"{key}: the detector file holds NaN or infinite values")
    return weights


def receptive_mapping(network: Network) -> tuple[int, int]:
    """``(scale, offset)`` with output cell ``p`` centred on input pixel ``scale * p + offset``.

    dlib maps a point through each convolution from the output inwards as ``p * stride - pad + kernel // 2``.
    """
    scale, offset = 1, 0
    for _, layer in reversed(network.layers):
        if isinstance(layer, Conv2d):
            stride, padding, kernel = layer.stride[0], layer.padding[0], layer.kernel_size[0]
            scale, offset = scale * stride, offset * stride - padding + kernel // 2
    return scale, offset


@runtime_checkable
class InputReader(Protocol):
    """A compiled network whose first layer can read its input in place: the two methods of
    :class:`dcnn.exec.forward.Forward` that :meth:`FaceDetector.prepare` uses (``faces`` does not import ``exec``)."""

    def input_rows(self, height: int) -> int | None:
        """Rows per image of an input buffer the first layer reads in place, or ``None``."""

    def share_input(self, x: np.ndarray, rows: int, zero_from: int) -> None:
        """Let the first layer read ``x`` in place on this thread's next run."""


@dataclass
class FaceDetector:
    """Images in, detections out, as dlib's ``cnn_face_detection_model_v1(image, upsample_num_times)``.

    Attributes
    ----------
    model : MmodModel
        The parsed detector file (normalisation, pyramid padding, NMS settings).
    network : Network
        The network in dcnn's layer specs.
    weights : dict
        Its weights.
    upsample : int
        How many times each image is doubled in size before detection.
    """

    model: MmodModel
    network: Network
    weights: dict[str, np.ndarray]
    upsample: int = 0

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, upsample: int = 0) -> FaceDetector:
        """Read a detector file.

        Parameters
        ----------
        path : str or os.PathLike, optional
            A dlib ``mmod_human_face_detector.dat`` (the installed ``face_recognition_models`` one by default).
        upsample : int
            How many times each image is doubled in size before detection (dlib's ``upsample_num_times``).

        Returns
        -------
        FaceDetector
            The detector with its network in dcnn's layer specs and the file's weights.

        Raises
        ------
        InputError
            For a negative ``upsample``.
        WeightsError
            For a file that is missing, damaged or no MMOD detector.
        """
        if upsample < 0:
            raise InputError(f"--upsample must be 0 or more, got {upsample}")
        source = default_detector_path() if path is None else path
        model = read_mmod(source)
        network = mmod_network()
        weights = mmod_weights(model, network)
        require_finite(weights, str(source))
        return cls(model, network, weights, upsample)

    def prepare(self, images: np.ndarray, forward: InputReader | None = None) -> tuple[np.ndarray, list]:
        """``B x H x W x 3`` uint8 images (one size) to the network input and the pyramid level rectangles.

        ``forward``, the compiled network that will run on the tensor (a :class:`~dcnn.exec.forward.Forward`,
        itself or inside an engine, whose ``forward`` it is): where its first convolution can read the pyramid in place
        (:meth:`~dcnn.exec.forward.Forward.input_rows`), the tensor is built in a buffer of the rows it reads
        and shared with it, which saves that layer's copy of its input.
        """
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ShapeError(f"the face detector takes N x H x W x 3 uint8 RGB images, got {images.shape} "
                             f"{images.dtype}")
        if min(images.shape[1:3]) < MIN_IMAGE_SIDE:
            raise ShapeError(f"a {images.shape[1]}x{images.shape[2]} image is too small for the face detector "
                             f"(dlib needs at least {MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE})")
        rows = None if forward is None else forward.input_rows(self.input_shape(*images.shape[1:3])[1])
        tensor, rects = pyramid_tensor(images, self.model.mean_rgb, self.model.pyramid_padding,
                                       self.model.pyramid_outer_padding, self.upsample, rows or 0)
        if rows:
            forward.share_input(tensor, rows, max(bottom for _, _, _, bottom in rects) + 1)
        return tensor, rects

    def input_shape(self, height: int, width: int) -> Shape:
        """The per-image network input shape for ``height x width`` images (geometry only, no pixels)."""
        for _ in range(self.upsample):
            height, width = upsampled_size(height, width)
        rows, cols, _ = tiled_layout(pyramid_sizes(height, width), self.model.pyramid_padding,
                                     self.model.pyramid_outer_padding)
        return 3, rows, cols

    def decode(self, scores: np.ndarray, rects: list) -> np.ndarray:
        """Detections ``(n, 5)`` of one image's ``(windows, rows, cols)`` score map, in image pixels."""
        scale, offset = receptive_mapping(self.network)
        options = self.model.options
        boxes = np.concatenate([decode_boxes(scores[k], rects, window, scale, offset)
                                for k, window in enumerate(options.windows)])
        boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")]
        boxes = nms(boxes, options.nms_iou, options.nms_covered)
        for _ in range(self.upsample):
            corners = boxes[:, :4] / 2.0 - np.array([1.25, 0.75, 1.25, 0.75])
            boxes[:, :4] = round_half_away(corners)
        return boxes

    def detect(self, images: np.ndarray, run: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
        """Detect the faces of a batch of images of one size.

        Parameters
        ----------
        images : ndarray
            ``(B, H, W, 3)`` uint8 RGB, at least 10 x 10 pixels.
        run : callable
            Runs :attr:`network` on the ``(B, 3, rows, cols)`` float32 pyramid tensors, e.g.
            ``Forward(detector.network, detector.weights)`` (whose first layer then reads the pyramid in place,
            :meth:`prepare`) or a parallel engine (which gets a copy: call :meth:`prepare` with its ``forward``
            and run the engine on the tensor to save it, as :class:`dcnn.exec.workloads.Detection` does).

        Returns
        -------
        list of ndarray
            Per image, ``(n, 5)`` float rows ``left, top, right, bottom, confidence``: inclusive box corners in
            the image's pixels and dlib's detection score, highest first, after non-max suppression.

        Raises
        ------
        ShapeError
            For images that are not ``(B, H, W, 3)`` uint8 or are too small.
        """
        tensor, rects = self.prepare(images, run if isinstance(run, InputReader) else None)
        scores = run(tensor)
        return [self.decode(scores[i], rects) for i in range(len(images))]


def to_records(detections: list[np.ndarray], first_image: int) -> np.ndarray:
    """Per-image ``(n, 5)`` arrays as one structured array of :data:`DETECTION_DTYPE` rows."""
    rows = [np.zeros(len(boxes), DETECTION_DTYPE) for boxes in detections]
    for index, (record, boxes) in enumerate(zip(rows, detections)):
        record["image"] = first_image + index
        for column, name in enumerate(("left", "top", "right", "bottom", "confidence")):
            record[name] = boxes[:, column]
    return np.concatenate(rows) if rows else np.zeros(0, DETECTION_DTYPE)
