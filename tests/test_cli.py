"""Every command behaves like an HPC tool: --version, --quiet, plain --help, one message under mpiexec, quiet
closed pipes, output folders created or refused in one line (``dcnn/cli/common.py`` and the commands)."""

import argparse
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import mpi_command, write_digits

from dcnn import __version__
from dcnn.cli.common import EXIT_BROKEN_PIPE, EXIT_USAGE, add_common_arguments, output_folder, output_path, run_main
from dcnn.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
MAKE_DATASET = str(ROOT / "scripts" / "make_dataset.py")
#: Every command, as a user starts it.
COMMANDS = {name: [sys.executable, "-m", f"dcnn.{name}"] for name in ("infer", "recognize", "model", "plan",
                                                                            "analyze", "simulate")}
COMMANDS["make_dataset"] = [sys.executable, MAKE_DATASET]
COMMANDS["make_samples"] = [sys.executable, str(ROOT / "scripts" / "make_samples.py")]
#: Arguments that make a serial command print its normal output quickly.
QUICK = {"model": ["lenet5"], "plan": ["lenet5", "--nodes", "2", "--ram", "1GiB"],
         "simulate": ["--nodes", "2,3", "--images", "8"]}
RST_MARKUP = re.compile(r"``|:(func|mod|class|meth|data|attr):|`[^`]+`_")


def run(command: list[str], *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_tells_its_version(name):
    done = run(COMMANDS[name], "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"dcnn {__version__}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_is_in_plain_words(name):
    done = run(COMMANDS[name], "--help")
    assert done.returncode == 0, done.stderr
    assert "--quiet" in done.stdout and "--version" in done.stdout
    assert not RST_MARKUP.search(done.stdout), RST_MARKUP.search(done.stdout).group()


@pytest.mark.parametrize("name", QUICK)
def test_quiet_prints_nothing(name):
    loud = run(COMMANDS[name], *QUICK[name])
    assert loud.returncode == 0 and loud.stdout, loud.stderr
    done = run(COMMANDS[name], *QUICK[name], "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_infer_and_analyze_are_silent_when_quiet_and_survive_a_closed_pipe(tmp_path, capsys):
    """The commands that need a file to show output: the run (no summary, no progress lines) and its analysis
    (in this process: its output is in test_analyze.py)."""
    from dcnn.cli import analyze

    result = tmp_path / "run.h5"
    done = run(COMMANDS["infer"], "--model", "lenet5", "--input", str(write_digits(tmp_path / "d.h5", 4, seed=0)),
               "--output", str(result), "--threads", "1", "--quiet")
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr
    assert analyze.main([str(result), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    process = subprocess.Popen([*COMMANDS["analyze"], str(result)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=ROOT)
    process.stdout.close()
    assert process.wait(timeout=120) in (0, EXIT_BROKEN_PIPE) and process.stderr.read() == b""


@pytest.mark.parametrize("name", ["model", "infer"])
def test_usage_errors_and_help_are_printed_once_under_mpiexec(name):
    launcher = mpi_command(2)
    done = subprocess.run([*launcher, *COMMANDS[name], "--no-such-option"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == EXIT_USAGE
    assert done.stderr.count("usage:") == 1 and done.stderr.count("error:") == 1, done.stderr
    helped = subprocess.run([*launcher, *COMMANDS[name], "--help"], capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0
    assert helped.stdout.count("usage:") == 1, helped.stdout


@pytest.mark.parametrize("args", [["model", "vgg16"], ["simulate", "--nodes", "2,3", "--images", "8"],
                                  ["plan", "lenet5", "--nodes", "2", "--ram", "1GiB"]])
def test_a_closed_pipe_ends_quietly(args):
    """As ``| head -1``, but deterministic: the reader is gone before the command writes anything."""
    process = subprocess.Popen([*COMMANDS[args[0]], *args[1:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=ROOT)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) in (0, EXIT_BROKEN_PIPE)
    assert stderr == "", stderr


def test_run_main_turns_a_closed_pipe_into_its_exit_code():
    def body(args):
        raise BrokenPipeError

    parser = argparse.ArgumentParser()
    add_common_arguments(parser)
    assert run_main(body, parser, []) == EXIT_BROKEN_PIPE


def test_output_paths_are_created_or_refused_in_one_line(tmp_path):
    assert output_path(tmp_path / "a" / "b" / "c.csv", "--csv") == tmp_path / "a" / "b" / "c.csv"
    assert (tmp_path / "a" / "b").is_dir()
    assert output_folder(tmp_path / "d" / "e", "--plots").is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match=r"^--csv .*file/c.csv: cannot create the folder"):
        output_path(blocker / "c.csv", "--csv")
    with pytest.raises(InputError, match=r"^--plots .*file/d: cannot create the folder"):
        output_folder(blocker / "d", "--plots")
    with pytest.raises(InputError, match=r"^--plots .*file: is a file, not a folder$"):  # "(File exists)" before
        output_folder(blocker, "--plots")
    with pytest.raises(InputError, match="is a folder, not a file name"):
        output_path(tmp_path / "a", "--draw")


def test_simulate_markdown_folder_is_created_or_refused(tmp_path):
    target = tmp_path / "new" / "folder" / "table.md"
    done = run(COMMANDS["simulate"], *QUICK["simulate"], "--markdown", str(target))
    assert done.returncode == 0, done.stderr
    assert "against the paper's table" in target.read_text()
    (tmp_path / "file").write_text("")
    done = run(COMMANDS["simulate"], *QUICK["simulate"], "--markdown", str(tmp_path / "file" / "table.md"))
    assert done.returncode == EXIT_USAGE and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "--markdown" in done.stderr


@pytest.mark.parametrize("script,args", [("make_dataset", ["--count", "1", "--wide", "0"]),
                                         ("make_samples", ["--size", "8"])])
def test_dataset_scripts_create_their_folder_or_refuse_in_one_line(tmp_path, script, args):
    (tmp_path / "file").write_text("")
    done = run(COMMANDS[script], *args, "--output", str(tmp_path / "file" / "x.h5"))
    assert done.returncode == EXIT_USAGE and done.stderr.count("\n") == 1 and "--output" in done.stderr
    target = tmp_path / "new" / "set.h5"
    done = run(COMMANDS[script], *args, "--output", str(target), timeout=300)
    assert (tmp_path / "new").is_dir()
    assert "Traceback" not in done.stderr
    assert done.returncode == 0 or "pip install '.[datasets]'" in done.stderr  # scikit-image is an extra


@pytest.mark.parametrize("script", ["make_dataset", "make_samples"])
def test_dataset_scripts_refuse_an_existing_file_byte_identical_unless_force(tmp_path, script):
    """Before: ``make_dataset.py --count 2 --output mynotes.md`` replaced a text file with HDF5 bytes, and the
    default output replaced the committed ``data/faces.h5`` (``data/samples.h5``) silently."""
    notes = tmp_path / "mynotes.md"
    notes.write_text("my notes\n")
    done = run(COMMANDS[script], "--output", str(notes))
    assert done.returncode == EXIT_USAGE and done.stdout == "", done.stdout
    assert done.stderr == f"dcnn: error: --output {notes}: already exists; give --force to replace it, or choose " \
                          f"another --output\n"
    done = run(COMMANDS[script], "--output", str(notes), "--force")  # notes are not an image set
    assert done.returncode == EXIT_USAGE and "--force replaces only those" in done.stderr, done.stderr
    assert notes.read_text() == "my notes\n"
    # The default output, in a copy of the repository's layout: refused, as the committed file would be.
    committed = {"make_dataset": "faces.h5", "make_samples": "samples.h5"}[script]
    (tmp_path / "data").mkdir()
    default = tmp_path / "data" / committed
    default.write_bytes((ROOT / "data" / committed).read_bytes())
    before = default.read_bytes()
    done = subprocess.run([*COMMANDS[script], "--size" if script == "make_samples" else "--count", "2"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == EXIT_USAGE and f"--output data/{committed}: already exists" in done.stderr
    assert default.read_bytes() == before
    done = subprocess.run([*COMMANDS[script], "--size" if script == "make_samples" else "--count", "2", "--force"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if "pip install '.[datasets]'" in done.stderr:  # scikit-image is an extra: the file is kept
        assert done.returncode == EXIT_USAGE and default.read_bytes() == before
    else:
        assert done.returncode == 0, done.stderr
        assert default.read_bytes() != before


#: The scripts that write a report (``--output``, by default a committed ``results/*`` file; ``scripts/benchlib.py``).
REPORT_SCRIPTS = ("bench_batch", "bench_dag", "bench_faces", "bench_fused", "bench_kernels", "bench_memory",
                  "bench_onnx", "bench_recognize", "bench_sizes", "bench_soak", "bench_spatial", "bench_threads",
                  "fuzz_readers", "onnx_conformance", "onnx_light_modes")


@pytest.mark.parametrize("script", REPORT_SCRIPTS)
def test_report_scripts_refuse_an_existing_report_before_the_benchmark(tmp_path, script):
    """Before: a benchmark ran for minutes, then replaced any --output silently (by default the committed report,
    so the README's ``python scripts/bench_*.py`` rewrote a tracked file). Each script is run once, on its default
    report in a copy of the repository's layout (any other --output goes through the same check)."""
    name = re.search(r'add_report_arguments\(parser, "([^"]+)"\)', (ROOT / "scripts" / f"{script}.py").read_text())[1]
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py")], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    if "ModuleNotFoundError" in done.stderr:  # an optional dependency (torch, onnxruntime, dlib) is missing
        pytest.skip(done.stderr.strip().splitlines()[-1])
    assert done.returncode == EXIT_USAGE and done.stdout == "", done.stdout
    assert done.stderr == f"dcnn: error: --output {name}: already exists; give --force to replace it, or choose " \
                          f"another --output\n"
    assert (tmp_path / name).read_bytes() == (ROOT / name).read_bytes()


@pytest.mark.parametrize("args,message", [
    (["--grid", "2x1"], "--grid applies to --mode spatial only, not --mode batch"),
    (["--mode", "spatial", "--tiles", "2x2"], "--tiles applies to --mode fused only, not --mode spatial"),
    (["--mode", "single", "--overlap", "reuse"], "--halo-policy applies to --mode fused only"),
    (["--fuse-depth", "3"], "--fuse-depth applies to --mode fused only"),
    (["--mode", "fused", "--no-overlap"], "--no-comm-overlap applies to --mode spatial only"),
    (["--plan", "auto", "--tiles", "2x2"], "--tiles is chosen by --plan auto"),
])
def test_options_of_another_mode_are_refused(args, message):
    done = run(COMMANDS["infer"], "--model", "lenet5", *args)
    assert done.returncode == EXIT_USAGE
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize("command", ["infer", "recognize"])
def test_renamed_options_still_work_hidden_from_the_option_list_and_noted_in_help(command):
    from dcnn.cli import infer, recognize

    parser = {"infer": infer, "recognize": recognize}[command].build_parser()
    args = parser.parse_args(["--overlap", "recompute", "--no-overlap"])
    assert args.halo_policy == "recompute" and args.no_comm_overlap
    options = parser.format_help().split(parser.epilog.split()[0])[0]
    for old, new in infer.RENAMED_OPTIONS.items():
        assert re.search(rf"(?<![\w-]){old}\b", options) is None and new in options
        assert f"{old} is now {new}" in parser.epilog


@pytest.mark.parametrize("args,named,unrelated", [
    (["--mode", "fused", "--tiles", "4"], "--tiles '4': expected ROWSxCOLS such as 2x3", "--grid"),
    (["--mode", "spatial", "--grid", "2by2"], "--grid '2by2': expected ROWSxCOLS such as 2x3", "CxHxW"),
    (["--mem-per-rank", "200"], "memory size '200' has no unit; write for example 200MiB", "Traceback"),
])
def test_parse_errors_name_the_flag_and_its_form(args, named, unrelated):
    done = run(COMMANDS["infer"], "--model", "lenet5", *args)
    assert done.returncode == EXIT_USAGE
    assert named in done.stderr and unrelated not in done.stderr, done.stderr


def test_help_says_sizes_need_a_unit():
    assert "a bare number is refused" in run(COMMANDS["infer"], "--help").stdout


def test_default_output_names_never_collide(monkeypatch):
    from dcnn.cli.infer import default_output

    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    names = {default_output() for _ in range(50)}  # the same second, the same process
    assert len(names) == 50 and all(name.parent == Path("results") for name in names)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert re.fullmatch(r"\d{8}-\d{6}-4242-7-[0-9a-f]{6}\.h5", default_output().name)


def test_mpi_is_initialised_funneled():
    """The kernels' worker threads never call MPI: the main thread alone needs it (not "multiple")."""
    done = run([sys.executable, "-c", "from dcnn.parallel.comm import mpi_thread_level; print(mpi_thread_level())"])
    assert done.stdout.strip() == "funneled", done.stderr


def test_model_table_of_the_default_workload():
    done = run(COMMANDS["model"], "mmod")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mmod on 500x1000 images (network input: the image pyramid, 3x")
    assert "features.0" in done.stdout


def test_plan_reports_the_image_size_as_given_and_the_node_speed():
    done = run(COMMANDS["plan"], "mmod", "--input", "128x128", "--nodes", "2", "--mode", "batch")
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()[:2]
    assert first.startswith("mmod on 128x128 images (network input 3x")
    assert second.startswith("predicted seconds assume 0.25 GMAC/s per node (a RockPro64")


@pytest.mark.parametrize("ranks", [1, 2])
def test_progress_reaches_batch_logs_as_plain_lines(tmp_path, ranks):
    """stderr is no terminal (an sbatch log, mpiexec's forwarding): rank 0 writes plain progress lines, no bar."""
    import h5py
    import numpy as np

    images = tmp_path / "digits.h5"
    with h5py.File(images, "w") as handle:
        handle["images"] = np.zeros((6, 32, 32, 1), np.uint8)
    launcher = mpi_command(ranks) if ranks > 1 else []
    common = ["--model", "lenet5", "--input", str(images), "--batch-size", "2", "--threads", "1"]
    done = subprocess.run([*launcher, *COMMANDS["infer"], *common, "--output", str(tmp_path / "a.h5")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("progress: 6/6 images (100%)") == 1 and "\r" not in done.stderr, done.stderr
    # Each rank's line counts its tasks in the right number (before: "rank 1: 1 tasks, ... 0 tasks stolen").
    counts = re.findall(r"rank \d+: (\d+ tasks?), .* (\d+ tasks?) stolen", done.stdout)
    assert len(counts) == (ranks if ranks > 1 else 0), done.stdout
    assert all(text.endswith("task" if text.startswith("1 ") else "tasks") for pair in counts for text in pair)
    quiet = subprocess.run([*launcher, *COMMANDS["infer"], *common, "--output", str(tmp_path / "b.h5"),
                            "--progress", "none"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and "progress" not in quiet.stderr, quiet.stderr


@pytest.mark.parametrize("command", ["model", "plan"])
def test_the_model_is_positional_or_an_option_exactly_once(command, capsys):
    from importlib import import_module

    main = import_module(f"dcnn.cli.{command}").main
    assert main(["--model", "lenet5", "--nodes", "2"][: 2 if command == "model" else 4]) == 0
    as_option = capsys.readouterr().out
    assert main(["lenet5", "--nodes", "2"][: 1 if command == "model" else 3]) == 0
    assert capsys.readouterr().out == as_option
    for argv, message in ((["lenet5", "--model", "lenet5"], "give the model once"), ([], "the model is required")):
        with pytest.raises(SystemExit) as exit_code:
            main(argv)
        assert exit_code.value.code == EXIT_USAGE and message in capsys.readouterr().err


ARENAS_SCRIPT = """
import argparse, ctypes, threading
import numpy as np
from dcnn.cli.common import add_common_arguments, run_main
def allocate():
    for _ in range(3):
        array = np.ones(300_000, np.float32)
        del array
def body(args):  # as a rank with task threads
    threads = [threading.Thread(target=allocate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ctypes.CDLL(None).malloc_stats()  # one 'Arena N:' line per malloc arena, on stderr
    return 0
parser = argparse.ArgumentParser()
add_common_arguments(parser)
run_main(body, parser, [])
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc arenas")
def test_a_command_s_threads_share_one_malloc_heap():
    """Every thread of a command allocates from the main heap, whose thresholds the command fixed
    (dcnn.kernels.memory.steady_heap): set after the watchdog thread had started, that thread's arena was handed
    to one of two task threads."""
    result = subprocess.run([sys.executable, "-c", ARENAS_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.findall(r"^Arena \d+:", result.stderr, re.MULTILINE) == ["Arena 0:"]


def test_installed_scripts_end_as_the_modules_do():
    """Before: dcnn-infer and dcnn-model called main and skipped exit_command (a finished rank waiting in MPI's
    finalize was still killed by Ctrl-C)."""
    from importlib.metadata import entry_points

    scripts = {point.name: point.value for point in entry_points(group="console_scripts")
               if point.name.startswith("dcnn-")}
    assert scripts == {"dcnn-infer": "dcnn.infer:command", "dcnn-model": "dcnn.model:command"}
