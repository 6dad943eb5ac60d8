"""Cache sizes of the CPU this process runs on, read once at start-up.

The convolution sizes its GEMM chunks to the per-core L2 and its batch blocks to the L3, instead of constants
tuned on one CPU. Sizes come from ``sysconf`` (glibc) and, where that reports nothing (some virtual machines),
from ``/sys/devices/system/cpu/cpu0/cache``; a conservative default covers everything else. The shared L3 counts at
most :data:`L3_PER_CORE_BYTES` per CPU this process may run on: a virtual machine reads its host socket's whole
cache, which the host's other cores share (:func:`cache_bytes`; :func:`reported_bytes` is what the system says).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

__all__ = ["cache_bytes", "reported_bytes"]

#: Used when the size of a level cannot be read: smaller than any current x86 server core's caches.
DEFAULT_BYTES = {1: 32 << 10, 2: 512 << 10, 3: 8 << 20}
#: The most L3 counted per CPU this process may run on (:func:`cache_bytes`). Current x86 server parts give each core
#: 2-5 MiB of their shared L3 (AMD EPYC Zen 4: 32 MiB per 8 cores; Intel Xeon Emerald Rapids: 320 MB per 64).
#: A 2-core virtual machine on an Emerald Rapids host reads 300 MiB; sizing blocks of images by it ran VGG-16 at
#: batch 4 at 0.95 of batch 1's time per image, 8 MiB at 0.90 (CPU time, 15 interleaved runs).
L3_PER_CORE_BYTES = 4 << 20
_SYSCONF_NAMES = {1: "SC_LEVEL1_DCACHE_SIZE", 2: "SC_LEVEL2_CACHE_SIZE", 3: "SC_LEVEL3_CACHE_SIZE"}
_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")


def _parse_size(text: str) -> int:
    """``"1024K"`` or ``"32M"`` (sysfs notation) in bytes; 0 if unreadable."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text.rstrip("KMG")
    return int(digits) * scale if digits.isdigit() else 0


def _from_sysfs(level: int) -> int:
    for index in sorted(_SYSFS.glob("index*")):
        try:
            if (int((index / "level").read_text()) == level
                    and (index / "type").read_text().strip() in ("Data", "Unified")):
                return _parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
    return 0


@functools.cache
def reported_bytes(level: int) -> int:
    """Size in bytes of the level-``level`` data cache (1, 2 or 3) as the system reports it (for a shared cache,
    the whole of it), or :data:`DEFAULT_BYTES` where nothing can be read.

    Parameters
    ----------
    level : int
        1, 2 or 3.

    Returns
    -------
    int
        Bytes.

    Raises
    ------
    ValueError
        If ``level`` is not 1, 2 or 3.
    """
    if level not in DEFAULT_BYTES:
        raise ValueError(f"cache level must be 1, 2 or 3, got {level}")
    size = 0
    try:
        size = int(os.sysconf(_SYSCONF_NAMES[level]))
    except (ValueError, OSError, AttributeError):
        size = 0
    if size <= 0:
        size = _from_sysfs(level)
    return size if size > 0 else DEFAULT_BYTES[level]


@functools.cache
def cache_bytes(level: int) -> int:
    """Size in bytes of the level-``level`` data cache that the kernels size their blocks by (1, 2 or 3).

    :func:`reported_bytes`, but for the shared L3 only the part this process's cores can count on: at most
    :data:`L3_PER_CORE_BYTES` per CPU it may run on (its affinity mask, else ``os.cpu_count()``).

    Parameters
    ----------
    level : int
        1, 2 or 3.

    Returns
    -------
    int
        Bytes.

    Raises
    ------
    ValueError
        If ``level`` is not 1, 2 or 3.
    """
    size = reported_bytes(level)
    if level == 3:
        size = min(size, L3_PER_CORE_BYTES * _usable_cpus())
    return size


def _usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
