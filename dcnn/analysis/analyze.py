"""Summaries of result files: per-run throughput, busy and idle time, steals and memory, and scaling tables.

For each file: images per second, per-rank busy and idle time, steals and peak memory. Over several files of
the same model and image count: a speedup and parallel-efficiency table against the run with the fewest ranks.
Files left by killed runs are read as they are. The command is :mod:`dcnn.cli.analyze` (``python -m dcnn.analyze``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcnn.errors import InputError, one_line
from dcnn.io.lockfile import writer_of
from dcnn.io.results import open_result, resume_command
from dcnn.io.schema import STEAL_FIELDS, column
from dcnn.network.weights import untrained_note

__all__ = ["RunSummary", "count_of", "format_paper_table", "load_summary", "paper_table", "scaling_table"]


def count_of(count: int, noun: str) -> str:
    """``"1 rank"``, ``"2 ranks"``: a count with its noun in the right number."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


@dataclass
class RunSummary:
    """What one result file says about its run.

    ``status`` is the file's (``complete``), or for a file whose run did not finish ``running`` while a live run
    holds it (``writer`` then says which, :func:`dcnn.io.lockfile.writer_of`) and ``interrupted`` otherwise.
    """

    path: str
    model: str
    mode: str
    ranks: int
    status: str
    num_images: int
    images_done: int
    images_computed: int
    elapsed: float
    tasks: np.ndarray = field(repr=False)
    busy: np.ndarray = field(repr=False)
    steal: np.ndarray = field(repr=False)
    peak_rss: np.ndarray = field(repr=False)
    predicted_peak: np.ndarray = field(repr=False)
    plan: str = ""
    command: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list, repr=False)
    weights: str = ""
    writer: str = ""

    @property
    def memory_error(self) -> float:
        """The worst relative error of the planner's peak memory prediction, ``(predicted - measured) /
        measured``, over the ranks that computed (NaN if none; a rank that ran no task never reached the working
        set the prediction counts): the most negative where a rank's peak exceeded its prediction (the error
        that matters: the plan may not fit), else the largest."""
        valid = (self.predicted_peak > 0) & (self.peak_rss > 0)
        if (valid & (self.busy > 0)).any():
            valid &= self.busy > 0
        if not valid.any():
            return float("nan")
        errors = (self.predicted_peak[valid] - self.peak_rss[valid]) / self.peak_rss[valid]
        return float(errors.min() if errors.min() < 0 else errors.max())

    def describe(self) -> str:
        """The run's mode and options: its plan (``"spatial 2x1, batch 4"``), else its mode."""
        return self.plan or f"{self.mode} mode"

    @property
    def images_per_second(self) -> float:
        """Throughput of the images computed in this (possibly resumed) run."""
        return self.images_computed / self.elapsed if self.elapsed > 0 else float("nan")


def load_summary(path: str) -> RunSummary:
    """Read a result file (complete or interrupted).

    Raises
    ------
    InputError
        If the file is missing or not a dcnn result file.
    """
    if Path(path).is_dir():
        raise InputError(f"{path}: a folder, not a result file (name its files, e.g. {Path(path) / '*.h5'})")
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    try:
        with open_result(path) as handle:
            attrs = handle.attrs
            done = int(handle["outputs/done"][()].sum())
            ranks = int(attrs.get("ranks", 1))

            def per_rank(name: str, shape: tuple[int, ...]) -> np.ndarray:
                return handle[name][()] if name in handle else np.full(shape, np.nan)

            steal = per_rank("stats/steal", (ranks, len(STEAL_FIELDS)))
            # The tasks of this run (a resumed file also holds the earlier runs' tasks), as the busy seconds.
            tasks = column(steal, "tasks_run")
            if np.isnan(tasks).any() or not tasks.any():  # an interrupted run has no tables yet (or an older file
                # of a mode without a queue none): count what the file holds
                task_rank = handle["timing/task_rank"][()]
                finished = task_rank[task_rank >= 0]
                # In batch mode each task runs on one rank; in the other modes every rank works on every task.
                tasks = (np.bincount(finished, minlength=ranks) if attrs["mode"] == "batch"
                         else np.full(ranks, len(finished)))

            status, writer = str(attrs.get("status", "unknown")), ""
            if status == "running":
                holder = writer_of(Path(path).resolve())  # the lock is beside the file a link names
                status = "interrupted" if holder is None else "running"
                writer = "" if holder is None else f"process {holder[1]} on {holder[0]}, since {holder[2]}"
            return RunSummary(
                path=path, model=str(attrs["model"]), mode=str(attrs["mode"]), ranks=ranks, writer=writer,
                status=status, num_images=int(attrs["num_images"]), images_done=done,
                images_computed=int(attrs.get("images_computed", done)),
                elapsed=float(attrs.get("elapsed_seconds", np.nan)), tasks=tasks,
                busy=per_rank("timing/busy_seconds", (ranks,)), steal=steal,
                peak_rss=per_rank("stats/peak_rss_bytes", (ranks,)),
                predicted_peak=per_rank("stats/predicted_peak_bytes", (ranks,)), plan=str(attrs.get("plan", "")),
                command=str(attrs.get("command", "")), skipped=_skipped(handle), weights=str(attrs.get("weights", "")))
    except (OSError, KeyError) as error:
        raise InputError(f"{path}: not a dcnn result file ({error})") from None


def _skipped(handle) -> list[tuple[str, str]]:
    """``(path, reason)`` of every image the run skipped (``--skip-unreadable``; none in older files)."""
    if "skipped" not in handle:
        return []
    group = handle["skipped"]
    return list(zip(group["path"].asstr()[()], group["reason"].asstr()[()]))


#: Skipped images listed one per line in a report; the rest are counted.
LISTED_SKIPS = 20
#: Characters of a file name shown in an image's caption by :func:`draw_detections`.
CAPTION_FILE_CHARS = 40


def format_summary(run: RunSummary) -> str:
    """A short report of one run."""
    lines = [f"{run.path}: {run.model}, {run.mode} mode, {count_of(run.ranks, 'rank')}, {run.status}"
             + (f" ({run.writer})" if run.writer else "")]
    if np.isnan(run.elapsed):  # an interrupted run records no elapsed time
        lines.append(f"  images {run.images_done}/{run.num_images} done")
    else:
        lines.append(f"  images {run.images_done}/{run.num_images} done, {run.images_computed} computed in "
                     f"{run.elapsed:.2f} s: {run.images_per_second:.2f} images/s")
    note = untrained_note(run.weights)
    if note is not None:
        lines.append(f"  {note}")
    if run.skipped:
        lines.append(f"  {count_of(len(run.skipped), 'image')} skipped:")
        lines += [one_line(f"    {path}: {reason}") for path, reason in run.skipped[:LISTED_SKIPS]]
        if len(run.skipped) > LISTED_SKIPS:
            lines.append(f"    ... and {len(run.skipped) - LISTED_SKIPS} more (/skipped in the file)")
    if run.writer:
        lines.append("  (being written by a live run: analyze it again when the run ends)")
        return "\n".join(map(one_line, lines))
    if run.status != "complete":
        lines.append(f"  (interrupted: continue with {resume_command(run.path, run.ranks, run.command)})")
        return "\n".join(map(one_line, lines))
    lines.append(f"  {'rank':>4} {'tasks':>6} {'busy s':>8} {'idle s':>8} {'steals ok/tried':>16} {'stolen':>7} "
                 f"{'peak MiB':>9} {'planned MiB':>12}")
    tried, succeeded = column(run.steal, "steals_attempted"), column(run.steal, "steals_succeeded")
    stolen = column(run.steal, "tasks_stolen")
    for rank in range(run.ranks):
        idle = run.elapsed - run.busy[rank]
        lines.append(f"  {rank:>4} {int(run.tasks[rank]):>6} {run.busy[rank]:8.2f} {idle:8.2f} "
                     f"{f'{int(succeeded[rank])}/{int(tried[rank])}':>16} {int(stolen[rank]):>7} "
                     f"{run.peak_rss[rank] / 2**20:9.0f} {run.predicted_peak[rank] / 2**20:12.0f}")
    if not np.isnan(run.memory_error):
        lines.append(f"  plan {run.plan}: predicted peak memory {run.memory_error:+.1%} of measured (worst rank)")
        if run.memory_error < 0:
            lines.append("  warning: a rank's measured peak exceeded its prediction")
    return "\n".join(map(one_line, lines))


def scaling_table(runs: Sequence[RunSummary]) -> list[dict[str, float]]:
    """Speedup and efficiency of each run against the one with the fewest ranks (same model and images)."""
    if not runs:
        return []
    base = min(runs, key=lambda r: (r.ranks, r.elapsed))
    rows = []
    for run in sorted(runs, key=lambda r: (r.ranks, r.elapsed)):
        speedup = base.elapsed / run.elapsed * (run.images_computed / base.images_computed)
        rows.append({"ranks": run.ranks, "run": run.describe(), "seconds": run.elapsed,
                     "images_per_second": run.images_per_second,
                     "speedup": speedup * base.ranks, "efficiency": speedup * base.ranks / run.ranks})
    return rows


def paper_table(runs: Sequence[RunSummary]) -> list[dict]:
    """The paper's table: per (model, mode, image count), wall time per rank count, with speedup and efficiency.

    Returns one row per run, sorted by model, mode, images and ranks; speedup and efficiency are against the
    run of the same group with the fewest ranks (so a group of one run has speedup 1), as in
    :func:`scaling_table`.
    """
    groups: dict[tuple[str, str, int], list[RunSummary]] = {}
    for summary in runs:
        if summary.status == "complete":
            groups.setdefault((summary.model, summary.mode, summary.num_images), []).append(summary)
    rows = []
    for (model, mode, images), group in sorted(groups.items()):
        fewest = min(run.ranks for run in group)
        rows += [{"model": model, "mode": mode, "images": images, "ranks": row["ranks"], "seconds": row["seconds"],
                  "speedup": row["speedup"] / fewest, "efficiency": row["efficiency"]}
                 for row in scaling_table(group)]
    return rows


def format_paper_table(rows: list[dict]) -> str:
    """Markdown: one line per image count, one column per rank count, ``seconds (efficiency)`` in each cell."""
    lines = []
    for model, mode in dict.fromkeys((row["model"], row["mode"]) for row in rows):
        mine = [row for row in rows if (row["model"], row["mode"]) == (model, mode)]
        ranks = sorted({row["ranks"] for row in mine})
        lines += [f"{model}, {mode} mode: wall time in seconds (parallel efficiency against the fewest ranks)", "",
                  "| images | " + " | ".join(count_of(r, "rank") for r in ranks) + " |",
                  "|---|" + "---|" * len(ranks)]
        for images in sorted({row["images"] for row in mine}):
            cells = {row["ranks"]: f"{row['seconds']:.1f} ({row['efficiency']:.0%})" for row in mine
                     if row["images"] == images}
            lines.append(f"| {images} | " + " | ".join(cells.get(r, "—") for r in ranks) + " |")
        lines.append("")
    return "\n".join(lines)


def draw_detections(path: str, png: str, count: int, tile: int = 256) -> int:
    """Draw the first ``count`` images a detection run computed with their boxes, confidences and image indices
    (and file names, for a folder input); a recognition run adds each face's landmarks and its identity. Images
    the run skipped (unreadable, too small) or has not reached (an interrupted run) are left out: they have no
    detections.

    Each image gets a cell ``tile`` pixels high and as wide as its aspect ratio asks (up to four tiles), so a
    1000x500 image is drawn at 512x256, not squeezed into a square; rows hold four tiles' width.

    Returns
    -------
    int
        How many images were drawn.
    """
    from PIL import Image, ImageDraw

    from dcnn.io.images import open_image_set

    with open_result(path) as handle:
        if "detections" not in handle["outputs"]:
            raise InputError(f"{path}: not a face detection run (no /outputs/detections)")
        rows = handle["outputs/detections"][()]
        landmarks = handle["outputs/landmarks"][()] if "landmarks" in handle["outputs"] else None
        names = handle["outputs/identity"].asstr()[()] if "identity" in handle["outputs"] else None
        files = handle["outputs/file"].asstr()[()] if "file" in handle["outputs"] else None
        source = str(handle.attrs["input"])
        drawn = np.flatnonzero(handle["outputs/done"][()])[:count]
    location, _, dataset = source.rpartition(":") if not Path(source).exists() else (source, "", "images")
    if not location or not Path(location).exists():  # a folder's path, or an HDF5 set's "file:dataset"
        raise InputError(f"{path}: its input {source!r} is gone (moved or deleted); --draw reads the images there")
    if not len(drawn):
        raise InputError(f"{path}: the run has computed no images to draw")
    with open_image_set(location, dataset or "images") as images:
        pixels = [images.read_pixels(i, i + 1)[0] for i in drawn]
    cells = [(min(4 * tile, max(tile, round(tile * image.shape[1] / image.shape[0]))), tile) for image in pixels]
    places, x, y = [], 0, 0
    for width, _ in cells:
        if x and x + width > 4 * tile:
            x, y = 0, y + tile
        places.append((x, y))
        x += width
    sheet = Image.new("RGB", (max(px + w for (px, _), (w, _) in zip(places, cells, strict=True)), y + tile), "white")
    for index, image, (width, height), place in zip(drawn, pixels, cells, places, strict=True):
        scale = min(width / image.shape[1], height / image.shape[0])
        picture = Image.fromarray(image).resize((max(1, round(image.shape[1] * scale)),
                                                 max(1, round(image.shape[0] * scale))))
        pen = ImageDraw.Draw(picture)
        for face in np.flatnonzero(rows["image"] == index):
            row = rows[face]
            box = [row["left"] * scale, row["top"] * scale, (row["right"] + 1) * scale, (row["bottom"] + 1) * scale]
            pen.rectangle(box, outline=(255, 40, 40), width=2)
            label = f"{row['confidence']:.2f}" if names is None else f"{names[face]} {row['confidence']:.2f}"
            pen.text((box[0] + 3, box[1] + 2), label, fill=(255, 255, 0))
            for x, y in ([] if landmarks is None else (landmarks[face] + 0.5) * scale):
                pen.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(40, 255, 40))
        caption = f"image {index}" if files is None else f"image {index}: {files[index][:CAPTION_FILE_CHARS]}"
        pen.rectangle((0, 0, 8 + 7 * len(caption), 14), fill=(0, 0, 0))
        pen.text((3, 2), caption, fill=(255, 255, 255))
        sheet.paste(picture, place)
    sheet.save(png)
    return len(drawn)
