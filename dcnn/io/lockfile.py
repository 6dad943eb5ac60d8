"""One run per result file: an advisory lock on ``FILE.lock`` beside it, independent of HDF5's own locking.

HDF5's file locks fail on file systems without ``flock`` (NFS without lockd, some parallel file systems) and are
taken only after ``h5py.File(path, "w")`` has truncated the file, so they cannot keep a second run off a live
file. dcnn therefore opens its result files with HDF5 locking disabled and guards them with this lock instead:

- ``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``FILE.lock``: never blocks, and the kernel releases it when the holder
  dies, however it dies (a lock file left by a killed run is taken over by the next one);
- the file holds the holder's host, process id and start time, for the message of a refused run;
- on a file system without ``flock`` the lock file's contents decide: a holder on this host whose process is
  gone is stale and taken over; a live holder, or one on another host (which cannot be checked), refuses.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from dcnn.errors import InputError

__all__ = ["RunLock", "lock_path", "writer_of"]

#: ``flock`` errors that mean "this file system has no locks", not "someone holds it".
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of result file ``path``: ``path`` plus ``.lock``, in the same directory."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _holder(text: str) -> tuple[str, int, str] | None:
    """``(host, pid, since)`` from a lock file's contents, or ``None`` if it names nobody."""
    parts = text.split()
    if len(parts) >= 3 and parts[1].isdigit():
        return parts[0], int(parts[1]), parts[2]
    return None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_of(result: str | os.PathLike) -> tuple[str, int, str] | None:
    """``(host, pid, since)`` of the run that holds result file ``result``'s lock (``result`` as
    :meth:`RunLock.acquire` was given it: the file, not a link to it), or ``None`` when no run does.

    A shared ``flock`` taken and dropped at once tells: it fails only while a run holds the lock, wherever that
    run is (a lock file left by a run killed on another node is free, as :meth:`RunLock.acquire` would find it).
    On a file system without ``flock`` the lock file's contents decide, as there: nobody, or a process gone from
    this host, is no writer; a holder on another host cannot be checked and counts as one.
    """
    path = lock_path(result)
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # no lock file: no run
    try:
        holder = _holder(os.pread(descriptor, 4096, 0).decode(errors="replace"))
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder or ("unknown host", 0, "unknown")
        except OSError as error:
            if error.errno not in _NO_LOCKS:
                return None
            if holder is None or (holder[0] == socket.gethostname() and not _alive(holder[1])):
                return None
            return holder
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return None
    finally:
        os.close(descriptor)


class RunLock:
    """The exclusive right of this process to write one result file; see the module docstring.

    Use :meth:`acquire`; :meth:`release` (also run at interpreter exit) removes the lock file.
    """

    def __init__(self, path: Path, descriptor: int):
        self.path = path
        self._descriptor: int | None = descriptor

    @classmethod
    def acquire(cls, result: str | os.PathLike) -> RunLock:
        """Take the lock of result file ``result`` at once, or refuse.

        Raises
        ------
        InputError
            If another live run holds it (naming its host, process and start time), or the lock file cannot be
            created (an unwritable directory).
        """
        path = lock_path(result)
        while True:
            try:
                descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise InputError(f"cannot create the lock file {str(path)!r} ({error.strerror})") from None
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(os.pread(descriptor, 4096, 0).decode(errors="replace"))
                os.close(descriptor)
                raise InputError(_busy(result, path, holder)) from None
            except OSError as error:
                if error.errno not in _NO_LOCKS:
                    os.close(descriptor)
                    raise InputError(f"cannot lock {str(path)!r} ({error.strerror})") from None
                cls._check_without_locks(result, path, descriptor)
            if _same_file(descriptor, path):  # not unlinked by a releasing holder in between
                break
            os.close(descriptor)
        lock = cls(path, descriptor)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{socket.gethostname()} {os.getpid()} {stamp}\n".encode(), 0)
        except OSError as error:  # a full disk: no lock, and no empty lock file left behind
            lock.release()
            raise InputError(f"cannot write the lock file {str(path)!r} ({error.strerror})") from None
        atexit.register(lock.release)
        return lock

    @staticmethod
    def _check_without_locks(result, path: Path, descriptor: int) -> None:
        """No ``flock`` here: refuse unless the lock file names nobody or a dead process on this host."""
        holder = _holder(os.pread(descriptor, 4096, 0).decode(errors="replace"))
        if holder is None:
            return
        host, pid, _ = holder
        if host == socket.gethostname() and not _alive(pid):
            return
        os.close(descriptor)
        raise InputError(_busy(result, path, holder) + f" (this file system has no locks: if no run is writing "
                                                       f"it, remove {str(path)!r})")

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._descriptor is None:
            return
        try:
            if _same_file(self._descriptor, self.path):
                self.path.unlink()
        except OSError:
            pass  # a read-only or vanished directory: the lock goes with the descriptor
        os.close(self._descriptor)
        self._descriptor = None
        atexit.unregister(self.release)


def _same_file(descriptor: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``descriptor``."""
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path))
    except FileNotFoundError:
        return False


def _busy(result, path: Path, holder: tuple[str, int, str] | None) -> str:
    who = f"process {holder[1]} on {holder[0]}, since {holder[2]}" if holder else f"see {str(path)!r}"
    return (f"{str(result)!r} is being written by another run ({who}); wait for it to end, or choose another "
            f"--output")
