"""The cluster simulator: calibration, the work-stealing model, and the paper's table."""

import re
import subprocess
import sys

import pytest

from dcnn.analysis.simulate import PAPER_TABLE, Machine, calibrate, paper_comparison, simulate
from dcnn.errors import InputError
from dcnn.planner.plan import parse_bytes


def test_calibration_recovers_a_known_machine():
    points = [(nodes, images, 2.0 + images * (0.5 / nodes + 0.01)) for nodes in (1, 3, 8) for images in (10, 500)]
    startup, per_image, serial = calibrate(points, serial=True)
    assert startup == pytest.approx(2.0) and per_image == pytest.approx(0.5) and serial == pytest.approx(0.01)
    assert calibrate(points[:2])[2] == 0.0


def test_calibration_needs_enough_points():
    with pytest.raises(InputError, match="at least 2"):
        calibrate([(1, 10, 5.0)])
    with pytest.raises(InputError, match="two or more node counts"):
        calibrate([(3, 10, 5.0), (3, 20, 9.0), (3, 40, 17.0)], serial=True)


def test_one_node_takes_the_sum_of_its_tasks():
    machine = Machine(0.5, startup=1.0, jitter=0.0, latency=0.0, result_bytes=0)
    assert simulate(machine, 1, 40, batch=4)["seconds"] == pytest.approx(1.0 + 40 * 0.5)


def test_equal_nodes_scale_and_a_slow_node_is_balanced_by_stealing():
    machine = Machine(0.1, jitter=0.0)
    one, four = simulate(machine, 1, 400, 1)["seconds"], simulate(machine, 4, 400, 1)["seconds"]
    assert one / four == pytest.approx(4, rel=0.02)
    speeds = [1.0, 1.0, 1.0, 0.25]
    stealing = simulate(machine, 4, 400, 1, speeds=speeds)
    static = simulate(machine, 4, 400, 1, speeds=speeds, policy="static")
    ideal = 400 * 0.1 / sum(speeds)
    assert stealing["seconds"] < 1.1 * ideal + 0.4 and stealing["steals"] > 0
    assert static["seconds"] == pytest.approx(100 * 0.1 / 0.25, rel=0.01)


def test_the_paper_table_is_reproduced_within_its_stated_error():
    startup, per_image, _ = calibrate([(3, images, row[3]) for images, row in PAPER_TABLE.items() if 3 in row])
    rows = paper_comparison(Machine(per_image, startup), batch=1, policy="steal")
    errors = [abs(row["error"]) for row in rows]
    assert sum(errors) / len(errors) < 0.08 and max(errors) < 0.25
    assert len(rows) == sum(len(row) for row in PAPER_TABLE.values())


def test_command_line():
    done = subprocess.run([sys.executable, "-m", "dcnn.simulate", "--batch-size", "1", "--calibrate", "paper-all",
                           "--nodes", "3,20", "--images", "1000"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "serial per image" in done.stdout and "mean absolute error" in done.stdout
    assert "memory per node (planner, batch mode, 128x128 images, batch 1, 1 task at once):" in done.stdout
    assert "(fits)" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "dcnn.simulate", "--nodes", "three"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--nodes: each count takes an integer" in bad.stderr


def test_task_threads_run_several_tasks_of_a_node_at_once_when_the_run_has_enough():
    """A node of T threads runs T tasks at once when the run leaves it T (dcnn.modes.concurrent_tasks, as dcnn.infer
    --threads does), sharing the node's calibrated throughput; the simulator once ran one task at a time."""
    machine = Machine(0.5, jitter=0.0, latency=0.0, result_bytes=0)
    alone = simulate(machine, 1, 3, batch=1)
    threaded = simulate(machine, 1, 3, batch=1, threads=2)
    assert (alone["tasks_at_once"], threaded["tasks_at_once"]) == (1, 2)
    # Two tasks of 1.0 s each (two at once on the node), then the third alone on its slot: 2.0 s, not 3 x 0.5 s.
    assert alone["seconds"] == pytest.approx(1.5) and threaded["seconds"] == pytest.approx(2.0)
    assert simulate(machine, 1, 40, batch=1, threads=2)["seconds"] == pytest.approx(20.0)  # no tail: same total
    few = simulate(machine, 2, 3, batch=1, threads=2)  # 3 tasks < 2 threads x 2 nodes: one at a time, as dcnn runs
    assert few["tasks_at_once"] == 1 and few == simulate(machine, 2, 3, batch=1) | {"tasks_at_once": 1}
    with pytest.raises(InputError, match="threads"):
        simulate(machine, 1, 3, threads=0)


def test_the_command_plans_the_memory_of_the_tasks_a_node_runs_at_once(capsys):
    from dcnn.cli.simulate import main

    argv = ["--batch-size", "1", "--nodes", "2,3", "--images", "4,100"]
    assert main(argv) == 0
    one = capsys.readouterr().out
    assert main([*argv, "--threads", "2"]) == 0
    two = capsys.readouterr().out
    assert "1 thread per node" in one and "2 threads per node" in two
    assert "batch 1, 1 task at once)" in one and "batch 1, 2 tasks at once)" in two  # 100 tasks on 2 nodes
    peak = {text: parse_bytes(re.search(r"at once\): (\S+ \S+) of", text).group(1).replace(" ", ""))
            for text in (one, two)}
    assert peak[two] > peak[one]
    assert main([*argv, "--threads", "0"]) == 2 and "--threads" in capsys.readouterr().err


QUICK = ["--nodes", "2,3", "--images", "8"]


def _simulate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcnn.simulate", *QUICK, *args], capture_output=True, text=True,
                          timeout=120)


def test_an_existing_markdown_file_is_refused_byte_identical_unless_force(tmp_path):
    """Before: ``--markdown mynotes.md`` replaced the user's notes with the table, exit 0."""
    notes = tmp_path / "mynotes.md"
    notes.write_text("my notes\n")
    done = _simulate("--markdown", str(notes))
    assert done.returncode == 2 and done.stdout == "", done.stdout  # before any work: nothing simulated
    assert done.stderr == f"dcnn: error: --markdown {notes}: already exists; give --force to replace it, or choose " \
                          f"another --markdown\n"
    assert notes.read_text() == "my notes\n"
    done = _simulate("--markdown", str(notes), "--force")
    assert done.returncode == 0, done.stderr
    assert "against the paper's table" in notes.read_text()


def test_force_does_not_replace_a_file_that_is_not_text(tmp_path):
    photo = tmp_path / "photo.md"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    done = _simulate("--markdown", str(photo), "--force")
    assert done.returncode == 2 and "is not a text file (--force replaces only those)" in done.stderr
    assert photo.read_bytes() == b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"


@pytest.mark.parametrize("args,message", [
    (["--markdown", "{tmp}"], "--markdown {tmp}: is a folder, not a file name"),
    (["--calibrate", "files", "--markdown", "{tmp}/x.md"], "--markdown applies to --calibrate paper or paper-all"),
])
def test_a_markdown_path_that_cannot_be_written_is_refused_before_the_simulation(tmp_path, args, message):
    """Before: ``--markdown /tmp`` was refused only after the whole simulation had run and printed."""
    done = _simulate(*(arg.format(tmp=tmp_path) for arg in args))
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert done.stderr.count("\n") == 1 and message.format(tmp=tmp_path) in done.stderr, done.stderr
    assert not (tmp_path / "x.md").exists()


def test_an_image_count_beyond_what_a_simulation_can_hold_is_refused_at_once():
    """Before: ``--images 1000000000000`` ran on without output (an event per task: days, terabytes)."""
    done = _simulate("--images", "100,1000000000000")
    assert done.returncode == 2 and done.stdout == ""
    assert "--images: each count must be an integer at least 1 and at most 100000000, got 1000000000000" in done.stderr
    done = _simulate("--nodes", "2,100000000")  # 2.7 GB within seconds, climbing
    assert done.returncode == 2
    assert "--nodes: each count must be an integer at least 1 and at most 100000," in done.stderr
