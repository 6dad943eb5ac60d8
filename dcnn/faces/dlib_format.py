"""Reader for dlib's serialization format, for the MMOD CNN face detector (``mmod_human_face_detector.dat``).

dlib is not imported. The format (dlib/serialize.h, dlib/dnn/core.h, layers.h, input.h, loss.h):

- integers: a control byte (bit 7: negative; low 4 bits: byte count n) then n little-endian magnitude bytes;
- floats and doubles: an integer mantissa then an integer exponent, value ``mantissa * 2**exponent``
  (exponents 32000/32001/32002 are +inf/-inf/NaN); strings: a length then raw bytes; bools: ``'0'``/``'1'``;
- tensors: version 2, then ``n, k, nr, nc``, then raw little-endian float32 values;
- a network: the loss layer first, then one version per ``add_layer`` from the outside in, then the input
  layer, then each layer's body from the input side outwards (details, three bools, gradient tensors).

Every read is bounds-checked, so a truncated or altered file raises :class:`~dcnn.errors.WeightsError` rather
than crashing, hanging or allocating without limit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcnn.errors import WeightsError

__all__ = ["DlibLayer", "DlibReader", "MmodModel", "MmodOptions", "read_layer", "read_mmod"]

#: No tensor in a detector file comes near this; larger counts mean a corrupt file.
MAX_TENSOR_VALUES = 1 << 26


@dataclass(frozen=True)
class MmodOptions:
    """The ``loss_mmod`` options that inference uses.

    Attributes
    ----------
    windows : list of (int, int)
        Detector windows as ``(width, height)``, one output channel each.
    nms_iou, nms_covered : float
        ``test_box_overlap`` thresholds of the non-max suppression.
    use_bounding_box_regression : bool
        Whether the output carries box-regression channels (not in the face detector).
    """

    windows: list[tuple[int, int]]
    nms_iou: float
    nms_covered: float
    use_bounding_box_regression: bool = False


@dataclass
class DlibLayer:
    """One computational layer: ``kind`` is ``"con"``, ``"affine"`` or ``"relu"``."""

    kind: str
    num_filters: int = 0
    kernel: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    weight: np.ndarray | None = field(default=None, repr=False)
    bias: np.ndarray | None = field(default=None, repr=False)


@dataclass
class MmodModel:
    """A parsed detector: input normalisation and pyramid, layers (input side first) and loss options."""

    mean_rgb: tuple[float, float, float]
    pyramid_padding: int
    pyramid_outer_padding: int
    layers: list[DlibLayer]
    options: MmodOptions


class DlibReader:
    """Bounds-checked reads of dlib's serialized values from ``data``; ``kind`` names the file in errors."""

    def __init__(self, data: bytes, source: str, kind: str = "dlib MMOD detector file"):
        self.data = data
        self.position = 0
        self.source = source
        self.kind = kind

    def fail(self, what: str) -> WeightsError:
        return WeightsError(f"{self.source}: not a valid {self.kind} ({what} at byte {self.position})")

    def raw(self, count: int) -> bytes:
        if count < 0 or self.position + count > len(self.data):
            raise self.fail(f"truncated: {count} bytes wanted, {len(self.data) - self.position} left")
        chunk = self.data[self.position:self.position + count]
        self.position += count
        return chunk

    def integer(self, signed: bool = True) -> int:
        control = self.raw(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or (control & 0x70):
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        value = int.from_bytes(self.raw(size), "little")
        if control & 0x80:
            if not signed:
                raise self.fail("negative value for an unsigned field")
            value = -value
        return value

    def count(self, limit: int, what: str) -> int:
        value = self.integer(signed=False)
        if value > limit:
            raise self.fail(f"{what} of {value} exceeds {limit}")
        return value

    def boolean(self) -> bool:
        value = self.raw(1)
        if value not in (b"0", b"1"):
            raise self.fail(f"bad bool {value!r}")
        return value == b"1"

    def string(self) -> str:
        return self.raw(self.count(256, "string length")).decode("latin-1")

    def real(self) -> float:
        if self.position < len(self.data) and self.data[self.position] & 0x70:
            raise self.fail("legacy text float")
        mantissa, exponent = self.integer(), self.integer()
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        if exponent in special:
            return special[exponent]
        if abs(exponent) > 2000:
            raise self.fail(f"float exponent {exponent}")
        return math.ldexp(float(mantissa), exponent)

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise self.fail(f"tensor version {version}")
        shape = tuple(self.count(MAX_TENSOR_VALUES, "tensor dimension") for _ in range(4))
        values = math.prod(shape)
        if values > MAX_TENSOR_VALUES:
            raise self.fail(f"tensor of {values} values")
        return np.frombuffer(self.raw(4 * values), dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, ...]:
        if self.integer() != 1:
            raise self.fail("alias tensor version")
        return tuple(self.count(MAX_TENSOR_VALUES, "alias dimension") for _ in range(4))

    def expect(self, *names: str) -> str:
        name = self.string()
        if name not in names:
            raise self.fail(f"found {name!r} where {' or '.join(names)} was expected")
        return name


def _loss(reader: DlibReader) -> MmodOptions:
    reader.expect("loss_mmod_")
    version = reader.integer()
    if not 1 <= version <= 4:
        raise reader.fail(f"mmod options version {version}")
    if version == 1:
        windows = [(reader.count(10000, "window width"), reader.count(10000, "window height"))]
    else:
        windows = []
        for _ in range(reader.count(64, "detector windows")):
            window_version = reader.integer()
            windows.append((reader.count(10000, "window width"), reader.count(10000, "window height")))
            if window_version == 2:
                reader.string()
    for _ in range(3):  # loss per false alarm, per missed target, truth-match IoU: training only
        reader.real()
    nms_iou, nms_covered = reader.real(), reader.real()
    reader.real(), reader.real()  # overlaps_ignore: training only
    regression = False
    if version >= 3:
        reader.raw(1)  # assume_image_pyramid
    if version >= 4:
        regression = reader.boolean()
        reader.real()  # bbr_lambda
    if not windows:
        raise reader.fail("no detector window")
    return MmodOptions(windows, nms_iou, nms_covered, regression)


def read_layer(reader: DlibReader) -> DlibLayer:
    """One ``con_``, ``bn_con2``, ``affine_`` or ``relu_`` layer body, name first (dlib's details serialization)."""
    name = reader.expect("con_4", "con_5", "con_6", "bn_con2", "affine_", "affine_2", "relu_", "relu_2")
    if name.startswith("con_"):
        params = reader.tensor().reshape(-1)
        filters, rows, cols = (reader.integer() for _ in range(3))
        stride = (reader.integer(), reader.integer())
        padding = (reader.integer(), reader.integer())
        weight_shape, _ = reader.alias_tensor(), reader.alias_tensor()
        for _ in range(4):
            reader.real()  # learning-rate and weight-decay multipliers
        use_bias = reader.boolean() if name in ("con_5", "con_6") else True
        if name == "con_6" and reader.boolean():
            raise reader.fail("convolution with a fused relu is not supported")
        weights = math.prod(weight_shape)
        if weight_shape[0] != filters or weight_shape[2:] != (rows, cols) or \
                params.size != weights + (filters if use_bias else 0) or min(stride) < 1 or min(padding) < 0:
            raise reader.fail(f"inconsistent convolution ({filters} filters, shape {weight_shape}, "
                              f"{params.size} parameters)")
        bias = params[weights:] if use_bias else np.zeros(filters, np.float32)
        return DlibLayer("con", filters, (rows, cols), stride, padding, params[:weights].reshape(weight_shape), bias)
    if name == "bn_con2":
        params = reader.tensor().reshape(-1)
        gamma_shape, _ = reader.alias_tensor(), reader.alias_tensor()
        tensors = [reader.tensor().reshape(-1) for _ in range(4)]  # means, invstds, running means, variances
        reader.integer(signed=False), reader.integer(signed=False)
        for _ in range(4):
            reader.real()
        eps = reader.real()
        channels = gamma_shape[1]
        running_mean, running_var = tensors[2], tensors[3]
        if params.size != 2 * channels or running_mean.size != channels or running_var.size != channels:
            raise reader.fail("inconsistent batch-norm layer")
        if not (running_var + np.float32(eps) > 0).all():
            raise reader.fail("batch-norm variances that are not positive")
        # dlib's affine_(const bn_&): A = gamma / sqrt(var + eps), B = beta - A * mean, in float32.
        scale = (params[:channels] / np.sqrt(running_var + np.float32(eps))).astype(np.float32)
        shift = (params[channels:] - scale * running_mean).astype(np.float32)
        return DlibLayer("affine", channels, weight=scale, bias=shift)
    if name.startswith("affine_"):
        params = reader.tensor().reshape(-1)
        gamma_shape, _ = reader.alias_tensor(), reader.alias_tensor()
        mode = reader.integer()
        if name == "affine_2":
            reader.boolean()
        channels = math.prod(gamma_shape)
        if mode != 0 or params.size != 2 * channels:
            raise reader.fail("only per-channel (CONV mode) affine layers are supported")
        return DlibLayer("affine", channels, weight=params[:channels].copy(), bias=params[channels:].copy())
    if name == "relu_2" and reader.boolean():
        raise reader.fail("disabled relu")
    return DlibLayer("relu")


def read_model_bytes(path: str | os.PathLike, what: str) -> bytes:
    """The bytes of a dlib model file, after the checks every dlib reader makes first.

    Parameters
    ----------
    what : str
        The file's kind in messages, e.g. ``"detector file"``.

    Raises
    ------
    WeightsError
        If the file does not exist or is over 1 GiB (no dlib model is near that; a hostile size is refused
        before it is read into memory).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} {str(path)!r} does not exist")
    if path.stat().st_size > 1 << 30:
        raise WeightsError(f"{path}: {path.stat().st_size} bytes is far too large for a {what}")
    return path.read_bytes()


def read_mmod(path: str | os.PathLike) -> MmodModel:
    """Parse a dlib ``loss_mmod`` network file (the MMOD face detector and networks of its shape).

    Raises
    ------
    WeightsError
        If the file is missing, truncated, altered, or not such a network.
    """
    reader = DlibReader(read_model_bytes(path, "detector file"), str(path))
    if reader.integer() != 1:
        raise reader.fail("loss layer version")
    options = _loss(reader)
    versions = []
    while True:  # add_layer versions, outermost first; the innermost (version 3) wraps the input layer
        version = reader.integer()
        versions.append(version)
        if version == 3 or len(versions) > 1000:
            break
        if version != 2:
            raise reader.fail(f"layer version {version}")
    name = reader.expect("input_rgb_image_pyramid", "input_rgb_image_pyramid2")
    mean = (reader.real(), reader.real(), reader.real())
    padding, outer = (reader.count(10000, "padding"), reader.count(10000, "padding")) if name.endswith("2") \
        else (10, 11)
    layers = []
    for index, version in enumerate(reversed(versions)):
        layers.append(read_layer(reader))
        for _ in range(3):
            reader.boolean()
        reader.tensor(), reader.tensor()  # x_grad, cached output (empty in a saved network)
        if index == 0:
            reader.tensor()  # grad_final
            if version >= 3:
                reader.integer(signed=False)
        elif version == 2:
            reader.tensor()  # params_grad
    if reader.position != len(reader.data):
        raise reader.fail(f"{len(reader.data) - reader.position} unexpected trailing bytes")
    return MmodModel(mean, padding, outer, layers, options)
