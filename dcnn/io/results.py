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

The result file is never truncated in place: a new file is built under a temporary name in the same directory
and moved into place (an existing file is replaced only when asked, ``--force``), and a file is written only by
the run holding its :class:`~dcnn.io.lockfile.RunLock`, so HDF5's own file locking (which truncates before it locks
and fails on NFS) is switched off for every file opened here.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import math
import os
import resource
import shlex
import shutil
import stat
import sys
import tempfile
import traceback
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dcnn import __version__
from dcnn.errors import InputError, out_of_space
from dcnn.faces.detect import DETECTION_DTYPE
from dcnn.io.lockfile import RunLock
from dcnn.io.scan import Skip

__all__ = ["LOGITS_CHUNK_BYTES", "ResultWriter", "claim", "content_changed", "encode_outputs", "logits_chunks",
           "open_result", "peak_rss_bytes", "provenance", "read_configuration", "replaced_whole", "resume_command",
           "stored_path", "utc_now"]

#: Attributes that must match for ``--resume`` to continue a file (input and weights by content).
RESUME_KEYS = ("model", "mode", "weights_fingerprint", "input_fingerprint", "dataset", "upsample", "input_shape",
               "num_images", "batch_size")


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far, in bytes.

    On Linux this is ``VmHWM`` of ``/proc/self/status``: the high-water mark of this program's own address space.
    ``getrusage``'s ``ru_maxrss`` is not used there, because Linux carries it across ``exec``: a rank started
    by a large parent (a test runner holding PyTorch, a workflow manager) would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


def utc_now() -> str:
    """The current time as an ISO 8601 UTC string."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


#: Result attributes and the SLURM variables they copy (empty outside SLURM): the job, its array task and step.
SLURM_IDS = {"slurm_job_id": "SLURM_JOB_ID", "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
             "slurm_array_task_id": "SLURM_ARRAY_TASK_ID", "slurm_step_id": "SLURM_STEP_ID"}


def provenance(mpi4py_version: str) -> dict[str, str]:
    """Versions, the command line and the SLURM job, array and step IDs of this process.

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
        **{attribute: os.environ.get(variable, "") for attribute, variable in SLURM_IDS.items()},
    }


def _program() -> str:
    """``python -m dcnn.infer`` for a module run with ``-m``, else the script's name."""
    program = Path(sys.argv[0])
    if program.parent.name == "dcnn" and program.suffix == ".py":
        return f"python -m dcnn.{program.stem}"
    return program.name


def identity_labels(identity: np.ndarray, image_names: Sequence[str]) -> np.ndarray:
    """The names of identified faces.

    Parameters
    ----------
    identity : numpy.ndarray
        ``(M,)`` int index of each face's person among the known people, negative for unknown
        (:func:`dcnn.faces.pipeline.identify`).
    image_names : sequence of str
        The person of each known image (``/known/names``, one per known descriptor); the known people are its
        distinct names in order of first appearance, as :class:`dcnn.faces.pipeline.Gallery` numbers them.

    Returns
    -------
    numpy.ndarray
        ``(M,)`` object array of names, ``"unknown"`` for a negative index.
    """
    people = list(dict.fromkeys(image_names))
    labels = np.array([*people, "unknown"], dtype=object)
    return labels[np.where(identity < 0, len(people), identity)]


def _plain(value: Any) -> Any:
    """A stored attribute as a plain Python value (numpy scalars unwrapped, bytes decoded as :func:`_attribute`
    encoded them)."""
    if isinstance(value, np.generic):
        value = value.item()
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _attribute(value: Any) -> Any:
    """HDF5-storable form of a configuration value (nested values become JSON).

    A string that is not valid Unicode (a path with non-UTF-8 bytes, which Python holds as surrogates) is stored
    as its bytes, which :func:`_plain` turns back into the same string.
    """
    if value is None:
        return "none"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return np.bytes_(value.encode("utf-8", "surrogateescape"))
        return value
    if isinstance(value, (int, float, bool, np.integer, np.floating)):
        return value
    return json.dumps(value, default=str)


def _text(value: str) -> str:
    """``value`` for a dataset of UTF-8 strings: a file name's bytes that are not UTF-8 (which Python holds as
    surrogates, and HDF5 cannot store as text) written as ``\\xNN`` escapes."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _hdf5(path: str | os.PathLike, mode: str, **options: Any) -> h5py.File:
    """``h5py.File`` without HDF5's file locking (see the module docstring; :class:`RunLock` guards writers).

    HDF5 refuses a second handle on a file open in the same process with other locking flags: a reader in the
    writer's process must use :func:`open_result`.
    """
    return h5py.File(path, mode, locking=False, **options)


def open_result(path: str | os.PathLike) -> h5py.File:
    """Open a result file for reading, whether complete or left by a killed run (still marked open for SWMR)."""
    try:
        return _hdf5(path, "r")
    except OSError as error:
        if "already open for write" not in str(error):
            raise
        return _hdf5(path, "r", swmr=True)


def stored_path(path: str | os.PathLike) -> str:
    """The one form in which a result file records a path (in its configuration and in its attributes, such as
    ``known``): absolute and resolved, so that a run is resumed, and compared, from any directory."""
    return str(Path(path).resolve())


def content_changed(path: str | os.PathLike, what: str, given: str, used: str) -> InputError:
    """The refusal of a resumed run whose ``what`` (``input``, ``known``, ``model_file``...) is not the content the
    run at ``path`` was made with: ``given`` is its path now, ``used`` the one the file records."""
    label = "gallery" if what == "known" else what.replace("_", " ")
    return InputError(f"--resume {str(path)!r}: {given!r} is not the {label} this run was made with (its content "
                      f"differs; the run used {used!r})")


def resume_command(path: str | os.PathLike, ranks: int, command: str | None = None) -> str:
    """The command line that continues the interrupted run in ``path`` (the file records every other option).

    ``command`` is the command line that wrote the file (its ``command`` attribute), for its program
    (``python -m dcnn.infer`` or ``python -m dcnn.recognize``); by default this process's.
    """
    words = (command or _program()).split()
    program = " ".join(words[:3]) if words[:2] == ["python", "-m"] else "python -m dcnn.infer"
    launcher = f"mpirun -np {ranks} " if ranks > 1 else ""
    return f"{launcher}{program} --resume {shlex.quote(str(path))}"


def _target(path: str | os.PathLike) -> Path:
    """The file that writing ``path`` writes: a symbolic link's target (resolved), so that replacing the file
    (``os.replace``) writes through the link as editors do instead of replacing the link itself."""
    return Path(os.path.realpath(path))


def _temporary(path: Path) -> Path:
    """A new, empty file beside ``path`` (same directory, so that ``os.replace`` is atomic), named after it.

    Its mode is that of an existing ``path`` (a replaced file keeps its permissions, as editors do), else the one
    a newly created file gets under the process's umask (``0o666 & ~umask``), not :func:`tempfile.mkstemp`'s 0600.
    """
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            umask = os.umask(0o22)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(descriptor, mode)
    finally:
        os.close(descriptor)
    return Path(name)


@contextlib.contextmanager
def replaced_whole(path: str | os.PathLike) -> Iterator[Path]:
    """A new file beside ``path`` to write (:func:`_temporary`: it gets ``path``'s permissions), moved onto ``path``
    (``os.replace``) once written whole: an interruption or a failure leaves ``path`` as it was and no temporary
    file (``scripts/make_dataset.py --force`` on the committed set)."""
    temporary = _temporary(Path(path))
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def claim(path: str | os.PathLike, *, new: bool, replace: bool = False) -> RunLock:
    """Take the lock of result file ``path`` for this run and check that the run may write it.

    Parameters
    ----------
    path : path
        The result file.
    new : bool
        A new run (``--output``): an existing file is refused unless ``replace``. Otherwise a resumed run
        (``--resume``): the file must exist.
    replace : bool
        ``--force``: an existing file will be replaced (only once the new one is complete, see
        :meth:`ResultWriter.create`).

    Temporary copies of ``path`` left by a run killed while writing them (see :func:`_temporary`) are removed
    once the lock is held.

    Raises
    ------
    InputError
        If another run is writing ``path`` (see :class:`RunLock`), or it exists for a new run without
        ``replace``, or is, with ``replace``, a non-empty file other than a result file (:func:`_is_result`: a
        photo, an image set, the run's own input, a file it cannot read), or is missing for a resumed run.
    """
    path = Path(path)
    flag = "--output" if new else "--resume"
    if path.is_dir():
        raise InputError(f"{flag} {str(path)!r} is a folder; name a file")
    if new:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"cannot create output file {str(path)!r} ({error})") from None
    else:
        _require_result(path)
    lock = RunLock.acquire(_target(path))  # one lock however the file is named
    if new and path.exists() and not replace:
        lock.release()
        raise InputError(f"{str(path)!r} already exists; give --force to replace it, --resume {str(path)!r} to "
                         f"continue an interrupted run, or another --output")
    if new and path.exists() and path.stat().st_size and not _is_result(path):
        lock.release()
        raise InputError(f"--output {str(path)!r} exists and is not a dcnn result file, or cannot be read to tell "
                         f"(--force replaces only those: an image set, a photo or the run's own --input are kept); "
                         f"remove it or choose another --output")
    target = _target(path)
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):  # of a run killed while writing
        leftover.unlink(missing_ok=True)
    return lock


def _is_result(path: str | os.PathLike) -> bool:
    """Whether ``path`` may be a dcnn result file (HDF5 with a ``status`` and ``/timing/task_start``), complete or
    left by an interrupted run: the only files ``--force`` replaces. An HDF5 file that HDF5 cannot open (another
    program holds it open for writing, or it is damaged) cannot tell, and counts as one; a file that cannot be
    read at all does not."""
    try:
        if not h5py.is_hdf5(path):
            return False
    except OSError:
        return False
    try:
        with open_result(path) as handle:
            return "status" in handle.attrs and "timing/task_start" in handle
    except OSError:
        return True


def _require_result(path: Path) -> None:
    """Refuse a ``--resume`` file that does not exist."""
    if not path.is_file():
        raise InputError(f"--resume {str(path)!r}: no such file")


def read_configuration(path: str | os.PathLike,
                       keys: tuple[str, ...] = RESUME_KEYS) -> tuple[dict[str, Any], str]:
    """The attributes of result file ``path`` that a resumed run needs (``keys``, ``input``, ``weights``,
    ``model_file`` and ``configuration``, see :mod:`dcnn.cli.runconfig`), and its status (``running``,
    ``complete``).

    Raises
    ------
    InputError
        If the file is not a dcnn result file.
    """
    _require_result(Path(path))
    try:
        with open_result(path) as handle:
            stored = {key: _plain(handle.attrs.get(key))
                      for key in (*keys, *(key.removesuffix("_fingerprint") for key in keys
                                           if key.endswith("_fingerprint")),
                                  "input", "weights", "model_file", "configuration")}
            status = str(_plain(handle.attrs.get("status")))
            handle["timing/task_start"]
    except (OSError, KeyError) as error:
        raise InputError(f"--resume {str(path)!r}: not a dcnn result file ({error})") from None
    return stored, status


#: Bytes beyond the file and its additions that the final copy of a result file may take (HDF5's metadata), and
#: the same share of the file's size.
REWRITE_MARGIN, REWRITE_SHARE = 64 << 10, 0.1


def _rewrite(path: Path, groups: Mapping[str, Mapping[str, Any]], attributes: Mapping[str, Any]) -> None:
    """Replace ``path`` by a clean copy of itself plus ``groups`` and ``attributes`` (atomically).

    Raises
    ------
    InputError
        Too little free space for the copy (checked first: HDF5 can crash rather than raise when a write fails
        halfway), or the disk filled up while copying; ``path`` stays as it was, and nothing is left beside it.
    """
    path = _target(path)  # a symbolic link is written through
    added = sum(np.asarray(value).nbytes for datasets in groups.values() for value in datasets.values())
    needed = int(path.stat().st_size * (1 + REWRITE_SHARE)) + added + REWRITE_MARGIN
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        raise InputError(f"{path}: no space left on the device for the file's final copy (about "
                         f"{needed / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free); free some space and resume")
    temporary = _temporary(path)
    try:
        _copy_with(path, temporary, groups, attributes)
    except BaseException as error:
        temporary.unlink(missing_ok=True)  # a full disk, an interruption: the file stays as it was, nothing beside it
        if out_of_space(error) is not None:
            raise InputError(f"{path}: no space left on the device for the file's final copy; free some space and "
                             f"resume") from None
        raise
    os.replace(temporary, path)


def _copy_with(path: Path, temporary: Path, groups: Mapping[str, Mapping[str, Any]],
               attributes: Mapping[str, Any]) -> None:
    """Write ``temporary`` as a clean copy of ``path`` plus ``groups`` and ``attributes``."""
    with open_result(path) as source, _hdf5(temporary, "w", libver="latest") as target:
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


def encode_outputs(outputs: np.ndarray, start: int) -> np.ndarray:
    """A task's outputs (logits rows or records such as detections) as one float64 vector, to send to the writer.

    Records become one row each: ``image - start``, then every other field in order, flattened.
    """
    if outputs.dtype.names is None:
        return outputs.astype(np.float64).reshape(-1)
    columns = [(outputs["image"] - start)[:, None]] + [
        outputs[name].reshape(len(outputs), int(np.prod(outputs.dtype[name].shape, dtype=np.int64))).astype(np.float64)
        for name in outputs.dtype.names if name != "image"]
    return np.concatenate(columns, axis=1).reshape(-1)


#: Bytes of one chunk of the logits table at most: HDF5's default chunk cache (1 MiB) holds a whole chunk, so a
#: task's write of a few rows touches only the chunks of those rows. Sized by the whole table (1,024 rows of a
#: model's output), a model with a 119x121x16 output map had one 55 MB chunk for 60 images, read and written back
#: whole by every task's write, and held in memory by the final copy (and about 1 GB per chunk for 50,000 images).
LOGITS_CHUNK_BYTES = 1 << 20


def logits_chunks(num_images: int, outputs: int) -> tuple[int, int]:
    """The chunk shape of an ``num_images x outputs`` float32 logits table: whole rows, as many as fit
    :data:`LOGITS_CHUNK_BYTES` (at most 1,024), or part of one row where a single row is larger."""
    per_row = 4 * max(1, outputs)
    if per_row > LOGITS_CHUNK_BYTES:
        return 1, max(1, LOGITS_CHUNK_BYTES // 4)
    return max(1, min(num_images, 1024, LOGITS_CHUNK_BYTES // per_row)), max(1, outputs)


#: Fields of face records beyond the detection's, and the dataset each becomes when the run ends.
RECORD_DATASETS = {"landmarks": "landmarks", "descriptor": "descriptors", "distance": "distance",
                   "identity": "identity"}


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
            logits = outputs["logits"]
            step = logits.chunks[0]  # whole chunks at a time: never the whole table in memory
            for first in range(0, len(done), step):
                done[first:first + step] &= np.isfinite(logits[first:first + step]).all(axis=1)
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


def _layout(handle: h5py.File, num_images: int, outputs: int | np.dtype, num_tasks: int,
            attributes: Mapping[str, Any], known: Mapping[str, np.ndarray] | None,
            files: Sequence[str] | None) -> None:
    """The datasets and attributes of a new result file (see :meth:`ResultWriter.create` and the module
    docstring)."""
    group = handle.create_group("outputs")
    if isinstance(outputs, np.dtype):
        group.create_dataset("detections", shape=(0,), maxshape=(None,), dtype=outputs, chunks=(1024,))
        group.create_dataset("detection_counts", shape=(num_images,), dtype=np.int32, fillvalue=-1)
    else:
        group.create_dataset("logits", shape=(num_images, outputs), dtype=np.float32, fillvalue=np.nan,
                             chunks=logits_chunks(num_images, outputs))
    group.create_dataset("done", shape=(num_images,), dtype=np.uint8, fillvalue=0)
    if files is not None:
        group.create_dataset("file", data=np.array([_text(name) for name in files], dtype=h5py.string_dtype()))
    timing = handle.create_group("timing")
    for name, dtype, fill in (("task_start", np.float64, np.nan), ("task_end", np.float64, np.nan),
                              ("task_rank", np.int32, -1)):
        timing.create_dataset(name, shape=(num_tasks,), dtype=dtype, fillvalue=fill)
    if known is not None:
        gallery = handle.create_group("known")
        gallery.create_dataset("names", data=np.array(known["names"], dtype=h5py.string_dtype()))
        gallery.create_dataset("descriptors", data=np.asarray(known["descriptors"], np.float32))
    for key, value in attributes.items():
        handle.attrs[key] = _attribute(value)
    handle.attrs["status"] = "running"
    handle.attrs["runs"] = 1


def _skip_tables(handle: h5py.File, skipped: Sequence[Skip]) -> None:
    """(Re)create ``/skipped`` (``index``, ``path``, ``reason``; appendable) holding ``skipped``."""
    if "skipped" in handle:
        del handle["skipped"]
    group = handle.create_group("skipped")
    group.create_dataset("index", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(256,))
    for name in ("path", "reason"):
        group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=h5py.string_dtype(), chunks=(256,))
    _append_skips(group, skipped)


def _append_skips(group: h5py.Group, skipped: Sequence[Skip]) -> None:
    """Append records to ``/skipped``."""
    first = group["index"].shape[0]
    columns = {"index": [skip.index for skip in skipped], "path": [_text(skip.path) for skip in skipped],
               "reason": [_text(skip.reason) for skip in skipped]}
    for name, values in columns.items():
        group[name].resize((first + len(values),))
        if values:
            group[name][first:] = values


class ResultWriter:
    """Creates (or resumes) a result file and fills it task by task; one writer per run (rank 0).

    Use :meth:`create` or :meth:`resume`, then :meth:`write_task` per finished task, then :meth:`finish`.
    """

    def __init__(self, path: Path, handle: h5py.File, num_tasks: int, lock: RunLock | None = None,
                 skipped: Sequence[Skip] = ()):
        self.path = path
        self._file = handle
        self._lock = lock
        self.num_tasks = num_tasks
        self._skipped = {skip.index for skip in skipped}
        self.detections = "detections" in handle["outputs"]
        self.records = handle["outputs/detections"].dtype if self.detections else None
        self.num_outputs = None if self.detections else handle["outputs/logits"].shape[1]

    @classmethod
    def create(cls, path: str | os.PathLike, num_images: int, outputs: int | np.dtype, num_tasks: int,
               attributes: Mapping[str, Any], known: Mapping[str, np.ndarray] | None = None,
               lock: RunLock | None = None, skipped: Sequence[Skip] = (), files: Sequence[str] | None = None
               ) -> ResultWriter:
        """Create ``path`` for ``num_images`` images in ``num_tasks`` tasks; ``lock`` is released at the end.

        The file is built under a temporary name beside ``path`` and then moved into place, so a file already at
        ``path`` (which :func:`claim` allows only with ``replace``) stays intact until the new one is complete.
        ``outputs`` is what each image yields: a number of logits (a classifier), or the row type of a detector's
        outputs (:data:`~dcnn.faces.detect.DETECTION_DTYPE`, or face records that extend it), a variable number
        of rows per image. ``known`` (names and descriptors of a gallery) is
        stored under ``/known`` at once, so a resumed run names identities as the first run did. ``skipped`` are
        the images the header scan found unusable (``--skip-unreadable``), recorded under ``/skipped``. ``files``
        (a folder input's file names, in image order) are stored as ``/outputs/file``.

        The run's ``attributes`` must agree with the file's on ``keys``.

        Raises
        ------
        InputError
            If the file cannot be created.
        """
        path = Path(path)
        temporary = handle = None
        replaced = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            target = _target(path)
            temporary = _temporary(target)
            with _hdf5(temporary, "w", libver="latest") as handle:
                _layout(handle, num_images, outputs, num_tasks, attributes, known, files)
                _skip_tables(handle, skipped)
            os.replace(temporary, target)
            replaced = True
            handle = _hdf5(path, "r+", libver="latest")
            handle.swmr_mode = True
            handle.flush()
        except BaseException as error:  # an interruption or a bug too: nothing half-made is left behind
            if handle is not None and handle.id.valid:
                with contextlib.suppress(OSError, RuntimeError):
                    handle.close()
            # Nothing half-made is left: the temporary copy, or the new file once it took the output's place (a
            # symbolic link's target: the link itself stays).
            if temporary is not None:
                (target if replaced else temporary).unlink(missing_ok=True)
            if lock is not None:
                lock.release()
            if not isinstance(error, (OSError, RuntimeError)):  # HDF5 reports a failed write (a full disk) as
                raise  # RuntimeError: those are the user's to fix, anything else is a bug or an interruption
            raise InputError(f"cannot create output file {str(path)!r} ({out_of_space(error) or error})") from None
        return cls(path, handle, num_tasks, lock, skipped)

    @classmethod
    def resume(cls, path: str | os.PathLike, attributes: Mapping[str, Any], keys: tuple[str, ...] = RESUME_KEYS,
               lock: RunLock | None = None, skipped: Sequence[Skip] = ()) -> tuple[ResultWriter, np.ndarray]:
        """Reopen an interrupted run; returns the writer and the ``done`` flags per image.

        ``/skipped`` is replaced by ``skipped``, this run's scan: images skipped before are tried again.

        The run's ``attributes`` must agree with the file's on ``keys``. ``lock`` (from :func:`claim`) is
        released when the writer finishes or closes.

        Raises
        ------
        InputError
            If the file is missing, unreadable or complete, or was made by a run with another configuration
            (input, weights and model files are compared by content fingerprint, whatever their paths).
        """
        path = Path(path)
        stored, status = read_configuration(path, keys)
        for key in keys:
            if _attribute(attributes[key]) != stored[key]:
                if key.endswith("_fingerprint"):
                    what = key.removesuffix("_fingerprint")
                    if stored[key] is None and stored.get(what) is not None and \
                            stored_path(stored[what]) == _attribute(attributes[what]):
                        continue  # an older dcnn recorded the path alone: the same path still is the same
                    if stored[key] is None:
                        raise InputError(f"--resume {str(path)!r}: the file does not record its {what}'s content "
                                         f"fingerprint (an older dcnn made it), and {attributes[what]!r} is not "
                                         f"the path it recorded ({stored.get(what)!r}); resume from where the first "
                                         f"run started, with the same --{what}")
                    raise content_changed(path, what, attributes[what], stored[what])
                raise InputError(f"--resume {str(path)!r}: it was made with {key} = {stored[key]}, this run has "
                                 f"{_attribute(attributes[key])}")
        if status == "complete":
            raise InputError(f"--resume {str(path)!r}: the run is already complete")
        with open_result(path) as handle:
            runs = int(handle.attrs.get("runs", 1))
            first_started = _plain(handle.attrs.get("first_started", handle.attrs.get("started", "unknown")))
            num_tasks = handle["timing/task_start"].shape[0]
        # The resumed run's attributes (ranks, threads, command...) replace the first run's: the per-rank
        # tables written at the end describe this run.
        _rewrite(path, {"outputs": _valid_outputs(path)},
                 {**attributes, "first_started": first_started, "runs": runs + 1, "resumed": utc_now()})
        handle = _hdf5(path, "r+", libver="latest")
        done = handle["outputs/done"][()]
        _skip_tables(handle, skipped)
        handle.swmr_mode = True
        return cls(path, handle, num_tasks, lock, skipped), done

    def write_task(self, task: int, start: int, stop: int, outputs: np.ndarray, rank: int, started: float,
                   ended: float, skipped: Sequence[Skip] = ()) -> None:
        """Store one task's outputs (images ``start .. stop - 1``) and flush.

        ``outputs`` are the logits rows, or the detection records (:data:`DETECTION_DTYPE`) of those images.
        ``skipped`` are images of the task that could not be read when it ran (``--skip-unreadable``): they are
        recorded under ``/skipped`` and, like the images the scan skipped, stay not done.
        """
        self._ensure_room(outputs)
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
        if skipped:
            _append_skips(self._file["skipped"], skipped)
            self._skipped.update(skip.index for skip in skipped)
        for index in sorted(self._skipped.intersection(range(start, stop))):
            self._file["outputs/done"][index] = 0
            if self.detections:
                self._file["outputs/detection_counts"][index] = -1
        self._file["timing/task_start"][task] = started
        self._file["timing/task_end"][task] = ended
        self._file["timing/task_rank"][task] = rank
        self._file.flush()

    def _ensure_room(self, outputs: np.ndarray) -> None:
        """Refuse a task's write, before touching the file, where the disk cannot hold it: HDF5 keeps what a
        failed write left behind (a dataset's cached chunk) and may crash closing it or at exit, so a full disk
        is caught here while the file is still clean, and it closes with every earlier task (resumable).

        The room asked for: the outputs, one new chunk of their table (the most a task's rows extend it by, when
        they are fewer than a chunk; else twice their size) and :data:`REWRITE_MARGIN` for HDF5's metadata.

        Raises
        ------
        OSError
            ``ENOSPC`` naming the file, as a failed write would (:func:`dcnn.errors.out_of_space`).
        """
        table = self._file["outputs/detections" if self.detections else "outputs/logits"]
        chunk = math.prod(table.chunks or table.shape) * table.dtype.itemsize
        needed = REWRITE_MARGIN + chunk + 2 * outputs.nbytes
        if shutil.disk_usage(_target(self.path).parent).free < needed:  # a symbolic link is written through
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    def skipped_in(self, split, tasks) -> set[int]:
        """The skipped images (found by the scan or while running) among those of ``tasks`` of ``split``."""
        return {index for task in tasks for index in range(*split.bounds(task)) if index in self._skipped}

    def decode(self, vector: np.ndarray, start: int) -> np.ndarray:
        """The inverse of :func:`encode_outputs` (exact: every value fits a float64)."""
        if not self.detections:
            return vector.reshape(-1, self.num_outputs).astype(np.float32)
        widths = [int(np.prod(self.records[name].shape, dtype=np.int64)) for name in self.records.names]
        rows = vector.reshape(-1, sum(widths))
        records = np.zeros(len(rows), self.records)
        column = 0
        for name, width in zip(self.records.names, widths):
            values = rows[:, column:column + width].reshape(len(rows), *self.records[name].shape)
            records[name] = values + start if name == "image" else values
            column += width
        return records

    def _final_outputs(self) -> dict[str, np.ndarray]:
        """Detections sorted by image, their per-image offsets, and one aligned dataset per further field
        (:data:`RECORD_DATASETS`; identities as the known names, ``unknown`` beyond the tolerance)."""
        if not self.detections:
            return {}
        with open_result(self.path) as handle:
            rows = handle["outputs/detections"][()]
            counts = np.maximum(handle["outputs/detection_counts"][()], 0)
            names = [_plain(n) for n in handle["known/names"][()]] if "known" in handle else []
        rows = rows[np.argsort(rows["image"], kind="stable")]
        final = {"detections": rows[list(DETECTION_DTYPE.names)].astype(DETECTION_DTYPE),
                 "detection_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)}
        for field, dataset in RECORD_DATASETS.items():
            if field in rows.dtype.names:
                final[dataset] = rows[field]
        if "identity" in final:
            if names:
                final["identity"] = identity_labels(rows["identity"], names).astype(h5py.string_dtype())
            else:
                del final["identity"], final["distance"]
        return final

    def finish(self, groups: Mapping[str, Mapping[str, Any]], **attributes: Any) -> None:
        """Add the final groups and attributes, mark the run complete and close.

        The additions go to a copy of the file that then replaces it (``os.replace``), so an interruption
        here leaves the SWMR file as it was.
        """
        self._file.close()
        _rewrite(self.path, {**groups, "outputs": self._final_outputs()}, {**attributes, "status": "complete"})
        self._release()

    def close(self) -> None:
        """Close without marking the run complete (after an error); what was flushed stays readable.

        Closing flushes: after a failed write (a full disk) that fails too, and is let go, since every task
        flushed before is in the file; the lock is released either way. Called while an error is handled, it
        first clears the finished frames of that error's traceback: a dataset a failed write still held there
        would otherwise be closed after its file failed to close, which crashes HDF5 (a segmentation fault
        when the traceback is freed)."""
        error = sys.exc_info()[1]
        if error is not None:
            traceback.clear_frames(error.__traceback__)
        try:
            if self._file.id.valid:
                self._file.close()
        except (OSError, RuntimeError):
            pass
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
