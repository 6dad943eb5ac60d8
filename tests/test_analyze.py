"""``python -m dcnn.analyze`` on real result files."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import mpi_command, write_digits

from dcnn.analysis.analyze import RunSummary, format_summary, load_summary, scaling_table
from dcnn.errors import InputError


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    data = write_digits(folder / "digits.h5", 48, seed=0)
    paths = []
    for ranks in (1, 2):
        path = folder / f"np{ranks}.h5"
        done = subprocess.run([*mpi_command(ranks), sys.executable, "-m", "dcnn.infer", "--model", "lenet5",
                               "--mode", "batch", "--input", str(data), "--output", str(path), "--batch-size", "4",
                               "--threads", "1", "--quiet"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        paths.append(path)
    return paths


def test_summaries_and_scaling_table(runs, tmp_path):
    csv_path = tmp_path / "runs.csv"
    done = subprocess.run([sys.executable, "-m", "dcnn.analyze", *map(str, runs), "--csv", str(csv_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "lenet5, batch mode, 2 ranks, complete" in done.stdout and "batch mode, 1 rank, complete" in done.stdout
    assert "scaling, lenet5 on 48 images" in done.stdout and "efficiency" in done.stdout
    scaling = done.stdout.split("scaling, lenet5 on 48 images")[1].splitlines()
    assert "run (mode and options)" in scaling[1]
    assert [line.split()[:4] for line in scaling[2:4]] == [["1", "batch,", "batch", "4"], ["2", "batch,", "batch", "4"]]
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("file,model,mode,ranks")
    assert rows[0].endswith("max_predicted_peak_bytes,memory_prediction_error")


@pytest.mark.parametrize("option", ["--csv", "--draw", "--table", "--plots"])
def test_an_output_folder_that_cannot_be_made_is_refused_before_anything_is_printed(runs, tmp_path, option):
    (tmp_path / "file").write_text("")
    done = subprocess.run([sys.executable, "-m", "dcnn.analyze", str(runs[0]), option, str(tmp_path / "file" / "x")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.count("\n") == 1 and f"{option} " in done.stderr, done.stderr


def test_measured_memory_against_the_planner(runs):
    summary = load_summary(str(runs[1]))
    assert (summary.predicted_peak > 0).all() and (summary.peak_rss > 0).all()
    assert summary.plan == "batch, batch 4"
    assert -0.3 < summary.memory_error < 0.5
    done = subprocess.run([sys.executable, "-m", "dcnn.analyze", str(runs[1])], capture_output=True, text=True,
                          timeout=60)
    assert "planned MiB" in done.stdout
    assert f"plan batch, batch 4: predicted peak memory {summary.memory_error:+.1%} of measured" in done.stdout


def test_load_summary_counts_tasks_per_rank(runs):
    summary = load_summary(str(runs[1]))
    assert summary.ranks == 2 and summary.tasks.sum() == 12 and summary.images_done == 48
    table = scaling_table([load_summary(str(p)) for p in runs])
    assert [row["ranks"] for row in table] == [1, 2] and table[0]["speedup"] == pytest.approx(1.0)


def test_missing_file_is_one_line():
    done = subprocess.run([sys.executable, "-m", "dcnn.analyze", "/nonexistent.h5"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == "dcnn: error: /nonexistent.h5: no such file"


def test_paper_table_and_figures(runs, tmp_path):
    table = tmp_path / "table.md"
    done = subprocess.run([sys.executable, "-m", "dcnn.analyze", *map(str, runs), "--table", str(table),
                           "--plots", str(tmp_path / "plots")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    text = table.read_text()
    assert "| images | 1 rank | 2 ranks |" in text and "| 48 | " in text and "(100%)" in text
    rows = (tmp_path / "table.csv").read_text().splitlines()
    assert rows[0] == "model,mode,images,ranks,seconds,speedup,efficiency" and len(rows) == 3
    for name in ("memory.png", "single_vs_cluster.png", "timeline-np2.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert "wrote" in done.stdout and "stolen)" in done.stdout


def test_stolen_tasks_are_those_outside_the_initial_interval():
    from dcnn.analysis.plots import stolen_tasks

    task_rank = np.array([0, 0, 1, 1, 1, 1, 0, -1])
    assert stolen_tasks(task_rank, 2).tolist() == [False, False, True, True, False, False, True, False]


def test_task_counts_after_a_resume_cover_the_same_run_as_the_busy_seconds(runs, tmp_path):
    """A resumed file holds every run's tasks in /timing/task_rank; the per-rank table counts this run's."""
    import shutil

    from dcnn.io.schema import STEAL_FIELDS

    resumed = tmp_path / "resumed.h5"
    shutil.copy(runs[1], resumed)
    with h5py.File(resumed, "r+") as handle:
        handle["stats/steal"][:, STEAL_FIELDS.index("tasks_run")] = [2, 1]  # this run: 3 of the 12 tasks
    summary = load_summary(str(resumed))
    assert summary.tasks.tolist() == [2, 1]


def test_memory_figure_groups_and_legends_are_distinct(runs, tmp_path):
    from dcnn.analysis.analyze import count_of
    from dcnn.analysis.plots import memory_group_label

    one, two = load_summary(str(runs[1])), load_summary(str(runs[1]))
    two.path = str(tmp_path / "another.h5")
    assert memory_group_label(one) != memory_group_label(two)
    assert memory_group_label(one).startswith("lenet5, 2 ranks\nbatch, batch 4\n")
    assert (count_of(1, "rank"), count_of(3, "rank")) == ("1 rank", "3 ranks")


def test_drawn_detections_are_labelled_and_wide_images_keep_their_shape(tmp_path):
    from PIL import Image

    from dcnn.analysis.analyze import draw_detections
    from dcnn.faces.detect import DETECTION_DTYPE

    pictures = tmp_path / "wide.h5"
    with h5py.File(pictures, "w") as handle:
        handle["images"] = np.full((2, 100, 200, 3), 90, np.uint8)
    result = tmp_path / "run.h5"
    with h5py.File(result, "w") as handle:
        handle["outputs/detections"] = np.array([(1, 20, 10, 59, 49, 0.9)], DETECTION_DTYPE)
        handle["outputs/done"] = np.ones(2, bool)
        handle.attrs["input"] = str(pictures)
    png = tmp_path / "faces.png"
    assert draw_detections(str(result), str(png), 5, tile=64) == 2
    sheet = np.asarray(Image.open(png).convert("RGB"))
    assert sheet.shape == (64, 256, 3)  # two 2:1 images side by side at 128x64, not squeezed into 64x64
    label = sheet[:14, 128:190]
    assert (label > 150).all(axis=-1).any() and (label == 0).all(axis=-1).any()  # "image 1", light on black
    assert (sheet[:, 128 + 10:128 + 30] == (255, 40, 40)).all(axis=-1).any()  # its box, in the second cell


def test_only_the_images_a_run_computed_are_drawn(tmp_path):
    """Before: drawing a --skip-unreadable run read its skipped images again and failed on the first (exit 2, no
    drawing); an interrupted run's images not yet reached were drawn without their faces."""
    from PIL import Image

    from dcnn.analysis.analyze import draw_detections
    from dcnn.faces.detect import DETECTION_DTYPE

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "c.png", "d.png"):
        Image.new("RGB", (40, 40), (90, 90, 90)).save(folder / name)
    (folder / "b.png").write_bytes(b"")  # skipped by the run
    result = tmp_path / "run.h5"
    with h5py.File(result, "w") as handle:
        handle["outputs/detections"] = np.array([(2, 5, 5, 20, 20, 0.9)], DETECTION_DTYPE)
        handle["outputs/done"] = np.array([True, False, True, False])  # d.png: not reached
        handle.attrs["input"] = str(folder)
    png = tmp_path / "faces.png"
    assert draw_detections(str(result), str(png), 5, tile=64) == 2
    sheet = np.asarray(Image.open(png).convert("RGB"))
    assert sheet.shape == (64, 128, 3) and (sheet[:, 64:] == (255, 40, 40)).all(axis=-1).any()  # image 2's box
    with h5py.File(result, "r+") as handle:
        handle["outputs/done"][...] = False
    with pytest.raises(InputError, match="computed no images"):
        draw_detections(str(result), str(png), 5)
    folder.rename(tmp_path / "moved")  # before: "input '' does not exist"
    with pytest.raises(InputError, match=r"run\.h5: its input '.*photos' is gone \(moved or deleted\)"):
        draw_detections(str(result), str(png), 5)


def test_task_counts_of_a_mode_without_a_queue(tmp_path):
    """Single (and spatial, fused) mode run the tasks in order; every rank still reports how many it ran."""
    data = tmp_path / "digits.h5"
    with h5py.File(data, "w") as handle:
        handle["images"] = np.zeros((5, 32, 32, 1), np.uint8)
    path = tmp_path / "single.h5"
    done = subprocess.run([sys.executable, "-m", "dcnn.infer", "--model", "lenet5", "--mode", "single", "--input",
                           str(data), "--output", str(path), "--batch-size", "2", "--quiet"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with h5py.File(path) as handle:
        assert handle["stats/steal"][0, 0] == 3  # tasks_run: 3 batches of at most 2 images
    assert load_summary(str(path)).tasks.tolist() == [3]


def _unfinished(run, path):
    """A copy at ``path`` of the result file ``run`` as its run left it before the end (no elapsed time)."""
    import shutil

    shutil.copy(run, path)
    with h5py.File(path, "r+") as handle:
        handle.attrs["status"] = "running"
        del handle.attrs["elapsed_seconds"]
    return path


def test_an_interrupted_run_is_reported_without_a_rate(runs, tmp_path):
    """Before: ``22 computed in nan s: nan images/s`` for a file whose run was interrupted (no elapsed time)."""
    interrupted = _unfinished(runs[0], tmp_path / "interrupted.h5")
    report = format_summary(load_summary(str(interrupted)))
    assert "nan" not in report and "images 48/48 done" in report and "--resume" in report
    assert "weights: seeded and untrained (--seed 0)" in report
    assert report.splitlines()[0].endswith(", interrupted")  # it said "running": no run holds the file


def test_a_file_a_live_run_writes_is_reported_running_without_a_resume_command(runs, tmp_path):
    """Its lock (``FILE.lock``, held by this live process) says a run is writing it: "--resume" would be refused."""
    from dcnn.io.lockfile import RunLock

    live = _unfinished(runs[0], tmp_path / "live.h5")
    lock = RunLock.acquire(live)
    try:
        report = format_summary(load_summary(str(live)))
    finally:
        lock.release()
    assert f"running (process {os.getpid()} on " in report.splitlines()[0] and "--resume" not in report
    assert "being written" in report


def test_a_folder_is_named_as_one(tmp_path):
    """Before: "photos: no such file" for an existing folder given instead of its result files."""
    with pytest.raises(InputError, match=r"a folder, not a result file \(name its files, e\.g\. .*\*\.h5\)"):
        load_summary(str(tmp_path))
    with pytest.raises(InputError, match="no such file"):
        load_summary(str(tmp_path / "missing.h5"))



def test_one_skipped_image_is_counted_in_the_singular(runs):
    """Before: "1 images skipped:" (python -m dcnn.analyze; dcnn.infer's summary said the same)."""
    import dataclasses


    summary = dataclasses.replace(load_summary(str(runs[1])), skipped=[("/d/a.png", "cannot read image (empty file)")])
    assert "  1 image skipped:\n    /d/a.png: cannot read image (empty file)" in format_summary(summary)


def test_the_memory_error_leaves_out_a_rank_that_ran_no_task():
    """A rank without tasks peaks at the runtime alone: its error would be the worst (it was +540 %)."""
    def summary(busy):
        return RunSummary("r.h5", "m", "batch", 2, "complete", 4, 4, 4, 1.0, tasks=np.array([2, 0]),
                          busy=np.array(busy), steal=np.zeros((2, 1)), peak_rss=np.array([200e6, 30e6]),
                          predicted_peak=np.array([210e6, 192e6]))
    assert summary([1.0, 0.0]).memory_error == pytest.approx(0.05)
    assert summary([0.0, 0.0]).memory_error == pytest.approx(5.4)  # no rank computed: all of them count


def test_a_rank_above_its_prediction_is_the_memory_error_and_warned_even_when_another_is_further_off():
    """Rank 1 peaked 2.7 % above its prediction; rank 0's +41 % over-prediction, larger, hid it (no warning)."""
    summary = RunSummary("r.h5", "m", "batch", 2, "complete", 4, 4, 4, 1.0, tasks=np.array([2, 2]),
                         busy=np.array([1.0, 1.0]), steal=np.zeros((2, 6)), peak_rss=np.array([200e6, 372.7e6]),
                         predicted_peak=np.array([282e6, 362.6e6]), plan="batch, batch 2")
    assert summary.memory_error == pytest.approx(362.6 / 372.7 - 1)
    report = format_summary(summary)
    assert "predicted peak memory -2.7% of measured (worst rank)" in report
    assert "warning: a rank's measured peak exceeded its prediction" in report


def _png(path, shade: int = 30) -> bytes:
    """A small real PNG at ``path`` (a user's picture), its bytes."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, shade, shade)).save(path, format="PNG")
    return path.read_bytes()


def _analyze(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcnn.analyze", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("option,target,existing", [
    ("--csv", "notes.csv", "notes.csv"),
    ("--table", "table.md", "table.md"),
    ("--table", "table.md", "table.csv"),  # the CSV the table writes beside it
    ("--draw", "vacation.png", "vacation.png"),
    ("--plots", "figs", "figs/memory.png"),
    ("--plots", "figs", "figs/timeline-np2.png"),
])
def test_an_existing_output_is_refused_byte_identical_unless_force(runs, tmp_path, option, target, existing):
    """Before: every one of these replaced the user's file silently, exit 0."""
    kept = tmp_path / existing
    before = _png(kept) if existing.endswith(".png") else _notes(kept)
    done = _analyze(*map(str, runs), option, str(tmp_path / target))
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.count("\n") == 1 and option in done.stderr and str(kept) in done.stderr, done.stderr
    assert "already exists; give --force to replace it" in done.stderr
    assert kept.read_bytes() == before
    if option == "--draw":
        return  # a face detection run to draw: test_draw_force_replaces_a_png
    done = _analyze(*map(str, runs), option, str(tmp_path / target), "--force")
    assert done.returncode == 0, done.stderr
    assert kept.read_bytes() != before


def test_draw_force_replaces_a_png(runs, tmp_path, monkeypatch):
    from PIL import Image

    from dcnn.cli import analyze

    def draw(path, png, count):
        Image.new("RGB", (8, 8), (200, 0, 0)).save(png)
        return 1

    monkeypatch.setattr(analyze, "draw_detections", draw)
    png = tmp_path / "vacation.png"
    before = _png(png)
    assert analyze.main([str(runs[0]), "--draw", str(png), "--quiet"]) == 2 and png.read_bytes() == before
    assert analyze.main([str(runs[0]), "--draw", str(png), "--force", "--quiet"]) == 0
    assert png.read_bytes() != before


def _notes(path) -> bytes:
    """A user's text file at ``path``, its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("my notes\n")
    return path.read_bytes()


def _image_set(path) -> bytes:
    """A user's HDF5 image set at ``path``, its bytes."""
    with h5py.File(path, "w") as handle:
        handle["images"] = np.zeros((1, 4, 4, 3), np.uint8)
    return path.read_bytes()


@pytest.mark.parametrize("option,target,existing,make", [
    ("--csv", "photo.png", "photo.png", _png),
    ("--csv", "set.h5", "set.h5", _image_set),
    ("--draw", "notes.txt", "notes.txt", _notes),
    ("--table", "data.md", "data.csv", _png),  # the table's CSV
    ("--plots", "figs", "figs/memory.png", _notes),
])
def test_force_replaces_only_a_file_of_the_kind_written(runs, tmp_path, option, target, existing, make):
    """As dcnn.infer --force replaces only a result file: a photo or an image set is not replaced by a CSV, notes
    not by a PNG."""
    kept = tmp_path / existing
    before = make(kept)
    done = _analyze(str(runs[0]), option, str(tmp_path / target), "--force")
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert "--force replaces only those" in done.stderr and option in done.stderr and str(kept) in done.stderr
    assert kept.read_bytes() == before


@pytest.mark.parametrize("option", ["--csv", "--draw"])
def test_the_commands_own_input_is_never_replaced(runs, tmp_path, option):
    """``analyze r1.h5 --csv r1.h5 --force``: before, the result file became a CSV (exit 0)."""
    import shutil

    run = tmp_path / "r1.h5"
    shutil.copy(runs[0], run)
    before = run.read_bytes()
    done = _analyze(str(run), option, str(run), "--force")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"{option} {run}: is an input of this command and is never replaced" in done.stderr
    assert run.read_bytes() == before


def test_two_options_writing_one_file_and_a_table_named_csv_are_refused(runs, tmp_path):
    done = _analyze(str(runs[0]), "--table", str(tmp_path / "t.md"), "--csv", str(tmp_path / "t.csv"))
    assert done.returncode == 2 and "--csv" in done.stderr and "--table writes the same file" in done.stderr
    done = _analyze(str(runs[0]), "--table", str(tmp_path / "t.csv"))
    assert done.returncode == 2 and "its CSV copy (t.csv) would be written over it" in done.stderr
    assert not (tmp_path / "t.md").exists() and not (tmp_path / "t.csv").exists()


def test_runs_of_one_name_in_two_folders_get_a_timeline_each():
    """Before: ``--plots`` drew ``a/run.h5``'s timeline, then ``b/run.h5``'s over it (``timeline-run.png``)."""
    from dcnn.cli.analyze import plot_names, timeline_names

    assert timeline_names(["a/run.h5", "b/run.h5", "c.h5"]) == {
        "a/run.h5": "timeline-a-run.png", "b/run.h5": "timeline-b-run.png", "c.h5": "timeline-c.png"}
    assert timeline_names(["x/a/run.h5", "y/a/run.h5"]) == {"x/a/run.h5": "timeline-a-run.png",
                                                            "y/a/run.h5": "timeline-a-run-2.png"}
    assert plot_names(["a/run.h5", "b/run.h5"])[2:] == ["timeline-a-run.png", "timeline-b-run.png"]


def test_an_interrupted_run_has_a_csv_row_and_no_partial_file(runs, tmp_path):
    """Before: ``--csv`` on an interrupted file failed on its missing per-rank tables ("cannot convert float NaN
    to integer") and left a CSV of the header alone, which a rerun then refused."""
    import csv

    interrupted = _unfinished(runs[0], tmp_path / "interrupted.h5")
    with h5py.File(interrupted, "r+") as handle:
        del handle["stats/peak_rss_bytes"], handle["stats/predicted_peak_bytes"]
    listing = tmp_path / "runs.csv"
    done = _analyze(str(interrupted), str(runs[1]), "--csv", str(listing))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(listing.open()))
    assert [row["status"] for row in rows] == ["interrupted", "complete"]
    assert rows[0]["max_peak_rss_bytes"] == "nan" and int(rows[1]["max_peak_rss_bytes"]) > 0
