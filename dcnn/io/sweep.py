"""Sweep files (TOML): the node counts, image counts, models and modes of a series of runs (``scripts/sweep.py``).

Keys: ``name``; ``nodes`` (rank counts); ``models`` (workload names, default the detector: ``["mmod"]``); ``modes``
(default ``["batch"]``); either ``images`` (counts of generated face images) or ``input`` (one image set);
``cpus_per_task`` (default 1); ``time`` (SLURM time limit, default ``"01:00:00"``); ``arguments`` (more
``dcnn.cli.infer`` options).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dcnn.errors import InputError
from dcnn.io.config import read_toml
from dcnn.modes import MODES

__all__ = ["Sweep", "load_sweep"]



@dataclass(frozen=True)
class Sweep:
    """A validated sweep file."""

    name: str
    nodes: tuple[int, ...]
    models: tuple[str, ...]
    modes: tuple[str, ...]
    images: tuple[int, ...] | None
    input: str | None
    cpus_per_task: int
    time: str
    arguments: tuple[str, ...]


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file.

    Raises
    ------
    InputError
        If the file is unreadable, not TOML, or a key is missing or of the wrong kind.
    """
    data = read_toml(path, "sweep file")
    from dcnn.exec.workloads import DETECTOR, workload_names

    def integers(key: str) -> tuple[int, ...]:
        values = data.get(key)
        if not isinstance(values, list) or not values or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise InputError(f"{path}: {key!r} must be a non-empty list of positive integers")
        return tuple(values)

    def names(key: str, allowed, default: list[str]) -> tuple[str, ...]:
        values = data.get(key, default)
        if not isinstance(values, list) or not values or not all(v in allowed for v in values):
            raise InputError(f"{path}: {key!r} must be a non-empty list of {', '.join(allowed)}")
        return tuple(values)

    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise InputError(f"{path}: 'name' must be a word of letters, digits, '_', '.' or '-'")
    if ("images" in data) == ("input" in data):
        raise InputError(f"{path}: give either 'images' (counts of generated faces) or 'input' (an image set)")
    source = data.get("input")
    if source is not None and not isinstance(source, str):
        raise InputError(f"{path}: 'input' must be a path")
    arguments = data.get("arguments", [])
    if not isinstance(arguments, list) or not all(isinstance(a, str) for a in arguments):
        raise InputError(f"{path}: 'arguments' must be a list of strings")
    cpus, limit = data.get("cpus_per_task", 1), data.get("time", "01:00:00")
    if not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1 or not isinstance(limit, str):
        raise InputError(f"{path}: 'cpus_per_task' must be a positive integer and 'time' a string")
    return Sweep(name, integers("nodes"), names("models", workload_names(), [DETECTOR]),
                 names("modes", MODES, ["batch"]), integers("images") if "images" in data else None, source,
                 cpus, limit, tuple(arguments))
