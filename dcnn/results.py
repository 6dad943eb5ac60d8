"""Results in HDF5: outputs in input order, plus the provenance of the run.

Layout (``docs/results.md`` documents it in full):

- ``/outputs/logits`` — ``N x classes`` float32, row ``i`` for input image ``i``;
- ``/outputs/done`` — ``N`` uint8, 1 where the row holds a finished result;
- ``/timing/...`` — per rank and per layer: compute and wait seconds, bytes sent and received;
- ``/stats/...`` — per rank: peak resident memory;
- root attributes — the configuration and provenance (``dcnn_version``, ``model``, ``command``,
  ``mpi_library``, ``hostnames``, ``started``, ``finished``, ``status``...).

Rows are written and flushed as batches finish, so a killed run leaves a readable file that holds every
image finished before the kill, and ``status`` stays ``"running"``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import __version__
from .errors import InputError

__all__ = ["ResultWriter", "peak_rss_bytes", "provenance", "utc_now"]


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance() -> dict[str, str]:
    """Versions and the command line of this process."""
    import mpi4py
    import scipy

    return {
        "dcnn_version": __version__,
        "python_version": sys.version.split()[0],
        "numpy_version": np.__version__,
        "scipy_version": scipy.__version__,
        "h5py_version": h5py.__version__,
        "hdf5_version": h5py.version.hdf5_version,
        "mpi4py_version": mpi4py.__version__,
        "command": " ".join([_program(), *sys.argv[1:]]),
    }


def _program() -> str:
    """``python -m dcnn.infer`` for a module run with ``-m``, else the script's name."""
    program = Path(sys.argv[0])
    if program.parent.name == "dcnn" and program.suffix == ".py":
        return f"python -m dcnn.{program.stem}"
    return program.name


def _attribute(value: Any) -> Any:
    """HDF5-storable form of a configuration value (nested values become JSON)."""
    if value is None:
        return "none"
    if isinstance(value, (str, int, float, bool, np.integer, np.floating)):
        return value
    return json.dumps(value, default=str)


class ResultWriter:
    """Creates a result file and fills it incrementally.

    Parameters
    ----------
    path : str or os.PathLike
        The file to create; an existing file is replaced.
    num_images : int
        Rows of every per-image output.
    num_outputs : int
        Columns of ``/outputs/logits``.
    attributes : mapping
        Configuration and provenance, stored as root attributes.
    """

    def __init__(self, path: str | os.PathLike, num_images: int, num_outputs: int,
                 attributes: Mapping[str, Any]):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = h5py.File(self.path, "w")
        except OSError as error:
            raise InputError(f"cannot create output file {str(self.path)!r} ({error})") from None
        outputs = self._file.create_group("outputs")
        rows = max(1, min(num_images, 1024))
        self._logits = outputs.create_dataset("logits", shape=(num_images, num_outputs), dtype=np.float32,
                                              fillvalue=np.nan, chunks=(rows, num_outputs))
        self._done = outputs.create_dataset("done", shape=(num_images,), dtype=np.uint8, fillvalue=0)
        for key, value in attributes.items():
            self._file.attrs[key] = _attribute(value)
        self._file.attrs["status"] = "running"
        self._file.flush()

    def write_logits(self, start: int, logits: np.ndarray) -> None:
        """Store the outputs of images ``start .. start + len(logits) - 1`` and flush."""
        stop = start + len(logits)
        self._logits[start:stop] = logits
        self._done[start:stop] = 1
        self._file.flush()

    def write_group(self, group: str, datasets: Mapping[str, Any]) -> None:
        """Write (or replace) datasets under ``/group`` and flush."""
        target = self._file.require_group(group)
        for name, value in datasets.items():
            if name in target:
                del target[name]
            target.create_dataset(name, data=value)
        self._file.flush()

    def finish(self, **attributes: Any) -> None:
        """Record final attributes, mark the run complete and close the file."""
        for key, value in attributes.items():
            self._file.attrs[key] = _attribute(value)
        self._file.attrs["status"] = "complete"
        self._file.close()

    def close(self) -> None:
        """Close without marking the run complete (after an error)."""
        if self._file.id.valid:
            self._file.close()
