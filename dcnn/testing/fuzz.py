"""Damaged-file testing of every file reader: truncated, bit-flipped and random inputs must raise dcnn's own errors.

Each *target* writes a valid file, and a *check* reads a (possibly damaged) copy with the production reader. A
case passes when the reader succeeds or raises a :class:`~dcnn.errors.DcnnError`; anything else (another
exception type, a crash, a hang) is a bug. The test suite drives this with hypothesis; ``scripts/fuzz_readers.py``
runs many more cases and records the counts in ``results/``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TARGETS", "TINY_RESNET", "Target", "damage", "tiny_descriptor_model", "tiny_shape_predictor"]


@dataclass(frozen=True)
class Target:
    """A file format: how to write a valid example into a folder, and how to read one."""

    name: str
    suffix: str
    write: Callable[[Path], Path]
    read: Callable[[Path], object]


def damage(data: bytes, rng: random.Random) -> bytes:
    """A damaged copy: truncated, with flipped bits, with a run of random bytes, or entirely random."""
    kind = rng.choice(("truncate", "flip", "splice", "random"))
    if kind == "truncate" or not data:
        return data[:rng.randrange(len(data) + 1)]
    if kind == "flip":
        buffer = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(buffer))
            buffer[position] ^= 1 << rng.randrange(8)
        return bytes(buffer)
    if kind == "splice":
        start = rng.randrange(len(data))
        length = rng.randint(1, 64)
        return data[:start] + rng.randbytes(length) + data[start + length:]
    return rng.randbytes(rng.randint(0, 4096))


def _write_npz(folder: Path) -> Path:
    from dcnn.network.weights import init_weights, save_weights
    from dcnn.network.zoo import get_model

    path = folder / "weights.npz"
    save_weights(path, init_weights(get_model("lenet5"), 0))
    return path


def _write_h5_weights(folder: Path) -> Path:
    from dcnn.network.weights import init_weights, save_weights
    from dcnn.network.zoo import get_model

    path = folder / "weights.h5"
    save_weights(path, init_weights(get_model("lenet5"), 0))
    return path


def _read_weights(path: Path) -> object:
    from dcnn.network.weights import load_weights
    from dcnn.network.zoo import get_model

    return load_weights(path, get_model("lenet5"))


def _write_dlib(folder: Path) -> Path:
    from dcnn.faces.detect import default_detector_path

    path = folder / "detector.dat"
    path.write_bytes(Path(default_detector_path()).read_bytes())
    return path


def _read_dlib(path: Path) -> object:
    from dcnn.faces.dlib_format import read_mmod

    return read_mmod(path)


def tiny_shape_predictor(seed: int = 0, parts: int = 3, cascades: int = 2, trees: int = 4, depth: int = 2,
                         features: int = 6):
    """A random, valid :class:`~dcnn.faces.shape_predictor.ShapePredictor`, small enough to damage many times."""
    from dcnn.faces.shape_predictor import Cascade, ShapePredictor

    rng = np.random.default_rng(seed)
    splits = 2 ** depth - 1
    return ShapePredictor(
        rng.uniform(0, 1, (parts, 2)).astype(np.float32),
        tuple(Cascade(rng.integers(0, parts, features), rng.normal(0, 0.1, (features, 2)).astype(np.float32),
                      rng.integers(0, features, (trees, splits)), rng.integers(0, features, (trees, splits)),
                      rng.normal(0, 20, (trees, splits)).astype(np.float32),
                      rng.normal(0, 0.01, (trees, splits + 1, 2 * parts)).astype(np.float32))
              for _ in range(cascades)))


def _write_shape_predictor(folder: Path) -> Path:
    from dcnn.faces.shape_predictor import save_shape_predictor

    path = folder / "landmarks.dat"
    save_shape_predictor(tiny_shape_predictor(), path)
    return path


def _read_shape_predictor(path: Path) -> object:
    from dcnn.faces.shape_predictor import read_shape_predictor

    return read_shape_predictor(path)


#: The face descriptor's wiring with 2 to 4 filters per convolution: a file of a few kilobytes.
TINY_RESNET = ((2, 3, False), (3, 4, True), (4, 3, True), (4, 3, True), (4, 1, True))


def tiny_descriptor_model(seed: int = 0):
    """A random :class:`~dcnn.faces.descriptor.DescriptorModel` of :data:`TINY_RESNET`'s widths."""
    from dcnn.faces.descriptor import NORMALIZE, DescriptorModel, descriptor_network, resnet_structure

    rng = np.random.default_rng(seed)
    network = descriptor_network(resnet_structure(TINY_RESNET))
    weights = {}
    for key, spec in network.state_spec().items():
        if key.startswith(NORMALIZE + "."):
            continue
        if key.endswith(".bias"):
            weights[key] = rng.normal(0, 0.1, spec.shape).astype(np.float32)
        elif len(spec.shape) == 1:  # an affine scale
            weights[key] = rng.uniform(0.5, 1.5, spec.shape).astype(np.float32)
        else:
            weights[key] = rng.normal(0, 0.3, spec.shape).astype(np.float32)
    return DescriptorModel((122.5, 117.0, 104.25), weights, TINY_RESNET)


def _write_descriptor_model(folder: Path) -> Path:
    from dcnn.faces.descriptor import save_descriptor_model

    path = folder / "resnet.dat"
    save_descriptor_model(tiny_descriptor_model(), path)
    return path


def _read_descriptor_model(path: Path) -> object:
    from dcnn.faces.descriptor import read_descriptor_model

    return read_descriptor_model(path, TINY_RESNET)


def _write_image_set(folder: Path) -> Path:
    import h5py

    path = folder / "images.h5"
    with h5py.File(path, "w") as handle:
        handle["images"] = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    return path


def _read_image_set(path: Path) -> object:
    from dcnn.io.images import open_image_set
    from dcnn.network.graph import IMAGENET

    with open_image_set(path) as images:
        return images.read(0, len(images), IMAGENET).sum()


def _write_png(folder: Path) -> Path:
    from PIL import Image

    path = folder / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def _read_folder(path: Path) -> object:
    from dcnn.io.images import open_image_set
    from dcnn.network.graph import IMAGENET

    with open_image_set(path.parent) as images:
        return images.read(0, len(images), IMAGENET).sum()


def _write_cluster(folder: Path) -> Path:
    path = folder / "cluster.toml"
    path.write_text('fraction = 0.8\ngmacs = 5\n[[node]]\nname = "rock"\nram = "4GiB"\ncount = 3\n'
                    '[[node]]\nname = "pc"\nram = "16GiB"\nspeed = 4\n')
    return path


def _read_cluster(path: Path) -> object:
    from dcnn.planner.plan import Cluster

    return Cluster.load(path)


def _write_sweep(folder: Path) -> Path:
    path = folder / "sweep.toml"
    path.write_text('name = "paper"\nnodes = [1, 2, 4]\nimages = [100, 1000]\nmodels = ["mmod", "vgg16"]\n'
                    'modes = ["batch", "fused"]\ncpus_per_task = 2\ntime = "01:00:00"\n'
                    'arguments = ["--batch-size", "4"]\n')
    return path


def _read_sweep(path: Path) -> object:
    from dcnn.io.sweep import load_sweep

    return load_sweep(path)


def _write_onnx(folder: Path) -> Path:
    """A small valid ONNX model (convolution, batch norm, ReLU, pooling, a classifier), initializer weights."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"W": rng.standard_normal((4, 3, 3, 3)), "s": rng.random(4) + 0.5, "b": rng.random(4),
               "m": rng.random(4), "v": rng.random(4) + 0.5, "G": rng.standard_normal((4, 5)), "C": rng.random(5)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"]),
             helper.make_node("Relu", ["n"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "G", "C"], ["y"])]
    graph = helper.make_graph(
        nodes, "fuzz", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()])
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def _read_onnx(path: Path) -> object:
    from dcnn.network.onnx import load_onnx

    return load_onnx(path)


TARGETS = {target.name: target for target in (
    Target("onnx", ".onnx", _write_onnx, _read_onnx),
    Target("dlib", ".dat", _write_dlib, _read_dlib),
    Target("shape-predictor", ".dat", _write_shape_predictor, _read_shape_predictor),
    Target("face-descriptor", ".dat", _write_descriptor_model, _read_descriptor_model),
    Target("npz", ".npz", _write_npz, _read_weights),
    Target("hdf5-weights", ".h5", _write_h5_weights, _read_weights),
    Target("hdf5-images", ".h5", _write_image_set, _read_image_set),
    Target("image-folder", ".png", _write_png, _read_folder),
    Target("cluster", ".toml", _write_cluster, _read_cluster),
    Target("sweep", ".toml", _write_sweep, _read_sweep),
)}
