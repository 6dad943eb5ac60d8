"""The run configuration a result file records, and how ``--resume FILE`` alone restores it.

A result file stores the options of its run as JSON in the root attribute ``configuration`` (paths resolved,
so the file can be resumed from any directory). ``python -m dcnn.infer --resume FILE`` takes every option it is
not given from there:

- :data:`IDENTITY` (and :data:`RECOGNITION`): options that decide the outputs. Given again, they must agree with
  the file (``--input``, ``--weights``, a model file given to ``--model`` and ``dcnn.recognize``'s ``--known``
  gallery may name another path: the file or folder is then recognised by its content fingerprint, see
  :mod:`dcnn.io.fingerprint`); every path is recorded in one form, :func:`dcnn.io.results.stored_path`;
- :data:`FREE`: options that decide only how the work is done; given again, they replace the stored ones;
- :data:`PER_RANKS`: options that describe each rank (a grid, weights per rank, a cluster file); restored only
  when the resumed run has as many ranks as the first, since a resume may use any rank count.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from dcnn.errors import InputError
from dcnn.exec.workloads import is_model_file
from dcnn.io.results import stored_path

__all__ = ["ADDED", "FREE", "IDENTITY", "PER_RANKS", "RECOGNITION", "RENAMED", "configuration", "restore"]

IDENTITY = ("model", "weights", "upsample", "seed", "input", "dataset", "batch_size", "mode", "preprocess",
            "exact_conv")
FREE = ("tiles", "halo_policy", "fuse_depth", "no_comm_overlap", "no_steal", "mem_per_rank")
#: Options stored under an earlier name (``--overlap`` and ``--no-overlap`` before this release).
RENAMED = {"overlap": "halo_policy", "no_overlap": "no_comm_overlap"}
#: Options added since files first recorded their configuration, with the value an older file's run had.
ADDED = {"preprocess": None, "exact_conv": False}
PER_RANKS = ("grid", "capacity", "throttle", "cluster")
#: Options of ``python -m dcnn.recognize`` that decide its outputs, recorded and restored like :data:`IDENTITY`.
RECOGNITION = ("known", "tolerance", "jitter")
#: Options naming files, stored as resolved absolute paths.
_PATHS = ("input", "weights", "cluster", "known")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _is_path(key: str, value: Any) -> bool:
    """Whether option ``key`` with ``value`` names a file: the options of :data:`_PATHS`, and ``--model`` when it
    names a model file (:func:`~dcnn.exec.workloads.is_model_file`) rather than a zoo model."""
    return value is not None and (key in _PATHS or (key == "model" and is_model_file(value)))


def configuration(args: argparse.Namespace, ranks: int) -> str:
    """The JSON of the options of :data:`IDENTITY`, :data:`FREE`, :data:`PER_RANKS` (and :data:`RECOGNITION`
    for a recognition run), and the rank count."""
    stored: dict[str, Any] = {"ranks": ranks}
    for key in (*IDENTITY, *FREE, *PER_RANKS, *(key for key in RECOGNITION if hasattr(args, key))):
        value = getattr(args, key)
        stored[key] = stored_path(value) if _is_path(key, value) else value
    return json.dumps(stored)


def restore(args: argparse.Namespace, given: frozenset[str], text: str, path: str | os.PathLike,
            ranks: int) -> None:
    """Fill ``args`` from the stored configuration ``text`` of result file ``path`` (see the module docstring).

    ``given`` names the options on the command line; ``ranks`` is the resumed run's rank count.

    Raises
    ------
    InputError
        If a given option of :data:`IDENTITY` contradicts the file, or the stored input is gone and no
        ``--input`` names its new place.
    """
    try:
        stored = json.loads(text)
        for old, new in RENAMED.items():
            if old in stored:
                stored.setdefault(new, stored.pop(old))
        for key, value in ADDED.items():
            stored.setdefault(key, value)
        missing = [key for key in (*IDENTITY, *FREE, *PER_RANKS, "ranks") if key not in stored]
    except (TypeError, ValueError):
        missing = ["configuration"]
    if missing:
        raise InputError(f"--resume {str(path)!r}: the file does not record its run's configuration "
                         f"({', '.join(missing)}); it was made by an older dcnn and cannot be resumed")
    for key in (*IDENTITY, *(key for key in RECOGNITION if key in stored and hasattr(args, key))):
        if key not in given:
            setattr(args, key, stored[key])
        elif getattr(args, key) != stored[key] and not (_is_path(key, stored[key])
                                                        and _is_path(key, getattr(args, key))):
            raise InputError(f"--resume {str(path)!r}: it was made with {_flag(key)} {stored[key]}, this run asks "
                             f"for {getattr(args, key)}; leave {_flag(key)} out to continue it")
    for key in ("input", "weights", "model", "known"):
        if key not in given and _is_path(key, stored.get(key)) and not os.path.exists(stored[key]):
            raise InputError(f"--resume {str(path)!r}: its {key} {stored[key]!r} is gone; if it was moved, give its "
                             f"new place with {_flag(key)}")
    restored = FREE + (PER_RANKS if stored["ranks"] == ranks else ())
    for key in restored:
        if key not in given:
            setattr(args, key, stored[key])
