"""Model weights: seeded initialisation, and ``.npz`` / HDF5 files keyed by PyTorch ``state_dict`` names.

A user with torchvision weights exports them once::

    sd = torchvision.models.vgg16(weights="DEFAULT").state_dict()
    numpy.savez("vgg16.npz", **{k: v.numpy() for k, v in sd.items()})

and runs ``python -m dcnn.infer --model vgg16 --weights vgg16.npz``. Files are read without pickle.
"""

from __future__ import annotations

import math
import os
import tokenize
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dcnn.errors import DAMAGED_FILE_ERRORS, WeightsError
from dcnn.network.graph import Network
from dcnn.network.layers import BatchNorm2d, Conv2d, Linear

__all__ = ["init_weights", "load_weights", "save_weights", "seeded_weights", "untrained_note", "validate_weights"]

Weights = dict[str, np.ndarray]

#: How a run records weights drawn by :func:`init_weights` rather than read from a file (``init:SEED``).
SEEDED_PREFIX = "init:"


def seeded_weights(seed: int) -> str:
    """The name a run records for the seeded, untrained weights of :func:`init_weights` (``init:SEED``)."""
    return f"{SEEDED_PREFIX}{seed}"


def untrained_note(weights: str) -> str | None:
    """The line that tells a user a run's outputs come from seeded, untrained weights; ``None`` for trained ones.

    Parameters
    ----------
    weights : str
        The weights a run records (its result file's ``weights`` attribute): :func:`seeded_weights`' name, a file.
    """
    if not weights.startswith(SEEDED_PREFIX):
        return None
    seed = weights[len(SEEDED_PREFIX):]
    return (f"weights: seeded and untrained (--seed {seed}): the outputs exercise the system but their classes "
            f"mean nothing; give trained weights with --weights FILE")


#: Fully connected weights are drawn in blocks of this many rows, each from its own random stream, so that a
#: rank can draw just its shard of rows and get exactly the values of the full matrix.
INIT_ROW_BLOCK = 256

RowRanges = Mapping[str, tuple[int, int]]


def init_weights(network: Network, seed: int = 0, rows: RowRanges | None = None) -> Weights:
    """Reproducible random weights: He-normal filters, small uniform biases, non-trivial batch-norm statistics.

    Parameters
    ----------
    network : Network
        The model.
    seed : int
        The same seed gives bit-identical weights.
    rows : mapping, optional
        ``{key: (start, stop)}``: return only these rows of these tensors (a rank's shard of a fully connected
        layer). The rows equal the same rows of the full tensors, and the full tensors are never built.

    Notes
    -----
    Each layer draws from streams derived from ``(seed, layer index)``, so adding a layer does not change the
    others. Biases and batch-norm statistics are non-zero so that a kernel that ignores them fails the tests.
    """
    rows = rows or {}
    weights: Weights = {}
    for index, (name, layer) in enumerate(network.layers):
        tensors = layer.tensors()
        for position, (suffix, spec) in enumerate(tensors.items()):
            key = f"{name}.{suffix}"
            start, stop = rows.get(key, (0, spec.shape[0] if spec.shape else 0))
            stream = [seed, index, position]
            if spec.dtype == "int64":
                value = np.zeros(spec.shape, dtype=np.int64)
            elif isinstance(layer, Linear) and suffix == "weight":
                weights[key] = _linear_rows(stream, spec.shape, start, stop, math.sqrt(2.0 / spec.shape[1]))
                continue
            elif isinstance(layer, Conv2d) and suffix == "weight":
                std = math.sqrt(2.0 / math.prod(spec.shape[1:]))
                value = np.random.default_rng(stream).standard_normal(spec.shape, dtype=np.float32) * np.float32(std)
            elif isinstance(layer, (Conv2d, Linear)):
                bound = 1.0 / math.sqrt(math.prod(tensors["weight"].shape[1:]))
                value = np.random.default_rng(stream).uniform(-bound, bound, spec.shape)
            elif isinstance(layer, BatchNorm2d) and suffix in ("weight", "running_var"):
                value = np.random.default_rng(stream).uniform(0.5, 1.5, spec.shape)
            else:
                value = np.random.default_rng(stream).uniform(-0.1, 0.1, spec.shape)
            value = value.astype(spec.dtype, copy=False)
            weights[key] = value[start:stop] if key in rows else value
    return weights


def _linear_rows(stream: list[int], shape: tuple[int, ...], start: int, stop: int, std: float) -> np.ndarray:
    """Rows ``start:stop`` of a He-normal matrix drawn in :data:`INIT_ROW_BLOCK`-row blocks."""
    out = np.empty((stop - start, shape[1]), dtype=np.float32)
    for block in range(start // INIT_ROW_BLOCK, -(-stop // INIT_ROW_BLOCK)):
        first, last = block * INIT_ROW_BLOCK, min(shape[0], (block + 1) * INIT_ROW_BLOCK)
        values = np.random.default_rng([*stream, block]).standard_normal((last - first, shape[1]), dtype=np.float32)
        lo, hi = max(first, start), min(last, stop)
        out[lo - start:hi - start] = values[lo - first:hi - first] * np.float32(std)
    return out


def _checked_keys(network: Network, tensors: Mapping[str, Any], source: str) -> list[str]:
    """Check keys, shapes and dtypes of array-likes (arrays or HDF5 datasets); return the keys to keep."""
    spec = network.state_spec()
    missing = [key for key, s in spec.items() if key not in tensors and not s.optional]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WeightsError(f"{source}: missing key {missing[0]!r}{more} for model {network.name}")
    extra = [key for key in tensors if key not in spec]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise WeightsError(f"{source}: unexpected key {extra[0]!r}{more}: not a tensor of model {network.name}")
    for key, tensor_spec in spec.items():
        if key not in tensors:
            continue
        value = tensors[key]
        if tuple(value.shape) != tensor_spec.shape:
            raise WeightsError(f"{source}: {key!r} has shape {tuple(value.shape)}, "
                               f"model {network.name} expects {tensor_spec.shape}")
        if value.dtype != np.dtype(tensor_spec.dtype):
            raise WeightsError(f"{source}: {key!r} has dtype {value.dtype}, expected {tensor_spec.dtype} "
                               f"(convert with .astype(numpy.{tensor_spec.dtype}))")
    return [key for key, tensor_spec in spec.items() if key in tensors and not tensor_spec.optional]


def require_finite(weights: Mapping[str, np.ndarray], source: str) -> None:
    """Raise :class:`WeightsError` naming the first tensor that holds NaN or infinite values.

    Such weights would silently turn every output into NaN; dcnn refuses them instead of warning.
    """
    for key, value in weights.items():
        if value.dtype.kind == "f":
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            if bad:
                raise WeightsError(f"{source}: {key!r} holds {bad} NaN or infinite value(s) of {value.size}; "
                                   f"the file is damaged or the training diverged")


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
    return {key: np.ascontiguousarray(weights[key]) for key in _checked_keys(network, weights, source)}


def load_weights(path: str | os.PathLike, network: Network | None = None, rows: RowRanges | None = None) -> Weights:
    """Read a ``.npz`` or HDF5 (``.h5``/``.hdf5``) weights file, validated against ``network`` if given.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    network : Network, optional
        Check keys, shapes and dtypes against this model.
    rows : mapping, optional
        ``{key: (start, stop)}``: keep only these rows of these tensors. HDF5 datasets are read by slice and
        ``.npz`` members by row range from the archive stream (:class:`NpzMember`), so a rank never holds more
        than its shard.

    Returns
    -------
    dict of str to ndarray
        The tensors by ``state_dict`` key, float32 (PyTorch's shapes: a convolution's weight is
        ``(out_channels, in_channels / groups, kH, kW)``), sliced to ``rows`` where given.

    Raises
    ------
    WeightsError
        If the file is missing, unreadable, corrupt, of an unknown format, does not match the network, or
        holds NaN or infinite values.
    """
    path = Path(path)
    rows = rows or {}
    if not path.is_file():
        raise WeightsError(f"weights file {str(path)!r} does not exist")

    def read(tensors: Mapping[str, Any]) -> Weights:
        keys = list(tensors) if network is None else _checked_keys(network, tensors, str(path))
        weights = {key: np.ascontiguousarray(tensors[key][slice(*rows[key])] if key in rows else tensors[key][()])
                   for key in keys}
        require_finite(weights, str(path))
        return weights

    try:
        if h5py.is_hdf5(path):
            with h5py.File(path, "r") as handle:
                return read(_hdf5_datasets(handle, path))
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return read({name[:-len(".npy")]: NpzMember(archive, name) for name in archive.namelist()
                             if name.endswith(".npy")})
        raise WeightsError(f"{path}: not a .npz archive or an HDF5 file")
    except WeightsError:
        raise
    except (*DAMAGED_FILE_ERRORS, zipfile.BadZipFile, tokenize.TokenError) as error:
        raise WeightsError(f"{path}: cannot read weights ({type(error).__name__}: {error})") from None


#: Bytes read from an archive at once (zipfile makes a temporary copy of what it reads).
READ_CHUNK = 1 << 20


class NpzMember:
    """One array of a ``.npz`` archive, read on demand: whole (``member[()]``) or a range of rows
    (``member[start:stop]``) streamed from the archive, so only those rows are ever held.

    The member's ``.npy`` header gives its shape and dtype (:mod:`numpy.lib.format`); rows of a C-ordered array
    are contiguous, at ``offset + start * row_bytes``. Stored members are seeked into; compressed ones are
    decompressed up to the rows and the bytes dropped, 1 MiB at a time. A Fortran-ordered member is read whole.

    Raises
    ------
    WeightsError
        For arrays of Python objects (never loaded) or a member shorter than its header says.
    """

    def __init__(self, archive: zipfile.ZipFile, name: str):
        self._archive, self._name = archive, name
        with archive.open(name) as stream:
            version = np.lib.format.read_magic(stream)
            header = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if header is None:
                raise WeightsError(f"{archive.filename}: cannot read weights (member {name!r} has .npy format "
                                   f"{version}, not 1.0 or 2.0)")
            self.shape, self._fortran, self.dtype = header(stream)
            self._offset = stream.tell()
        if self.dtype.hasobject:
            raise WeightsError(f"{archive.filename}: cannot read weights (member {name!r} holds Python objects, "
                               f"which are never unpickled)")

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice) and self.shape and not self._fortran and key.step in (None, 1):
            start, stop, _ = key.indices(self.shape[0])
            return self._read(start, max(start, stop))
        return self._read(0, self.shape[0] if self.shape else 1)[key]

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start .. stop - 1`` (all of a Fortran-ordered or 0-d member), read straight into the array."""
        shape = (stop - start, *self.shape[1:]) if self.shape else ()
        array = np.empty(shape, self.dtype, order="F" if self._fortran else "C")
        view = memoryview(array.reshape(-1, order="A")).cast("B")
        row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize
        with self._archive.open(self._name) as stream:
            _skip(stream, self._offset + start * row_bytes,
                  self._archive.getinfo(self._name).compress_type == zipfile.ZIP_STORED)
            filled = 0
            while filled < len(view):
                count = stream.readinto(view[filled:filled + READ_CHUNK])  # zipfile reads a copy of each chunk
                if not count:
                    raise WeightsError(f"{self._archive.filename}: cannot read weights (member {self._name!r} is "
                                       f"truncated)")
                filled += count
        return array


def _skip(stream, count: int, stored: bool) -> None:
    """Move ``count`` bytes into an archive member: a seek if it is ``stored``, else decompress and drop
    :data:`READ_CHUNK` bytes at a time (zipfile's own seek drops 16 MiB at a time)."""
    if stored:
        stream.seek(count)
        return
    while count > 0:
        dropped = len(stream.read(min(count, READ_CHUNK)))
        if not dropped:
            raise WeightsError(f"{stream.name}: cannot read weights (archive member is truncated)")
        count -= dropped


def _hdf5_datasets(handle: h5py.File, path: Path) -> dict[str, h5py.Dataset]:
    datasets: dict[str, h5py.Dataset] = {}

    def visit(name: str, item) -> None:
        if isinstance(item, h5py.Dataset):
            if item.dtype.kind not in "fiu":
                raise WeightsError(f"{path}: dataset {name!r} is not numeric (dtype {item.dtype})")
            datasets[name.replace("/", ".")] = item

    handle.visititems(visit)
    return datasets


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
