"""Result files: SWMR writing, readable while running, resume checks, atomic final merge."""

import os
import stat

import h5py
import numpy as np
import pytest

from dcnn.errors import InputError
from dcnn.faces.detect import DETECTION_DTYPE
from dcnn.io.results import (
    LOGITS_CHUNK_BYTES,
    RESUME_KEYS,
    ResultWriter,
    identity_labels,
    logits_chunks,
    open_result,
)

ATTRIBUTES = {"model": "lenet5", "mode": "batch", "weights": "init:0", "weights_fingerprint": "init:0",
              "input": "x.h5:images", "input_fingerprint": "10:ab", "dataset": "images", "upsample": 0,
              "input_shape": "1x32x32", "num_images": 6, "batch_size": 2, "started": "now"}


def test_write_read_while_open_and_finish(tmp_path):
    path = tmp_path / "run.h5"
    writer = ResultWriter.create(path, 6, 3, 3, ATTRIBUTES)
    writer.write_task(1, 2, 4, np.ones((2, 3), np.float32), rank=1, started=0.5, ended=0.75)
    with open_result(path) as reader:  # in the writer's process, with its (lack of) HDF5 file locking
        assert reader.attrs["status"] == "running"
        assert reader["outputs/done"][()].tolist() == [0, 0, 1, 1, 0, 0]
        assert reader["timing/task_rank"][()].tolist() == [-1, 1, -1]
    writer.finish({"stats": {"peak_rss_bytes": np.array([1, 2])}}, finished="later")
    with h5py.File(path, "r") as handle:
        assert handle.attrs["status"] == "complete" and handle.attrs["finished"] == "later"
        assert handle["stats/peak_rss_bytes"][()].tolist() == [1, 2]
        np.testing.assert_array_equal(handle["outputs/logits"][2:4], 1)
        assert np.isnan(handle["outputs/logits"][0]).all()
    assert not (tmp_path / "run.h5.tmp").exists()


def test_resume_continues_and_checks_the_configuration(tmp_path):
    path = tmp_path / "run.h5"
    writer = ResultWriter.create(path, 6, 3, 3, ATTRIBUTES)
    writer.write_task(0, 0, 2, np.zeros((2, 3), np.float32), rank=0, started=0, ended=1)
    writer.close()
    for key in RESUME_KEYS:
        changed = {**ATTRIBUTES, key: 99 if isinstance(ATTRIBUTES[key], int) else "other"}
        message = "is not the" if key.endswith("fingerprint") else f"made with {key}"
        with pytest.raises(InputError, match=message):
            ResultWriter.resume(path, changed)
    resumed, done = ResultWriter.resume(path, {**ATTRIBUTES, "ranks": 3, "started": "again"})
    assert done.tolist() == [1, 1, 0, 0, 0, 0]
    resumed.write_task(2, 4, 6, np.full((2, 3), 5, np.float32), rank=0, started=2, ended=3)
    resumed.finish({})
    with h5py.File(path, "r") as handle:
        assert handle.attrs["runs"] == 2 and handle["outputs/done"][()].tolist() == [1, 1, 0, 0, 1, 1]
        assert handle.attrs["ranks"] == 3 and handle.attrs["started"] == "again"
        assert handle.attrs["first_started"] == "now"
    with pytest.raises(InputError, match="already complete"):
        ResultWriter.resume(path, ATTRIBUTES)


def test_logits_chunks_fit_the_chunk_cache_whatever_the_output_size():
    """A chunk of the logits table is at most LOGITS_CHUNK_BYTES: whole rows, or part of a row larger than that."""
    assert logits_chunks(6, 3) == (6, 3)
    assert logits_chunks(50_000, 1000) == (262, 1000)  # 1,024 rows of 1,000 logits were a 4 MB chunk
    assert logits_chunks(60, 16 * 119 * 121) == (1, 16 * 119 * 121)  # was one 55 MB chunk of all 60 rows
    assert logits_chunks(2, 10**6) == (1, LOGITS_CHUNK_BYTES // 4)
    for images, outputs in ((1, 1), (3, 262_144), (5000, 262_145), (10**6, 7)):
        rows, columns = logits_chunks(images, outputs)
        assert 1 <= rows <= images and 1 <= columns <= outputs and 4 * rows * columns <= LOGITS_CHUNK_BYTES


def test_an_output_map_per_image_is_written_and_resumed_by_chunks_of_rows(tmp_path):
    """A model with a large output per image: one row per chunk, values intact through a resume and the final
    copy, and an unwritten row (NaN) is not done."""
    path = tmp_path / "run.h5"
    outputs = LOGITS_CHUNK_BYTES // 4 - 5
    writer = ResultWriter.create(path, 6, outputs, 3, ATTRIBUTES)
    rows = np.arange(2 * outputs, dtype=np.float32).reshape(2, outputs)
    writer.write_task(0, 0, 2, rows, rank=0, started=0, ended=1)
    writer.write_task(1, 2, 4, rows + 1, rank=0, started=0, ended=1)
    writer.close()
    with h5py.File(path, "r+") as handle:  # a kill inside task 1's write: one of its rows never landed
        assert handle["outputs/logits"].chunks == (1, outputs)
        handle["outputs/logits"][3, 7] = np.nan
    resumed, done = ResultWriter.resume(path, ATTRIBUTES)
    assert done.tolist() == [1, 1, 0, 0, 0, 0]
    resumed.write_task(1, 2, 4, rows + 1, rank=0, started=2, ended=3)
    resumed.write_task(2, 4, 6, rows + 2, rank=0, started=2, ended=3)
    resumed.finish({})
    with h5py.File(path, "r") as handle:
        logits = handle["outputs/logits"]
        for task in range(3):
            np.testing.assert_array_equal(logits[2 * task:2 * task + 2], rows + task)


def test_resume_of_missing_or_foreign_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        ResultWriter.resume(tmp_path / "none.h5", ATTRIBUTES)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["x"] = 1
    with pytest.raises(InputError, match="not a dcnn result file"):
        ResultWriter.resume(other, ATTRIBUTES)


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot create output file"):
        ResultWriter.create(blocker / "run.h5", 1, 1, 1, ATTRIBUTES)


def detections(image, *boxes):
    records = np.zeros(len(boxes), DETECTION_DTYPE)
    records["image"] = image
    for column, name in enumerate(("left", "top", "right", "bottom", "confidence")):
        records[name] = [box[column] for box in boxes]
    return records


def test_detections_are_sorted_and_indexed_at_the_end_and_checked_on_resume(tmp_path):
    path = tmp_path / "faces.h5"
    attributes = {**ATTRIBUTES, "model": "mmod"}
    writer = ResultWriter.create(path, 6, DETECTION_DTYPE, 3, attributes)
    writer.write_task(2, 4, 6, detections(5, (1, 2, 3, 4, 0.9)), rank=1, started=0, ended=1)
    writer.write_task(0, 0, 2, np.concatenate([detections(0, (5, 5, 9, 9, 1.0), (0, 0, 4, 4, 0.5)),
                                               detections(1, (7, 7, 8, 8, 0.7))]), rank=0, started=0, ended=1)
    writer.close()
    with h5py.File(path, "r+", libver="latest") as handle:  # a kill after "done" but before task 1's rows
        handle["outputs/done"][2:4] = 1
        handle["outputs/detection_counts"][2:4] = [1, 0]
    resumed, done = ResultWriter.resume(path, attributes)
    assert done.tolist() == [1, 1, 0, 0, 1, 1], "image 2 has no rows for its count of 1: its task is redone"
    resumed.write_task(1, 2, 4, detections(2, (2, 2, 6, 6, 0.8)), rank=0, started=1, ended=2)
    resumed.finish({})
    with h5py.File(path, "r") as handle:
        rows = handle["outputs/detections"][()]
        offsets = handle["outputs/detection_offsets"][()]
    assert rows["image"].tolist() == [0, 0, 1, 2, 5]
    assert rows["confidence"][:2].tolist() == pytest.approx([1.0, 0.5])
    assert offsets.tolist() == [0, 2, 3, 4, 4, 4, 5]


def test_provenance_names_the_slurm_job_array_and_step(monkeypatch):
    from dcnn.io.results import SLURM_IDS, provenance

    for variable in SLURM_IDS.values():
        monkeypatch.delenv(variable, raising=False)
    assert {provenance("4.0")[name] for name in SLURM_IDS} == {""}
    for value, variable in enumerate(SLURM_IDS.values()):
        monkeypatch.setenv(variable, str(100 + value))
    assert [provenance("4.0")[name] for name in SLURM_IDS] == ["100", "101", "102", "103"]


def test_claim_refuses_existing_or_missing_files_and_clears_leftover_copies(tmp_path):
    from dcnn.io.results import claim

    path = tmp_path / "run.h5"
    leftover = tmp_path / ".run.h5.abc123.tmp"  # a copy being written when its run was killed
    other = tmp_path / ".other.h5.abc123.tmp"
    leftover.write_bytes(b"partial")
    other.write_bytes(b"another file's")
    with pytest.raises(InputError, match="no such file"):
        claim(path, new=False)
    claim(path, new=True).release()
    assert not leftover.exists() and other.exists()
    ResultWriter.create(path, 2, 3, 1, ATTRIBUTES).finish({})
    results = path.read_bytes()
    with pytest.raises(InputError, match="already exists; give --force"):
        claim(path, new=True)
    claim(path, new=True, replace=True).release()
    claim(path, new=False).release()
    assert path.read_bytes() == results and sorted(p.name for p in tmp_path.iterdir()) == [".other.h5.abc123.tmp",
                                                                                            "run.h5"]


@pytest.mark.parametrize("kind", ["photo", "image set", "text"])
def test_force_replaces_only_result_files(tmp_path, kind):
    """Before: --force replaced any file, a photo, the user's notes or the run's own --input image set (gone)."""
    from dcnn.io.results import claim

    path = tmp_path / "out.h5"
    if kind == "image set":
        with h5py.File(path, "w") as handle:
            handle["images"] = np.zeros((1, 4, 4, 3), np.uint8)
    else:
        path.write_bytes(b"\xff\xd8\xff\xe0 a JPEG" if kind == "photo" else b"my notes")
    before = path.read_bytes()
    with pytest.raises(InputError, match="is not a dcnn result file"):
        claim(path, new=True, replace=True)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]
    path.write_bytes(b"")  # an empty file holds nothing to lose
    claim(path, new=True, replace=True).release()


def test_force_refuses_a_file_it_cannot_read_in_one_line(tmp_path, monkeypatch):
    """Before: a file HDF5 could not read to tell (h5py.is_hdf5 raising OSError) ended --force in a traceback."""
    from dcnn.io import results

    path = tmp_path / "out.h5"
    path.write_bytes(b"something")

    def unreadable(name):
        raise OSError(f"Unable to open file {name}")

    monkeypatch.setattr(results.h5py, "is_hdf5", unreadable)
    with pytest.raises(InputError, match="cannot be read to tell"):
        results.claim(path, new=True, replace=True)
    assert path.read_bytes() == b"something"


def test_the_resume_command_names_the_program_that_wrote_the_file():
    from dcnn.io.results import resume_command

    assert resume_command("a b.h5", 1, "python -m dcnn.recognize --known k") == \
        "python -m dcnn.recognize --resume 'a b.h5'"
    assert resume_command("run.h5", 4, "python -m dcnn.infer --model lenet5") == \
        "mpirun -np 4 python -m dcnn.infer --resume run.h5"
    assert resume_command("run.h5", 1, "infer.py") == "python -m dcnn.infer --resume run.h5"


def test_peak_memory_is_the_programs_own_not_its_parents():
    """Linux carries ru_maxrss across exec: a rank started by a large parent (pytest holding PyTorch) reported the
    parent's peak, 1.1 GB against a 130 MB prediction. The peak is the program's own address space's."""
    import subprocess
    import sys

    parent = ("import os, sys, numpy as np\n"
              "block = np.ones(400 * 2**20, np.uint8)  # a 400 MiB parent, touched\n"
              "os.execv(sys.executable, [sys.executable, '-c', "
              "'from dcnn.io.results import peak_rss_bytes; print(peak_rss_bytes())'])\n")
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, timeout=120, check=True)
    assert int(done.stdout) < 300 * 2**20, done.stdout


def test_identities_name_people_not_known_images():
    """A person with several known images: the identity indexes the people (ann, bob), not the images."""
    labels = identity_labels(np.array([1, 0, -1], np.int32), ["ann", "ann", "bob"])
    assert labels.tolist() == ["bob", "ann", "unknown"]


def test_out_of_space_is_recognised_in_python_and_hdf5_errors():
    import errno

    from dcnn.errors import out_of_space

    assert out_of_space(OSError(errno.ENOSPC, "No space left on device", "a.h5")) == "a.h5: no space left on the device"
    assert out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded")) == "the disk quota is exceeded"
    hdf5 = RuntimeError("Unable to synchronously flush file (file write failed: time = Tue, filename = 'full/r.h5', "
                        "file descriptor = 5, errno = 28, error message = 'No space left on device')")
    assert out_of_space(hdf5) == "full/r.h5: no space left on the device"
    assert out_of_space(OSError(errno.EACCES, "Permission denied")) is None and out_of_space(ValueError()) is None


def test_a_full_disk_at_the_final_copy_leaves_the_file_resumable_and_nothing_beside_it(tmp_path, monkeypatch):
    """Before: a traceback from h5o.copy, exit 1, and a ``.run.h5.XXXX.tmp`` left beside the file."""
    import shutil

    path = tmp_path / "run.h5"
    writer = ResultWriter.create(path, 6, 3, 3, ATTRIBUTES)
    writer.write_task(0, 0, 2, np.ones((2, 3), np.float32), rank=0, started=0, ended=1)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(InputError, match=r"run\.h5: no space left on the device for the file's final copy"):
        writer.finish({"stats": {"peak_rss_bytes": np.array([1])}})
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]
    monkeypatch.undo()
    resumed, done = ResultWriter.resume(path, ATTRIBUTES)
    assert done.tolist() == [1, 1, 0, 0, 0, 0]
    resumed.close()


def test_a_write_that_fails_mid_run_still_releases_the_lock(tmp_path):
    """Before: closing after a failed flush (a full disk) raised again, so the lock file stayed and no resume line
    was printed."""
    from dcnn.io.lockfile import RunLock, lock_path

    path = tmp_path / "run.h5"
    lock = RunLock.acquire(path)
    writer = ResultWriter.create(path, 6, 3, 3, ATTRIBUTES, lock=lock)

    class Failing:
        id = writer._file.id

        def close(self):
            raise RuntimeError("Unable to synchronously flush file (errno = 28)")

    writer._file = Failing()
    writer.close()
    assert not lock_path(path).exists()


def test_a_new_file_gets_the_umasks_mode_and_a_replaced_one_keeps_its_mode(tmp_path):
    old = os.umask(0o027)
    try:
        path = tmp_path / "new.h5"
        ResultWriter.create(path, 2, 3, 1, ATTRIBUTES).finish({})
        assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0o666 & ~0o027, not mkstemp's 0o600
        path.chmod(0o604)
        ResultWriter.create(path, 2, 3, 1, ATTRIBUTES).finish({})  # as --force does
        assert stat.S_IMODE(path.stat().st_mode) == 0o604
    finally:
        os.umask(old)


def test_an_output_that_is_a_symbolic_link_is_written_through_to_its_target(tmp_path):
    target = tmp_path / "shared.h5"
    ResultWriter.create(target, 2, 3, 1, ATTRIBUTES).finish({}, finished="first")
    link = tmp_path / "link.h5"
    link.symlink_to("shared.h5")
    ResultWriter.create(link, 2, 3, 1, ATTRIBUTES).finish({}, finished="second")  # as --force does
    assert link.is_symlink()
    with h5py.File(target, "r") as handle:
        assert handle.attrs["finished"] == "second"


def test_the_room_for_a_task_is_measured_on_the_disk_of_a_linked_outputs_target(tmp_path, monkeypatch):
    """Before: the free-space check before each task measured the folder of the symbolic link, not that of the
    file HDF5 writes through it (a false refusal, or no protection where the target's disk is full)."""
    from dcnn.io import results

    (tmp_path / "disk").mkdir()
    link = tmp_path / "link.h5"
    link.symlink_to(tmp_path / "disk" / "out.h5")
    writer = ResultWriter.create(link, 2, 3, 1, ATTRIBUTES)
    measured = []
    real = results.shutil.disk_usage

    def usage(path):
        measured.append(os.path.realpath(path))
        return real(path)

    monkeypatch.setattr(results.shutil, "disk_usage", usage)
    writer.write_task(0, 0, 2, np.zeros((2, 3), np.float32), rank=0, started=0, ended=1)
    writer.close()
    assert measured == [str(tmp_path / "disk")]
