"""The progress report of a run: a bar on a terminal, plain lines in batch logs, nothing when asked."""

import io

import pytest

from dcnn.io.progress import Progress, format_duration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_duration():
    assert format_duration(3725.4) == "1:02:05" and format_duration(-3) == "0:00:00"


def test_auto_draws_a_bar_on_a_terminal_and_lines_elsewhere():
    assert Progress(10, stream=Terminal()).style == "bar"
    assert Progress(10, stream=io.StringIO()).style == "log"  # an sbatch log, mpiexec's forwarded output


def test_log_style_writes_plain_lines_with_rate_and_eta():
    stream = io.StringIO()
    progress = Progress(8, style="log", stream=stream, interval=0.0)
    progress.update(2)
    progress.update(8)
    progress.update(8)  # the end is reported once, however often the task loop says so
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert lines[0].startswith("progress: 2/8 images (25%), ") and "images/s, ETA " in lines[0]
    assert lines[1].startswith("progress: 8/8 images (100%)")


def test_log_style_waits_its_interval_but_always_reports_the_end():
    stream = io.StringIO()
    progress = Progress(8, style="log", stream=stream, interval=3600.0)
    progress.update(3)
    assert stream.getvalue() == ""
    progress.update(8)
    assert stream.getvalue().startswith("progress: 8/8 images")


def test_bar_redraws_in_place():
    stream = Terminal()
    progress = Progress(4, style="bar", stream=stream, interval=0.0)
    progress.update(1)
    progress.update(4)
    text = stream.getvalue()
    assert text.startswith("\r[######      ") and "\r[########################] 4/4 images, " in text
    assert text.endswith("\n") and text.count("\r") == 2


def test_none_is_silent_and_unknown_styles_are_refused():
    stream = io.StringIO()
    Progress(4, style="none", stream=stream, interval=0.0).update(4)
    assert stream.getvalue() == ""
    with pytest.raises(ValueError, match="progress style 'fancy'"):
        Progress(4, style="fancy")
