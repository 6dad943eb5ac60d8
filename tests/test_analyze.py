"""``python -m dcnn.analyze`` on real result files."""

import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import mpi_command

from dcnn.analysis.analyze import load_summary, scaling_table


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    data = folder / "digits.h5"
    with h5py.File(data, "w") as handle:
        handle["images"] = np.random.default_rng(0).integers(0, 256, (48, 32, 32, 1), dtype=np.uint8)
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
    assert "lenet5, batch mode, 2 rank(s), complete" in done.stdout
    assert "scaling, lenet5 on 48 images" in done.stdout and "efficiency" in done.stdout
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("file,model,mode,ranks")
    assert rows[0].endswith("max_predicted_peak_bytes,memory_prediction_error")


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
