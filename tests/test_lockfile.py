"""RunLock: one run per result file, never blocking, stale locks taken over, file systems without flock."""

import errno
import fcntl
import os
import socket
import subprocess
import sys

import pytest

from dcnn.errors import InputError
from dcnn.io.lockfile import RunLock, lock_path, writer_of


def test_a_stale_lock_is_taken_over_and_a_live_one_refuses(tmp_path):
    result = tmp_path / "run.h5"
    lock_path(result).write_text("elsewhere 1 2026-01-01T00:00:00Z\n")  # left by a killed run: nobody holds it
    lock = RunLock.acquire(result)
    assert lock_path(result).read_text().split()[1] == str(os.getpid())
    with pytest.raises(InputError, match=r"being written by another run \(process \d+ on "):
        RunLock.acquire(result)
    lock.release()
    assert not lock_path(result).exists()
    RunLock.acquire(result).release()


def test_without_file_locks_the_lock_file_decides(tmp_path, monkeypatch):
    """On a file system without flock (NFS without lockd): a dead holder on this host is stale, a live one or one
    on another host refuses."""
    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    result = tmp_path / "run.h5"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path(result).write_text(f"{socket.gethostname()} {int(dead.stdout)} 2026-01-01T00:00:00Z\n")
    lock = RunLock.acquire(result)
    with pytest.raises(InputError, match="this file system has no locks"):
        RunLock.acquire(result)  # held by this live process
    lock.release()
    lock_path(result).write_text("another-host 1 2026-01-01T00:00:00Z\n")
    with pytest.raises(InputError, match="on another-host"):
        RunLock.acquire(result)


def test_a_lock_that_cannot_be_written_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    """Before: on a full disk ``os.pwrite`` raised with a traceback and an empty lock file stayed."""

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(InputError, match=r"cannot write the lock file .*No space left on device"):
        RunLock.acquire(tmp_path / "run.h5")
    assert not lock_path(tmp_path / "run.h5").exists()


def test_writer_of_names_a_live_holder_only(tmp_path):
    """What ``dcnn.analyze`` reads to tell a live run's file from an interrupted one, without taking the lock."""
    result = tmp_path / "run.h5"
    assert writer_of(result) is None  # no lock file
    lock = RunLock.acquire(result)
    try:
        host, pid, _ = writer_of(result)
        assert (host, pid) == (socket.gethostname(), os.getpid())
    finally:
        lock.release()
    assert writer_of(result) is None
    lock_path(result).write_text("node7 4242 2026-01-01T00:00:00Z\n")
    assert writer_of(result) is None  # left by a run killed on another node: nobody holds its flock


def test_writer_of_reads_the_contents_where_the_file_system_has_no_locks(tmp_path, monkeypatch):
    result = tmp_path / "run.h5"

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "no locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path(result).write_text(f"{socket.gethostname()} {gone.stdout.strip()} 2026-01-01T00:00:00Z\n")
    assert writer_of(result) is None  # a killed run's lock file: its process is gone
    lock_path(result).write_text(f"{socket.gethostname()} {os.getpid()} 2026-01-01T00:00:00Z\n")
    assert writer_of(result)[1] == os.getpid()
    lock_path(result).write_text("elsewhere 1 2026-01-01T00:00:00Z\n")
    assert writer_of(result) == ("elsewhere", 1, "2026-01-01T00:00:00Z")  # cannot be checked: counts as live
