"""Content fingerprints of input and weights files, so that ``--resume`` knows a file by what it holds.

A path says nothing about content: ``./x.h5`` and ``x.h5`` are one file, and another ``x.h5`` elsewhere is a
different one. A fingerprint is the file's length and the SHA-256 of its first and last MiB (whole files up
to 2 MiB): reading it costs at most 2 MiB per file, it survives moving and renaming, and any change of length
or of the ends of the file changes it. A change confined to the middle of a large file goes unseen; that is
the price of not reading whole multi-gigabyte image sets at every start.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from dcnn.errors import InputError

__all__ = ["file_fingerprint", "files_fingerprint"]

#: Bytes hashed at each end of a file.
END_BYTES = 1 << 20


def file_fingerprint(path: str | os.PathLike) -> str:
    """``"<length>:<sha256 hex>"`` of the length and the first and last :data:`END_BYTES` of ``path``.

    Raises
    ------
    InputError
        If the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            length = os.fstat(handle.fileno()).st_size
            digest.update(length.to_bytes(8, "little"))
            digest.update(handle.read(END_BYTES))
            if length > END_BYTES:
                handle.seek(max(END_BYTES, length - END_BYTES))
                digest.update(handle.read(END_BYTES))
    except OSError as error:
        raise InputError(f"cannot read {str(path)!r} ({error.strerror})") from None
    return f"{length}:{digest.hexdigest()}"


def files_fingerprint(paths: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> str:
    """``"<count> files:<sha256 hex>"`` over the names and fingerprints of ``paths``, in order.

    The fingerprint of an image folder: renaming or moving the folder keeps it, renaming, adding, removing or
    changing an image changes it.

    Parameters
    ----------
    paths : sequence of path
        The files.
    names : sequence of str, optional
        What names each file (default: its name, not its folders); a ``--known`` gallery gives
        ``person/file name``, so that moving an image to another person changes the fingerprint.
    """
    digest = hashlib.sha256()
    for path, name in zip(paths, names if names is not None else [Path(path).name for path in paths], strict=True):
        digest.update(os.fsencode(name) + b"\0" + file_fingerprint(path).encode() + b"\0")
    return f"{len(paths)} files:{digest.hexdigest()}"
