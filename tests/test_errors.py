"""Messages stay one printable line (``dcnn/errors.py``), whatever a file name holds."""

import subprocess
import sys

import pytest
from conftest import mpi_command

from dcnn.errors import one_line


def test_one_line_escapes_control_characters_and_keeps_every_printable_one():
    assert one_line("bad\nname.png, esc\x1b[31mred.png\ttab\r") == r"bad\nname.png, esc\x1b[31mred.png\ttab\r"
    assert one_line("café 日本 ok") == "café 日本 ok"
    # A byte of a non-UTF-8 name, as os.fsdecode gives it (printed raw it would raise UnicodeEncodeError), as the
    # result files store it (``/outputs/file``).
    assert one_line("undecodable \udcff") == r"undecodable \xff"


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_file_name_with_a_newline_or_an_escape_sequence_is_named_on_one_line(tmp_path, ranks):
    """Before: the error about an unreadable ``bad\\nname.png`` took two lines and printed a raw ESC sequence
    (a terminal turned the rest red)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "bad\nname.png").write_text("not an image")
    (photos / "esc\x1b[31mred.png").write_text("not an image")
    launcher = mpi_command(ranks) if ranks > 1 else []
    done = subprocess.run([*launcher, sys.executable, "-m", "dcnn.infer", "--model", "lenet5", "--input", str(photos),
                           "--output", str(tmp_path / "x.h5"), "--threads", "1"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "\x1b" not in done.stderr, done.stderr
    assert r"bad\nname.png" in done.stderr and r"esc\x1b[31mred.png" in done.stderr
    assert not (tmp_path / "x.h5").exists()
