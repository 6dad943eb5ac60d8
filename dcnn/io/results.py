"""Results in HDF5: outputs in input order, per-task and per-layer timings, statistics and provenance.

One schema for every mode (``docs/results.md`` documents it in full):

- ``/outputs/logits`` — ``N x classes`` float32, row ``i`` for input image ``i``; or for detectors
  ``/outputs/detections`` — one row per box (image, left, top, right, bottom, confidence), sorted by image at the
  end, with ``/outputs/detection_offsets`` (``N + 1``) indexing it per image; ``/outputs/done`` — ``N`` uint8;
- ``/timing/task_start``, ``task_end`` (seconds since the run started), ``task_rank`` — one entry per task;
- ``/timing/...`` per rank and layer, and ``/stats/...`` per rank — written when the run ends;
- root attributes — configuration and provenance.

Crash safety: the file is written in HDF5's single-writer/multiple-reader (SWMR) mode, in which every flush
leaves a consistent file, and it is flushed after every task. A killed run leaves a readable file holding every
task finished before the kill, with ``status = "running"``. HDF5 then still marks the file as open for writing:
read it with ``h5py.File(path, "r", swmr=True)`` (or :func:`open_result`). ``--resume`` first rewrites it into a
clean copy, then continues. The final groups and attributes are also added to a copy that atomically replaces
the file (``os.replace``), so the end of a run can be killed too.
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

from dcnn import __version__
from dcnn.errors import InputError
from dcnn.faces.detect import DETECTION_DTYPE

__all__ = ["ResultWriter", "encode_outputs", "open_result", "peak_rss_bytes", "provenance", "utc_now"]

#: Attributes that must match for ``--resume`` to continue a file.
RESUME_KEYS = ("model", "mode", "weights", "input", "input_shape", "num_images", "batch_size")


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance(mpi4py_version: str) -> dict[str, str]:
    """Versions and the command line of this process.

    Parameters
    ----------
    mpi4py_version : str
        The version of mpi4py the run used, from :func:`dcnn.parallel.comm.mpi4py_version` (this module stays
        free of MPI).
    """
    import scipy

    return {
        "dcnn_version": __version__,
        "python_version": sys.version.split()[0],
        "numpy_version": np.__version__,
        "scipy_version": scipy.__version__,
        "h5py_version": h5py.__version__,
        "hdf5_version": h5py.version.hdf5_version,
        "mpi4py_version": mpi4py_version,
        "command": " ".join([_program(), *sys.argv[1:]]),
    }


def _program() -> str:
    """``python -m dcnn.infer`` for a module run with ``-m``, else the script's name."""
    program = Path(sys.argv[0])
    if program.parent.name == "dcnn" and program.suffix == ".py":
        return f"python -m dcnn.{program.stem}"
    return program.name


def _plain(value: Any) -> Any:
    """A stored attribute as a plain Python value (numpy scalars unwrapped, bytes decoded)."""
    if isinstance(value, np.generic):
        value = value.item()
    return value.decode() if isinstance(value, bytes) else value


def _attribute(value: Any) -> Any:
    """HDF5-storable form of a configuration value (nested values become JSON)."""
    if value is None:
        return "none"
    if isinstance(value, (str, int, float, bool, np.integer, np.floating)):
        return value
    return json.dumps(value, default=str)


def open_result(path: str | os.PathLike) -> h5py.File:
    """Open a result file for reading, whether complete or left by a killed run (still marked open for SWMR)."""
    try:
        return h5py.File(path, "r")
    except OSError as error:
        if "already open for write" not in str(error):
            raise
        return h5py.File(path, "r", swmr=True)


def _rewrite(path: Path, groups: Mapping[str, Mapping[str, Any]], attributes: Mapping[str, Any]) -> None:
    """Replace ``path`` by a clean copy of itself plus ``groups`` and ``attributes`` (atomically)."""
    temporary = path.with_name(path.name + ".tmp")
    with open_result(path) as source, h5py.File(temporary, "w", libver="latest") as target:
        for name in source:
            source.copy(source[name], target, name=name)
        for key, value in source.attrs.items():
            target.attrs[key] = value
        for group, datasets in groups.items():
            destination = target.require_group(group)
            for name, value in datasets.items():
                if name in destination:
                    del destination[name]
                value = np.asarray(value)
                maxshape = (None, *value.shape[1:]) if value.ndim else None  # appendable (detections)
                destination.create_dataset(name, data=value, maxshape=maxshape, chunks=True if value.ndim else None)
        for key, value in attributes.items():
            target.attrs[key] = _attribute(value)
    os.replace(temporary, path)


def encode_outputs(outputs: np.ndarray, start: int) -> np.ndarray:
    """A task's outputs (logits rows or detection records) as one float64 vector, to send to the writer."""
    if outputs.dtype.names is None:
        return outputs.astype(np.float64).reshape(-1)
    columns = [outputs["image"] - start] + [outputs[name] for name in ("left", "top", "right", "bottom",
                                                                       "confidence")]
    return np.stack(columns, axis=1).astype(np.float64).reshape(-1)


def _valid_outputs(path: Path) -> dict[str, np.ndarray]:
    """The outputs of a killed run, keeping only tasks whose results were completely written.

    A kill inside a task's write can leave ``done`` set without all of the task's rows. Validity is decided per
    image, then widened to whole tasks (``--resume`` recomputes whole tasks): every image of a task with an
    invalid image is marked not done and its detection rows are dropped, so no row is ever written twice.
    """
    with open_result(path) as handle:
        outputs = handle["outputs"]
        batch = int(handle.attrs["batch_size"])
        done = outputs["done"][()].astype(bool)
        rows = outputs["detections"][()] if "detections" in outputs else None
        if rows is None:
            done &= np.isfinite(outputs["logits"][()]).all(axis=1)
        else:
            counts = outputs["detection_counts"][()]
            done &= np.bincount(rows["image"], minlength=len(done))[:len(done)] == counts
    tasks = -(-len(done) // batch)
    whole = np.pad(done, (0, tasks * batch - len(done)), constant_values=True).reshape(tasks, batch).all(axis=1)
    done &= np.repeat(whole, batch)[:len(done)]
    if rows is None:
        return {"done": done.astype(np.uint8)}
    counts = np.where(done, counts, -1).astype(np.int32)
    return {"done": done.astype(np.uint8), "detections": rows[done[rows["image"]]], "detection_counts": counts}


class ResultWriter:
    """Creates (or resumes) a result file and fills it task by task; one writer per run (rank 0).

    Use :meth:`create` or :meth:`resume`, then :meth:`write_task` per finished task, then :meth:`finish`.
    """

    def __init__(self, path: Path, handle: h5py.File, num_tasks: int):
        self.path = path
        self._file = handle
        self.num_tasks = num_tasks
        self.detections = "detections" in handle["outputs"]
        self.num_outputs = None if self.detections else handle["outputs/logits"].shape[1]

    @classmethod
    def create(cls, path: str | os.PathLike, num_images: int, num_outputs: int | None, num_tasks: int,
               attributes: Mapping[str, Any]) -> ResultWriter:
        """Create ``path`` (replacing any file there) for ``num_images`` images in ``num_tasks`` tasks.

        ``num_outputs`` is the number of logits per image; ``None`` makes a detection file.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = h5py.File(path, "w", libver="latest")
        except OSError as error:
            raise InputError(f"cannot create output file {str(path)!r} ({error})") from None
        outputs = handle.create_group("outputs")
        rows = max(1, min(num_images, 1024))
        if num_outputs is None:
            outputs.create_dataset("detections", shape=(0,), maxshape=(None,), dtype=DETECTION_DTYPE, chunks=(1024,))
            outputs.create_dataset("detection_counts", shape=(num_images,), dtype=np.int32, fillvalue=-1)
        else:
            outputs.create_dataset("logits", shape=(num_images, num_outputs), dtype=np.float32, fillvalue=np.nan,
                                   chunks=(rows, num_outputs))
        outputs.create_dataset("done", shape=(num_images,), dtype=np.uint8, fillvalue=0)
        timing = handle.create_group("timing")
        for name, dtype, fill in (("task_start", np.float64, np.nan), ("task_end", np.float64, np.nan),
                                  ("task_rank", np.int32, -1)):
            timing.create_dataset(name, shape=(num_tasks,), dtype=dtype, fillvalue=fill)
        for key, value in attributes.items():
            handle.attrs[key] = _attribute(value)
        handle.attrs["status"] = "running"
        handle.attrs["runs"] = 1
        handle.swmr_mode = True
        handle.flush()
        return cls(path, handle, num_tasks)

    @classmethod
    def resume(cls, path: str | os.PathLike, attributes: Mapping[str, Any]) -> tuple[ResultWriter, np.ndarray]:
        """Reopen an interrupted run; returns the writer and the ``done`` flags per image.

        Raises
        ------
        InputError
            If the file is missing or unreadable, or was made by a run with another configuration.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"--resume {str(path)!r}: no such file")
        try:
            with open_result(path) as handle:
                stored = {key: _plain(handle.attrs.get(key)) for key in RESUME_KEYS}
                status = handle.attrs.get("status")
                runs = int(handle.attrs.get("runs", 1))
                first_started = _plain(handle.attrs.get("first_started", handle.attrs.get("started", "unknown")))
                num_tasks = handle["timing/task_start"].shape[0]
        except (OSError, KeyError) as error:
            raise InputError(f"--resume {path}: not a dcnn result file ({error})") from None
        for key in RESUME_KEYS:
            if _attribute(attributes[key]) != stored[key]:
                raise InputError(f"--resume {path}: it was made with {key} = {stored[key]}, this run has "
                                 f"{_attribute(attributes[key])}")
        if status == "complete":
            raise InputError(f"--resume {path}: the run is already complete")
        # The resumed run's attributes (ranks, threads, command...) replace the first run's: the per-rank
        # tables written at the end describe this run.
        _rewrite(path, {"outputs": _valid_outputs(path)},
                 {**attributes, "first_started": first_started, "runs": runs + 1, "resumed": utc_now()})
        handle = h5py.File(path, "r+", libver="latest")
        done = handle["outputs/done"][()]
        handle.swmr_mode = True
        return cls(path, handle, num_tasks), done

    def write_task(self, task: int, start: int, stop: int, outputs: np.ndarray, rank: int, started: float,
                   ended: float) -> None:
        """Store one task's outputs (images ``start .. stop - 1``) and flush.

        ``outputs`` are the logits rows, or the detection records (:data:`DETECTION_DTYPE`) of those images.
        """
        if self.detections:
            table = self._file["outputs/detections"]
            first = table.shape[0]
            table.resize((first + len(outputs),))
            table[first:] = outputs
            self._file["outputs/detection_counts"][start:stop] = np.bincount(outputs["image"] - start,
                                                                            minlength=stop - start)
        else:
            self._file["outputs/logits"][start:stop] = outputs
        self._file["outputs/done"][start:stop] = 1
        self._file["timing/task_start"][task] = started
        self._file["timing/task_end"][task] = ended
        self._file["timing/task_rank"][task] = rank
        self._file.flush()

    def decode(self, vector: np.ndarray, start: int) -> np.ndarray:
        """The inverse of :func:`encode_outputs` (exact: every value fits a float64)."""
        if not self.detections:
            return vector.reshape(-1, self.num_outputs).astype(np.float32)
        rows = vector.reshape(-1, 6)
        records = np.zeros(len(rows), DETECTION_DTYPE)
        records["image"] = rows[:, 0].astype(np.int64) + start
        for column, name in enumerate(("left", "top", "right", "bottom", "confidence"), start=1):
            records[name] = rows[:, column]
        return records

    def _final_outputs(self) -> dict[str, np.ndarray]:
        """Detections sorted by image, and their per-image offsets."""
        if not self.detections:
            return {}
        with open_result(self.path) as handle:
            rows = handle["outputs/detections"][()]
            counts = np.maximum(handle["outputs/detection_counts"][()], 0)
        rows = rows[np.argsort(rows["image"], kind="stable")]
        return {"detections": rows, "detection_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)}

    def finish(self, groups: Mapping[str, Mapping[str, Any]], **attributes: Any) -> None:
        """Add the final groups and attributes, mark the run complete and close.

        The additions go to a copy of the file that then replaces it (``os.replace``), so an interruption
        here leaves the SWMR file as it was.
        """
        self._file.close()
        _rewrite(self.path, {**groups, "outputs": self._final_outputs()}, {**attributes, "status": "complete"})

    def close(self) -> None:
        """Close without marking the run complete (after an error); what was flushed stays readable."""
        if self._file.id.valid:
            self._file.close()
