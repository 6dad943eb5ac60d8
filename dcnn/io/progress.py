"""The progress of a run where its user looks: a redrawn bar on a terminal, plain lines in batch logs.

Styles (``--progress``): ``bar`` redraws ``[#####     ] done/total unit, rate unit/s, ETA h:mm:ss`` in place;
``log`` writes ``progress: done/total unit (percent), rate unit/s, ETA h:mm:ss`` as a new line every
``LOG_INTERVAL`` seconds, which is what an sbatch log or ``mpiexec``'s forwarded output can show; ``none`` is
silent; ``auto`` is ``bar`` when the stream is a terminal and ``log`` otherwise.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["LOG_INTERVAL", "STYLES", "Progress", "format_duration"]

STYLES = ("auto", "bar", "log", "none")
#: Seconds between two lines of the ``log`` style.
LOG_INTERVAL = 30.0
#: Seconds between two redraws of the ``bar`` style.
BAR_INTERVAL = 0.5


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` for a non-negative number of seconds."""
    seconds = round(max(seconds, 0.0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Reports items done, rate and ETA as a bar or as log lines (see the module's styles).

    Parameters
    ----------
    total : int
        Items in the run.
    unit : str
        What an item is called ("images").
    style : {"auto", "bar", "log", "none"}
        How to report; ``auto``: ``bar`` on a terminal, else ``log``.
    stream : file, optional
        Where to write (stderr).
    interval : float, optional
        Seconds between two reports (default: ``BAR_INTERVAL`` for the bar, ``LOG_INTERVAL`` for log lines).

    Raises
    ------
    ValueError
        For a style not in ``STYLES``.
    """

    def __init__(self, total: int, unit: str = "images", style: str = "auto", stream: TextIO | None = None,
                 interval: float | None = None):
        if style not in STYLES:
            raise ValueError(f"progress style {style!r} is not one of {', '.join(STYLES)}")
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        if style == "auto":
            style = "bar" if self.stream.isatty() else "log"
        self.style = style
        self.interval = interval if interval is not None else BAR_INTERVAL if style == "bar" else LOG_INTERVAL
        self.started = time.perf_counter()
        self._last_report = time.perf_counter() if style == "log" else -float("inf")
        self._ended = False

    def _rate_and_eta(self, done: int) -> tuple[float, float]:
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        return rate, (self.total - done) / rate if rate > 0 else 0.0

    def line(self, done: int) -> str:
        """The bar for ``done`` items."""
        rate, eta = self._rate_and_eta(done)
        width = 24
        filled = width * done // self.total if self.total else width
        return (f"[{'#' * filled}{' ' * (width - filled)}] {done}/{self.total} {self.unit}, "
                f"{rate:.2f} {self.unit}/s, ETA {format_duration(eta)}")

    def log_line(self, done: int) -> str:
        """The plain line for ``done`` items."""
        rate, eta = self._rate_and_eta(done)
        share = done / self.total if self.total else 1.0
        return (f"progress: {done}/{self.total} {self.unit} ({share:.0%}), {rate:.2f} {self.unit}/s, "
                f"ETA {format_duration(eta)}")

    def update(self, done: int) -> None:
        """Report ``done`` items finished, if ``interval`` has passed since the last report, or the run is done
        (reported once, however often the caller says so)."""
        if self.style == "none" or self._ended:
            return
        now = time.perf_counter()
        if now - self._last_report < self.interval and done < self.total:
            return
        self._last_report = now
        self._ended = done >= self.total
        if self.style == "bar":
            self.stream.write("\r" + self.line(done) + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(self.log_line(done) + "\n")
        self.stream.flush()
