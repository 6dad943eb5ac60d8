"""Models a user brings as ONNX files: how ``--model`` names one, how images become its input, which sizes it takes.

``--model`` takes a zoo name, ``mmod``, or a model file (:func:`dcnn.exec.workloads.is_model_file`: a path
ending in ``.onnx``, or any existing file whose name is not a zoo model's). The file is read by
:func:`dcnn.network.onnx.load_onnx`; this module adds what a run needs around it (pure, no MPI):

- **Preprocessing.** An ONNX file does not say how its input was normalised. float32 ``N x C x H x W`` image sets
  are passed to the model as they are; uint8 images (HDF5 ``N x H x W x C`` sets, image folders) need
  ``--preprocess``: ``imagenet`` (``(pixel / 255 - mean) / std`` with ImageNet's RGB mean 0.485, 0.456, 0.406
  and std 0.229, 0.224, 0.225, as torchvision's models expect) or ``none`` (the pixel values 0 to 255 as float32).
- **Input sizes.** A model whose height or width is fixed takes only images of that size; each fixed dimension is
  checked against every image size before any work (:func:`model_input`). Dynamic dimensions take any size the
  layers accept.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from dcnn.errors import InputError, ShapeError
from dcnn.io.images import Hdf5ImageSet, ImageSet
from dcnn.network.graph import IMAGENET, Preprocessing, format_shape, raw_pixels
from dcnn.network.layers import Shape
from dcnn.network.onnx import OnnxModel, load_onnx

__all__ = [
    "ONNX_PACKAGE_BYTES",
    "PREPROCESS_CHOICES",
    "READER_COPIES",
    "check_image_set",
    "dims_text",
    "load_model_file",
    "model_input",
    "preprocessing_for",
    "reader_bytes",
]

#: The values of ``--preprocess``, for uint8 images given to a model file.
PREPROCESS_CHOICES = ("imagenet", "none")
#: Resident memory the onnx package adds to a rank that reads a model (its checker, shape inference and reference
#: evaluator, with protobuf): measured 18 MiB on x86-64 Linux; with a margin.
ONNX_PACKAGE_BYTES = 24 * 2**20
#: Copies of a model file that reading it holds at its peak besides the weights it returns (the parsed file while
#: its initializers become arrays). Measured: the peak of :func:`~dcnn.network.onnx.load_onnx` is 2.1 times the
#: file for a 45 MB ResNet-18 export and 2.6 times for a 14 MB MobileNetV2 export, one of them the weights.
READER_COPIES = 2


def reader_bytes(path: str | os.PathLike) -> int:
    """The memory reading the model file ``path`` adds to its rank beyond the weights the planner counts: the onnx
    package (:data:`ONNX_PACKAGE_BYTES`) and :data:`READER_COPIES` times the file. The copies are transient (freed
    before the first image), so adding them to the planner's runtime over-predicts a run whose later peak is
    larger; it never under-predicts."""
    return ONNX_PACKAGE_BYTES + READER_COPIES * os.path.getsize(path)


def preprocessing_for(choice: str | None, channels: int) -> Preprocessing:
    """The :class:`Preprocessing` of ``--preprocess choice`` for a model of ``channels`` input channels.

    ``None`` (no ``--preprocess``) gives the raw pixels too; :func:`check_image_set` refuses uint8 images without
    a choice before any work, so it is only used for float32 sets, which are never preprocessed.

    Raises
    ------
    InputError
        ``imagenet`` for a model that does not take 3 channels.
    """
    if choice == "imagenet":
        if channels != len(IMAGENET.mean):
            raise InputError(
                f"--preprocess imagenet normalises RGB images, but the model takes {channels} "
                f"channel{'s' if channels != 1 else ''}; use --preprocess none or float32 tensors"
            )
        return IMAGENET
    return raw_pixels(channels)


def load_model_file(path: str, preprocess: str | None = None) -> OnnxModel:
    """Read model file ``path`` (:func:`dcnn.network.onnx.load_onnx`) with the preprocessing of ``--preprocess``.

    Raises
    ------
    InputError
        For a missing, damaged, invalid or unsupported model (every unsupported operator listed with its nodes,
        :class:`~dcnn.network.onnx.UnsupportedModelError`), or ``imagenet`` for a model without 3 channels.
    ShapeError
        A model with a fixed input size whose layers do not fit it.
    """
    model = load_onnx(path)
    network = dataclasses.replace(model.network, preprocessing=preprocessing_for(preprocess, model.network.in_channels))
    return dataclasses.replace(model, network=network)


def model_input(model: OnnxModel) -> Callable[[int, int], Shape]:
    """``input_shape(height, width)`` of a model file: its ``(C, H, W)`` input for images of that size.

    Raises
    ------
    ShapeError
        For a size that differs from a fixed height or width of the model's input (naming the model file, its
        input and both sizes), or that a layer cannot take.
    """
    dims = model.input_dims

    def input_shape(height: int, width: int) -> Shape:
        fixed = [
            (axis, want, got)
            for axis, want, got in (("height", dims[2], height), ("width", dims[3], width))
            if want is not None and want != got
        ]
        if fixed:
            wanted = "x".join(letter if d is None else str(d) for letter, d in zip("HW", dims[2:]))
            raise ShapeError(
                f"{height}x{width} images do not fit {model.path.name}, whose input {model.input_name!r} "
                f"is {dims_text(dims)} (N x C x H x W): it takes {wanted} images only; resize them"
            )
        shape = (model.network.in_channels, height, width)
        model.network.shapes(shape)
        return shape

    return input_shape


def dims_text(dims: tuple[int | None, ...]) -> str:
    """``1x3x224x224``, or ``Nx3xHxW`` with the dynamic dimensions by letter."""
    return "x".join(letter if d is None else str(d) for letter, d in zip("NCHW", dims))


def check_image_set(model: OnnxModel, images: ImageSet, preprocess: str | None) -> None:
    """Refuse an image set the model cannot take as given, before any work.

    uint8 images need ``--preprocess`` (the file does not say how it normalises pixels); float32 tensors are the
    model's input as they are, so ``--preprocess`` is refused with them; a float32 set must have the model's
    channel count.

    Raises
    ------
    InputError
        Naming the image set, the model file and what to give instead.
    """
    tensors = isinstance(images, Hdf5ImageSet) and not images.channels_last
    channels = model.network.in_channels
    if not tensors and preprocess is None:
        raise InputError(
            f"{images.path}: uint8 images, and {model.path.name} does not say how it normalises "
            f"pixels; give --preprocess imagenet (torchvision's models) or --preprocess none (values "
            f"0-255), or float32 N x {channels} x H x W tensors preprocessed as the model expects"
        )
    if tensors and preprocess is not None:
        raise InputError(
            f"--preprocess {preprocess} applies to uint8 images; {images.path} holds float32 tensors, "
            f"which {model.path.name} takes as they are (leave --preprocess out)"
        )
    if tensors and images.channels != channels:
        raise InputError(
            f"{images.path}: tensors have {images.channels} channels, {model.path.name}'s input "
            f"{model.input_name!r} takes {channels} ({format_shape(model.network.input_shape)})"
        )
    if isinstance(images, Hdf5ImageSet) and images.channels_last and images.channels not in (channels, 3):
        raise InputError(f"{images.path}: images have {images.channels} channels, {model.path.name} takes {channels}")
