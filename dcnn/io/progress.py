"""A one-line progress display for long runs: items done, rate and ETA, on stderr, only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` for a non-negative number of seconds."""
    seconds = round(max(seconds, 0.0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """Redraws ``[#####     ] done/total unit, rate unit/s, ETA h:mm:ss`` at most every ``interval`` seconds.

    Parameters
    ----------
    total : int
        Items in the run.
    unit : str
        What an item is called ("images").
    enabled : bool, optional
        Draw at all; by default only when ``stream`` is a terminal.
    stream : file, optional
        Where to draw (stderr).
    """

    def __init__(self, total: int, unit: str = "images", enabled: bool | None = None,
                 stream: TextIO | None = None, interval: float = 0.5):
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval = interval
        self.started = time.perf_counter()
        self._last_draw = -float("inf")

    def line(self, done: int) -> str:
        """The progress line for ``done`` items."""
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else 0.0
        width = 24
        filled = width * done // self.total if self.total else width
        return (f"[{'#' * filled}{' ' * (width - filled)}] {done}/{self.total} {self.unit}, "
                f"{rate:.2f} {self.unit}/s, ETA {format_duration(eta)}")

    def update(self, done: int) -> None:
        """Report ``done`` items finished; redraws if enough time has passed or the run is complete."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw >= self.interval or done >= self.total:
            self._last_draw = now
            self.stream.write("\r" + self.line(done))
            if done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
