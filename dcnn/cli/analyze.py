"""``python -m dcnn.analyze``: summarise result files, and compare runs of different rank counts.

For each file: images per second, per-rank busy and idle time, steals and peak memory. Over several files of
the same model and image count: a speedup and parallel-efficiency table against the run with the fewest ranks.
``--csv FILE`` writes the per-run table for other tools. Files left by killed runs are read as they are.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dcnn.analysis.analyze import (
    RunSummary,
    draw_detections,
    format_paper_table,
    format_summary,
    load_summary,
    paper_table,
    scaling_table,
)
from dcnn.cli.common import (
    add_common_arguments,
    add_force_argument,
    check_distinct,
    launcher_rank,
    output_folder,
    output_path,
    run_main,
)
from dcnn.errors import InputError, one_line
from dcnn.io.numbers import check_number
from dcnn.io.schema import column


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dcnn.analyze``."""
    parser = argparse.ArgumentParser(
        prog="python -m dcnn.analyze",
        description="Summarise result files of python -m dcnn.infer, and compare runs of different rank counts.")
    parser.add_argument("files", nargs="+", help="result files written by python -m dcnn.infer")
    parser.add_argument("--csv", metavar="FILE", help="also write one row per run to this CSV file")
    parser.add_argument("--table", metavar="FILE.md",
                        help="write the paper's table (wall time against rank count, per image count) as Markdown "
                             "to this file, and as CSV next to it (FILE.csv)")
    parser.add_argument("--plots", metavar="DIR",
                        help="write PNG figures into DIR: memory.png (peak memory per rank, Fig. 5), "
                             "single_vs_cluster.png (Fig. 6: runs of one model and mode at several rank counts) "
                             "and timeline-<file>.png (tasks per rank, steals marked) for each batch run "
                             "(timeline-<folder>-<file>.png where files in two folders share a name)")
    parser.add_argument("--draw", metavar="PNG",
                        help="face detection runs: draw the boxes found on the first images the first file's run "
                             "computed (not those it skipped) into this PNG")
    parser.add_argument("--images", type=int, default=12, metavar="N", help="images to draw (default 12)")
    add_force_argument(parser, "each of the --csv, --table (and its FILE.csv), --draw and --plots files")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the summaries and, for several complete runs, the scaling tables."""
    if launcher_rank() != 0:  # a serial tool: under mpirun, rank 0 alone reads and prints
        return 0
    check_number(args.images, "--images", minimum=1)
    table, plots, drawing, listing = _outputs(args)
    runs = [load_summary(path) for path in args.files]
    for summary in runs:
        print(format_summary(summary))
    groups: dict[tuple[str, int], list[RunSummary]] = {}
    for summary in runs:
        if summary.status == "complete":
            groups.setdefault((summary.model, summary.num_images), []).append(summary)
    for (model, images), group in groups.items():
        if len({r.ranks for r in group}) < 2:
            continue
        print(f"\nscaling, {model} on {images} images (baseline: the run with the fewest ranks)")
        print(f"{'ranks':>5} {'run (mode and options)':<30} {'seconds':>9} {'images/s':>9} {'speedup':>8} "
              f"{'efficiency':>10}")
        for row in scaling_table(group):
            print(f"{row['ranks']:>5} {row['run']:<30} {row['seconds']:9.2f} {row['images_per_second']:9.2f} "
                  f"{row['speedup']:8.2f} "
                  f"{row['efficiency']:10.1%}")
    if table:
        rows = paper_table(runs)
        text = format_paper_table(rows)
        print("\n" + text)
        table.write_text(text)
        with open(_sibling_csv(table), "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["model"])
            writer.writeheader()
            writer.writerows(rows)
    if plots:
        _plots(runs, plots)
    if drawing:
        drawn = draw_detections(args.files[0], str(drawing), args.images)
        print(one_line(f"drew the detections of {drawn} images into {args.draw}"))
    if listing:
        rows = [[summary.path, summary.model, summary.mode, summary.ranks, summary.status, summary.num_images,
                 summary.images_done, f"{summary.elapsed:.4f}", f"{summary.images_per_second:.4f}",
                 int(np.nansum(column(summary.steal, "steals_succeeded"))), _largest(summary.peak_rss),
                 _largest(summary.predicted_peak), f"{summary.memory_error:.4f}"] for summary in runs]
        with open(listing, "w", newline="") as handle:  # every row made first: a failure leaves no partial file
            writer = csv.writer(handle)
            writer.writerow(["file", "model", "mode", "ranks", "status", "images", "images_done", "seconds",
                             "images_per_second", "steals_succeeded", "max_peak_rss_bytes",
                             "max_predicted_peak_bytes", "memory_prediction_error"])
            writer.writerows(rows)
    return 0


def _largest(per_rank: np.ndarray) -> int | str:
    """The largest of per-rank byte counts, or ``nan`` where the file has none (a run interrupted before its
    tables were written: its CSV row says so instead of failing)."""
    return "nan" if np.isnan(per_rank).all() else int(np.nanmax(per_rank))


def _sibling_csv(table: Path) -> Path:
    """The CSV that ``--table FILE.md`` writes beside the Markdown: ``FILE.csv``."""
    return table.with_suffix(".csv")


def timeline_names(files: Sequence[str]) -> dict[str, str]:
    """The timeline figure of each result file: ``timeline-<stem>.png``, or where files of one stem lie in
    different folders, ``timeline-<folder>-<stem>.png`` and then a count (``run.h5`` in ``a/`` and ``b/`` drew
    one figure over the other)."""
    stems = [Path(path).stem for path in files]
    names: dict[str, str] = {}
    for path, stem in zip(files, stems):
        base = f"{Path(path).resolve().parent.name}-{stem}" if stems.count(stem) > 1 else stem
        name, copy = f"timeline-{base}.png", 1
        while name in names.values() and path not in names:
            copy += 1
            name = f"timeline-{base}-{copy}.png"
        names.setdefault(path, name)
    return names


def plot_names(files: Sequence[str]) -> list[str]:
    """Every file ``--plots DIR`` may write into ``DIR`` for the result ``files``: the figures of
    :func:`_plots`, whether or not the runs turn out to need each (that is known only once they are read)."""
    return ["memory.png", "single_vs_cluster.png", *dict.fromkeys(timeline_names(files).values())]


def _outputs(args: argparse.Namespace) -> tuple[Path | None, Path | None, Path | None, Path | None]:
    """The ``--table``, ``--plots``, ``--draw`` and ``--csv`` paths, checked before any file is read or anything
    printed: every folder created or refused, every file that exists refused unless ``--force`` (and, with it,
    unless of the kind written; the run's own result files never), no file named twice.

    Raises
    ------
    InputError
        In one line naming the option and the file.
    """
    force, inputs = args.force, args.files
    written: list[tuple[str, Path]] = []
    table = plots = drawing = listing = None
    if args.table:
        table = output_path(args.table, "--table", force=force, kind="text", inputs=inputs)
        if _sibling_csv(table) == table:
            raise InputError(f"--table {table}: its CSV copy ({_sibling_csv(table).name}) would be written over "
                             f"it; name a Markdown file (FILE.md)")
        written += [("--table", table), ("--table", output_path(_sibling_csv(table), "--table", force=force,
                                                                kind="text", inputs=inputs))]
    if args.plots:
        plots = output_folder(args.plots, "--plots")
        for name in plot_names(args.files):
            written.append(("--plots", output_path(plots / name, "--plots", force=force, kind="png",
                                                   inputs=inputs)))
    if args.draw:
        drawing = output_path(args.draw, "--draw", force=force, kind="png", inputs=inputs)
        written.append(("--draw", drawing))
    if args.csv:
        listing = output_path(args.csv, "--csv", force=force, kind="text", inputs=inputs)
        written.append(("--csv", listing))
    check_distinct(written)
    return table, plots, drawing, listing


def _plots(runs: Sequence[RunSummary], folder: Path) -> None:
    from dcnn.analysis.plots import draw_memory, draw_single_vs_cluster, draw_timeline

    complete = [run for run in runs if run.status == "complete"]
    if complete:
        draw_memory(complete, str(folder / "memory.png"))
        print(one_line(f"wrote {folder / 'memory.png'}"))
    rows = paper_table(complete)
    if len({row["ranks"] for row in rows}) > 1 and len({(row["model"], row["mode"]) for row in rows}) == 1:
        draw_single_vs_cluster(rows, str(folder / "single_vs_cluster.png"))
        print(one_line(f"wrote {folder / 'single_vs_cluster.png'}"))
    timelines = timeline_names([run.path for run in runs])
    for run in complete:
        if run.mode == "batch" and run.ranks > 1:
            png = folder / timelines[run.path]
            counts = draw_timeline(run.path, str(png))
            print(one_line(f"wrote {png} ({counts['tasks']} tasks, {counts['stolen']} stolen)"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dcnn.analyze``."""
    return run_main(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
