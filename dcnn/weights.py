"""Model weights: seeded initialisation, and ``.npz`` / HDF5 files keyed by PyTorch ``state_dict`` names.

A user with torchvision weights exports them once::

    sd = torchvision.models.vgg16(weights="DEFAULT").state_dict()
    numpy.savez("vgg16.npz", **{k: v.numpy() for k, v in sd.items()})

and runs ``python -m dcnn.infer --model vgg16 --weights vgg16.npz``. Files are read without pickle.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from .errors import WeightsError
from .graph import Network
from .layers import BatchNorm2d, Conv2d, Linear

__all__ = ["init_weights", "load_weights", "save_weights", "validate_weights"]

Weights = dict[str, np.ndarray]


def init_weights(network: Network, seed: int = 0) -> Weights:
    """Reproducible random weights: He-normal filters, small uniform biases, non-trivial batch-norm statistics.

    Parameters
    ----------
    network : Network
        The model.
    seed : int
        Seed of :func:`numpy.random.default_rng`; the same seed gives bit-identical weights.

    Notes
    -----
    Weights and biases are drawn per layer from streams derived from ``(seed, layer index)``, so adding a
    layer does not change the others. Biases and batch-norm statistics are non-zero so that a kernel that
    ignores them fails the tests.
    """
    weights: Weights = {}
    for index, (name, layer) in enumerate(network.layers):
        rng = np.random.default_rng([seed, index])
        for suffix, spec in layer.tensors().items():
            key = f"{name}.{suffix}"
            if spec.dtype == "int64":
                weights[key] = np.zeros(spec.shape, dtype=np.int64)
            elif isinstance(layer, (Conv2d, Linear)):
                fan_in = math.prod(spec.shape[1:]) if suffix == "weight" else math.prod(
                    layer.tensors()["weight"].shape[1:])
                if suffix == "weight":
                    weights[key] = rng.standard_normal(spec.shape, dtype=np.float32) * np.float32(
                        math.sqrt(2.0 / fan_in))
                else:
                    bound = 1.0 / math.sqrt(fan_in)
                    weights[key] = rng.uniform(-bound, bound, spec.shape).astype(np.float32)
            elif isinstance(layer, BatchNorm2d) and suffix in ("weight", "running_var"):
                weights[key] = rng.uniform(0.5, 1.5, spec.shape).astype(np.float32)
            else:
                weights[key] = rng.uniform(-0.1, 0.1, spec.shape).astype(np.float32)
    return weights


def validate_weights(network: Network, weights: Mapping[str, np.ndarray], source: str = "weights") -> Weights:
    """Check that ``weights`` match the network's ``state_dict`` exactly.

    Returns
    -------
    dict
        The weights, with optional bookkeeping tensors (``num_batches_tracked``) dropped.

    Raises
    ------
    WeightsError
        Naming the first missing or unexpected key, or a key whose shape or dtype is wrong with both shapes.
    """
    spec = network.state_spec()
    missing = [key for key, s in spec.items() if key not in weights and not s.optional]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WeightsError(f"{source}: missing key {missing[0]!r}{more} for model {network.name}")
    extra = [key for key in weights if key not in spec]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise WeightsError(f"{source}: unexpected key {extra[0]!r}{more}: not a tensor of model {network.name}")
    checked: Weights = {}
    for key, tensor_spec in spec.items():
        if key not in weights:
            continue
        value = weights[key]
        if tuple(value.shape) != tensor_spec.shape:
            raise WeightsError(f"{source}: {key!r} has shape {tuple(value.shape)}, "
                               f"model {network.name} expects {tensor_spec.shape}")
        if value.dtype != np.dtype(tensor_spec.dtype):
            raise WeightsError(f"{source}: {key!r} has dtype {value.dtype}, expected {tensor_spec.dtype} "
                               f"(convert with .astype(numpy.{tensor_spec.dtype}))")
        if tensor_spec.optional:
            continue
        checked[key] = np.ascontiguousarray(value)
    return checked


def load_weights(path: str | os.PathLike, network: Network | None = None) -> Weights:
    """Read a ``.npz`` or HDF5 (``.h5``/``.hdf5``) weights file, validated against ``network`` if given.

    Raises
    ------
    WeightsError
        If the file is missing, unreadable, corrupt, of an unknown format, or does not match the network.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")
    try:
        if h5py.is_hdf5(path):
            weights = _read_hdf5(path)
        elif zipfile.is_zipfile(path):
            with np.load(path, allow_pickle=False) as archive:
                weights = {key: archive[key] for key in archive.files}
        else:
            raise WeightsError(f"{path}: not a .npz archive or an HDF5 file")
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as error:
        raise WeightsError(f"{path}: cannot read weights ({type(error).__name__}: {error})") from None
    return weights if network is None else validate_weights(network, weights, source=str(path))


def _read_hdf5(path: Path) -> Weights:
    weights: Weights = {}
    with h5py.File(path, "r") as handle:
        def visit(name: str, item) -> None:
            if isinstance(item, h5py.Dataset):
                if item.dtype.kind not in "fiu":
                    raise WeightsError(f"{path}: dataset {name!r} is not numeric (dtype {item.dtype})")
                weights[name.replace("/", ".")] = item[()]
        handle.visititems(visit)
    return weights


def save_weights(path: str | os.PathLike, weights: Mapping[str, np.ndarray]) -> None:
    """Write weights as ``.npz`` (uncompressed) or HDF5, chosen by the file extension."""
    path = Path(path)
    if path.suffix in (".h5", ".hdf5"):
        with h5py.File(path, "w") as handle:
            for key, value in weights.items():
                handle.create_dataset(key, data=value)
    elif path.suffix == ".npz":
        np.savez(path, **weights)
    else:
        raise WeightsError(f"{path}: weights files end in .npz, .h5 or .hdf5")
